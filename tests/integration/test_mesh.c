/*
 * test_mesh - the mesh as a user runs it: a real broker and real workers
 * (separate processes), a real client, ZeroMQ over loopback TCP.
 *
 * Covers: ping round trips across 3 workers; kill -9 of a worker while
 * 10,000 ping actors are in use (every call made from the moment of the
 * death is answered by a survivor within 5 s, resent when unanswered, and
 * only the dead worker's share moves); broker
 * restart (whole again within 5 s, no manual step); passivation; and that
 * every process exits cleanly on SIGTERM (under the sanitizer build, a leak
 * makes that exit status non-zero).
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

#include "envelope.h"
#include "mesh_util.h"

#define NKEYS 10000

/* Parse a ping reply "<node> <count>". */
static void s_parse_pong(const void *body, size_t len, char *node, size_t node_size,
                         long *count)
{
    char buf[256];
    size_t n = len < sizeof buf - 1 ? len : sizeof buf - 1;
    memcpy(buf, body, n);
    buf[n] = 0;
    char *sp = strchr(buf, ' ');
    assert_non_null(sp);
    *sp = 0;
    size_t k = strlen(buf) < node_size - 1 ? strlen(buf) : node_size - 1;
    memcpy(node, buf, k);
    node[k] = 0;
    *count = strtol(sp + 1, NULL, 10);
}

static int s_worker_index(const mesh_t *m, const char *node)
{
    for (int i = 0; i < m->nworkers; i++)
        if (strcmp(m->worker_id[i], node) == 0)
            return i;
    return -1;
}

/* Silence after which s_ping_all sends a request again. */
#define RESEND_MS 500

/* Call ping/<key> for every key in [0, n) with a window of requests in
 * flight; record the answering worker per key (-1 when unanswered within
 * timeout_ms). Returns how many were answered. A request unanswered for
 * RESEND_MS is sent again under its correlation id, as a pipelining caller
 * must (mesh_client_resend): one routed to a worker in the moment it died
 * is lost with it. Replies to other requests (for example late answers)
 * are matched by correlation id. */
static int s_ping_all(mesh_t *m, mesh_client_t *c, int n, int timeout_ms, int *owner,
                      long *count)
{
    uint64_t *corr = calloc((size_t)n, sizeof *corr);
    int64_t *sent = calloc((size_t)n, sizeof *sent);
    assert_non_null(corr);
    assert_non_null(sent);
    int answered = 0, next = 0, inflight = 0;
    for (int i = 0; i < n; i++)
        owner[i] = -1;
    int64_t deadline = harness_now_ms() + timeout_ms;
    int64_t next_scan = harness_now_ms() + RESEND_MS;
    char target[32];
    while ((next < n || inflight > 0) && harness_now_ms() < deadline) {
        while (next < n && inflight < 500) {
            snprintf(target, sizeof target, "ping/%d", next);
            corr[next] = mesh_client_request(c, target, "ping", NULL, 0);
            assert_true(corr[next] != 0);
            sent[next] = harness_now_ms();
            next++;
            inflight++;
        }
        int64_t now = harness_now_ms();
        if (now >= next_scan) {
            for (int i = 0; i < next; i++) {
                if (owner[i] >= 0 || now - sent[i] < RESEND_MS)
                    continue;
                snprintf(target, sizeof target, "ping/%d", i);
                if (mesh_client_resend(c, corr[i], target, "ping", NULL, 0) == 0)
                    sent[i] = now;
            }
            next_scan = now + RESEND_MS / 5;
        }
        mesh_reply_t r;
        int rc = mesh_client_wait(c, RESEND_MS / 5, &r);
        assert_true(rc >= 0);
        if (rc == 0 || r.type != MSG_REPLY)
            continue;
        /* Correlation ids are consecutive from the first request. */
        uint64_t idx = r.corr - corr[0];
        if (idx >= (uint64_t)n || corr[idx] != r.corr || owner[idx] >= 0)
            continue;
        char node[64];
        s_parse_pong(r.body, r.body_len, node, sizeof node, &count[idx]);
        owner[idx] = s_worker_index(m, node);
        assert_true(owner[idx] >= 0);
        answered++;
        inflight--;
    }
    free(corr);
    free(sent);
    return answered;
}

