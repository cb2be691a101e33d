/*
 * test_triggers - the trigger outbox end to end below the API: a real
 * broker and workers on a freshly migrated database, events rows written by
 * SQL (as an API handler would), triggers sent through a mesh client.
 *
 * Covers: a trigger marks its row dispatched and "stats" reports it
 * (single and bulk bodies, a duplicate marks nothing); a row whose message
 * was never sent is dispatched by the sweeper; a body naming another
 * organization's event marks nothing; malformed bodies and names get an
 * error reply and the worker carries on; with two workers one holds the
 * sweeper lock, every row is marked exactly once, and the survivor takes
 * the sweeping over when the leader is killed.
 *
 * Rows that must stay unmarked are created with created_at in the future,
 * so the sweeper (which only re-sends rows older than 3 s) never sees them
 * and the assertion cannot race it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "db.h"
#include "envelope.h"
#include "mesh_util.h"

typedef struct {
    mesh_t m;         /* broker and workers */
    char dbname[64];  /* this test's migrated database */
    db_t *db;         /* the test's own connection to it */
    mesh_client_t *c; /* client to send triggers with */
} fixture_t;

/* conninfo for the fixture's cluster and database name; static storage. */
static const char *s_conninfo(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "host=%s port=%s user=%s dbname=%s", harness_server("PG_HOST"),
             harness_server("PG_PORT"), harness_server("PG_USER"), name);
    return buf;
}

/* Start worker i against the test's database (mesh_start_worker would point
 * it at the fixture's default database). */
static int s_start_worker(fixture_t *f, int i)
{
    mesh_t *m = &f->m;
    char *env[24];
    static char buf[4][128];
    int n = 0;
    char *const *stores = harness_server_env(f->dbname);
    for (int k = 0; stores[k] && n < 16; k++)
        env[n++] = stores[k];
    snprintf(buf[0], sizeof buf[0], "POSTCHI_BROKER_ENDPOINT=%s", m->endpoint);
    snprintf(buf[1], sizeof buf[1], "POSTCHI_METRICS_PORT=%d", m->worker_metrics[i]);
    snprintf(buf[2], sizeof buf[2], "POSTCHI_NODE_ID=%s", m->worker_id[i]);
    snprintf(buf[3], sizeof buf[3], "POSTCHI_HEARTBEAT_INTERVAL_MS=%s", m->heartbeat_ms);
    for (int k = 0; k < 4; k++)
        env[n++] = buf[k];
    env[n] = NULL;
    m->workers[i] = harness_spawn_postchi(m->worker_id[i], "worker", env);
    if (!m->workers[i])
        return -1;
    if (i + 1 > m->nworkers)
        m->nworkers = i + 1;
    return harness_wait_http(m->worker_metrics[i], "/healthz", 10000);
}

/* A fresh database migrated by `postchi migrate`, a broker, nworkers
 * workers on it, and a client. */
static void s_setup(fixture_t *f, int nworkers)
{
    memset(f, 0, sizeof *f);
    assert_int_equal(harness_create_database(f->dbname, sizeof f->dbname), 0);
    harness_proc_t *mig =
        harness_spawn_postchi("migrate", "migrate", harness_server_env(f->dbname));
    assert_non_null(mig);
    int64_t deadline = harness_now_ms() + 30000;
    while (harness_alive(mig) && harness_now_ms() < deadline)
        usleep(50 * 1000);
    assert_int_equal(harness_stop(mig, SIGTERM, 1000), 0);

    sbuf_t *err = sbuf_new(64);
    f->db = db_connect(s_conninfo(f->dbname), 5000, err);
    if (!f->db)
        fail_msg("db_connect: %s", sbuf_data(err));
    sbuf_destroy(&err);

    mesh_init(&f->m, 250);
    assert_int_equal(mesh_start_broker(&f->m), 0);
    for (int i = 0; i < nworkers; i++)
        assert_int_equal(s_start_worker(f, i), 0);
    assert_int_equal(mesh_wait_live(&f->m, nworkers, 10000), 0);
    f->c = mesh_client(&f->m);
    assert_non_null(f->c);
}

static void s_teardown(fixture_t *f)
{
    mesh_client_destroy(&f->c);
    db_destroy(&f->db);
    assert_int_equal(mesh_stop_all(&f->m), 0); /* clean exit: no crash, no leak */
}

/* The single text value of a one-row, one-column query with parameters,
 * copied into out (size >= 64); returns out, or NULL for SQL NULL. */
