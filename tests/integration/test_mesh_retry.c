/*
 * test_mesh_retry - requests across a worker's death, with real processes:
 * a real broker and workers, real clients, ZeroMQ over loopback TCP.
 *
 * Covers: clients calling the actors of a worker that is killed with
 * kill -9 in the middle of their burst (and right after it) all get their
 * answer within each call's timeout, from a survivor; against a fake
 * broker that answers late or never, mesh_client_call resends under the
 * same correlation id on its schedule and within its timeout, discards the
 * late duplicate answer, takes an error as final, and
 * mesh_client_call_once never resends; a worker drops a resend that
 * reaches the activation that already had the original.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "config.h"
#include "envelope.h"
#include "mesh_util.h"

#define BURST_THREADS 4
#define BURST_TIMEOUT_MS 3000
#define VICTIM_KEYS_MAX 256

/* The node id in a ping reply "<node> <count>", or "" */
static void s_pong_node(const char *body, size_t len, char *node, size_t size)
{
    size_t n = 0;
    while (n < len && n < size - 1 && body[n] != ' ')
        n++;
    memcpy(node, body, n);
    node[n] = 0;
}

typedef struct {
    mesh_client_t *c;            /* this thread's client */
    char (*keys)[32];            /* the victim's actors */
    int nkeys;                   /* how many */
    atomic_int *stop;            /* set by the main thread */
    const char *victim;          /* node id of the killed worker */
    atomic_llong *killed_at;     /* when it was killed, 0 before */
    int calls;                   /* calls made */
    int after_kill;              /* calls started after the kill */
    int failed;                  /* calls with no answer or an error */
    int from_victim_after;       /* answers after the kill naming the victim */
    long long slowest_ms;        /* longest call */
    char first_error[128];       /* what the first failure said */
} burst_t;

/* Call the victim's actors one after another until told to stop. Results
 * are recorded, never asserted here: cmocka's asserts are not for threads. */
static void *s_burst(void *arg)
{
    burst_t *b = arg;
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    for (int i = 0; !atomic_load(b->stop) && reply && err; i++) {
        long long killed = atomic_load(b->killed_at);
        sbuf_reset(reply);
        sbuf_reset(err);
        int64_t t0 = harness_now_ms();
        int rc = mesh_client_call(b->c, b->keys[i % b->nkeys], "ping", NULL, 0, BURST_TIMEOUT_MS,
                                  reply, err);
        int64_t took = harness_now_ms() - t0;
        b->calls++;
        if (killed)
            b->after_kill++;
        if (took > b->slowest_ms)
            b->slowest_ms = took;
        if (rc != 0) {
            if (!b->failed)
                snprintf(b->first_error, sizeof b->first_error, "rc=%d %s after %lld ms", rc,
                         rc == -1 ? sbuf_data(err) : "timeout", (long long)took);
            b->failed++;
            continue;
        }
        char node[64];
        s_pong_node(sbuf_data(reply), sbuf_len(reply), node, sizeof node);
        if (killed && strcmp(node, b->victim) == 0)
            b->from_victim_after++;
    }
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    return NULL;
}

