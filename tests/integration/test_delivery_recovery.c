/*
 * test_delivery_recovery - delivery keeps its promises when the database
 * and time misbehave, not only the next hop. One API node and worker
 * relay to smtp-sink; each case names the fault:
 *
 *   recorder    the recorder's PostgreSQL connection is cut (its backend
 *               terminated, as a restart or a pooler would): the outcome
 *               of a message delivered after it is written on a new
 *               connection, not left 'sending' for its lease to run out
 *               and the message sent again
 *   fencing     the row is claimed again (its attempts move on, as after
 *               a lease ran out) while the first claim's transaction is
 *               at the sink: that transaction's outcome does not land on
 *               the new claim
 *   scheduled   a message scheduled days ahead (older than
 *               delivery_max_age_s by created_at) gets a 4xx on its first
 *               try: 'deferred', not 'failed'; an unscheduled one as old
 *               does fail
 *   overflow    a row with 2,000 attempts gets a 4xx: 'deferred' with the
 *               six-hour cap (power(2, 1999) used to fail the round)
 *   keys        the sending domain's keys cannot be read (a query error):
 *               'deferred' and tried again, not 'failed' as "not
 *               verified"; past its max age such a message fails
 *   lease       a 'sending' row whose lease ran out past its max age:
 *               'failed' by the sweeper with its event, not re-driven
 *   cut off     the sweeping worker loses the broker but not PostgreSQL:
 *               it lets its lock go, and a worker the broker reaches sweeps
 *   starvation  6,000 due rows of one big send held back by backpressure,
 *               and one due deferred row of another domain: the sweeper
 *               wakes that domain too (a query over due rows saw only the
 *               big one)
 *
 * Ages are made by backdating rows in SQL; the worker runs with
 * delivery_max_age_s = 60 and delivery_backlog = 10.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delivery_util.h"

#define FROM "\"from\":{\"email\":\"hello@send.example\"}"

static api_env_t E;
static dsink_t S;

static int s_setup(void **state)
{
    (void)state;
    setenv("POSTCHI_DELIVERY_MAX_AGE_S", "60", 1);
    setenv("POSTCHI_DELIVERY_BACKLOG", "10", 1);
    return dl_env_start(&E, &S, 0);
}

static int s_teardown(void **state)
{
    (void)state;
    return dl_env_stop(&E, &S);
}

static int s_case_done(void **state)
{
    (void)state;
    dsink_stop(&S);
    return 0;
}

/* One text message to rcpt, sent now or at send_at (NULL: now). */
static void s_send(char *id, const char *rcpt, const char *send_at)
{
    char extra[80] = "";
    if (send_at)
        snprintf(extra, sizeof extra, ",\"send_at\":\"%s\"", send_at);
    int st = dl_send(&E, id, "{" FROM ",\"to\":\"%s\",\"subject\":\"recovery\",\"text\":\"x\"%s}",
                     rcpt, extra);
    assert_int_equal(st, 202);
}

static void s_expect_status(const char *id, const char *want, int ms)
{
    char *st = dl_wait_status(&E, id, want, ms);
    assert_non_null(st);
    if (strcmp(st, want) != 0)
        fail_msg("message %s is '%s', expected '%s'", id, st, want);
    free(st);
}

static long s_events(const char *id, const char *type)
{
    return api_sql_long(&E, "SELECT count(*) FROM message_events WHERE message_id = '%s'"
                            " AND type = '%s'", id, type);
}

static void test_recorder_outlives_its_connection(void **state)
{
    (void)state;
    assert_int_equal(dsink_start(&S, NULL), 0);
    char first[64], second[64];
    s_send(first, "one@recorder.example", NULL);
    s_expect_status(first, "sent", 10000);
    /* Nothing else in flight (the case before may have left jobs): the
     * next round the recorder writes is the second message's. */
    int64_t until = harness_now_ms() + 15000;
    while (harness_now_ms() < until &&
           api_sql_long(&E, "SELECT count(*) FROM messages WHERE status = 'sending'") > 0)
        usleep(100 * 1000);
    usleep(200 * 1000);
    /* The recorder's backend, known by the last statement it ran. */
    long cut = api_sql_long(&E, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                " WHERE datname = current_database()"
                                " AND query LIKE 'WITH o AS (SELECT * FROM jsonb_to_recordset%%'");
    assert_int_equal(cut, 1);
    s_send(second, "two@recorder.example", NULL);
    /* Its lease is 600 s: 'sent' now can only come from a retried round. */
    s_expect_status(second, "sent", 15000);
    /* And no outcome of any round was dropped: nothing stays 'sending'. */
    until = harness_now_ms() + 10000;
    while (harness_now_ms() < until &&
           api_sql_long(&E, "SELECT count(*) FROM messages WHERE status = 'sending'") > 0)
        usleep(100 * 1000);
    assert_int_equal(api_sql_long(&E, "SELECT count(*) FROM messages WHERE status = 'sending'"),
                     0);
    assert_int_equal(s_events(second, "sent"), 1);
    assert_int_equal(dsink_count(&S, "two@recorder.example"), 1);
}

