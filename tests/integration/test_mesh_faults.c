/*
 * test_mesh_faults - what bad input and faults get, with real processes:
 * hostile frames at the broker and at a worker (counted, never a crash or
 * a stuck socket), PostgreSQL or Redis missing at start (a clear message and
 * a non-zero exit, or a bounded wait), and the metrics every process
 * exposes (valid for promtool, and covering every name the dashboards and
 * alerts use).
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

#include <zmq.h>

#include "envelope.h"
#include "mesh_util.h"

/* The API node refuses to start without a login-token key. */
#define TEST_API_SECRETS "POSTCHI_JWT_SECRET=postchi-test-secret-0123456789abcdef0123456789"

static size_t s_frame(sbuf_t *out, msg_type_t type, const char *target, const char *sender,
                      uint64_t corr)
{
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = type,
        .target = target,
        .target_len = strlen(target),
        .sender = sender,
        .sender_len = strlen(sender),
        .name = "ping",
        .name_len = 4,
        .corr = corr,
    };
    sbuf_reset(out);
    assert_int_equal(envelope_encode(&env, out), 0);
    return sbuf_len(out);
}

static void test_hostile_frames_at_broker(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    setenv("POSTCHI_MAX_FRAME_BYTES", "4096", 1);
    assert_int_equal(mesh_start_broker(&m), 0);
    unsetenv("POSTCHI_MAX_FRAME_BYTES");
    assert_int_equal(mesh_start_worker(&m, 0), 0);
    assert_int_equal(mesh_wait_live(&m, 1, 10000), 0);

    void *zctx = zmq_ctx_new();
    void *raw = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(raw, m.endpoint), 0);
    sbuf_t *f = sbuf_new(256);
    /* garbage, a truncated envelope, a wrong version, two-part messages */
    assert_true(zmq_send(raw, "\xff\x00garbage", 9, 0) == 9);
    size_t n = s_frame(f, MSG_SEND, "ping/1", "node/raw", 1);
    assert_true(zmq_send(raw, sbuf_data(f), n - 3, 0) >= 0);
    char bad[256];
    memcpy(bad, sbuf_data(f), n);
    bad[1] = 2; /* version field: positive fixint right after the array head */
    assert_true(zmq_send(raw, bad, n, 0) >= 0);
    assert_true(zmq_send(raw, "a", 1, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(raw, "b", 1, 0) >= 0);
    for (int i = 0; i < 200; i++) /* a flood: logged once, counted each time */
        assert_true(zmq_send(raw, "junk", 4, 0) >= 0);
    /* Oversized: ZeroMQ's own limit drops the connection before we read it. */
    char *big = calloc(1, 8192);
    assert_true(zmq_send(raw, big, 8192, 0) >= 0);
    free(big);

    int64_t deadline = harness_now_ms() + 5000;
    while (harness_now_ms() < deadline &&
           !(mesh_metric(m.broker_metrics, "postchi_broker_frames_malformed_total") >= 204))
        usleep(50 * 1000);
    assert_true(mesh_metric(m.broker_metrics, "postchi_broker_frames_malformed_total") >= 204);

    /* The broker still routes for everyone else. */
    mesh_client_t *c = mesh_client(&m);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/1", "ping", NULL, 0, 5000, reply, err), 0);
    /* And the one log line per peer per minute holds. */
    sbuf_t *logtext = sbuf_new(4096);
    FILE *lf = fopen(harness_log_path(m.broker), "r");
    assert_non_null(lf);
    char line[1024];
    int lines = 0;
    while (fgets(line, sizeof line, lf))
        if (strstr(line, "malformed frame"))
            lines++;
    fclose(lf);
    assert_true(lines >= 1 && lines <= 2);

    sbuf_destroy(&logtext);
    sbuf_destroy(&f);
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    zmq_close(raw);
    zmq_ctx_term(zctx);
    assert_int_equal(mesh_stop_all(&m), 0);
}

/* Receive one frame from the fake broker for identity id that is not a
 * heartbeat; returns its size or -1 on timeout. */
static int s_fake_recv(void *router, char *buf, size_t size, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < deadline) {
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        char id[64];
        if (zmq_recv(router, id, sizeof id, 0) < 0)
            continue;
        int n = zmq_recv(router, buf, size, 0);
        envelope_t env;
        const char *why;
        if (n > 0 && envelope_decode(buf, (size_t)n, size, &env, &why) == 0 &&
            env.type != MSG_HEARTBEAT && env.type != MSG_HELLO)
            return n;
    }
    return -1;
}

