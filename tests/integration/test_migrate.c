/*
 * test_migrate - db and migrate against the fixture's real PostgreSQL.
 *
 * Each test gets a fresh database from the harness, so tests do not see
 * each other's schema. Covers: applying the embedded migrations once and
 * only once (also with two runs racing), a failing migration leaving no
 * trace, parameters carrying SQL metacharacters untouched, reconnecting
 * after the server killed our session, and connection errors that are
 * clear, retried for as long as asked, and never show the password.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "db.h"
#include "harness.h"
#include "migrate.h"
#include "sbuf.h"

/* conninfo for database name in the fixture's cluster; static storage. */
static const char *s_conninfo(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "host=%s port=%s user=%s dbname=%s", harness_server("PG_HOST"),
             harness_server("PG_PORT"), harness_server("PG_USER"), name);
    return buf;
}

/* A connection to a database created for this test. */
static db_t *s_fresh_db(char *name, size_t size)
{
    assert_int_equal(harness_create_database(name, size), 0);
    sbuf_t *err = sbuf_new(64);
    db_t *db = db_connect(s_conninfo(name), 5000, err);
    if (!db)
        fail_msg("db_connect: %s", sbuf_data(err));
    sbuf_destroy(&err);
    return db;
}

/* The single text value of a one-row, one-column query. Caller frees. */
static char *s_scalar(db_t *db, const char *sql)
{
    sbuf_t *err = sbuf_new(64);
    db_result_t *res = db_query(db, sql, 0, NULL, err);
    if (!res)
        fail_msg("%s: %s", sql, sbuf_data(err));
    assert_int_equal(db_result_rows(res), 1);
    const char *v = db_result_get(res, 0, 0);
    char *out = v ? strdup(v) : NULL;
    db_result_free(&res);
    sbuf_destroy(&err);
    return out;
}

static void s_assert_scalar(db_t *db, const char *sql, const char *expected)
{
    char *v = s_scalar(db, sql);
    assert_non_null(v);
    assert_string_equal(v, expected);
    free(v);
}

static int s_embedded_count(void)
{
    int n = 0;
    while (migrations_embedded[n].version != 0)
        n++;
    return n;
}

static void test_fresh_database_applies_all_then_nothing(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    sbuf_t *err = sbuf_new(64);
    int n = s_embedded_count();
    assert_true(n >= 1);

    assert_int_equal(migrate_current(db, err), 0);
    int applied = -1;
    if (migrate_run(db, migrations_embedded, &applied, err) != 0)
        fail_msg("migrate_run: %s", sbuf_data(err));
    assert_int_equal(applied, n);
    assert_int_equal(migrate_current(db, err), migrations_embedded[n - 1].version);

    char expected[16];
    snprintf(expected, sizeof expected, "%d", n);
    s_assert_scalar(db, "SELECT count(*) FROM schema_migrations", expected);
    s_assert_scalar(db, "SELECT name FROM schema_migrations WHERE version = 1", "mesh_and_tenancy");
    /* The schema is really there and behaves as designed. */
    s_assert_scalar(db,
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND "
                    "tablename IN ('organizations', 'users', 'api_keys', 'audit_log', "
                    "'mesh_nodes', 'actor_state', 'timers')",
                    "7");
    assert_int_equal(db_exec(db,
                             "WITH o AS (INSERT INTO organizations (name) VALUES ('a') "
                             "RETURNING id) INSERT INTO users (organization_id, email, "
                             "password_hash) SELECT id, 'Ann@Example.com', 'x' FROM o",
                             0, NULL, err),
                     0);
    assert_int_equal(db_exec(db,
                             "INSERT INTO users (organization_id, email, password_hash) "
                             "SELECT id, 'ann@example.COM', 'x' FROM organizations",
                             0, NULL, err),
                     -1);
    assert_non_null(strstr(sbuf_data(err), "users_email_key"));
    assert_string_equal(db_sqlstate(db), "23505");

    applied = -1;
    assert_int_equal(migrate_run(db, migrations_embedded, &applied, err), 0);
    assert_int_equal(applied, 0);
    s_assert_scalar(db, "SELECT count(*) FROM schema_migrations", expected);
    /* The advisory lock was released at the end of both runs. */
    s_assert_scalar(db,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid()",
                    "0");

    sbuf_destroy(&err);
    db_destroy(&db);
    db_destroy(&db); /* idempotent */
}