static char *s_scalar(fixture_t *f, char *out, size_t size, const char *sql, int n,
                      const char *const *params)
{
    sbuf_t *err = sbuf_new(64);
    db_result_t *res = db_query(f->db, sql, n, params, err);
    if (!res)
        fail_msg("%s: %s", sql, sbuf_data(err));
    assert_int_equal(db_result_rows(res), 1);
    const char *v = db_result_get(res, 0, 0);
    if (v)
        snprintf(out, size, "%s", v);
    db_result_free(&res);
    sbuf_destroy(&err);
    return v ? out : NULL;
}

static void s_new_org(fixture_t *f, char *org, size_t size)
{
    assert_non_null(s_scalar(
        f, org, size, "INSERT INTO organizations (name) VALUES ('t') RETURNING id", 0, NULL));
}

/* A new events row; age "past" (eligible for the sweeper now), "now", or
 * "future" (never seen by the sweeper). Returns its id. */
static long s_new_event(fixture_t *f, const char *org, const char *name, const char *age)
{
    const char *when = strcmp(age, "past") == 0     ? "-10 seconds"
                       : strcmp(age, "future") == 0 ? "1 hour"
                                                    : "0 seconds";
    const char *params[] = {org, name, when};
    char id[64];
    assert_non_null(s_scalar(f, id, sizeof id,
                             "INSERT INTO events (organization_id, name, created_at)"
                             " VALUES ($1, $2, now() + $3::interval) RETURNING id",
                             3, params));
    return strtol(id, NULL, 10);
}

/* 1 when the row has dispatched_at set. */
static int s_dispatched(fixture_t *f, long id)
{
    char idtext[32], out[64];
    snprintf(idtext, sizeof idtext, "%ld", id);
    const char *params[] = {idtext};
    return s_scalar(f, out, sizeof out, "SELECT dispatched_at FROM events WHERE id = $1::bigint", 1,
                    params) != NULL;
}

/* Poll until the row is dispatched or timeout_ms passes; 1 or 0. */
static int s_wait_dispatched(fixture_t *f, long id, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < deadline) {
        if (s_dispatched(f, id))
            return 1;
        usleep(20 * 1000);
    }
    return s_dispatched(f, id);
}

static void s_target(char *out, size_t size, const char *org)
{
    snprintf(out, size, "tenant/%s", org);
}

/* Request name/body from tenant/<org>; the parsed JSON reply (caller
 * decrefs). Fails the test on an error reply. */
static json_t *s_call(fixture_t *f, const char *org, const char *name, const char *body)
{
    char target[128];
    s_target(target, sizeof target, org);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    int rc = mesh_client_call(f->c, target, name, body, body ? strlen(body) : 0, 5000, reply, err);
    if (rc != 0)
        fail_msg("%s %s: rc=%d %s", target, name, rc, sbuf_data(err));
    json_error_t jerr;
    json_t *j = json_loadb(sbuf_data(reply), sbuf_len(reply), 0, &jerr);
    if (!json_is_object(j))
        fail_msg("reply is not a JSON object: %.*s", (int)sbuf_len(reply), sbuf_data(reply));
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    return j;
}

/* The request must be refused with an ERROR reply carrying code. */
static void s_call_fails(fixture_t *f, const char *target, const char *name, const void *body,
                         size_t len, const char *code)
{
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    int rc = mesh_client_call(f->c, target, name, body, len, 5000, reply, err);
    if (rc != -1)
        fail_msg("%s %s with body %.*s: expected an error, got rc=%d reply=%s", target, name,
                 (int)len, (const char *)body, rc, sbuf_data(reply));
    if (!strstr(sbuf_data(err), code))
        fail_msg("expected %s, got %s", code, sbuf_data(err));
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
}

static long s_int(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v))
        fail_msg("field %s is not an integer", key);
    return (long)json_integer_value(v);
}

static long s_received(const json_t *stats, const char *name)
{
    return s_int(json_object_get(stats, "received"), name);
}

static void s_send(fixture_t *f, const char *org, const char *name, const char *body)
{
    char target[128];
    s_target(target, sizeof target, org);
    assert_int_equal(mesh_client_send(f->c, target, name, body, strlen(body)), 0);
}

/* ------------------------------------------------------------------ (a) */

