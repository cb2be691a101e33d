/*
 * test_dnscheck - dnscheck against a real dnsmasq on loopback: TXT (one
 * string, several strings, several records, longer than 255 bytes), MX,
 * CNAME, NXDOMAIN, NODATA, all of them at once in one run; and against
 * small fake servers: one that answers SERVFAIL, one that answers REFUSED
 * and one that never answers (the run ends at its budget with TIMEOUT).
 */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "dns_util.h"
#include "dnscheck.h"
#include "harness.h"
#include "sbuf.h"

static int s_port;              /* dnsmasq's, picked by dns_util_start */
static harness_proc_t *s_dnsmasq; /* the server */
static char s_long[601]; /* a TXT value longer than two character-strings */

static int s_setup(void **state)
{
    (void)state;
    for (int i = 0; i < 600; i++)
        s_long[i] = (char)('a' + i % 26);
    char *long_arg = dns_util_txt_arg("long.dc.test", s_long);
    char *opts[] = {"--txt-record=dc.test,v=spf1 mx -all",
                    "--txt-record=multi.dc.test,part one ,part two",
                    "--txt-record=two.dc.test,first",
                    "--txt-record=two.dc.test,second",
                    long_arg,
                    "--mx-host=bounces.dc.test,mx.bounces.dc.test,10",
                    "--host-record=host.dc.test,192.0.2.1",
                    "--cname=www.dc.test,host.dc.test",
                    NULL};
    char *local[] = {"dc.test", NULL};
    s_dnsmasq = dns_util_start("dnsmasq", opts, local, &s_port);
    free(long_arg);
    return s_dnsmasq ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return harness_stop(s_dnsmasq, 15, 2000) == 0 ? 0 : -1;
}

static dnscheck_t *s_dns(int port, int timeout_ms)
{
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", port);
    sbuf_t *err = sbuf_new(64);
    dnscheck_t *d = dnscheck_new(server, timeout_ms, err);
    if (!d)
        fail_msg("dnscheck_new: %s", sbuf_data(err));
    sbuf_destroy(&err);
    return d;
}

/* The i-th NUL-terminated record in b, or NULL. */
static const char *s_rec(const sbuf_t *b, int i)
{
    const char *p = sbuf_data(b), *end = p + sbuf_len(b);
    for (; p < end; p += strlen(p) + 1)
        if (i-- == 0)
            return p;
    return NULL;
}

static void test_txt(void **state)
{
    (void)state;
    dnscheck_t *d = s_dns(s_port, 3000);
    sbuf_t *r = sbuf_new(0);
    const char *why = "unset";
    assert_int_equal(dnscheck_txt(d, "dc.test", r, &why), DNSCHECK_OK);
    assert_null(why);
    assert_string_equal(s_rec(r, 0), "v=spf1 mx -all");
    assert_null(s_rec(r, 1));

    sbuf_reset(r);
    assert_int_equal(dnscheck_txt(d, "multi.dc.test", r, &why), DNSCHECK_OK);
    assert_string_equal(s_rec(r, 0), "part one part two");
    assert_null(s_rec(r, 1));

    sbuf_reset(r);
    assert_int_equal(dnscheck_txt(d, "two.dc.test", r, &why), DNSCHECK_OK);
    const char *a = s_rec(r, 0), *b = s_rec(r, 1);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(s_rec(r, 2));
    assert_true((!strcmp(a, "first") && !strcmp(b, "second")) ||
                (!strcmp(a, "second") && !strcmp(b, "first")));

    sbuf_reset(r);
    assert_int_equal(dnscheck_txt(d, "long.dc.test", r, &why), DNSCHECK_OK);
    assert_string_equal(s_rec(r, 0), s_long);
    dnscheck_destroy(&d);
    dnscheck_destroy(&d);
    sbuf_destroy(&r);
}

static void test_mx_cname(void **state)
{
    (void)state;
    dnscheck_t *d = s_dns(s_port, 3000);
    sbuf_t *r = sbuf_new(0);
    const char *why = NULL;
    assert_int_equal(dnscheck_mx(d, "bounces.dc.test", r, &why), DNSCHECK_OK);
    assert_string_equal(s_rec(r, 0), "10 mx.bounces.dc.test");
    sbuf_reset(r);
    assert_int_equal(dnscheck_cname(d, "www.dc.test", r, &why), DNSCHECK_OK);
    assert_string_equal(s_rec(r, 0), "host.dc.test");
    assert_null(s_rec(r, 1));
    dnscheck_destroy(&d);
    sbuf_destroy(&r);
}

static void test_missing(void **state)
{
    (void)state;
    dnscheck_t *d = s_dns(s_port, 3000);
    sbuf_t *r = sbuf_new(0);
    const char *why = NULL;
    assert_int_equal(dnscheck_txt(d, "nope.dc.test", r, &why), DNSCHECK_NXDOMAIN);
    assert_non_null(strstr(why, "NXDOMAIN"));
    assert_int_equal(sbuf_len(r), 0);
    assert_int_equal(dnscheck_mx(d, "dc.test", r, &why), DNSCHECK_NODATA);
    assert_non_null(strstr(why, "no MX record"));
    assert_int_equal(dnscheck_cname(d, "dc.test", r, &why), DNSCHECK_NODATA);
    assert_int_equal(dnscheck_txt(d, "bad..name", r, &why), DNSCHECK_ERROR);
    assert_int_equal(sbuf_len(r), 0);
    assert_string_equal(dnscheck_status_name(DNSCHECK_NXDOMAIN), "nxdomain");
    dnscheck_destroy(&d);
    sbuf_destroy(&r);
}

