/*
 * test_ratelimit - the local (no Redis) token bucket's arithmetic, on a
 * clock the test moves by hand: burst then refusal, refill, the reduced
 * share, header values, key isolation, a clock that goes back, and a
 * bounded table that keeps limiting a hot key under many cold ones.
 * The Redis path is tested against a real server in
 * tests/integration/test_ratelimit_redis.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "ratelimit.h"

static int64_t s_now_us;

static int64_t s_clock(void)
{
    return s_now_us;
}

static ratelimit_t *s_new(double rate, double burst, int share)
{
    ratelimit_t *rl = ratelimit_new(rate, burst);
    assert_non_null(rl);
    ratelimit_set_clock(rl, s_clock);
    ratelimit_set_local_share(rl, share);
    s_now_us = 1000000000;
    return rl;
}

static ratelimit_result_t s_take(ratelimit_t *rl, const char *key)
{
    ratelimit_result_t r;
    memset(&r, 0xAB, sizeof r);
    assert_int_equal(ratelimit_take(rl, NULL, key, &r), 1);
    assert_int_equal(r.local, 1);
    return r;
}

static void test_new_refuses_bad_values(void **state)
{
    (void)state;
    assert_null(ratelimit_new(0, 10));
    assert_null(ratelimit_new(-1, 10));
    assert_null(ratelimit_new(10, 0.5));
    assert_null(ratelimit_new(NAN, 10));
    assert_null(ratelimit_new(10, INFINITY));
    assert_null(ratelimit_new(10, 1e12));
    ratelimit_t *rl = ratelimit_new(0.001, 1);
    assert_non_null(rl);
    ratelimit_destroy(&rl);
    assert_null(rl);
    ratelimit_destroy(&rl); /* idempotent */
    ratelimit_destroy(NULL);
}

static void test_burst_then_refusal(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(10, 20, 1);
    for (int i = 0; i < 20; i++) {
        ratelimit_result_t r = s_take(rl, "k");
        assert_int_equal(r.allowed, 1);
        assert_int_equal(r.limit, 20);
        assert_int_equal(r.remaining, 19 - i);
        assert_int_equal(r.retry_after_s, 0);
        /* (i+1) tokens missing at 10/s: ceil((i+1)/10) seconds to full. */
        assert_int_equal(r.reset_s, (i + 1 + 9) / 10);
    }
    ratelimit_result_t r = s_take(rl, "k");
    assert_int_equal(r.allowed, 0);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.retry_after_s, 1);
    assert_int_equal(r.reset_s, 2);
    ratelimit_destroy(&rl);
}

/* Batches through the local bucket: whole tokens only, at most as asked. */
static void test_take_n_local(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(10, 20, 2); /* local share: 5/s, burst 10 */
    ratelimit_result_t r;
    assert_int_equal(ratelimit_take_n(rl, NULL, "k", 3, &r), 1);
    assert_int_equal(r.granted, 3);
    assert_int_equal(r.remaining, 7);
    assert_int_equal(ratelimit_take_n(rl, NULL, "k", 100, &r), 1);
    assert_int_equal(r.granted, 7);
    assert_int_equal(ratelimit_take_n(rl, NULL, "k", 100, &r), 1);
    assert_int_equal(r.granted, 0);
    assert_int_equal(r.allowed, 0);
    s_now_us += 500000; /* 2.5 tokens at 5/s: two whole ones */
    assert_int_equal(ratelimit_take_n(rl, NULL, "k", 100, &r), 1);
    assert_int_equal(r.granted, 2);
    assert_int_equal(s_take(rl, "k").allowed, 0); /* the half token is not one */
    ratelimit_destroy(&rl);
}

static void test_default_share_is_half(void **state)
{
    (void)state;
    ratelimit_t *rl = ratelimit_new(10, 20);
    assert_non_null(rl);
    ratelimit_set_clock(rl, s_clock);
    s_now_us = 5000000;
    int allowed = 0;
    for (int i = 0; i < 30; i++)
        allowed += s_take(rl, "k").allowed;
    assert_int_equal(allowed, 10);
    ratelimit_result_t r = s_take(rl, "k");
    assert_int_equal(r.limit, 10);
    /* 5 tokens/s locally: one token is 0.2 s away, announced as 1 s. */
    assert_int_equal(r.retry_after_s, 1);
    assert_int_equal(r.reset_s, 2);
    ratelimit_destroy(&rl);
}