static void test_trigger_marks_row_and_stats_report_it(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, 1);
    char org[64], body[128];
    s_new_org(&f, org, sizeof org);

    /* Fresh activation: all counters zero, no event seen. */
    json_t *st = s_call(&f, org, "stats", NULL);
    assert_int_equal(s_received(st, "list_added"), 0);
    assert_true(json_is_null(json_object_get(st, "last_event_id")));
    assert_int_equal(s_int(st, "dispatched_total"), 0);
    json_decref(st);

    long id = s_new_event(&f, org, "list_added", "now");
    snprintf(body, sizeof body, "{\"event_id\": %ld, \"list_id\": \"x\"}", id);
    int64_t t0 = harness_now_ms();
    s_send(&f, org, "list_added", body);
    assert_true(s_wait_dispatched(&f, id, 2000));
    fprintf(stderr, "trigger dispatched its row in %lld ms\n", (long long)(harness_now_ms() - t0));

    st = s_call(&f, org, "stats", NULL);
    assert_int_equal(s_received(st, "list_added"), 1);
    assert_int_equal(s_received(st, "tag_added"), 0);
    assert_int_equal(s_received(st, "subscribed"), 0);
    assert_int_equal(s_received(st, "event"), 0);
    assert_int_equal(s_int(st, "last_event_id"), id);
    assert_int_equal(s_int(st, "dispatched_total"), 1);
    json_decref(st);

    /* A second delivery of the same trigger marks nothing. */
    json_t *r = s_call(&f, org, "list_added", body);
    assert_int_equal(s_int(r, "dispatched"), 0);
    json_decref(r);

    /* Bulk: a range with count; rows of the range are all marked. */
    long a = s_new_event(&f, org, "tag_added", "now");
    s_new_event(&f, org, "tag_added", "now");
    long b = s_new_event(&f, org, "tag_added", "now");
    snprintf(body, sizeof body, "{\"first_event_id\": %ld, \"last_event_id\": %ld, \"count\": 3}",
             a, b);
    r = s_call(&f, org, "tag_added", body);
    assert_int_equal(s_int(r, "dispatched"), 3);
    json_decref(r);
    for (long i = a; i <= b; i++)
        assert_true(s_dispatched(&f, i));

    st = s_call(&f, org, "stats", NULL);
    assert_int_equal(s_received(st, "list_added"), 2);
    assert_int_equal(s_received(st, "tag_added"), 1);
    assert_int_equal(s_int(st, "last_event_id"), b);
    assert_int_equal(s_int(st, "dispatched_total"), 4);
    json_decref(st);

    /* The actor did it all: the sweeper had nothing to re-send. */
    assert_true(mesh_metric(f.m.worker_metrics[0], "postchi_worker_outbox_redriven_total") == 0);
    assert_true(mesh_metric(f.m.worker_metrics[0],
                            "postchi_worker_messages_handled_total{kind=\"tenant\"}") >= 6);
    s_teardown(&f);
}

/* ------------------------------------------------------------------ (b) */

static void test_sweeper_dispatches_row_whose_message_was_lost(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, 1);
    char org[64];
    s_new_org(&f, org, sizeof org);
    /* Committed, but its trigger was never sent (crash after commit). */
    long id = s_new_event(&f, org, "subscribed", "now");
    int64_t t0 = harness_now_ms();
    assert_true(s_wait_dispatched(&f, id, 10000));
    fprintf(stderr, "sweeper dispatched the row in %lld ms\n", (long long)(harness_now_ms() - t0));
    assert_true(mesh_metric(f.m.worker_metrics[0], "postchi_worker_outbox_redriven_total") >= 1);

    json_t *st = s_call(&f, org, "stats", NULL);
    assert_int_equal(s_received(st, "subscribed"), 1);
    assert_int_equal(s_int(st, "last_event_id"), id);
    assert_int_equal(s_int(st, "dispatched_total"), 1);
    json_decref(st);

    /* Nothing left: the next sweep reports an empty backlog. */
    int64_t deadline = harness_now_ms() + 6000;
    while (harness_now_ms() < deadline &&
           mesh_metric(f.m.worker_metrics[0], "postchi_worker_outbox_pending") != 0)
        usleep(100 * 1000);
    assert_true(mesh_metric(f.m.worker_metrics[0], "postchi_worker_outbox_pending") == 0);
    s_teardown(&f);
}

/* ------------------------------------------------------------------ (c) */