static void test_kill_mid_burst_every_call_answered(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 0); /* default heartbeats: missed beats alone take 3 s */
    assert_int_equal(mesh_start_broker(&m), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(mesh_start_worker(&m, i), 0);
    assert_int_equal(mesh_wait_live(&m, 3, 10000), 0);

    /* The actors the victim owns: they are the ones whose calls can be lost. */
    mesh_client_t *c = mesh_client(&m);
    assert_non_null(c);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    static char keys[VICTIM_KEYS_MAX][32];
    int nkeys = 0;
    char victim[64] = "";
    for (int i = 0; i < 600 && nkeys < VICTIM_KEYS_MAX; i++) {
        char target[32], node[64];
        snprintf(target, sizeof target, "ping/burst-%d", i);
        sbuf_reset(reply);
        assert_int_equal(mesh_client_call(c, target, "ping", NULL, 0, 5000, reply, err), 0);
        s_pong_node(sbuf_data(reply), sbuf_len(reply), node, sizeof node);
        if (!victim[0])
            snprintf(victim, sizeof victim, "%s", node);
        if (strcmp(node, victim) == 0)
            snprintf(keys[nkeys++], sizeof keys[0], "%s", target);
    }
    assert_true(nkeys >= 50);
    int vi = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(m.worker_id[i], victim) == 0)
            vi = i;
    assert_true(vi >= 0);

    atomic_int stop = 0;
    atomic_llong killed_at = 0;
    burst_t b[BURST_THREADS];
    pthread_t th[BURST_THREADS];
    for (int i = 0; i < BURST_THREADS; i++) {
        memset(&b[i], 0, sizeof b[i]);
        b[i].c = mesh_client(&m);
        assert_non_null(b[i].c);
        b[i].keys = keys;
        b[i].nkeys = nkeys;
        b[i].stop = &stop;
        b[i].victim = victim;
        b[i].killed_at = &killed_at;
    }
    for (int i = 0; i < BURST_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, s_burst, &b[i]), 0);
    /* Calls are in flight to the victim (in its pipe, its mailbox, on its
     * threads) when it dies, and the next ones leave at once. */
    usleep(300 * 1000);
    harness_kill9(m.workers[vi]);
    m.workers[vi] = NULL;
    atomic_store(&killed_at, harness_now_ms());
    usleep(1500 * 1000);
    atomic_store(&stop, 1);
    int calls = 0, after = 0, failed = 0, stale = 0;
    long long slowest = 0;
    for (int i = 0; i < BURST_THREADS; i++) {
        pthread_join(th[i], NULL);
        calls += b[i].calls;
        after += b[i].after_kill;
        failed += b[i].failed;
        stale += b[i].from_victim_after;
        if (b[i].slowest_ms > slowest)
            slowest = b[i].slowest_ms;
        if (b[i].failed)
            fprintf(stderr, "thread %d: %d of %d calls failed, first: %s\n", i, b[i].failed,
                    b[i].calls, b[i].first_error);
        mesh_client_destroy(&b[i].c);
    }
    fprintf(stderr, "%d calls (%d after the kill), %d failed, slowest %lld ms\n", calls, after,
            failed, slowest);
    assert_int_equal(failed, 0);
    assert_true(after >= BURST_THREADS * 10);
    assert_int_equal(stale, 0);
    assert_true(slowest < BURST_TIMEOUT_MS);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

/* A fake broker on its own thread: a plain ROUTER that records every
 * request frame a client sends (heartbeats and hellos aside) and answers
 * the copy numbered answer_on (1-based; 0: none) with a REPLY whose body
 * is "answer", or an ERROR when error is set, followed, when late is set,
 * by a second REPLY "late" under the same correlation id. */
#define FAKE_COPIES 16
typedef struct {
    void *zctx;                  /* the fake's own context */
    char endpoint[64];           /* where it listens */
    atomic_int answer_on;        /* copy to answer, 0 for none */
    int error;                   /* answer with ERROR "queue_full" */
    atomic_int late;             /* then a duplicate REPLY */
    atomic_int stop;             /* set by the test */
    atomic_int copies;           /* request frames received */
    atomic_int hellos;           /* HELLO frames received */
    uint64_t corr[FAKE_COPIES];  /* each copy's correlation id */
    int64_t at[FAKE_COPIES];     /* when each arrived */
    char body[FAKE_COPIES][16];  /* each copy's body (short by design) */
    char target[FAKE_COPIES][32];/* each copy's target */
    int bad_frames;              /* frames that did not decode */
} fake_t;

static void s_fake_answer(void *router, const char *id, size_t id_len, const envelope_t *req,
                          msg_type_t type, const char *text)
{
    sbuf_t *body = sbuf_new(64), *out = sbuf_new(256);
    if (!body || !out)
        goto done;
    if (type == MSG_ERROR)
        envelope_error_encode(body, "queue_full", "the fake says so");
    else
        sbuf_append(body, text, strlen(text));
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = type,
        .target = req->sender,
        .target_len = req->sender_len,
        .sender = req->target,
        .sender_len = req->target_len,
        .name = req->name,
        .name_len = req->name_len,
        .corr = req->corr,
        .body = sbuf_data(body),
        .body_len = sbuf_len(body),
    };
    if (envelope_encode(&env, out) == 0) {
        zmq_send(router, id, id_len, ZMQ_SNDMORE);
        zmq_send(router, sbuf_data(out), sbuf_len(out), 0);
    }
done:
    sbuf_destroy(&body);
    sbuf_destroy(&out);
}

