/*
 * test_shaping_mx - per-provider shaping keyed by MX (shaping_overrides),
 * end to end with direct delivery: a real DNS server (dnsmasq) answers the
 * recipient domains' MX lookups, and every MX host is 127.0.0.1 at
 * smtp_port, where the test's ESMTP server listens. That server is the
 * fake of smtp_fake_util (see there why): smtp-sink cannot say how many
 * connections were open at once or how many messages each carried, which
 * is what these limits are about.
 *
 *   one.conn.test  MX mx.conn.test; "conn.test=1000/1000/1/2/50": one
 *                  connection at a time, two messages each, so six
 *                  messages make exactly three connections, never two
 *                  open together (the defaults, 4 and 1,000, would open
 *                  several at once and carry more on each).
 *   one.slow.test  MX mx.slow.test; "slow.test=1000/1000/1/1/2": one
 *                  message per connection and 2 new connections a second,
 *                  so four messages span at least 1.5 s (asserted 1.2 s;
 *                  the default rate, 20 a second, takes about 0.15 s).
 *   a.rollup.test  MX mx1.provider.test and b.rollup.test MX
 *   b.rollup.test  mx2.provider.test; "provider.test=4/1": two domains,
 *                  two MX hosts, one provider, so one budget: eight
 *                  messages at 4 a second span at least 1.75 s (asserted
 *                  1.4 s; a budget per domain would take about 0.75 s).
 *   free.test      no override: eight messages go out at once (< 1 s);
 *                  and its connections, kept open after a send, are
 *                  closed with QUIT after delivery_idle_s (2 s here).
 * A malformed shaping_overrides item stops a worker at start with a message
 * naming the item (test_shape_override checks every kind of malformed
 * item).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delivery_util.h"
#include "dns_util.h"
#include "smtp_fake_util.h"

static api_env_t E;
static dsink_t S; /* unused (no relay): dl_env_stop's cleanup takes it */
static smtp_fake_t F;
static harness_proc_t *s_dns;

/* POST one message to n recipients r<i>@<domains[i % nd]>, subject given;
 * wait until all are sent; the seconds between the first and the last
 * 'sent' event. */
static double s_send_all(int n, const char *const *domains, int nd, const char *subject)
{
    char body[4096];
    int off = snprintf(body, sizeof body, "{\"from\":{\"email\":\"news@send.example\"},\"to\":[");
    for (int i = 0; i < n; i++)
        off += snprintf(body + off, sizeof body - (size_t)off, "%s\"r%d@%s\"", i ? "," : "", i,
                        domains[i % nd]);
    snprintf(body + off, sizeof body - (size_t)off,
             "],\"subject\":\"%s\",\"text\":\"shaped by MX\"}", subject);
    char id[64];
    assert_int_equal(dl_send(&E, id, "%s", body), 202);
    char *st = NULL;
    for (int tries = 0; tries < 300; tries++) {
        free(st);
        st = dl_sql(&E, "SELECT count(*) FILTER (WHERE status = 'sent') || '/' || count(*)"
                        " FROM messages WHERE subject = '%s'",
                    subject);
        char want[32];
        snprintf(want, sizeof want, "%d/%d", n, n);
        if (st && strcmp(st, want) == 0)
            break;
        usleep(100 * 1000);
    }
    char want[32];
    snprintf(want, sizeof want, "%d/%d", n, n);
    if (!st || strcmp(st, want) != 0)
        fail_msg("'%s': %s sent, want %s", subject, st ? st : "?", want);
    free(st);
    char *v = dl_sql(&E, "SELECT extract(epoch FROM max(e.created_at) - min(e.created_at))::text"
                         " FROM message_events e JOIN messages m ON m.id = e.message_id"
                         " WHERE e.type = 'sent' AND m.subject = '%s'",
                     subject);
    assert_non_null(v);
    double span = atof(v);
    free(v);
    return span;
}

static void test_provider_connection_limits(void **state)
{
    (void)state;
    const char *d[] = {"one.conn.test"};
    int before = smtp_fake_get(&F, &F.nconns);
    s_send_all(6, d, 1, "Subject-conn-limits");
    assert_int_equal(smtp_fake_get(&F, &F.nconns) - before, 3);
    assert_int_equal(smtp_fake_get(&F, &F.max_active), 1);
    assert_int_equal(smtp_fake_get(&F, &F.max_per_conn), 2);
    assert_int_equal(smtp_fake_get(&F, &F.messages), 6);
}

static void test_provider_connection_rate(void **state)
{
    (void)state;
    const char *d[] = {"one.slow.test"};
    int before = smtp_fake_get(&F, &F.nconns);
    double span = s_send_all(4, d, 1, "Subject-conn-rate");
    assert_int_equal(smtp_fake_get(&F, &F.nconns) - before, 4); /* one message each */
    if (span < 1.2)
        fail_msg("4 connections at 2 a second took %.2f s, want >= 1.2", span);
}

