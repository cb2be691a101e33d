/*
 * test_harness - the integration harness itself, against real processes,
 * a real HTTP server (python3 -m http.server) and the fixture's PostgreSQL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "db.h"
#include "sbuf.h"

#include "harness.h"

/* The whole log of p, read after it exited. Caller destroys. */
static sbuf_t *s_read_log(const char *path)
{
    sbuf_t *b = sbuf_new(256);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char chunk[512];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(sbuf_append(b, chunk, n), 0);
    fclose(f);
    return b;
}

static void test_free_ports_are_distinct(void **state)
{
    (void)state;
    int seen[50];
    for (int i = 0; i < 50; i++) {
        seen[i] = harness_free_port();
        assert_true(seen[i] > 0 && seen[i] < 65536);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(seen[i], seen[j]);
    }
}

static void test_exit_status_and_env(void **state)
{
    (void)state;
    char *argv[] = {"/bin/sh", "-c", "echo \"port=$POSTCHI_PG_PORT extra=$EXTRA\"; exit 7", NULL};
    char *env[] = {"EXTRA=yes", NULL};
    harness_proc_t *p = harness_spawn("exit7", argv, env);
    assert_non_null(p);
    char *log = strdup(harness_log_path(p));
    while (harness_alive(p))
        usleep(10000);
    assert_int_equal(harness_stop(p, 15, 1000), 7);
    sbuf_t *out = s_read_log(log);
    assert_non_null(strstr(sbuf_data(out), "extra=yes"));
    sbuf_destroy(&out);
    free(log);

    /* harness_server_env points a child at the fixture's PostgreSQL. */
    const char *port = harness_server("PG_PORT");
    assert_non_null(port);
    char *const *senv = harness_server_env("somedb");
    char *argv2[] = {"/bin/sh", "-c", "echo \"$POSTCHI_PG_PORT/$POSTCHI_PG_DATABASE\"", NULL};
    p = harness_spawn("env", argv2, senv);
    assert_non_null(p);
    log = strdup(harness_log_path(p));
    assert_int_equal(harness_stop(p, 0, 5000), 0); /* signal 0: just wait */
    out = s_read_log(log);
    char want[64];
    snprintf(want, sizeof want, "%s/somedb\n", port);
    assert_string_equal(sbuf_data(out), want);
    sbuf_destroy(&out);
    free(log);
}

static void test_stop_escalates_to_sigkill(void **state)
{
    (void)state;
    char *argv[] = {"/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done", NULL};
    harness_proc_t *p = harness_spawn("stubborn", argv, NULL);
    assert_non_null(p);
    usleep(200000);
    assert_true(harness_alive(p));
    int64_t t0 = harness_now_ms();
    assert_int_equal(harness_stop(p, 15, 300), 128 + 9);
    assert_true(harness_now_ms() - t0 >= 300);

    argv[2] = "exec sleep 100";
    p = harness_spawn("sleeper", argv, NULL);
    assert_non_null(p);
    usleep(100000);
    assert_int_equal(harness_stop(p, 15, 5000), 128 + 15);
}

static void test_http_get_against_a_real_server(void **state)
{
    (void)state;
    int port = harness_free_port();
    assert_int_equal(harness_http_get(port, "/", NULL), -1); /* nothing listens yet */
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    char *argv[] = {"/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                    "--directory", POSTCHI_SOURCE_DIR, portstr, NULL};
    harness_proc_t *p = harness_spawn("http", argv, NULL);
    assert_non_null(p);
    assert_int_equal(harness_wait_http(port, "/", 10000), 0);
    sbuf_t *body = sbuf_new(1024);
    assert_int_equal(harness_http_get(port, "/CMakeLists.txt", body), 200);
    assert_non_null(strstr(sbuf_data(body), "project(postchi"));
    assert_int_equal(harness_http_get(port, "/no-such-file", NULL), 404);
    sbuf_destroy(&body);
    harness_kill9(p);
}

static void test_create_database(void **state)
{
    (void)state;
    char name[64];
    assert_int_equal(harness_create_database(name, sizeof name), 0);
    assert_non_null(strstr(name, "test_harness"));
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s user=%s dbname=%s",
             harness_server("PG_HOST"), harness_server("PG_PORT"), harness_server("PG_USER"),
             name);
    sbuf_t *err = sbuf_new(64);
    db_t *db = db_connect(conninfo, 0, err);
    assert_non_null(db);
    assert_int_equal(db_exec(db, "CREATE TABLE t (x int)", 0, NULL, err), 0);
    db_destroy(&db);
    sbuf_destroy(&err);
    char other[64];
    assert_int_equal(harness_create_database(other, sizeof other), 0);
    assert_string_not_equal(name, other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_ports_are_distinct),
        cmocka_unit_test(test_exit_status_and_env),
        cmocka_unit_test(test_stop_escalates_to_sigkill),
        cmocka_unit_test(test_http_get_against_a_real_server),
        cmocka_unit_test(test_create_database),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
