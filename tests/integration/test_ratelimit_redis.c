/*
 * test_ratelimit_redis - the shared token bucket against real Redis: burst then
 * refusal, refill over time, two limiters (two API nodes) sharing one
 * budget, key isolation, the bucket's expiry, and the local fallback with
 * its reduced share when there is no Redis, when Redis dies under us, and
 * when the key holds something else. Also kv_eval_ints itself: replies of
 * each type and the NOSCRIPT reload on a fresh server.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "kv.h"
#include "ratelimit.h"
#include "sbuf.h"

static kv_t *s_connect_to(const char *host, int port, int64_t wait_ms)
{
    sbuf_t *err = sbuf_new(64);
    kv_t *kv = kv_connect(host, port, 2000, wait_ms, err);
    if (!kv)
        fail_msg("kv_connect: %s", sbuf_data(err));
    sbuf_destroy(&err);
    return kv;
}

/* The fixture's Redis, shared with other tests (keys carry our pid). */
static kv_t *s_connect(void)
{
    return s_connect_to(harness_server("REDIS_HOST"), atoi(harness_server("REDIS_PORT")), 5000);
}

/* A key no other test run uses. */
static const char *s_key(const char *what)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "test_ratelimit:%d:%s", (int)getpid(), what);
    return buf;
}

static ratelimit_result_t s_take(ratelimit_t *rl, kv_t *kv, const char *key, int expect_rc)
{
    ratelimit_result_t r;
    memset(&r, 0xAB, sizeof r);
    int rc = ratelimit_take(rl, kv, key, &r);
    if (rc != expect_rc)
        fail_msg("ratelimit_take returned %d, expected %d (kv: %s)", rc, expect_rc,
                 kv ? kv_error(kv) : "none");
    assert_int_equal(r.local, expect_rc);
    return r;
}

static void test_burst_then_refusal(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    ratelimit_t *rl = ratelimit_new(0.5, 5);
    for (int i = 0; i < 5; i++) {
        ratelimit_result_t r = s_take(rl, kv, s_key("burst"), 0);
        assert_int_equal(r.allowed, 1);
        assert_int_equal(r.limit, 5);
        assert_int_equal(r.remaining, 4 - i);
        assert_int_equal(r.retry_after_s, 0);
        assert_true(r.reset_s >= 1 && r.reset_s <= 2 * (i + 1));
    }
    ratelimit_result_t r = s_take(rl, kv, s_key("burst"), 0);
    assert_int_equal(r.allowed, 0);
    assert_int_equal(r.remaining, 0);
    /* One token at 0.5/s is at most two seconds away. */
    assert_true(r.retry_after_s >= 1 && r.retry_after_s <= 2);
    assert_true(r.reset_s >= 9 && r.reset_s <= 10);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
}

/* Batches: as many whole tokens as the bucket holds, never more than
 * asked, and the same shared bucket as single takes. */
static void test_take_n_grants_what_is_there(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    ratelimit_t *rl = ratelimit_new(0.5, 10);
    ratelimit_result_t r;
    assert_int_equal(ratelimit_take_n(rl, kv, s_key("batch"), 4, &r), 0);
    assert_int_equal(r.granted, 4);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 6);
    assert_int_equal(ratelimit_take_n(rl, kv, s_key("batch"), 64, &r), 0);
    assert_int_equal(r.granted, 6);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(ratelimit_take_n(rl, kv, s_key("batch"), 64, &r), 0);
    assert_int_equal(r.granted, 0);
    assert_int_equal(r.allowed, 0);
    assert_true(r.retry_after_s >= 1);
    ratelimit_result_t one = s_take(rl, kv, s_key("batch"), 0);
    assert_int_equal(one.allowed, 0);
    assert_int_equal(one.granted, 0);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
}

static void test_refill_over_time(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    ratelimit_t *rl = ratelimit_new(50, 10);
    int allowed = 0;
    for (int i = 0; i < 30; i++)
        allowed += s_take(rl, kv, s_key("refill"), 0).allowed;
    /* 30 quick calls: the burst plus whatever trickled in meanwhile. */
    assert_true(allowed >= 10 && allowed <= 20);
    usleep(200 * 1000); /* ~10 tokens at 50/s: a full bucket again */
    allowed = 0;
    for (int i = 0; i < 30; i++)
        allowed += s_take(rl, kv, s_key("refill"), 0).allowed;
    assert_true(allowed >= 8 && allowed <= 20);
    /* Idle long enough, it is full, never more. */
    usleep(600 * 1000);
    ratelimit_result_t r = s_take(rl, kv, s_key("refill"), 0);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 9);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
}