static void test_other_organizations_event_is_not_marked(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, 1);
    char org_a[64], org_b[64], body[128];
    s_new_org(&f, org_a, sizeof org_a);
    s_new_org(&f, org_b, sizeof org_b);
    long eb = s_new_event(&f, org_b, "event", "future");

    /* B's event named in a trigger to A: single and as a range. */
    snprintf(body, sizeof body, "{\"event_id\": %ld}", eb);
    json_t *r = s_call(&f, org_a, "event", body);
    assert_int_equal(s_int(r, "dispatched"), 0);
    json_decref(r);
    snprintf(body, sizeof body, "{\"first_event_id\": 1, \"last_event_id\": %ld, \"count\": 1}",
             eb + 10);
    r = s_call(&f, org_a, "event", body);
    assert_int_equal(s_int(r, "dispatched"), 0);
    json_decref(r);
    assert_false(s_dispatched(&f, eb));
    json_t *st = s_call(&f, org_a, "stats", NULL);
    assert_int_equal(s_int(st, "dispatched_total"), 0);
    assert_true(json_is_null(json_object_get(st, "last_event_id")));
    json_decref(st);

    /* B's own actor marks it. */
    snprintf(body, sizeof body, "{\"event_id\": %ld}", eb);
    r = s_call(&f, org_b, "event", body);
    assert_int_equal(s_int(r, "dispatched"), 1);
    json_decref(r);
    assert_true(s_dispatched(&f, eb));

    /* A key that is not an organization id never reaches SQL. */
    s_call_fails(&f, "tenant/not-a-uuid", "event", body, strlen(body), "activation_failed");
    s_call_fails(&f, "tenant/x' OR '1'='1", "event", body, strlen(body), "activation_failed");
    s_teardown(&f);
}

/* ------------------------------------------------------------------ (d) */

static void test_malformed_triggers_get_errors_and_worker_survives(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, 1);
    char org[64], target[128], id[32], next[32];
    s_new_org(&f, org, sizeof org);
    s_target(target, sizeof target, org);
    long e = s_new_event(&f, org, "list_added", "future");
    snprintf(id, sizeof id, "%ld", e);
    snprintf(next, sizeof next, "%ld", e + 1);

    static const char *const bodies[] = {
        "",
        "not json",
        "[]",
        "42",
        "null",
        "{}",
        "{\"event_id\": \"@\"}",
        "{\"event_id\": 0}",
        "{\"event_id\": -@}",
        "{\"event_id\": @.5}",
        "{\"event_id\": true}",
        "{\"event_id\": null}",
        "{\"event_id\": 99999999999999999999999999}",
        "{\"event_id\": @, \"event_id\": @}",
        "{\"event_id\": @, \"first_event_id\": @, \"last_event_id\": @, \"count\": 1}",
        "{\"first_event_id\": #, \"last_event_id\": @, \"count\": 1}",
        "{\"first_event_id\": @, \"last_event_id\": @, \"count\": 2}",
        "{\"first_event_id\": @, \"last_event_id\": @}",
        "{\"first_event_id\": @, \"last_event_id\": @, \"count\": 0}",
        "{\"event_id\": @",
        "{\"event_id\": @}",
    };
    sbuf_t *b = sbuf_new(64);
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        sbuf_reset(b);
        for (const char *p = bodies[i]; *p; p++)
            if (*p == '@') /* the event's id */
                sbuf_append_str(b, id);
            else if (*p == '#') /* the id after it */
                sbuf_append_str(b, next);
            else
                sbuf_append(b, p, 1);
        if (i == sizeof bodies / sizeof bodies[0] - 1) /* a NUL, then more bytes */
            sbuf_append(b, "\0 trailing", 1 + strlen(" trailing"));
        s_call_fails(&f, target, "list_added", sbuf_data(b), sbuf_len(b), "handler_failed");
    }
    /* Binary garbage, and a deeply nested body. */
    unsigned char garbage[256];
    for (int i = 0; i < 256; i++)
        garbage[i] = (unsigned char)(i * 37 + 11);
    s_call_fails(&f, target, "tag_added", garbage, sizeof garbage, "handler_failed");
    sbuf_reset(b);
    for (int i = 0; i < 100000; i++)
        sbuf_append(b, "[", 1);
    s_call_fails(&f, target, "tag_added", sbuf_data(b), sbuf_len(b), "handler_failed");
    /* A valid body under a name that is not a trigger. */
    sbuf_reset(b);
    sbuf_appendf(b, "{\"event_id\": %s}", id);
    s_call_fails(&f, target, "bogus", sbuf_data(b), sbuf_len(b), "handler_failed");
    s_call_fails(&f, target, "", sbuf_data(b), sbuf_len(b), "handler_failed");
    s_call_fails(&f, target, "list_added\x01", sbuf_data(b), sbuf_len(b), "handler_failed");
    /* One-way malformed messages get no answer and break nothing either. */
    assert_int_equal(mesh_client_send(f.c, target, "event", "{", 1), 0);

    /* Nothing was marked or counted, and the actor still works. */
    assert_false(s_dispatched(&f, e));
    json_t *st = s_call(&f, org, "stats", NULL);
    assert_int_equal(s_received(st, "list_added"), 0);
    assert_int_equal(s_received(st, "tag_added"), 0);
    assert_int_equal(s_received(st, "event"), 0);
    assert_int_equal(s_int(st, "dispatched_total"), 0);
    json_decref(st);
    json_t *r = s_call(&f, org, "list_added", sbuf_data(b));
    assert_int_equal(s_int(r, "dispatched"), 1);
    json_decref(r);
    assert_true(s_dispatched(&f, e));
    assert_true(harness_alive(f.m.workers[0]));
    sbuf_destroy(&b);
    s_teardown(&f);
}

