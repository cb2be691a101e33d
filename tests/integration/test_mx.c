/*
 * test_mx - MX resolution against a real dnsmasq: hosts by preference with
 * their IPv4 and IPv6 addresses, the A/AAAA fallback when there is no MX,
 * a null MX (RFC 7505), a domain that does not exist, an MX whose host has
 * no address, a name with neither MX nor address, and a resolver that is
 * not there (temporary failure within the budget).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dns_util.h"
#include "harness.h"
#include "mx.h"
#include "sbuf.h"

static int s_port;                /* dnsmasq's */
static harness_proc_t *s_dnsmasq; /* the server */
static char s_resolver[64];       /* "127.0.0.1:port" */

static int s_setup(void **state)
{
    (void)state;
    char *opts[] = {"--mx-host=mx.test,mx1.mx.test,20",
                    "--mx-host=mx.test,mx2.mx.test,5",
                    "--mx-host=mx.test,mx3.mx.test,10",
                    "--host-record=mx1.mx.test,192.0.2.1",
                    "--host-record=mx2.mx.test,192.0.2.2,2001:db8::2",
                    "--host-record=mx3.mx.test,192.0.2.3",
                    "--host-record=plain.mx.test,192.0.2.9",
                    "--mx-host=null.mx.test,.,0",
                    "--mx-host=dangling.mx.test,gone.mx.test,10",
                    "--txt-record=empty.mx.test,nothing here",
                    NULL};
    char *local[] = {"mx.test", NULL};
    s_dnsmasq = dns_util_start("dnsmasq-mx", opts, local, &s_port);
    snprintf(s_resolver, sizeof s_resolver, "127.0.0.1:%d", s_port);
    return s_dnsmasq ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return harness_stop(s_dnsmasq, 15, 2000) == 0 ? 0 : -1;
}

static void test_preference_order(void **state)
{
    (void)state;
    mx_host_t h[8];
    size_t n = 99;
    sbuf_t *err = sbuf_new(0);
    assert_int_equal(mx_resolve("mx.test", s_resolver, 3000, h, 8, &n, err), MX_OK);
    assert_int_equal(n, 3);
    assert_string_equal(h[0].name, "mx2.mx.test");
    assert_int_equal(h[0].preference, 5);
    assert_int_equal(h[0].naddrs, 2);
    assert_string_equal(h[0].addrs[0], "192.0.2.2");
    assert_string_equal(h[0].addrs[1], "2001:db8::2");
    assert_string_equal(h[1].name, "mx3.mx.test");
    assert_string_equal(h[2].name, "mx1.mx.test");
    assert_int_equal(h[2].naddrs, 1);
    assert_string_equal(h[2].addrs[0], "192.0.2.1");
    /* max cuts after sorting: the best host stays */
    assert_int_equal(mx_resolve("mx.test", s_resolver, 3000, h, 1, &n, err), MX_OK);
    assert_int_equal(n, 1);
    assert_string_equal(h[0].name, "mx2.mx.test");
    assert_int_equal(sbuf_len(err), 0);
    sbuf_destroy(&err);
}

static void test_fallback_and_failures(void **state)
{
    (void)state;
    mx_host_t h[4];
    size_t n;
    sbuf_t *err = sbuf_new(0);
    /* no MX: the domain's own address */
    assert_int_equal(mx_resolve("plain.mx.test", s_resolver, 3000, h, 4, &n, err), MX_OK);
    assert_int_equal(n, 1);
    assert_string_equal(h[0].name, "plain.mx.test");
    assert_string_equal(h[0].addrs[0], "192.0.2.9");

    assert_int_equal(mx_resolve("null.mx.test", s_resolver, 3000, h, 4, &n, err), MX_PERMFAIL);
    assert_non_null(strstr(sbuf_data(err), "null MX"));
    assert_int_equal(n, 0);

    sbuf_reset(err);
    assert_int_equal(mx_resolve("nope.mx.test", s_resolver, 3000, h, 4, &n, err), MX_PERMFAIL);
    assert_non_null(strstr(sbuf_data(err), "NXDOMAIN"));

    sbuf_reset(err);
    assert_int_equal(mx_resolve("dangling.mx.test", s_resolver, 3000, h, 4, &n, err), MX_TEMPFAIL);
    assert_non_null(strstr(sbuf_data(err), "no MX host has an address"));

    sbuf_reset(err);
    assert_int_equal(mx_resolve("empty.mx.test", s_resolver, 3000, h, 4, &n, err), MX_PERMFAIL);
    assert_non_null(strstr(sbuf_data(err), "no MX and no A/AAAA"));

    sbuf_reset(err);
    assert_int_equal(mx_resolve("", s_resolver, 3000, h, 4, &n, err), MX_PERMFAIL);

    /* a resolver that does not answer: temporary, within the budget */
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", harness_free_port());
    sbuf_reset(err);
    int64_t t0 = harness_now_ms();
    assert_int_equal(mx_resolve("mx.test", dead, 600, h, 4, &n, err), MX_TEMPFAIL);
    assert_true(harness_now_ms() - t0 < 3000);
    assert_int_equal(n, 0);
    sbuf_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preference_order),
        cmocka_unit_test(test_fallback_and_failures),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
