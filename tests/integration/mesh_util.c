/*
 * mesh_util - see mesh_util.h. Compiled into each mesh test (it is not part
 * of the harness library, which stays generic).
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "mesh_util.h"

void mesh_init(mesh_t *m, int heartbeat_ms)
{
    memset(m, 0, sizeof *m);
    m->broker_port = harness_free_port();
    m->broker_metrics = harness_free_port();
    for (int i = 0; i < MESH_MAX_WORKERS; i++) {
        m->worker_metrics[i] = harness_free_port();
        snprintf(m->worker_id[i], sizeof m->worker_id[i], "w%d", i);
    }
    snprintf(m->endpoint, sizeof m->endpoint, "tcp://127.0.0.1:%d", m->broker_port);
    snprintf(m->heartbeat_ms, sizeof m->heartbeat_ms, "%d", heartbeat_ms > 0 ? heartbeat_ms : 1000);
}

/* env: the fixture's stores + mesh settings + extra, NULL-terminated. */
static char **s_env(mesh_t *m, const char *node_id, int metrics_port)
{
    static char buf[8][128];
    static char *env[32];
    int n = 0;
    char *const *stores = harness_server_env(m->database[0] ? m->database : NULL);
    for (int i = 0; stores[i] && n < 20; i++)
        env[n++] = stores[i];
    snprintf(buf[0], sizeof buf[0], "POSTCHI_BROKER_ENDPOINT=%s", m->endpoint);
    snprintf(buf[1], sizeof buf[1], "POSTCHI_METRICS_PORT=%d", metrics_port);
    snprintf(buf[2], sizeof buf[2], "POSTCHI_NODE_ID=%s", node_id);
    snprintf(buf[3], sizeof buf[3], "POSTCHI_HEARTBEAT_INTERVAL_MS=%s", m->heartbeat_ms);
    for (int i = 0; i < 4; i++)
        env[n++] = buf[i];
    env[n] = NULL;
    return env;
}

int mesh_start_broker(mesh_t *m)
{
    m->broker = harness_spawn_postchi("broker", "broker", s_env(m, "broker", m->broker_metrics));
    if (!m->broker)
        return -1;
    return harness_wait_http(m->broker_metrics, "/healthz", 10000);
}

int mesh_start_worker(mesh_t *m, int i)
{
    m->workers[i] = harness_spawn_postchi(m->worker_id[i], "worker",
                                          s_env(m, m->worker_id[i], m->worker_metrics[i]));
    if (!m->workers[i])
        return -1;
    if (i + 1 > m->nworkers)
        m->nworkers = i + 1;
    return harness_wait_http(m->worker_metrics[i], "/healthz", 10000);
}

int mesh_wait_live(mesh_t *m, int n, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    while (harness_now_ms() < deadline) {
        if (mesh_metric(m->broker_metrics, "postchi_broker_workers_live") == n)
            return 0;
        usleep(50 * 1000);
    }
    return -1;
}

int mesh_stop_all(mesh_t *m)
{
    int bad = 0;
    for (int i = 0; i < m->nworkers; i++) {
        if (m->workers[i]) {
            int st = harness_stop(m->workers[i], SIGTERM, 10000);
            if (st != 0) {
                fprintf(stderr, "worker %d exited with status %d\n", i, st);
                bad++;
            }
            m->workers[i] = NULL;
        }
    }
    if (m->broker) {
        int st = harness_stop(m->broker, SIGTERM, 10000);
        if (st != 0) {
            fprintf(stderr, "broker exited with status %d\n", st);
            bad++;
        }
        m->broker = NULL;
    }
    return bad;
}

mesh_client_t *mesh_client(mesh_t *m)
{
    sbuf_t *err = sbuf_new(64);
    config_t *cfg = config_new();
    mesh_client_t *c = NULL;
    if (cfg && config_set(cfg, "broker_endpoint", m->endpoint, err) == 0 &&
        config_set(cfg, "heartbeat_interval_ms", m->heartbeat_ms, err) == 0)
        c = mesh_client_new(cfg, NULL, err);
    if (!c)
        fprintf(stderr, "mesh_client: %s\n", err ? sbuf_data(err) : "out of memory");
    config_destroy(&cfg);
    sbuf_destroy(&err);
    return c;
}

double mesh_metric(int port, const char *series)
{
    sbuf_t *body = sbuf_new(4096);
    double v = NAN;
    if (body && harness_http_get(port, "/metrics", body) == 200) {
        size_t n = strlen(series);
        const char *p = sbuf_data(body);
        while (p && *p) {
            if (strncmp(p, series, n) == 0 && p[n] == ' ') {
                v = strtod(p + n + 1, NULL);
                break;
            }
            p = strchr(p, '\n');
            if (p)
                p++;
        }
    }
    sbuf_destroy(&body);
    return v;
}
