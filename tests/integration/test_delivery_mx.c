/*
 * test_delivery_mx - direct delivery by MX lookup, end to end: no relay,
 * the worker asks a real DNS server (dnsmasq on a free port, authoritative
 * for the test's domains) for the recipient domain's MX hosts and connects
 * to the chosen host's address at smtp_port, where Postfix's smtp-sink
 * listens (127.0.0.1) and dumps what it receives.
 *
 *   mx.test     MX 10 mx.mx.test -> 127.0.0.1: sent, the sink has it, a
 *               'sent' event is recorded.
 *   order.test  MX 20 -> 127.0.0.2 (nothing listens there), MX 10 ->
 *               127.0.0.1: the lower preference value wins, so it is sent.
 *   fb.test     MX 5 -> 127.0.0.2 (down), MX 10 -> 127.0.0.1: the
 *               refused host hands the message to the next MX host in the
 *               same attempt: sent, with no 'deferred' event.
 *   null.test   null MX (RFC 7505, "0 ."): failed, with a reason saying the
 *               domain takes no mail, and a 'failed' event.
 *   a.test      no MX, an A record 127.0.0.1: delivered to the A address
 *               (RFC 5321 5.1 implicit MX).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery_util.h"
#include "dns_util.h"

#define TEST_SECRET_KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static api_env_t E;
static dsink_t S;
static harness_proc_t *s_dns;

/* Send one message to rcpt; the row's id into id (size 64). */
static void s_send(const char *rcpt, const char *subject, char *id)
{
    assert_int_equal(dl_send(&E, id,
                             "{\"from\":{\"email\":\"news@send.example\"},\"to\":\"%s\","
                             "\"subject\":\"%s\",\"text\":\"hello by MX\"}",
                             rcpt, subject),
                     202);
}

/* The count of rcpt's events of type. */
static int s_events(const char *id, const char *type)
{
    char *v = dl_sql(&E, "SELECT count(*) FROM message_events WHERE message_id = '%s' AND type = '%s'",
                     id, type);
    int n = v ? atoi(v) : -1;
    free(v);
    return n;
}

static void s_expect_sent(const char *rcpt, const char *subject)
{
    char id[64];
    s_send(rcpt, subject, id);
    char *st = dl_wait_status(&E, id, "sent", 20000);
    assert_non_null(st);
    assert_string_equal(st, "sent");
    free(st);
    assert_int_equal(s_events(id, "sent"), 1);
    assert_int_equal(dsink_count(&S, subject), 1);
}

static void test_mx_delivered(void **state)
{
    (void)state;
    s_expect_sent("alice@mx.test", "Subject-mx-plain");
}

static void test_mx_preference_order(void **state)
{
    (void)state;
    /* listed first by dnsmasq or not, MX 10 (up) beats MX 20 (down) */
    s_expect_sent("bob@order.test", "Subject-mx-order");
}

static void test_mx_fallback(void **state)
{
    (void)state;
    /* The preferred host (MX 5) refuses connections: the message goes on
     * to the next MX host (MX 10) in the same attempt, not deferred. */
    char id[64];
    s_send("carol@fb.test", "Subject-mx-fallback", id);
    char *st = dl_wait_status(&E, id, "sent", 20000);
    assert_non_null(st);
    assert_string_equal(st, "sent");
    free(st);
    char *n = dl_sql(&E, "SELECT count(*) FROM message_events WHERE message_id = '%s'"
                         " AND type = 'deferred'",
                     id);
    assert_non_null(n);
    assert_string_equal(n, "0");
    free(n);
    assert_int_equal(dsink_count(&S, "Subject-mx-fallback"), 1);
}

static void test_null_mx_fails(void **state)
{
    (void)state;
    char id[64];
    s_send("dave@null.test", "Subject-mx-null", id);
    char *st = dl_wait_status(&E, id, "failed", 20000);
    assert_non_null(st);
    assert_string_equal(st, "failed");
    free(st);
    char *why = dl_sql(&E, "SELECT detail->>'reason' FROM message_events WHERE message_id = '%s'"
                           " AND type = 'failed'",
                       id);
    assert_non_null(why);
    assert_non_null(strstr(why, "takes no mail"));
    assert_non_null(strstr(why, "null MX"));
    free(why);
    assert_int_equal(dsink_count(&S, "Subject-mx-null"), 0);
}

static void test_a_fallback(void **state)
{
    (void)state;
    s_expect_sent("erin@a.test", "Subject-mx-a-record");
}

static int s_setup(void **state)
{
    (void)state;
    char *records[] = {"--mx-host=mx.test,mx.mx.test,10",
                       "--host-record=mx.mx.test,127.0.0.1",
                       "--mx-host=order.test,far.order.test,20",
                       "--mx-host=order.test,near.order.test,10",
                       "--host-record=far.order.test,127.0.0.2",
                       "--host-record=near.order.test,127.0.0.1",
                       "--mx-host=fb.test,down.fb.test,5",
                       "--mx-host=fb.test,up.fb.test,10",
                       "--host-record=down.fb.test,127.0.0.2",
                       "--host-record=up.fb.test,127.0.0.1",
                       "--mx-host=null.test,.,0",
                       "--host-record=a.test,127.0.0.1",
                       NULL};
    char *local[] = {"mx.test", "order.test", "fb.test", "null.test", "a.test", NULL};
    int dns_port = 0;
    s_dns = dns_util_start("dnsmasq-mx", records, local, &dns_port);
    if (!s_dns || dsink_init(&S) != 0 || dsink_start(&S, NULL) != 0)
        return -1;
    char resolver[64], port[16];
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", dns_port);
    snprintf(port, sizeof port, "%d", S.port);
    /* Workers inherit the environment (the harness passes it on). */
    setenv("POSTCHI_SMTP_RELAY", "", 1);
    setenv("POSTCHI_SMTP_PORT", port, 1);
    setenv("POSTCHI_DNS_RESOLVER", resolver, 1);
    return dl_env_start_api(&E);
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = dl_env_stop(&E, &S);
    if (s_dns)
        harness_stop(s_dns, 15, 5000);
    return bad;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mx_delivered),       cmocka_unit_test(test_mx_preference_order),
        cmocka_unit_test(test_mx_fallback), cmocka_unit_test(test_null_mx_fails),
        cmocka_unit_test(test_a_fallback),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
