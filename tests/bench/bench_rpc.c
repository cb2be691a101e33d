/*
 * bench_rpc - request/reply latency through the broker and a worker at a
 * fixed offered rate (open loop: requests leave on schedule whether or not
 * earlier ones were answered, so queueing shows up in the tail).
 *
 *   bench_rpc [rate per second] [seconds] [workers]
 *
 * Starts a real broker and real workers (they need the test fixture's
 * PostgreSQL and Redis: run through tests/bench/run.sh). Targets are spread
 * over 10,000 ping actors. Prints p50, p99, p99.9 and max in microseconds,
 * and how many replies were missing.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "envelope.h"
#include "harness.h"
#include "mesh_client.h"

static int64_t s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int s_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int rate = argc > 1 ? atoi(argv[1]) : 10000;
    int seconds = argc > 2 ? atoi(argv[2]) : 10;
    int nworkers = argc > 3 ? atoi(argv[3]) : 2;
    long total = (long)rate * seconds;
    char ep[64], env_ep[96], env_id[8][32];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", harness_free_port());
    snprintf(env_ep, sizeof env_ep, "POSTCHI_BROKER_ENDPOINT=%s", ep);
    char *benv[] = {env_ep, "POSTCHI_LOG_LEVEL=warn", NULL};
    harness_proc_t *broker = harness_spawn_postchi("bench-broker", "broker", benv);
    harness_proc_t *workers[8];
    if (nworkers > 8)
        nworkers = 8;
    for (int i = 0; i < nworkers; i++) {
        char *wenv[40];
        int k = 0;
        char *const *stores = harness_server_env(NULL);
        for (int j = 0; stores[j] && k < 30; j++)
            wenv[k++] = stores[j];
        snprintf(env_id[i], sizeof env_id[i], "POSTCHI_NODE_ID=bw%d", i);
        wenv[k++] = env_ep;
        wenv[k++] = env_id[i];
        wenv[k++] = "POSTCHI_LOG_LEVEL=warn";
        wenv[k] = NULL;
        workers[i] = harness_spawn_postchi("bench-worker", "worker", wenv);
    }
    sbuf_t *err = sbuf_new(64);
    config_t *cfg = config_new();
    config_set(cfg, "broker_endpoint", ep, err);
    mesh_client_t *c = mesh_client_new(cfg, "bench-client", err);
    /* Warm up: every actor activated once, so we measure steady state. */
    sbuf_t *reply = sbuf_new(64);
    int64_t until = harness_now_ms() + 15000;
    while (harness_now_ms() < until &&
           mesh_client_call(c, "ping/warm", "ping", NULL, 0, 500, reply, err) != 0)
        ;
    for (int i = 0; i < 10000; i++) {
        char t[32];
        snprintf(t, sizeof t, "ping/%d", i);
        mesh_client_request(c, t, "ping", NULL, 0);
    }
    mesh_reply_t r;
    for (int got = 0; got < 10000 && mesh_client_wait(c, 2000, &r) == 1;)
        got++;

    int64_t *sent = calloc((size_t)total, sizeof *sent);
    int64_t *lat = calloc((size_t)total, sizeof *lat);
    uint64_t *corr = calloc((size_t)total, sizeof *corr);
    long nlat = 0, next = 0;
    int64_t start = s_now_us();
    int64_t end = start + (int64_t)seconds * 1000000 + 2000000;
    while (nlat < total && s_now_us() < end) {
        int64_t now = s_now_us();
        long due = (long)((double)(now - start) * rate / 1e6);
        if (due > total)
            due = total;
        while (next < due) {
            char t[32];
            snprintf(t, sizeof t, "ping/%ld", next % 10000);
            sent[next] = start + (int64_t)((double)next * 1e6 / rate); /* scheduled time */
            corr[next] = mesh_client_request(c, t, "ping", NULL, 0);
            next++;
        }
        if (mesh_client_wait(c, 0, &r) == 1 && r.type == MSG_REPLY) {
            uint64_t idx = r.corr - corr[0];
            if (idx < (uint64_t)next && corr[idx] == r.corr)
                lat[nlat++] = s_now_us() - sent[idx];
        } else if (next >= due) {
            /* Nothing waiting: sleep until the next send is due. */
            int64_t wake = start + (int64_t)((double)(next + 1) * 1e6 / rate);
            int64_t d = wake - s_now_us();
            if (d > 0)
                usleep((useconds_t)(d > 200 ? 200 : d));
        }
    }
    qsort(lat, (size_t)nlat, sizeof lat[0], s_cmp);
    if (nlat > 0)
        printf("rate %d/s for %d s over %d workers: %ld replies, %ld missing; "
               "p50 %lld us, p99 %lld us, p99.9 %lld us, max %lld us\n",
               rate, seconds, nworkers, nlat, total - nlat, (long long)lat[nlat / 2],
               (long long)lat[(long)(nlat * 0.99)], (long long)lat[(long)(nlat * 0.999)],
               (long long)lat[nlat - 1]);
    else
        printf("no replies\n");
    free(sent);
    free(lat);
    free(corr);
    sbuf_destroy(&reply);
    sbuf_destroy(&err);
    mesh_client_destroy(&c);
    config_destroy(&cfg);
    for (int i = 0; i < nworkers; i++)
        harness_stop(workers[i], SIGTERM, 10000);
    harness_stop(broker, SIGTERM, 5000);
    return nlat == total ? 0 : 1;
}