static void test_hostile_frames_at_worker(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    /* A fake broker: a plain ROUTER on the broker port, so the test can send
     * the worker frames no real broker would forward. */
    void *zctx = zmq_ctx_new();
    void *router = zmq_socket(zctx, ZMQ_ROUTER);
    int zero = 0, one = 1;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    assert_int_equal(zmq_bind(router, m.endpoint), 0);
    assert_int_equal(mesh_start_worker(&m, 0), 0);

    /* Wait for the worker's HELLO so ROUTER knows the identity "w0". */
    char buf[4096];
    int64_t deadline = harness_now_ms() + 5000;
    int hello = 0;
    while (!hello && harness_now_ms() < deadline) {
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        char id[64];
        int idn = zmq_recv(router, id, sizeof id, 0);
        zmq_recv(router, buf, sizeof buf, 0);
        hello = idn == 2 && memcmp(id, "w0", 2) == 0;
    }
    assert_true(hello);

    const char *junk[] = {"", "\x97", "\x97\x01\x04", "\xc1\xc1\xc1", "\x97\x01\x04\xdb\xff\xff\xff\xff"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        assert_true(zmq_send(router, "w0", 2, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_send(router, junk[i], strlen(junk[i]) + (i == 0), 0) >= 0);
    }
    /* Then a real request: the worker must still answer it. */
    sbuf_t *f = sbuf_new(64);
    size_t n = s_frame(f, MSG_SEND, "ping/42", "node/tester", 77);
    assert_true(zmq_send(router, "w0", 2, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(router, sbuf_data(f), n, 0) >= 0);
    int got = s_fake_recv(router, buf, sizeof buf, 5000);
    assert_true(got > 0);
    envelope_t env;
    const char *why;
    assert_int_equal(envelope_decode(buf, (size_t)got, sizeof buf, &env, &why), 0);
    assert_int_equal(env.type, MSG_REPLY);
    assert_true(env.corr == 77);
    assert_true(env.target_len == 11 && memcmp(env.target, "node/tester", 11) == 0);
    assert_true(mesh_metric(m.worker_metrics[0], "postchi_worker_frames_malformed_total") >= 5);

    sbuf_destroy(&f);
    assert_int_equal(mesh_stop_all(&m), 0);
    zmq_close(router);
    zmq_ctx_term(zctx);
}

/* Start `postchi <sub>` with one store pointed at a closed port and check
 * the exit status, the message and (with a wait) that it waited. */
static void s_missing_store(const char *sub, const char *setting, const char *needle, int wait_ms)
{
    char port_env[64], wait_env[64], id_env[32] = "POSTCHI_NODE_ID=lonely";
    snprintf(port_env, sizeof port_env, "%s=%d", setting, harness_free_port());
    snprintf(wait_env, sizeof wait_env, "POSTCHI_STARTUP_WAIT_MS=%d", wait_ms);
    char api_env[64];
    snprintf(api_env, sizeof api_env, "POSTCHI_API_PORT=%d", harness_free_port());
    char *env[40];
    int k = 0;
    char *const *stores = harness_server_env(NULL);
    for (int i = 0; stores[i] && k < 30; i++)
        env[k++] = stores[i];
    env[k++] = port_env; /* after the stores, so it wins */
    env[k++] = wait_env;
    env[k++] = id_env;
    env[k++] = api_env;
    env[k++] = TEST_API_SECRETS;
    env[k] = NULL;
    int64_t t0 = harness_now_ms();
    harness_proc_t *p = harness_spawn_postchi(sub, sub, env);
    assert_non_null(p);
    while (harness_alive(p) && harness_now_ms() - t0 < 15000)
        usleep(20 * 1000);
    int64_t took = harness_now_ms() - t0;
    char path[512];
    snprintf(path, sizeof path, "%s", harness_log_path(p));
    int st = harness_stop(p, SIGKILL, 1000);
    assert_int_equal(st, 1);
    if (wait_ms > 0)
        assert_true(took >= wait_ms / 2);
    FILE *lf = fopen(path, "r");
    assert_non_null(lf);
    char line[2048];
    int found = 0;
    while (fgets(line, sizeof line, lf))
        if (strstr(line, needle) && strstr(line, "level=error"))
            found = 1;
    fclose(lf);
    assert_true(found);
}

static void test_missing_stores_at_start(void **state)
{
    (void)state;
    s_missing_store("worker", "POSTCHI_PG_PORT", "cannot connect to PostgreSQL", 0);
    s_missing_store("worker", "POSTCHI_REDIS_PORT", "cannot connect to Redis", 0);
    s_missing_store("api", "POSTCHI_PG_PORT", "cannot connect to PostgreSQL", 1500);
    s_missing_store("api", "POSTCHI_REDIS_PORT", "cannot connect to Redis", 0);
}

static void s_save(const char *path, const sbuf_t *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fwrite(sbuf_data(text), 1, sbuf_len(text), fp);
    fclose(fp);
}

static void test_metrics_scrape(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    assert_int_equal(mesh_start_broker(&m), 0);
    assert_int_equal(mesh_start_worker(&m, 0), 0);
    assert_int_equal(mesh_wait_live(&m, 1, 10000), 0);
    int api_port = harness_free_port();
    char api_env[64], ep_env[96];
    snprintf(api_env, sizeof api_env, "POSTCHI_API_PORT=%d", api_port);
    snprintf(ep_env, sizeof ep_env, "POSTCHI_BROKER_ENDPOINT=%s", m.endpoint);
    char *env[40];
    int k = 0;
    char *const *stores = harness_server_env(NULL);
    for (int i = 0; stores[i] && k < 30; i++)
        env[k++] = stores[i];
    env[k++] = api_env;
    env[k++] = ep_env;
    env[k++] = "POSTCHI_NODE_ID=api0";
    env[k++] = TEST_API_SECRETS;
    env[k] = NULL;
    harness_proc_t *api = harness_spawn_postchi("api", "api", env);
    assert_non_null(api);
    assert_int_equal(harness_wait_http(api_port, "/readyz", 10000), 0);
    sbuf_t *ready = sbuf_new(128);
    assert_int_equal(harness_http_get(api_port, "/readyz", ready), 200);
    assert_non_null(strstr(sbuf_data(ready), "\"postgres\":true"));
    assert_non_null(strstr(sbuf_data(ready), "\"broker\":true"));

    mesh_client_t *c = mesh_client(&m);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/m", "ping", NULL, 0, 5000, reply, err), 0);

    sbuf_t *all = sbuf_new(16384);
    int ports[3] = {m.broker_metrics, m.worker_metrics[0], api_port};
    char path[256];
    for (int i = 0; i < 3; i++) {
        sbuf_t *body = sbuf_new(8192);
        assert_int_equal(harness_http_get(ports[i], "/metrics", body), 200);
        snprintf(path, sizeof path, "/tmp/postchi-metrics-%d-%d.txt", (int)getpid(), i);
        s_save(path, body);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
        int rc = system(cmd);
        assert_int_equal(rc, 0);
        unlink(path);
        sbuf_append(all, sbuf_data(body), sbuf_len(body));
        sbuf_destroy(&body);
    }
    /* Every metric a dashboard or alert uses is really exported. */
    FILE *lf = fopen(POSTCHI_SOURCE_DIR "/ops/metrics-exported.txt", "r");
    assert_non_null(lf);
    char name[256];
    int checked = 0;
    while (fgets(name, sizeof name, lf)) {
        name[strcspn(name, " \r\n")] = 0;
        if (!name[0] || name[0] == '#')
            continue;
        /* "# TYPE name": a family with no series yet is still exported. */
        char needle[300];
        snprintf(needle, sizeof needle, "# TYPE %s ", name);
        if (!strstr(sbuf_data(all), needle))
            fail_msg("metric %s is listed as exported but no process serves it", name);
        checked++;
    }
    fclose(lf);
    assert_true(checked >= 20);

    sbuf_destroy(&all);
    sbuf_destroy(&ready);
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(harness_stop(api, SIGTERM, 10000), 0);
    assert_int_equal(mesh_stop_all(&m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_frames_at_broker),
        cmocka_unit_test(test_hostile_frames_at_worker),
        cmocka_unit_test(test_missing_stores_at_start),
        cmocka_unit_test(test_metrics_scrape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