static void *s_fake_run(void *arg)
{
    fake_t *f = arg;
    void *router = zmq_socket(f->zctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(router, f->endpoint) != 0) {
        f->bad_frames = -1;
        zmq_close(router);
        return NULL;
    }
    char id[128], buf[4096];
    while (!atomic_load(&f->stop)) {
        zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 20) <= 0)
            continue;
        int idn = zmq_recv(router, id, sizeof id, 0);
        int n = zmq_recv(router, buf, sizeof buf, 0);
        envelope_t env;
        const char *why;
        if (idn <= 0 || n <= 0 || envelope_decode(buf, (size_t)n, sizeof buf, &env, &why) != 0) {
            f->bad_frames++;
            continue;
        }
        if (env.type == MSG_HELLO)
            atomic_fetch_add(&f->hellos, 1);
        if (env.type != MSG_SEND)
            continue;
        int k = atomic_load(&f->copies);
        if (k < FAKE_COPIES) {
            f->corr[k] = env.corr;
            f->at[k] = harness_now_ms();
            snprintf(f->body[k], sizeof f->body[k], "%.*s", (int)env.body_len,
                     env.body_len ? (const char *)env.body : "");
            snprintf(f->target[k], sizeof f->target[k], "%.*s", (int)env.target_len,
                     env.target);
        }
        atomic_store(&f->copies, k + 1);
        if (k + 1 != atomic_load(&f->answer_on))
            continue;
        s_fake_answer(router, id, (size_t)idn, &env, f->error ? MSG_ERROR : MSG_REPLY, "answer");
        if (atomic_load(&f->late))
            s_fake_answer(router, id, (size_t)idn, &env, MSG_REPLY, "late");
    }
    zmq_close(router);
    return NULL;
}

/* Start a fake broker answering copy answer_on, and a client of it,
 * connected (its HELLO arrived) so that the first copy is not held back by
 * the connection while the clock runs. */
static mesh_client_t *s_fake_start(fake_t *f, pthread_t *th, int answer_on, int error, int late)
{
    memset(f, 0, sizeof *f);
    f->zctx = zmq_ctx_new();
    assert_non_null(f->zctx);
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", harness_free_port());
    atomic_store(&f->answer_on, answer_on);
    f->error = error;
    atomic_store(&f->late, late);
    assert_int_equal(pthread_create(th, NULL, s_fake_run, f), 0);
    sbuf_t *err = sbuf_new(64);
    config_t *cfg = config_new();
    assert_int_equal(config_set(cfg, "broker_endpoint", f->endpoint, err), 0);
    mesh_client_t *c = mesh_client_new(cfg, NULL, err);
    assert_non_null(c);
    int64_t deadline = harness_now_ms() + 5000;
    while (!atomic_load(&f->hellos) && harness_now_ms() < deadline)
        usleep(10 * 1000);
    assert_true(atomic_load(&f->hellos) > 0);
    config_destroy(&cfg);
    sbuf_destroy(&err);
    return c;
}

static void s_fake_stop(fake_t *f, pthread_t th, mesh_client_t **c)
{
    mesh_client_destroy(c);
    atomic_store(&f->stop, 1);
    pthread_join(th, NULL);
    zmq_ctx_term(f->zctx);
    assert_int_equal(f->bad_frames, 0);
}

static void test_call_resends_same_request_until_answered(void **state)
{
    (void)state;
    fake_t f;
    pthread_t th;
    mesh_client_t *c = s_fake_start(&f, &th, 3, 0, 1);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);

    /* Timeout 2 s: resends after 250 ms, then 500 ms more; the third copy
     * is answered, twice. */
    int64_t t0 = harness_now_ms();
    assert_int_equal(mesh_client_call(c, "ping/r", "ping", "hi", 2, 2000, reply, err), 0);
    int64_t took = harness_now_ms() - t0;
    assert_int_equal(sbuf_len(reply), 6);
    assert_memory_equal(sbuf_data(reply), "answer", 6);
    assert_int_equal(atomic_load(&f.copies), 3);
    for (int i = 0; i < 3; i++) {
        assert_true(f.corr[i] == f.corr[0]);
        assert_string_equal(f.body[i], "hi");
        assert_string_equal(f.target[i], "ping/r");
    }
    assert_true(f.corr[0] != 0);
    int64_t gap1 = f.at[1] - f.at[0], gap2 = f.at[2] - f.at[1];
    fprintf(stderr, "resent after %lld ms and %lld ms more, answered in %lld ms\n",
            (long long)gap1, (long long)gap2, (long long)took);
    assert_true(gap1 >= 200 && gap1 < 1000);
    assert_true(gap2 >= 450 && gap2 < 1500);
    assert_true(took < 2000);

    /* The late duplicate is not taken for the next call's answer: that
     * call's first copy is answered (copy 4 here, so set the fake to it). */
    atomic_store(&f.answer_on, 4);
    atomic_store(&f.late, 0);
    sbuf_reset(reply);
    assert_int_equal(mesh_client_call(c, "ping/s", "ping", "again", 5, 2000, reply, err), 0);
    assert_memory_equal(sbuf_data(reply), "answer", 6);
    assert_int_equal(atomic_load(&f.copies), 4);
    assert_true(f.corr[3] != f.corr[0]);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    s_fake_stop(&f, th, &c);
}