typedef struct {
    const char *conninfo; /* where to migrate */
    int rc;               /* migrate_run's result */
    int applied;          /* how many it applied */
    char err[512];        /* its error, if any */
} race_t;

static void *s_race(void *arg)
{
    race_t *r = arg;
    sbuf_t *err = sbuf_new(64);
    db_t *db = db_connect(r->conninfo, 5000, err);
    r->rc = db ? migrate_run(db, migrations_embedded, &r->applied, err) : -1;
    snprintf(r->err, sizeof r->err, "%s", sbuf_data(err));
    db_destroy(&db);
    sbuf_destroy(&err);
    return NULL;
}

static void test_concurrent_runs_serialize(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    char *conninfo = strdup(s_conninfo(name));
    race_t a = {.conninfo = conninfo}, b = {.conninfo = conninfo};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, s_race, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, s_race, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (a.rc != 0 || b.rc != 0)
        fail_msg("a: %d %s / b: %d %s", a.rc, a.err, b.rc, b.err);
    /* One did the work, the other waited for the lock and found none left. */
    assert_int_equal(a.applied + b.applied, s_embedded_count());
    assert_true(a.applied == 0 || b.applied == 0);
    char expected[16];
    snprintf(expected, sizeof expected, "%d", s_embedded_count());
    s_assert_scalar(db, "SELECT count(*) FROM schema_migrations", expected);
    s_assert_scalar(db, "SELECT count(DISTINCT version) FROM schema_migrations", expected);
    free(conninfo);
    db_destroy(&db);
}

static void test_failing_migration_leaves_no_trace(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    sbuf_t *err = sbuf_new(64);
    const migration_t table[] = {
        {1, "good", "CREATE TABLE good_one (x int);"},
        {2, "broken", "CREATE TABLE broken_two (x int); SELEKT 1;"},
        {3, "never", "CREATE TABLE never_three (x int);"},
        {0, NULL, NULL},
    };
    int applied = -1;
    assert_int_equal(migrate_run(db, table, &applied, err), -1);
    assert_int_equal(applied, 1);
    assert_non_null(strstr(sbuf_data(err), "migration 002_broken: "));
    assert_non_null(strstr(sbuf_data(err), "SELEKT"));
    assert_null(strchr(sbuf_data(err), '\n'));

    s_assert_scalar(db, "SELECT to_regclass('good_one') IS NOT NULL", "t");
    s_assert_scalar(db, "SELECT to_regclass('broken_two') IS NULL", "t");
    s_assert_scalar(db, "SELECT to_regclass('never_three') IS NULL", "t");
    s_assert_scalar(db, "SELECT string_agg(version::text, ',') FROM schema_migrations", "1");
    assert_int_equal(migrate_current(db, err), 1);
    /* The lock is released on error too, and the session is usable. */
    s_assert_scalar(db,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND pid = pg_backend_pid()",
                    "0");
    s_assert_scalar(db, "SELECT 'still usable'", "still usable");

    sbuf_destroy(&err);
    db_destroy(&db);
}

static void test_table_out_of_order_is_refused(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    sbuf_t *err = sbuf_new(64);
    const migration_t twice[] = {
        {1, "a", "CREATE TABLE a (x int);"},
        {1, "b", "CREATE TABLE b (x int);"},
        {0, NULL, NULL},
    };
    const migration_t backwards[] = {
        {2, "a", "CREATE TABLE a (x int);"},
        {1, "b", "CREATE TABLE b (x int);"},
        {0, NULL, NULL},
    };
    assert_int_equal(migrate_run(db, twice, NULL, err), -1);
    assert_non_null(strstr(sbuf_data(err), "ascending"));
    assert_int_equal(migrate_run(db, backwards, NULL, err), -1);
    assert_non_null(strstr(sbuf_data(err), "version 1 (b) follows version 2"));
    /* Refused before touching the database. */
    s_assert_scalar(db,
                    "SELECT to_regclass('a') IS NULL AND to_regclass('schema_migrations') "
                    "IS NULL",
                    "t");
    sbuf_destroy(&err);
    db_destroy(&db);
}