/* Every query at once, in one channel, each with its own outcome. */
static void test_parallel_run(void **state)
{
    (void)state;
    dnscheck_t *d = s_dns(s_port, 3000);
    dnscheck_query_t q[] = {
        {.type = DNSCHECK_TXT, .name = "dc.test"},
        {.type = DNSCHECK_TXT, .name = "long.dc.test"},
        {.type = DNSCHECK_MX, .name = "bounces.dc.test"},
        {.type = DNSCHECK_CNAME, .name = "www.dc.test"},
        {.type = DNSCHECK_TXT, .name = "nope.dc.test"},
        {.type = DNSCHECK_MX, .name = "multi.dc.test"},
    };
    size_t n = sizeof q / sizeof q[0];
    for (size_t i = 0; i < n; i++)
        q[i].records = sbuf_new(0);
    assert_int_equal(dnscheck_run(d, q, n), 4);
    assert_int_equal(q[0].status, DNSCHECK_OK);
    assert_string_equal(s_rec(q[0].records, 0), "v=spf1 mx -all");
    assert_int_equal(q[1].count, 1);
    assert_string_equal(s_rec(q[1].records, 0), s_long);
    assert_string_equal(s_rec(q[2].records, 0), "10 mx.bounces.dc.test");
    assert_string_equal(s_rec(q[3].records, 0), "host.dc.test");
    assert_int_equal(q[4].status, DNSCHECK_NXDOMAIN);
    assert_int_equal(q[5].status, DNSCHECK_NODATA);
    for (size_t i = 0; i < n; i++)
        sbuf_destroy(&q[i].records);
    dnscheck_destroy(&d);
}

/* A fake DNS server on a UDP socket: answers every query with rcode, or
 * never answers when rcode < 0. */
typedef struct {
    int fd;
    int rcode;
    atomic_int stop;
    pthread_t thread;
} fake_t;

static void *s_fake_loop(void *arg)
{
    fake_t *f = arg;
    unsigned char buf[1500];
    while (!atomic_load(&f->stop)) {
        struct pollfd pfd = {.fd = f->fd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(f->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (n < 12 || f->rcode < 0)
            continue;
        buf[2] |= 0x80; /* QR: a response */
        buf[3] = (unsigned char)((buf[3] & 0xf0) | f->rcode);
        sendto(f->fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    }
    return NULL;
}

static int s_fake_start(fake_t *f, int rcode)
{
    f->fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(f->fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(f->fd, (struct sockaddr *)&a, &al), 0);
    f->rcode = rcode;
    atomic_store(&f->stop, 0);
    assert_int_equal(pthread_create(&f->thread, NULL, s_fake_loop, f), 0);
    return ntohs(a.sin_port);
}

static void s_fake_stop(fake_t *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    close(f->fd);
}

static void test_servfail_refused(void **state)
{
    (void)state;
    int rcodes[] = {2, 5};
    dnscheck_status_t want[] = {DNSCHECK_SERVFAIL, DNSCHECK_REFUSED};
    const char *word[] = {"SERVFAIL", "REFUSED"};
    for (int i = 0; i < 2; i++) {
        fake_t f;
        int port = s_fake_start(&f, rcodes[i]);
        dnscheck_t *d = s_dns(port, 3000);
        sbuf_t *r = sbuf_new(0);
        const char *why = NULL;
        assert_int_equal(dnscheck_txt(d, "x.dc.test", r, &why), want[i]);
        assert_non_null(strstr(why, word[i]));
        assert_int_equal(sbuf_len(r), 0);
        dnscheck_destroy(&d);
        sbuf_destroy(&r);
        s_fake_stop(&f);
    }
}

static void test_timeout(void **state)
{
    (void)state;
    fake_t f;
    int port = s_fake_start(&f, -1);
    dnscheck_t *d = s_dns(port, 600);
    dnscheck_query_t q[3] = {
        {.type = DNSCHECK_TXT, .name = "a.dc.test", .records = sbuf_new(0)},
        {.type = DNSCHECK_MX, .name = "b.dc.test", .records = sbuf_new(0)},
        {.type = DNSCHECK_CNAME, .name = "c.dc.test", .records = sbuf_new(0)},
    };
    int64_t t0 = harness_now_ms();
    assert_int_equal(dnscheck_run(d, q, 3), 0);
    int64_t took = harness_now_ms() - t0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(q[i].status, DNSCHECK_TIMEOUT);
        assert_non_null(strstr(q[i].why, "in time"));
        sbuf_destroy(&q[i].records);
    }
    /* The budget is one budget for all three, not one each: a generous
     * bound, since this only has to catch a run that ignores it. */
    assert_true(took < 3 * 600);
    dnscheck_destroy(&d);
    s_fake_stop(&f);
}

static void test_bad_server(void **state)
{
    (void)state;
    const char *bad[] = {"not an address", "127.0.0.1:53,127.0.0.2:53", "999.1.1.1:53"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sbuf_t *err = sbuf_new(0);
        assert_null(dnscheck_new(bad[i], 1000, err));
        assert_non_null(strstr(sbuf_data(err), "host:port"));
        sbuf_destroy(&err);
    }
    sbuf_t *err = sbuf_new(0);
    dnscheck_t *d = dnscheck_new("", 1000, err); /* /etc/resolv.conf */
    assert_non_null(d);
    dnscheck_destroy(&d);
    sbuf_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),          cmocka_unit_test(test_mx_cname),
        cmocka_unit_test(test_missing),      cmocka_unit_test(test_parallel_run),
        cmocka_unit_test(test_servfail_refused), cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_bad_server),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
