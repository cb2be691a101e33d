/*
 * test_api_ratelimit - per-key rate limits as a client sees them: the
 * RateLimit-* headers, 429 with Retry-After once the burst is spent, keys
 * limited apart, and Redis dying under a running API node: requests still
 * succeed, within the conservative local share.
 *
 * The API node gets its own redis-server (a real one, started here) so the
 * test can kill it without disturbing other tests.
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

#include "api_util.h"

static api_env_t E;
static harness_proc_t *s_redis;

static int s_setup(void **state)
{
    (void)state;
    int port = harness_free_port();
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    char *argv[] = {"/usr/bin/redis-server", "--port", port_s, "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", NULL};
    s_redis = harness_spawn("redis", argv, NULL);
    if (!s_redis)
        return -1;
    usleep(300 * 1000);
    static char env_port[48];
    snprintf(env_port, sizeof env_port, "POSTCHI_REDIS_PORT=%d", port);
    /* 2 requests a second, burst 6: the local share after Redis dies is
     * half of each (1/s, burst 3). */
    char *extra[] = {env_port, "POSTCHI_RATE_LIMIT_RPS=2", "POSTCHI_RATE_LIMIT_BURST=6", NULL};
    return api_env_start(&E, extra);
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = api_env_stop(&E);
    if (s_redis)
        harness_stop(s_redis, SIGTERM, 5000);
    return bad;
}

static int s_hdr_int(api_resp_t *r, const char *name)
{
    char v[32];
    if (!api_resp_header(r, name, v, sizeof v))
        return -1;
    return atoi(v);
}

static void test_burst_then_429(void **state)
{
    (void)state;
    api_resp_t r;
    int ok = 0, refused = 0, last_remaining = 1000;
    for (int i = 0; i < 10; i++) {
        api_call(&E, "GET", "/api/v1/auth/whoami", E.key_read, NULL, NULL, &r);
        if (r.status == 200) {
            ok++;
            assert_int_equal(s_hdr_int(&r, "RateLimit-Limit"), 6);
            int rem = s_hdr_int(&r, "RateLimit-Remaining");
            assert_true(rem >= 0 && rem < last_remaining);
            last_remaining = rem;
        } else {
            assert_int_equal(r.status, 429);
            assert_true(s_hdr_int(&r, "Retry-After") >= 1);
            assert_int_equal(s_hdr_int(&r, "RateLimit-Remaining"), 0);
            refused++;
        }
        api_resp_free(&r);
    }
    /* Six in the burst, perhaps one refilled while we ran. */
    assert_true(ok >= 6 && ok <= 7);
    assert_true(refused >= 3);

    /* Another key has its own bucket. */
    api_call(&E, "GET", "/api/v1/auth/whoami", E.key_full, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);

    sbuf_t *m = sbuf_new(4096);
    assert_int_equal(harness_http_get(E.port, "/metrics", m), 200);
    assert_non_null(strstr(sbuf_data(m), "postchi_api_ratelimit_refusals_total "));
    assert_null(strstr(sbuf_data(m), "postchi_api_ratelimit_refusals_total 0\n"));
    sbuf_destroy(&m);
}

static void test_redis_down_local_limit(void **state)
{
    (void)state;
    harness_kill9(s_redis);
    s_redis = NULL;
    sleep(1);
    api_resp_t r;
    int ok = 0, refused = 0;
    for (int i = 0; i < 8; i++) {
        api_call(&E, "GET", "/api/v1/auth/whoami", E.key_send, NULL, NULL, &r);
        if (r.status == 200)
            ok++;
        else if (r.status == 429)
            refused++;
        else
            fail_msg("unexpected status %d with Redis down", r.status);
        api_resp_free(&r);
    }
    /* Requests still succeed, but only within the local share (burst 3). */
    assert_true(ok >= 3 && ok <= 4);
    assert_true(refused >= 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_429),
        cmocka_unit_test(test_redis_down_local_limit),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