static void test_refill_over_time(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(4, 8, 2); /* locally 2/s, burst 4 */
    for (int i = 0; i < 4; i++)
        assert_int_equal(s_take(rl, "k").allowed, 1);
    assert_int_equal(s_take(rl, "k").allowed, 0);
    s_now_us += 400000; /* 0.8 token */
    assert_int_equal(s_take(rl, "k").allowed, 0);
    s_now_us += 100000; /* 1.0 token in total: refusals took nothing */
    ratelimit_result_t r = s_take(rl, "k");
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 0);
    s_now_us += 1250000; /* 2.5 tokens */
    r = s_take(rl, "k");
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 1);
    /* 2.5 missing at 2/s. */
    assert_int_equal(r.reset_s, 2);
    /* A long idle time fills the bucket to burst, never beyond. */
    s_now_us += 3600LL * 1000000;
    r = s_take(rl, "k");
    assert_int_equal(r.remaining, 3);
    int allowed = 1;
    for (int i = 0; i < 10; i++)
        allowed += s_take(rl, "k").allowed;
    assert_int_equal(allowed, 4);
    ratelimit_destroy(&rl);
}

static void test_slow_rate_retry_after(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(0.1, 1, 1);
    assert_int_equal(s_take(rl, "k").allowed, 1);
    ratelimit_result_t r = s_take(rl, "k");
    assert_int_equal(r.allowed, 0);
    assert_int_equal(r.retry_after_s, 10);
    assert_int_equal(r.reset_s, 10);
    s_now_us += 7500000;
    r = s_take(rl, "k");
    assert_int_equal(r.allowed, 0);
    assert_int_equal(r.retry_after_s, 3);
    ratelimit_destroy(&rl);
}

static void test_small_burst_share_still_passes_one(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(1, 2, 4); /* 2/4 = 0.5 token: raised to one */
    ratelimit_result_t r = s_take(rl, "k");
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.limit, 1);
    assert_int_equal(s_take(rl, "k").allowed, 0);
    ratelimit_destroy(&rl);
}

static void test_lower_share_clips_buckets(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(10, 100, 1);
    assert_int_equal(s_take(rl, "k").remaining, 99);
    ratelimit_set_local_share(rl, 10);
    ratelimit_result_t r = s_take(rl, "k");
    assert_int_equal(r.limit, 10);
    assert_int_equal(r.remaining, 9);
    ratelimit_destroy(&rl);
}

static void test_keys_are_isolated(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(1, 3, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(s_take(rl, "key-a").allowed, 1);
    assert_int_equal(s_take(rl, "key-a").allowed, 0);
    ratelimit_result_t r = s_take(rl, "key-b");
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.remaining, 2);
    /* Keys that differ by one byte, and the empty key, are their own. */
    assert_int_equal(s_take(rl, "key-A").remaining, 2);
    assert_int_equal(s_take(rl, "").remaining, 2);
    assert_int_equal(s_take(rl, "key-a").allowed, 0);
    ratelimit_destroy(&rl);
}

static void test_clock_going_back_refills_nothing(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(1, 2, 1);
    assert_int_equal(s_take(rl, "k").allowed, 1);
    assert_int_equal(s_take(rl, "k").allowed, 1);
    s_now_us -= 60LL * 1000000;
    assert_int_equal(s_take(rl, "k").allowed, 0);
    /* Time comes back to where it was: still nothing earned. */
    s_now_us += 60LL * 1000000;
    assert_int_equal(s_take(rl, "k").allowed, 0);
    s_now_us += 1000000;
    assert_int_equal(s_take(rl, "k").allowed, 1);
    ratelimit_destroy(&rl);
}

static void test_bounded_table_keeps_hot_key(void **state)
{
    (void)state;
    ratelimit_t *rl = s_new(1, 5, 1);
    for (int i = 0; i < 5; i++)
        assert_int_equal(s_take(rl, "hot").allowed, 1);
    assert_int_equal(s_take(rl, "hot").allowed, 0);
    /* Far more keys than the table holds, each used once: they are fuller
     * than the drained hot key, so they are the ones evicted. */
    char key[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "cold-%d", i);
        assert_int_equal(s_take(rl, key).allowed, 1);
    }
    assert_int_equal(s_take(rl, "hot").allowed, 0);
    ratelimit_destroy(&rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_refuses_bad_values),
        cmocka_unit_test(test_burst_then_refusal),
        cmocka_unit_test(test_take_n_local),
        cmocka_unit_test(test_default_share_is_half),
        cmocka_unit_test(test_refill_over_time),
        cmocka_unit_test(test_slow_rate_retry_after),
        cmocka_unit_test(test_small_burst_share_still_passes_one),
        cmocka_unit_test(test_lower_share_clips_buckets),
        cmocka_unit_test(test_keys_are_isolated),
        cmocka_unit_test(test_clock_going_back_refills_nothing),
        cmocka_unit_test(test_bounded_table_keeps_hot_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