static void test_parameters_round_trip_untouched(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    sbuf_t *err = sbuf_new(64);
    assert_int_equal(db_exec(db, "CREATE TABLE x (v text)", 0, NULL, err), 0);
    const char *nasty = "O'Brien; DROP TABLE x;-- \\ $1 \"q\"";
    const char *params[] = {nasty, NULL};
    db_result_t *res = db_query(db, "INSERT INTO x (v) VALUES ($1), ($2)", 2, params, err);
    assert_non_null(res);
    assert_int_equal(db_result_affected(res), 2);
    db_result_free(&res);
    db_result_free(&res); /* idempotent */

    res = db_query(db, "SELECT v, v IS NULL FROM x ORDER BY v NULLS LAST", 0, NULL, err);
    assert_non_null(res);
    assert_int_equal(db_result_rows(res), 2);
    assert_int_equal(db_result_cols(res), 2);
    assert_string_equal(db_result_get(res, 0, 0), nasty);
    assert_string_equal(db_result_get(res, 0, 1), "f");
    assert_null(db_result_get(res, 1, 0));
    assert_string_equal(db_result_get(res, 1, 1), "t");
    db_result_free(&res);

    /* A failing statement: one-line server message with its SQLSTATE. */
    assert_null(db_query(db, "SELECT * FROM no_such_table", 0, NULL, err));
    assert_string_equal(sbuf_data(err),
                        "relation \"no_such_table\" does not exist (SQLSTATE 42P01)");
    assert_string_equal(db_sqlstate(db), "42P01");
    assert_int_equal(db_exec(db, "SELECT 1", 0, NULL, err), 0);
    assert_string_equal(db_sqlstate(db), "");

    /* A multi-statement script stops at its first failure. */
    assert_int_equal(db_exec_script(db,
                                    "INSERT INTO x VALUES ('s1'); SELECT 1/0; "
                                    "INSERT INTO x VALUES ('s2');",
                                    err),
                     -1);
    assert_non_null(strstr(sbuf_data(err), "division by zero"));
    s_assert_scalar(db, "SELECT count(*) FROM x WHERE v LIKE 's_'", "0");
    sbuf_destroy(&err);
    db_destroy(&db);
}

/* Have the server end db's session (as a restart or an admin would) and
 * wait until it is really gone. Returns the old backend pid; caller frees. */
static char *s_terminate_session(db_t *db, db_t *killer)
{
    sbuf_t *err = sbuf_new(64);
    char *pid = s_scalar(db, "SELECT pg_backend_pid()");
    const char *params[] = {pid};
    assert_int_equal(db_exec(killer, "SELECT pg_terminate_backend($1::int)", 1, params, err), 0);
    for (int i = 0; i < 500; i++) {
        db_result_t *res =
            db_query(killer, "SELECT 1 FROM pg_stat_activity WHERE pid = $1::int", 1, params, err);
        assert_non_null(res);
        int alive = db_result_rows(res) > 0;
        db_result_free(&res);
        if (!alive)
            break;
        usleep(10 * 1000);
    }
    sbuf_destroy(&err);
    return pid;
}

static void test_ping_reconnects_after_the_server_drops_us(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    sbuf_t *err = sbuf_new(64);
    db_t *killer = db_connect(s_conninfo(name), 0, err);
    assert_non_null(killer);
    assert_int_equal(db_ping(db), 1);

    /* Dropped while idle: libpq does not know yet, ping finds out and
     * reconnects. */
    char *pid = s_terminate_session(db, killer);
    assert_int_equal(db_ping(db), 1);
    char *pid2 = s_scalar(db, "SELECT pg_backend_pid()");
    assert_string_not_equal(pid, pid2);

    /* Dropped, then a query fails: it does not reconnect by itself (that
     * could run later statements outside the caller's transaction)... */
    char *pid3 = s_terminate_session(db, killer);
    assert_int_equal(db_exec(db, "SELECT 1", 0, NULL, err), -1);
    assert_int_equal(db_exec(db, "SELECT 1", 0, NULL, err), -1);
    /* ...but ping does. */
    assert_int_equal(db_ping(db), 1);
    assert_int_equal(db_exec(db, "SELECT 1", 0, NULL, err), 0);

    free(pid);
    free(pid2);
    free(pid3);
    db_destroy(&killer);
    sbuf_destroy(&err);
    db_destroy(&db);
}

