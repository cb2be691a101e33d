/*
 * test_kv - kv against real Redis: ping and INCRBY on the fixture's server,
 * reconnecting after a restart on a private redis-server (so other tests
 * sharing the fixture are not disturbed), and a clear error for a port
 * where nothing listens.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "kv.h"
#include "sbuf.h"

static kv_t *s_connect(void)
{
    sbuf_t *err = sbuf_new(64);
    kv_t *kv = kv_connect(harness_server("REDIS_HOST"), atoi(harness_server("REDIS_PORT")), 2000,
                          5000, err);
    if (!kv)
        fail_msg("kv_connect: %s", sbuf_data(err));
    sbuf_destroy(&err);
    return kv;
}

/* A key no other test run uses. */
static const char *s_key(const char *what)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "test_kv:%d:%s", (int)getpid(), what);
    return buf;
}

static void test_ping_and_incrby(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    assert_int_equal(kv_ping(kv), 1);

    int64_t v = 0;
    assert_int_equal(kv_incrby(kv, s_key("n"), 5, &v), 0);
    assert_int_equal(v, 5);
    assert_int_equal(kv_incrby(kv, s_key("n"), -7, &v), 0);
    assert_int_equal(v, -2);
    assert_string_equal(kv_error(kv), "");
    /* Keys are single binary-safe arguments: spaces split nothing. */
    assert_int_equal(kv_incrby(kv, s_key("with space INCRBY x 100"), 3, &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(kv_incrby(kv, s_key("big"), INT64_C(4000000000), &v), 0);
    assert_int_equal(v, INT64_C(4000000000));
    /* Overflow is Redis's error, reported, not a crash. */
    assert_int_equal(kv_incrby(kv, s_key("big"), INT64_MAX, &v), -1);
    assert_non_null(strstr(kv_error(kv), "overflow"));
    assert_int_equal(kv_ping(kv), 1);

    kv_destroy(&kv);
    kv_destroy(&kv); /* idempotent */
}

/* A Redis of our own on port, so restarting it disturbs no other test. */
static harness_proc_t *s_own_redis(int port)
{
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    char *const argv[] = {
        "/usr/bin/redis-server", "--port", port_s, "--bind", "127.0.0.1", "--save", "",
        "--appendonly",          "no",     NULL};
    harness_proc_t *p = harness_spawn("redis-own", argv, NULL);
    assert_non_null(p);
    return p;
}

static void test_reconnects_after_redis_restarts(void **state)
{
    (void)state;
    int port = harness_free_port();
    harness_proc_t *redis = s_own_redis(port);
    sbuf_t *err = sbuf_new(64);
    /* wait_ms covers the server's start-up. */
    kv_t *kv = kv_connect("127.0.0.1", port, 2000, 10000, err);
    if (!kv)
        fail_msg("kv_connect: %s", sbuf_data(err));
    int64_t v = 0;
    assert_int_equal(kv_incrby(kv, "r", 1, &v), 0);
    assert_int_equal(v, 1);

    assert_int_equal(harness_stop(redis, SIGTERM, 5000), 0);
    /* Down: the call fails with the reason, nothing crashes or hangs. */
    assert_int_equal(kv_ping(kv), 0);
    assert_int_equal(kv_incrby(kv, "r", 1, &v), -1);
    assert_non_null(strstr(kv_error(kv), "Redis"));

    redis = s_own_redis(port);
    /* Back (empty: it kept no data): ping reconnects, counters work. */
    int64_t deadline = harness_now_ms() + 10000;
    while (kv_ping(kv) != 1 && harness_now_ms() < deadline)
        usleep(50 * 1000);
    assert_int_equal(kv_ping(kv), 1);
    assert_int_equal(kv_incrby(kv, "r", 1, &v), 0);
    assert_int_equal(v, 1);

    kv_destroy(&kv);
    sbuf_destroy(&err);
    assert_int_equal(harness_stop(redis, SIGTERM, 5000), 0);
}

static void test_connect_to_closed_port_fails_clearly(void **state)
{
    (void)state;
    int port = harness_free_port();
    sbuf_t *err = sbuf_new(64);
    char expected[64];
    snprintf(expected, sizeof expected, "cannot connect to Redis at 127.0.0.1:%d: ", port);

    assert_null(kv_connect("127.0.0.1", port, 1000, 0, err));
    assert_memory_equal(sbuf_data(err), expected, strlen(expected));
    assert_non_null(strstr(sbuf_data(err), "refused"));

    int64_t t0 = harness_now_ms();
    assert_null(kv_connect("127.0.0.1", port, 1000, 400, err));
    assert_true(harness_now_ms() - t0 >= 300);
    assert_memory_equal(sbuf_data(err), expected, strlen(expected));
    sbuf_destroy(&err);
}

/* Windowed counters (login failures): INCR sets the expiry once, GET
 * reports value and time left, DEL resets. */
static void test_window_counters(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    const char *key = s_key("window");
    int64_t v = -1, ttl = 0;
    assert_int_equal(kv_del(kv, key), 0); /* absent is fine */
    assert_int_equal(kv_get_int(kv, key, &v, &ttl), 0);
    assert_int_equal(v, 0);
    assert_int_equal(ttl, -1);
    assert_int_equal(kv_incr_expire(kv, key, 900, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(kv_incr_expire(kv, key, 5, &v), 0); /* window kept, not restarted */
    assert_int_equal(v, 2);
    assert_int_equal(kv_get_int(kv, key, &v, &ttl), 0);
    assert_int_equal(v, 2);
    assert_true(ttl > 5 && ttl <= 900);
    assert_int_equal(kv_get_int(kv, key, &v, NULL), 0);
    assert_int_equal(kv_del(kv, key), 0);
    assert_int_equal(kv_get_int(kv, key, &v, &ttl), 0);
    assert_int_equal(v, 0);
    /* A counter someone left without expiry gets one on the next count. */
    assert_int_equal(kv_incrby(kv, key, 7, &v), 0);
    assert_int_equal(kv_incr_expire(kv, key, 60, &v), 0);
    assert_int_equal(v, 8);
    assert_int_equal(kv_get_int(kv, key, &v, &ttl), 0);
    assert_true(ttl > 0 && ttl <= 60);
    assert_int_equal(kv_del(kv, key), 0);
    /* Keys are binary-safe single arguments here too. */
    assert_int_equal(kv_incr_expire(kv, s_key("a b\r\nDEL x"), 60, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(kv_del(kv, s_key("a b\r\nDEL x")), 0);
    /* Counters made by INCRBY and by the script read back alike. */
    assert_int_equal(kv_incr_expire(kv, s_key("window-str"), 60, &v), 0);
    assert_int_equal(kv_incrby(kv, s_key("window-str"), 1, &v), 0);
    assert_int_equal(kv_get_int(kv, s_key("window-str"), &v, &ttl), 0);
    assert_int_equal(v, 2);
    assert_int_equal(kv_del(kv, s_key("window-str")), 0);
    assert_int_equal(kv_ping(kv), 1);
    kv_destroy(&kv);
}

int main(void)
{
    if (!harness_server("REDIS_HOST")) {
        fprintf(stderr, "test_kv: the servers fixture did not run\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_and_incrby),
        cmocka_unit_test(test_window_counters),
        cmocka_unit_test(test_reconnects_after_redis_restarts),
        cmocka_unit_test(test_connect_to_closed_port_fails_clearly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