static void test_call_resends_stay_within_timeout(void **state)
{
    (void)state;
    fake_t f;
    pthread_t th;
    mesh_client_t *c = s_fake_start(&f, &th, 0, 0, 0);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);

    /* Never answered: the original and three resends (125, 375, 875 ms),
     * then the timeout, on time. */
    int64_t t0 = harness_now_ms();
    assert_int_equal(mesh_client_call(c, "ping/t", "ping", NULL, 0, 1000, reply, err), -2);
    int64_t took = harness_now_ms() - t0;
    usleep(300 * 1000); /* nothing more may follow the timeout */
    assert_int_equal(atomic_load(&f.copies), 4);
    assert_true(took >= 1000 && took < 1300);
    assert_true(f.at[3] - f.at[0] < 1000);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    s_fake_stop(&f, th, &c);
}

static void test_call_once_never_resends(void **state)
{
    (void)state;
    fake_t f;
    pthread_t th;
    mesh_client_t *c = s_fake_start(&f, &th, 0, 0, 0);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    int64_t t0 = harness_now_ms();
    assert_int_equal(mesh_client_call_once(c, "ping/o", "ping", NULL, 0, 1000, reply, err), -2);
    assert_true(harness_now_ms() - t0 >= 1000);
    usleep(200 * 1000);
    assert_int_equal(atomic_load(&f.copies), 1);
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    s_fake_stop(&f, th, &c);
}

static void test_call_takes_an_error_as_final(void **state)
{
    (void)state;
    fake_t f;
    pthread_t th;
    mesh_client_t *c = s_fake_start(&f, &th, 1, 1, 0);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/e", "ping", NULL, 0, 1000, reply, err), -1);
    assert_non_null(strstr(sbuf_data(err), "queue_full"));
    usleep(400 * 1000);
    assert_int_equal(atomic_load(&f.copies), 1);
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    s_fake_stop(&f, th, &c);
}

/* The ping count says how many requests the activation handled. */
static long s_pong_count(const char *body, size_t len)
{
    const char *sp = memchr(body, ' ', len);
    return sp ? strtol(sp + 1, NULL, 10) : -1;
}

static void test_worker_drops_a_repeat_its_actor_had(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    assert_int_equal(mesh_start_broker(&m), 0);
    assert_int_equal(mesh_start_worker(&m, 0), 0);
    assert_int_equal(mesh_wait_live(&m, 1, 10000), 0);
    mesh_client_t *c = mesh_client(&m);
    assert_non_null(c);

    uint64_t corr = mesh_client_request(c, "ping/dup", "ping", NULL, 0);
    assert_true(corr != 0);
    mesh_reply_t r;
    int answers = 0;
    int64_t deadline = harness_now_ms() + 5000;
    while (!answers && harness_now_ms() < deadline)
        if (mesh_client_wait(c, 100, &r) == 1 && r.corr == corr)
            answers++;
    assert_int_equal(answers, 1);
    assert_int_equal(s_pong_count(r.body, r.body_len), 1);

    /* The same request again, as a client that heard nothing would send it:
     * the activation had it, so it is dropped, not handled again. */
    assert_int_equal(mesh_client_resend(c, corr, "ping/dup", "ping", NULL, 0), 0);
    deadline = harness_now_ms() + 500;
    while (harness_now_ms() < deadline)
        if (mesh_client_wait(c, 50, &r) == 1 && r.corr == corr)
            answers++;
    assert_int_equal(answers, 1);
    assert_int_equal(mesh_metric(m.worker_metrics[0], "postchi_worker_requests_repeated_total"), 1);

    /* A new request is handled: the activation saw two, not three. */
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/dup", "ping", NULL, 0, 5000, reply, err), 0);
    assert_int_equal(s_pong_count(sbuf_data(reply), sbuf_len(reply)), 2);
    /* And one-way sends are never taken for repeats. */
    assert_int_equal(mesh_client_send(c, "ping/dup", "ping", NULL, 0), 0);
    assert_int_equal(mesh_client_send(c, "ping/dup", "ping", NULL, 0), 0);
    sbuf_reset(reply);
    assert_int_equal(mesh_client_call(c, "ping/dup", "ping", NULL, 0, 5000, reply, err), 0);
    assert_int_equal(s_pong_count(sbuf_data(reply), sbuf_len(reply)), 5);
    assert_int_equal(mesh_metric(m.worker_metrics[0], "postchi_worker_requests_repeated_total"), 1);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_resends_same_request_until_answered),
        cmocka_unit_test(test_call_resends_stay_within_timeout),
        cmocka_unit_test(test_call_once_never_resends),
        cmocka_unit_test(test_call_takes_an_error_as_final),
        cmocka_unit_test(test_worker_drops_a_repeat_its_actor_had),
        cmocka_unit_test(test_kill_mid_burst_every_call_answered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
