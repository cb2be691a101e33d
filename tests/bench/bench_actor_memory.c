/*
 * bench_actor_memory - bytes of worker memory per activated idle actor.
 *
 *   bench_actor_memory [actors]
 *
 * Starts a broker and one worker (passivation pushed out of the way),
 * reads the worker's resident memory, activates N ping actors (requests in
 * a window, every one answered), waits until the worker reports N active,
 * and reads the resident memory again. Target: under 512 bytes per actor.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "envelope.h"
#include "harness.h"
#include "mesh_client.h"

static long s_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    char ep[64], env_ep[96], env_mp[64];
    int mport = harness_free_port();
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", harness_free_port());
    snprintf(env_ep, sizeof env_ep, "POSTCHI_BROKER_ENDPOINT=%s", ep);
    snprintf(env_mp, sizeof env_mp, "POSTCHI_METRICS_PORT=%d", mport);
    char *benv[] = {env_ep, "POSTCHI_LOG_LEVEL=warn", NULL};
    harness_proc_t *broker = harness_spawn_postchi("bench-broker", "broker", benv);
    char *wenv[40];
    int k = 0;
    char *const *stores = harness_server_env(NULL);
    for (int j = 0; stores[j] && k < 30; j++)
        wenv[k++] = stores[j];
    wenv[k++] = env_ep;
    wenv[k++] = env_mp;
    wenv[k++] = "POSTCHI_NODE_ID=mem0";
    wenv[k++] = "POSTCHI_ACTOR_IDLE_MS=86400000";
    wenv[k++] = "POSTCHI_LOG_LEVEL=warn";
    wenv[k] = NULL;
    harness_proc_t *worker = harness_spawn_postchi("bench-worker", "worker", wenv);
    sbuf_t *err = sbuf_new(64), *reply = sbuf_new(64);
    config_t *cfg = config_new();
    config_set(cfg, "broker_endpoint", ep, err);
    mesh_client_t *c = mesh_client_new(cfg, "bench-mem", err);
    int64_t until = harness_now_ms() + 15000;
    while (harness_now_ms() < until &&
           mesh_client_call(c, "ping/warm", "ping", NULL, 0, 500, reply, err) != 0)
        ;
    sleep(1);
    long base = s_rss_kb(harness_pid(worker));

    long sent = 0, got = 0;
    mesh_reply_t r;
    while (got < n) {
        while (sent < n && sent - got < 5000) {
            char t[32];
            snprintf(t, sizeof t, "ping/%ld", sent++);
            mesh_client_request(c, t, "ping", NULL, 0);
        }
        if (mesh_client_wait(c, 5000, &r) != 1) {
            fprintf(stderr, "stalled at %ld of %ld\n", got, n);
            break;
        }
        if (r.type == MSG_REPLY)
            got++;
    }
    sleep(1);
    long after = s_rss_kb(harness_pid(worker));
    double per = (double)(after - base) * 1024.0 / (double)got;
    printf("%ld actors active: worker RSS %ld kB -> %ld kB, %.0f bytes per actor (target < 512)\n",
           got, base, after, per);
    sbuf_destroy(&err);
    sbuf_destroy(&reply);
    mesh_client_destroy(&c);
    config_destroy(&cfg);
    harness_stop(worker, SIGTERM, 30000);
    harness_stop(broker, SIGTERM, 5000);
    return got == n ? 0 : 1;
}