static void test_two_nodes_share_one_budget(void **state)
{
    (void)state;
    kv_t *kv1 = s_connect(), *kv2 = s_connect();
    ratelimit_t *rl1 = ratelimit_new(0.01, 8), *rl2 = ratelimit_new(0.01, 8);
    int allowed1 = 0, allowed2 = 0;
    for (int i = 0; i < 10; i++) {
        allowed1 += s_take(rl1, kv1, s_key("shared"), 0).allowed;
        allowed2 += s_take(rl2, kv2, s_key("shared"), 0).allowed;
    }
    assert_int_equal(allowed1 + allowed2, 8);
    assert_int_equal(allowed1, 4);
    ratelimit_result_t r = s_take(rl2, kv2, s_key("shared"), 0);
    assert_int_equal(r.allowed, 0);
    assert_true(r.retry_after_s >= 99 && r.retry_after_s <= 100);
    ratelimit_destroy(&rl1);
    ratelimit_destroy(&rl2);
    kv_destroy(&kv1);
    kv_destroy(&kv2);
}

static void test_keys_are_isolated(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    ratelimit_t *rl = ratelimit_new(0.01, 2);
    assert_int_equal(s_take(rl, kv, s_key("iso-a"), 0).allowed, 1);
    assert_int_equal(s_take(rl, kv, s_key("iso-a"), 0).allowed, 1);
    assert_int_equal(s_take(rl, kv, s_key("iso-a"), 0).allowed, 0);
    ratelimit_result_t r = s_take(rl, kv, s_key("iso-b"), 0);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 1);
    /* A key is one binary-safe argument: spaces and quotes split nothing. */
    r = s_take(rl, kv, s_key("iso-a' HSET x \"y"), 0);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(s_take(rl, kv, s_key("iso-a"), 0).allowed, 0);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
}

static void test_bucket_expires_when_full_again(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    ratelimit_t *rl = ratelimit_new(10, 20);
    for (int i = 0; i < 5; i++)
        s_take(rl, kv, s_key("ttl"), 0);
    char rkey[160];
    snprintf(rkey, sizeof rkey, "postchi:ratelimit:%s", s_key("ttl"));
    const char *keys[] = {rkey};
    int64_t v[2];
    size_t n = 0;
    assert_int_equal(kv_eval_ints(kv, "return {redis.call('PTTL', KEYS[1]), "
                                      "redis.call('HLEN', KEYS[1])}",
                                  1, keys, 0, NULL, v, 2, &n),
                     0);
    assert_int_equal(n, 2);
    /* 5 tokens missing at 10/s: full in 0.5 s, kept one second more. */
    assert_true(v[0] > 1000 && v[0] <= 1500);
    assert_int_equal(v[1], 2);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
}

static void test_no_redis_uses_local_share(void **state)
{
    (void)state;
    ratelimit_t *rl = ratelimit_new(0.01, 10);
    int allowed = 0;
    for (int i = 0; i < 20; i++) {
        ratelimit_result_t r = s_take(rl, NULL, s_key("down"), 1);
        allowed += r.allowed;
        assert_int_equal(r.limit, 5);
    }
    assert_int_equal(allowed, 5);
    ratelimit_set_local_share(rl, 5);
    assert_int_equal(s_take(rl, NULL, s_key("down2"), 1).limit, 2);
    ratelimit_destroy(&rl);
}

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