static void test_ping_round_trips_across_three_workers(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    assert_int_equal(mesh_start_broker(&m), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(mesh_start_worker(&m, i), 0);
    assert_int_equal(mesh_wait_live(&m, 3, 10000), 0);

    mesh_client_t *c = mesh_client(&m);
    assert_non_null(c);
    int owner[1000];
    long count[1000];
    assert_int_equal(s_ping_all(&m, c, 1000, 20000, owner, count), 1000);
    int per[3] = {0};
    for (int i = 0; i < 1000; i++) {
        per[owner[i]]++;
        assert_int_equal(count[i], 1); /* first message of a fresh activation */
    }
    for (int i = 0; i < 3; i++)
        assert_true(per[i] > 200); /* every worker owns a share */

    /* The same actor again: same worker, same activation (state kept). */
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/7", "ping", NULL, 0, 5000, reply, err), 0);
    char node[64];
    long n;
    s_parse_pong(sbuf_data(reply), sbuf_len(reply), node, sizeof node, &n);
    assert_int_equal(s_worker_index(&m, node), owner[7]);
    assert_int_equal(n, 2);

    /* An unknown kind is answered with an error, not silence. */
    sbuf_reset(err);
    assert_int_equal(mesh_client_call(c, "nosuchkind/1", "x", NULL, 0, 5000, reply, err), -1);
    assert_non_null(strstr(sbuf_data(err), "unknown_kind"));
    /* So is an address that is not kind/key. */
    sbuf_reset(err);
    assert_int_equal(mesh_client_call(c, "noslash", "x", NULL, 0, 5000, reply, err), -1);
    assert_non_null(strstr(sbuf_data(err), "no_route"));

    double handled = 0;
    for (int i = 0; i < 3; i++)
        handled += mesh_metric(m.worker_metrics[i],
                               "postchi_worker_messages_handled_total{kind=\"ping\"}");
    assert_true(handled >= 1001);
    assert_true(mesh_metric(m.broker_metrics, "postchi_broker_messages_routed_total") >= 2002);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

static void test_worker_kill_moves_only_its_share(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 0); /* default heartbeats: 1 s, dead after 3 missed */
    assert_int_equal(mesh_start_broker(&m), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(mesh_start_worker(&m, i), 0);
    assert_int_equal(mesh_wait_live(&m, 3, 10000), 0);
    mesh_client_t *c = mesh_client(&m);
    assert_non_null(c);

    int *before = calloc(NKEYS, sizeof *before), *after = calloc(NKEYS, sizeof *after);
    long *count = calloc(NKEYS, sizeof *count);
    assert_int_equal(s_ping_all(&m, c, NKEYS, 30000, before, count), NKEYS);
    int victim = before[0];

    harness_kill9(m.workers[victim]);
    m.workers[victim] = NULL;
    int64_t death = harness_now_ms();

    /* Every later call must be answered by a survivor within 5 s of death,
     * starting at once: a request the broker routes to the dead worker
     * before ZeroMQ has seen its connection close is lost with it, and is
     * answered by a survivor when sent again (s_ping_all); once the close
     * is seen, ROUTER_MANDATORY refuses the next send and the broker
     * re-routes without waiting for missed heartbeats. */
    assert_int_equal(s_ping_all(&m, c, NKEYS, 5000, after, count), NKEYS);
    int64_t done = harness_now_ms();
    fprintf(stderr, "all %d actors answered %lld ms after the kill\n", NKEYS,
            (long long)(done - death));
    assert_true(done - death < 5000);
    int moved = 0;
    for (int i = 0; i < NKEYS; i++) {
        assert_true(after[i] != victim);
        if (before[i] != victim)
            assert_int_equal(after[i], before[i]); /* survivors keep their share */
        else
            moved++;
    }
    assert_true(moved > NKEYS / 5);
    assert_int_equal(mesh_wait_live(&m, 2, 10000), 0);

    free(before);
    free(after);
    free(count);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

static void test_broker_restart_heals_without_help(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 0);
    assert_int_equal(mesh_start_broker(&m), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(mesh_start_worker(&m, i), 0);
    assert_int_equal(mesh_wait_live(&m, 2, 10000), 0);
    mesh_client_t *c = mesh_client(&m);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/a", "ping", NULL, 0, 5000, reply, err), 0);

    harness_kill9(m.broker);
    m.broker = NULL;
    assert_int_equal(mesh_start_broker(&m), 0);
    int64_t restarted = harness_now_ms();
    int ok = 0;
    while (harness_now_ms() - restarted < 5000) {
        sbuf_reset(reply);
        sbuf_reset(err);
        /* While no worker has re-announced, the broker holds the request and
         * answers it when one does, or errors: either way, no silence. */
        if (mesh_client_call(c, "ping/b", "ping", NULL, 0, 1000, reply, err) == 0) {
            ok = 1;
            break;
        }
    }
    int64_t healed = harness_now_ms() - restarted;
    fprintf(stderr, "mesh answered %lld ms after the broker restart\n", (long long)healed);
    assert_true(ok);
    assert_int_equal(mesh_wait_live(&m, 2, 5000 - (int)healed > 0 ? 5000 - (int)healed : 1), 0);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

static void test_no_worker_means_held_then_error_not_silence(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    setenv("POSTCHI_BROKER_QUEUE_TTL_MS", "3000", 1);
    assert_int_equal(mesh_start_broker(&m), 0);
    unsetenv("POSTCHI_BROKER_QUEUE_TTL_MS");
    mesh_client_t *c = mesh_client(&m);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);

    /* No worker for longer than the hold time: the sender hears "expired". */
    int64_t t0 = harness_now_ms();
    assert_int_equal(mesh_client_call(c, "ping/x", "ping", NULL, 0, 8000, reply, err), -1);
    assert_non_null(strstr(sbuf_data(err), "expired"));
    int64_t took = harness_now_ms() - t0;
    assert_true(took >= 2500 && took < 7000);
    assert_true(mesh_metric(m.broker_metrics,
                            "postchi_broker_messages_dropped_total{reason=\"expired\"}") >= 1);

    /* A worker that joins while a request is held gets it: a short gap in
     * the mesh delays the call instead of failing it. */
    uint64_t corr = mesh_client_request(c, "ping/y", "ping", NULL, 0);
    assert_true(corr != 0);
    assert_int_equal(mesh_start_worker(&m, 0), 0);
    mesh_reply_t r;
    int got = 0;
    int64_t deadline = harness_now_ms() + 5000;
    while (!got && harness_now_ms() < deadline)
        if (mesh_client_wait(c, 200, &r) == 1 && r.corr == corr)
            got = 1;
    assert_true(got);
    assert_int_equal(r.type, MSG_REPLY);

    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

static void test_passivation_frees_idle_actors(void **state)
{
    (void)state;
    mesh_t m;
    mesh_init(&m, 250);
    assert_int_equal(mesh_start_broker(&m), 0);
    setenv("POSTCHI_ACTOR_IDLE_MS", "300", 1);
    assert_int_equal(mesh_start_worker(&m, 0), 0);
    unsetenv("POSTCHI_ACTOR_IDLE_MS");
    assert_int_equal(mesh_wait_live(&m, 1, 10000), 0);
    mesh_client_t *c = mesh_client(&m);
    sbuf_t *reply = sbuf_new(64), *err = sbuf_new(64);
    assert_int_equal(mesh_client_call(c, "ping/p", "ping", NULL, 0, 5000, reply, err), 0);
    assert_int_equal(mesh_metric(m.worker_metrics[0], "postchi_worker_actors_active{kind=\"ping\"}"),
                     1);
    int64_t deadline = harness_now_ms() + 5000;
    while (harness_now_ms() < deadline &&
           mesh_metric(m.worker_metrics[0], "postchi_worker_actors_active{kind=\"ping\"}") != 0)
        usleep(50 * 1000);
    assert_int_equal(mesh_metric(m.worker_metrics[0], "postchi_worker_actors_active{kind=\"ping\"}"),
                     0);
    assert_true(mesh_metric(m.worker_metrics[0],
                            "postchi_worker_actors_passivated_total{kind=\"ping\"}") >= 1);
    /* Re-activation starts from fresh state. */
    sbuf_reset(reply);
    assert_int_equal(mesh_client_call(c, "ping/p", "ping", NULL, 0, 5000, reply, err), 0);
    assert_non_null(strstr(sbuf_data(reply), " 1"));
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    assert_int_equal(mesh_stop_all(&m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_round_trips_across_three_workers),
        cmocka_unit_test(test_worker_kill_moves_only_its_share),
        cmocka_unit_test(test_broker_restart_heals_without_help),
        cmocka_unit_test(test_no_worker_means_held_then_error_not_silence),
        cmocka_unit_test(test_passivation_frees_idle_actors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