static void test_rollup_shares_one_budget(void **state)
{
    (void)state;
    const char *rolled[] = {"a.rollup.test", "b.rollup.test"};
    double span = s_send_all(8, rolled, 2, "Subject-rollup");
    if (span < 1.4)
        fail_msg("8 messages to two domains of one provider at 4/s took %.2f s, want >= 1.4",
                 span);
    /* The same count with no override: the default budget lets them go. */
    const char *free_[] = {"free.test"};
    span = s_send_all(8, free_, 1, "Subject-free");
    if (span >= 1.0)
        fail_msg("8 messages under the default budget took %.2f s, want < 1", span);
}

/* Connections with nothing left to send are kept for the next message
 * (they are open right after the send) and closed with QUIT after
 * delivery_idle_s (2 s here), so nothing stays open towards a destination
 * once its mail is out. */
static void test_idle_connections_close(void **state)
{
    (void)state;
    const char *d[] = {"free.test"};
    s_send_all(2, d, 1, "Subject-idle");
    assert_true(smtp_fake_get(&F, &F.active) >= 1);
    int64_t sent = harness_now_ms();
    while (smtp_fake_get(&F, &F.active) > 0 && harness_now_ms() - sent < 6000)
        usleep(50 * 1000);
    assert_int_equal(smtp_fake_get(&F, &F.active), 0);
    printf("idle connections closed %.1f s after the last message\n",
           (double)(harness_now_ms() - sent) / 1000.0);
}

/* A malformed item stops a worker at start, naming the item. */
static void test_bad_override_stops_the_worker(void **state)
{
    (void)state;
    const char *good = getenv("POSTCHI_SHAPING_OVERRIDES");
    char saved[256];
    snprintf(saved, sizeof saved, "%s", good ? good : "");
    setenv("POSTCHI_SHAPING_OVERRIDES", "good.test=1/1, google.com=100", 1);
    assert_int_not_equal(mesh_start_worker(&E.mesh, 1), 0); /* never healthy */
    setenv("POSTCHI_SHAPING_OVERRIDES", saved, 1);
    char path[512];
    snprintf(path, sizeof path, "%s", harness_log_path(E.mesh.workers[1]));
    int st = harness_stop(E.mesh.workers[1], SIGTERM, 10000);
    E.mesh.workers[1] = NULL;
    assert_true(st != 0 && st < 128); /* it exited on its own, with an error */
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char log[8192];
    size_t n = fread(log, 1, sizeof log - 1, f);
    fclose(f);
    log[n] = 0;
    if (!strstr(log, "shaping_overrides") || !strstr(log, "'google.com=100'"))
        fail_msg("the worker's log does not name the bad item:\n%s", log);
}

static int s_setup(void **state)
{
    (void)state;
    char *records[] = {"--mx-host=one.conn.test,mx.conn.test,10",
                       "--host-record=mx.conn.test,127.0.0.1",
                       "--mx-host=one.slow.test,mx.slow.test,10",
                       "--host-record=mx.slow.test,127.0.0.1",
                       "--mx-host=a.rollup.test,mx1.provider.test,10",
                       "--mx-host=b.rollup.test,mx2.provider.test,10",
                       "--host-record=mx1.provider.test,127.0.0.1",
                       "--host-record=mx2.provider.test,127.0.0.1",
                       "--mx-host=free.test,mx.free.test,10",
                       "--host-record=mx.free.test,127.0.0.1",
                       NULL};
    char *local[] = {"one.conn.test", "conn.test",     "one.slow.test", "slow.test",
                     "a.rollup.test", "b.rollup.test", "provider.test", "free.test",
                     NULL};
    int dns_port = 0;
    s_dns = dns_util_start("dnsmasq-shaping", records, local, &dns_port);
    if (!s_dns || smtp_fake_start(&F) != 0)
        return -1;
    char resolver[64], port[16];
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", dns_port);
    snprintf(port, sizeof port, "%d", F.port);
    /* Workers inherit the environment (the harness passes it on). */
    setenv("POSTCHI_SMTP_RELAY", "", 1);
    setenv("POSTCHI_SMTP_PORT", port, 1);
    setenv("POSTCHI_DNS_RESOLVER", resolver, 1);
    setenv("POSTCHI_DELIVERY_IDLE_S", "2", 1);
    setenv("POSTCHI_SHAPING_OVERRIDES",
           "provider.test=4/1, conn.test=1000/1000/1/2/50, slow.test=1000/1000/1/1/2", 1);
    return dl_env_start_api(&E);
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = dl_env_stop(&E, &S);
    smtp_fake_stop(&F);
    if (s_dns)
        harness_stop(s_dns, 15, 5000);
    return bad;
}

int main(void)
{
    /* The connection tests first: connections another test leaves idle
     * would count as open at once. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider_connection_limits),
        cmocka_unit_test(test_provider_connection_rate),
        cmocka_unit_test(test_rollup_shares_one_budget),
        cmocka_unit_test(test_idle_connections_close),
        cmocka_unit_test(test_bad_override_stops_the_worker),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