static void test_prepared_statements(void **state)
{
    (void)state;
    char name[64];
    db_t *db = s_fresh_db(name, sizeof name);
    sbuf_t *err = sbuf_new(64);
    db_t *killer = db_connect(s_conninfo(name), 0, err);
    const char *sql = "SELECT $1::text || '|' || $2::text";
    const char *p1[] = {"O'Brien; DROP TABLE x;--", "1"};
    const char *p2[] = {"second", "2"};
    for (int round = 0; round < 2; round++) {
        /* Prepared once, then reused with other values on the same session. */
        db_result_t *r = db_query_prepared(db, sql, 2, p1, err);
        assert_non_null(r);
        assert_string_equal(db_result_get(r, 0, 0), "O'Brien; DROP TABLE x;--|1");
        db_result_free(&r);
        r = db_query_prepared(db, sql, 2, p2, err);
        assert_non_null(r);
        assert_string_equal(db_result_get(r, 0, 0), "second|2");
        db_result_free(&r);
        if (round == 0) {
            /* The session ends under us: the new session has no prepared
             * statements, and the next use must prepare again. */
            char *pid = s_terminate_session(db, killer);
            free(pid);
            assert_int_equal(db_ping(db), 1);
        }
    }
    /* A statement that does not parse fails cleanly, with the server's word. */
    sbuf_reset(err);
    assert_null(db_query_prepared(db, "SELEC nothing", 0, NULL, err));
    assert_non_null(strstr(sbuf_data(err), "syntax"));
    db_destroy(&killer);
    sbuf_destroy(&err);
    db_destroy(&db);
}

static void test_connect_failure_is_clear_and_keeps_the_password(void **state)
{
    (void)state;
    int port = harness_free_port();
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d dbname=postchi_x user=u password=Sekr1tPass", port);
    sbuf_t *err = sbuf_new(64);
    char expected[128];
    snprintf(expected, sizeof expected,
             "cannot connect to PostgreSQL (host=127.0.0.1, port=%d, dbname=postchi_x): ", port);

    int64_t t0 = harness_now_ms();
    assert_null(db_connect(conninfo, 0, err));
    int64_t fast = harness_now_ms() - t0;
    assert_true(fast < 2000);
    assert_memory_equal(sbuf_data(err), expected, strlen(expected));
    assert_non_null(strstr(sbuf_data(err), "refused"));
    assert_null(strstr(sbuf_data(err), "Sekr1tPass"));
    assert_null(strchr(sbuf_data(err), '\n'));

    /* With wait_ms it keeps trying with back-off until the time is up. */
    t0 = harness_now_ms();
    assert_null(db_connect(conninfo, 600, err));
    int64_t waited = harness_now_ms() - t0;
    assert_true(waited >= 500);
    assert_true(waited < 5000);
    assert_memory_equal(sbuf_data(err), expected, strlen(expected));

    /* A string that does not parse is not echoed (it may hold a password). */
    assert_null(db_connect("host=x password=Sekr1t Pass", 0, err));
    assert_non_null(strstr(sbuf_data(err), "does not parse"));
    assert_null(strstr(sbuf_data(err), "Pass"));
    assert_null(strstr(sbuf_data(err), "Sekr1t"));

    /* The fixture's server, but a wrong database: the server's reason. */
    assert_null(db_connect(s_conninfo("no_such_database_here"), 0, err));
    assert_non_null(strstr(sbuf_data(err), "dbname=no_such_database_here): "));
    assert_non_null(strstr(sbuf_data(err), "does not exist"));
    sbuf_destroy(&err);
}

int main(void)
{
    if (!harness_server("PG_HOST")) {
        fprintf(stderr, "test_migrate: the servers fixture did not run\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_database_applies_all_then_nothing),
        cmocka_unit_test(test_concurrent_runs_serialize),
        cmocka_unit_test(test_failing_migration_leaves_no_trace),
        cmocka_unit_test(test_table_out_of_order_is_refused),
        cmocka_unit_test(test_parameters_round_trip_untouched),
        cmocka_unit_test(test_ping_reconnects_after_the_server_drops_us),
        cmocka_unit_test(test_prepared_statements),
        cmocka_unit_test(test_connect_failure_is_clear_and_keeps_the_password),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