static void test_stale_outcome_does_not_land_on_a_new_claim(void **state)
{
    (void)state;
    const char *opts[] = {"-w", "3", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char id[64];
    s_send(id, "fenced@fencing.example", NULL);
    s_expect_status(id, "sending", 5000);
    /* Claimed again meanwhile, as after a lease that ran out. */
    free(dl_sql(&E, "UPDATE messages SET attempts = attempts + 1 WHERE id = '%s'", id));
    /* The first claim's 250 arrives after about 3 s. */
    int64_t until = harness_now_ms() + 6000;
    while (harness_now_ms() < until && dsink_count(&S, "fenced@fencing.example") == 0)
        usleep(100 * 1000);
    assert_int_equal(dsink_count(&S, "fenced@fencing.example"), 1);
    sleep(1);
    char *st = dl_status(&E, id);
    assert_string_equal(st, "sending"); /* the new claim's, untouched */
    free(st);
    assert_int_equal(s_events(id, "sent"), 0);
}

static void test_scheduled_message_keeps_its_retries(void **state)
{
    (void)state;
    const char *opts[] = {"-r", "RCPT", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char later[64], old[64];
    s_send(later, "later@scheduled.example", "2099-01-01T00:00:00Z");
    s_send(old, "old@scheduled.example", "2099-01-01T00:00:00Z");
    /* Accepted four days ago, scheduled for now: due for no time at all.
     * The other, accepted and due four days ago, is simply old. */
    free(dl_sql(&E, "UPDATE messages SET created_at = now() - interval '4 days',"
                    " send_at = now(), next_attempt_at = now() WHERE id = '%s'", later));
    free(dl_sql(&E, "UPDATE messages SET created_at = now() - interval '4 days',"
                    " send_at = now() - interval '4 days', next_attempt_at = now()"
                    " WHERE id = '%s'", old));
    s_expect_status(later, "deferred", 15000);
    s_expect_status(old, "failed", 15000);
    assert_int_equal(s_events(later, "deferred"), 1);
}

static void test_many_attempts_do_not_overflow_the_back_off(void **state)
{
    (void)state;
    const char *opts[] = {"-r", "RCPT", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char id[64];
    s_send(id, "often@overflow.example", "2099-01-01T00:00:00Z");
    free(dl_sql(&E, "UPDATE messages SET attempts = 2000, send_at = now(),"
                    " next_attempt_at = now() WHERE id = '%s'", id));
    s_expect_status(id, "deferred", 15000);
    /* Six hours with the jitter's 25 % either way: 4.5 h to 7.5 h. */
    long secs = api_sql_long(&E, "SELECT extract(epoch FROM next_attempt_at - now())::int"
                                 " FROM messages WHERE id = '%s'", id);
    assert_true(secs >= 16200 - 5 && secs <= 27000 + 5);
}

static void test_unreadable_keys_defer_then_fail_with_age(void **state)
{
    (void)state;
    assert_int_equal(dsink_start(&S, NULL), 0);
    char id[64];
    s_send(id, "keys@keys.example", "2099-01-01T00:00:00Z");
    /* The mailer's key query now fails (no such column), as a timeout or
     * a broken connection would; the API is done with this send. */
    free(dl_sql(&E, "ALTER TABLE domains RENAME COLUMN signing TO signing_away"));
    free(dl_sql(&E, "UPDATE messages SET send_at = now(), next_attempt_at = now()"
                    " WHERE id = '%s'", id));
    char *first = dl_wait_status(&E, id, "deferred", 15000);
    char *why = dl_sql(&E, "SELECT last_response FROM messages WHERE id = '%s'", id);
    /* Due again, and now past its max age: it fails. */
    free(dl_sql(&E, "UPDATE messages SET created_at = now() - interval '4 days',"
                    " send_at = now() - interval '4 days', next_attempt_at = now()"
                    " WHERE id = '%s' AND status = 'deferred'", id));
    char *second = dl_wait_status(&E, id, "failed", 15000);
    /* Put the column back before any assertion can end the case. */
    free(dl_sql(&E, "ALTER TABLE domains RENAME COLUMN signing_away TO signing"));
    assert_string_equal(first, "deferred");
    assert_non_null(strstr(why, "could not be read"));
    assert_string_equal(second, "failed");
    free(first);
    free(why);
    free(second);
    assert_int_equal(s_events(id, "deferred"), 1);
    assert_int_equal(s_events(id, "failed"), 1);
    assert_int_equal(dsink_count(&S, "keys@keys.example"), 0);
}

static void test_lease_expired_past_max_age_fails(void **state)
{
    (void)state;
    char id[64];
    s_send(id, "leased@lease.example", "2099-01-01T00:00:00Z");
    /* As a worker that died on it four days into its life would leave it. */
    free(dl_sql(&E, "UPDATE messages SET status = 'sending', attempts = 3,"
                    " lease_until = now() - interval '1 second',"
                    " created_at = now() - interval '4 days', send_at = NULL WHERE id = '%s'",
                id));
    s_expect_status(id, "failed", 10000);
    assert_int_equal(s_events(id, "failed"), 1);
}

static void test_big_send_does_not_hide_other_due_domains(void **state)
{
    (void)state;
    /* DATA answered after 60 s: nothing finishes during the case, so the
     * big send's rows stay due behind the backlog bound of 10. */
    const char *opts[] = {"-w", "60", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char *list = dl_sql(&E,
                        "WITH c AS (INSERT INTO contacts (organization_id, email)"
                        " SELECT '%s', 'c' || i || '@a-big.example' FROM generate_series(1, 6000) i"
                        " RETURNING id),"
                        " l AS (INSERT INTO lists (organization_id, name) VALUES ('%s', 'big')"
                        " RETURNING id),"
                        " m AS (INSERT INTO list_members (organization_id, list_id, contact_id)"
                        " SELECT '%s', l.id, c.id FROM l, c RETURNING list_id)"
                        " SELECT DISTINCT list_id FROM m",
                        E.org_id, E.org_id, E.org_id);
    assert_non_null(list);
    api_resp_t r = {0};
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{" FROM ",\"to_list\":\"%s\",\"subject\":\"big\",\"text\":\"x\"}", list);
    assert_int_equal(r.status, 202);
    api_resp_free(&r);
    free(list);
    int64_t until = harness_now_ms() + 20000;
    while (harness_now_ms() < until &&
           api_sql_long(&E, "SELECT count(*) FROM messages WHERE recipient_domain ="
                            " 'a-big.example' AND status = 'queued'"
                            " AND next_attempt_at <= now() - interval '3 seconds'") < 5500)
        usleep(200 * 1000);
    /* A retry of another domain, due a minute ago, that nothing but the
     * sweeper will announce; written after the big send, so behind its
     * rows in the table as in the index. */
    char other[64];
    s_send(other, "retry@zz-other.example", "2099-01-01T00:00:00Z");
    free(dl_sql(&E, "UPDATE messages SET status = 'deferred', send_at = NULL,"
                    " next_attempt_at = now() - interval '1 minute' WHERE id = '%s'", other));
    s_expect_status(other, "sending", 10000);
    /* The big send is not the next cases' business. */
    free(dl_sql(&E, "UPDATE messages SET status = 'failed', next_attempt_at = now()"
                    " WHERE recipient_domain = 'a-big.example' AND status IN ('queued', 'deferred')"));
}

/* The sweeping worker is cut off from the broker (here: its broker dies
 * and a new one comes up elsewhere, where a second worker joins) while its
 * PostgreSQL session lives on, lock and all. It lets the lock go after
 * 10 s, and the reachable worker sweeps: a scheduled message comes due and
 * leaves 'scheduled'. Before, the cut-off worker kept the lock and nothing
 * was promoted, re-driven or retried anywhere. Last: it rebuilds the mesh. */
static void test_cut_off_sweeper_lets_another_lead(void **state)
{
    (void)state;
    char id[64];
    s_send(id, "due@cutoff.example", "2099-01-01T00:00:00Z");
    harness_kill9(E.mesh.broker);
    E.mesh.broker = NULL;
    /* A new broker on another port; worker 0 keeps calling the old one. */
    E.mesh.broker_port = harness_free_port();
    snprintf(E.mesh.endpoint, sizeof E.mesh.endpoint, "tcp://127.0.0.1:%d", E.mesh.broker_port);
    assert_int_equal(mesh_start_broker(&E.mesh), 0);
    assert_int_equal(mesh_start_worker(&E.mesh, 1), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, 1, 10000), 0);
    free(dl_sql(&E, "UPDATE messages SET send_at = now(), next_attempt_at = now()"
                    " WHERE id = '%s'", id));
    int64_t until = harness_now_ms() + 25000;
    char *st = NULL;
    for (;;) {
        free(st);
        st = dl_status(&E, id);
        if (!st || strcmp(st, "scheduled") != 0 || harness_now_ms() > until)
            break;
        usleep(250 * 1000);
    }
    assert_non_null(st);
    if (strcmp(st, "scheduled") == 0)
        fail_msg("still scheduled 25 s later: nobody sweeps");
    free(st);
}

int main(void)
{
    /* The big send first: on a table with no free space left by earlier
     * cases, its rows come before the other domain's in the heap as in the
     * index, whichever way a query over due rows would read them. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_big_send_does_not_hide_other_due_domains, s_case_done),
        cmocka_unit_test_teardown(test_recorder_outlives_its_connection, s_case_done),
        cmocka_unit_test_teardown(test_stale_outcome_does_not_land_on_a_new_claim, s_case_done),
        cmocka_unit_test_teardown(test_scheduled_message_keeps_its_retries, s_case_done),
        cmocka_unit_test_teardown(test_many_attempts_do_not_overflow_the_back_off, s_case_done),
        cmocka_unit_test_teardown(test_unreadable_keys_defer_then_fail_with_age, s_case_done),
        cmocka_unit_test(test_lease_expired_past_max_age_fails),
        cmocka_unit_test(test_cut_off_sweeper_lets_another_lead),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