static void test_redis_dies_then_returns(void **state)
{
    (void)state;
    int port = harness_free_port();
    harness_proc_t *redis = s_own_redis(port);
    kv_t *kv = s_connect_to("127.0.0.1", port, 10000);
    ratelimit_t *rl = ratelimit_new(0.01, 6);
    /* A fresh server has no script cached: NOSCRIPT, load, run. */
    assert_int_equal(s_take(rl, kv, "k", 0).remaining, 5);
    assert_int_equal(harness_stop(redis, SIGTERM, 5000), 0);

    /* Down: the local bucket (6/2 = 3) decides and requests still pass. */
    int allowed = 0;
    for (int i = 0; i < 6; i++)
        allowed += s_take(rl, kv, "k", 1).allowed;
    assert_int_equal(allowed, 3);

    /* Back, empty (it kept nothing, and no script): Redis decides again. */
    redis = s_own_redis(port);
    int64_t deadline = harness_now_ms() + 10000;
    while (kv_ping(kv) != 1 && harness_now_ms() < deadline)
        usleep(50 * 1000);
    ratelimit_result_t r = s_take(rl, kv, "k", 0);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.limit, 6);
    assert_int_equal(r.remaining, 5);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
    assert_int_equal(harness_stop(redis, SIGTERM, 5000), 0);
}

static void test_foreign_value_at_key_falls_back(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    char rkey[160];
    snprintf(rkey, sizeof rkey, "postchi:ratelimit:%s", s_key("wrongtype"));
    int64_t v;
    assert_int_equal(kv_incrby(kv, rkey, 1, &v), 0);
    ratelimit_t *rl = ratelimit_new(1, 4);
    ratelimit_result_t r = s_take(rl, kv, s_key("wrongtype"), 1);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.limit, 2);
    assert_non_null(strstr(kv_error(kv), "WRONGTYPE"));
    /* The connection is still good for the next key. */
    assert_int_equal(s_take(rl, kv, s_key("righttype"), 0).limit, 4);
    ratelimit_destroy(&rl);
    kv_destroy(&kv);
}

static void test_eval_ints_replies(void **state)
{
    (void)state;
    kv_t *kv = s_connect();
    int64_t v[3] = {0, 0, 0};
    size_t n = 9;
    assert_int_equal(kv_eval_ints(kv, "return 42", 0, NULL, 0, NULL, v, 3, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(v[0], 42);
    const char *args[] = {"7", "-8", "9", "10"};
    assert_int_equal(kv_eval_ints(kv,
                                  "return {tonumber(ARGV[1]), tonumber(ARGV[2]), "
                                  "tonumber(ARGV[3]), tonumber(ARGV[4])}",
                                  0, NULL, 4, args, v, 3, &n),
                     0);
    assert_int_equal(n, 3); /* bounded by max */
    assert_int_equal(v[1], -8);
    assert_int_equal(v[2], 9);
    assert_int_equal(kv_eval_ints(kv, "return 'text'", 0, NULL, 0, NULL, v, 3, &n), -1);
    assert_non_null(strstr(kv_error(kv), "not an integer"));
    assert_int_equal(kv_eval_ints(kv, "return {1, 'x'}", 0, NULL, 0, NULL, v, 3, &n), -1);
    assert_int_equal(kv_eval_ints(kv, "return redis.error_reply('NOPE broken')", 0, NULL, 0, NULL,
                                  v, 3, &n),
                     -1);
    assert_non_null(strstr(kv_error(kv), "NOPE broken"));
    assert_int_equal(kv_eval_ints(kv, "this is not lua", 0, NULL, 0, NULL, v, 3, &n), -1);
    assert_int_not_equal(kv_error(kv)[0], '\0');
    /* And the connection still works after all that. */
    assert_int_equal(kv_eval_ints(kv, "return 1", 0, NULL, 0, NULL, v, 3, &n), 0);
    assert_string_equal(kv_error(kv), "");

    char sha[41];
    assert_int_equal(kv_script_load(kv, "return 5", sha), 0);
    assert_int_equal(strlen(sha), 40);
    kv_destroy(&kv);
}

int main(void)
{
    if (!harness_server("REDIS_HOST")) {
        fprintf(stderr, "test_ratelimit_redis: the servers fixture did not run\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refusal),
        cmocka_unit_test(test_take_n_grants_what_is_there),
        cmocka_unit_test(test_refill_over_time),
        cmocka_unit_test(test_two_nodes_share_one_budget),
        cmocka_unit_test(test_keys_are_isolated),
        cmocka_unit_test(test_bucket_expires_when_full_again),
        cmocka_unit_test(test_no_redis_uses_local_share),
        cmocka_unit_test(test_redis_dies_then_returns),
        cmocka_unit_test(test_foreign_value_at_key_falls_back),
        cmocka_unit_test(test_eval_ints_replies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