/* ------------------------------------------------------------------ (e) */

#define NORGS 3
#define NEVENTS 300

/* The sum of dispatched_total over orgs' tenant actors. */
static long s_dispatched_total(fixture_t *f, char orgs[][64], int n)
{
    long sum = 0;
    for (int i = 0; i < n; i++) {
        json_t *st = s_call(f, orgs[i], "stats", NULL);
        sum += s_int(st, "dispatched_total");
        json_decref(st);
    }
    return sum;
}

static long s_undispatched(fixture_t *f)
{
    char out[64];
    s_scalar(f, out, sizeof out, "SELECT count(*) FROM events WHERE dispatched_at IS NULL", 0,
             NULL);
    return strtol(out, NULL, 10);
}

static int s_wait_all_dispatched(fixture_t *f, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < deadline && s_undispatched(f) != 0)
        usleep(100 * 1000);
    return s_undispatched(f) == 0;
}

static void test_two_workers_one_sweeper_each_row_once(void **state)
{
    (void)state;
    fixture_t f;
    s_setup(&f, 2);
    char orgs[NORGS][64];
    for (int i = 0; i < NORGS; i++)
        s_new_org(&f, orgs[i], sizeof orgs[i]);
    for (int i = 0; i < NEVENTS; i++)
        s_new_event(&f, orgs[i % NORGS], i % 2 ? "list_added" : "event", "past");

    assert_true(s_wait_all_dispatched(&f, 15000));
    /* One session holds this database's sweeper lock ("postchiS"). */
    char out[64];
    s_scalar(&f, out, sizeof out,
             "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database ="
             " (SELECT oid FROM pg_database WHERE datname = current_database())"
             " AND ((classid::bigint << 32) | objid::bigint) = 8101821198383999315",
             0, NULL);
    assert_string_equal(out, "1");
    /* And only that worker re-sent anything. */
    double r0 = mesh_metric(f.m.worker_metrics[0], "postchi_worker_outbox_redriven_total");
    double r1 = mesh_metric(f.m.worker_metrics[1], "postchi_worker_outbox_redriven_total");
    fprintf(stderr, "re-sent by w0: %.0f, by w1: %.0f\n", r0, r1);
    assert_true((r0 >= NEVENTS && r1 == 0) || (r1 >= NEVENTS && r0 == 0));
    /* Every row was marked by exactly one UPDATE. */
    assert_int_equal(s_dispatched_total(&f, orgs, NORGS), NEVENTS);

    /* The leader dies: the other worker takes the lock over and sweeps. */
    int leader = r0 > 0 ? 0 : 1;
    harness_kill9(f.m.workers[leader]);
    f.m.workers[leader] = NULL;
    for (int i = 0; i < 30; i++)
        s_new_event(&f, orgs[i % NORGS], "subscribed", "past");
    assert_true(s_wait_all_dispatched(&f, 20000));
    assert_true(
        mesh_metric(f.m.worker_metrics[1 - leader], "postchi_worker_outbox_redriven_total") >= 30);
    s_teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trigger_marks_row_and_stats_report_it),
        cmocka_unit_test(test_sweeper_dispatches_row_whose_message_was_lost),
        cmocka_unit_test(test_other_organizations_event_is_not_marked),
        cmocka_unit_test(test_malformed_triggers_get_errors_and_worker_survives),
        cmocka_unit_test(test_two_workers_one_sweeper_each_row_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
