/*
 * mesh_util - shared set-up for tests that run a real broker and workers:
 * a mesh on free ports, a client pointed at it, and metric reads from a
 * process's /metrics.
 */
#ifndef POSTCHI_TEST_MESH_UTIL_H
#define POSTCHI_TEST_MESH_UTIL_H

#include "harness.h"
#include "mesh_client.h"

#define MESH_MAX_WORKERS 8

typedef struct {
    int broker_port;                          /* ZeroMQ port */
    int broker_metrics;                       /* broker status port */
    int worker_metrics[MESH_MAX_WORKERS];     /* each worker's status port */
    char worker_id[MESH_MAX_WORKERS][32];     /* node ids w0, w1, ... */
    harness_proc_t *broker;                   /* running broker or NULL */
    harness_proc_t *workers[MESH_MAX_WORKERS];/* running workers or NULL */
    int nworkers;                             /* how many were started */
    char endpoint[64];                        /* tcp://127.0.0.1:port */
    char heartbeat_ms[16];                    /* heartbeat_interval_ms for all */
    char database[64];                        /* workers' database ("" = fixture's) */
} mesh_t;

/* Pick ports; heartbeat_ms 0 keeps the default. Starts nothing. */
void mesh_init(mesh_t *m, int heartbeat_ms);
/* Start (or restart) the broker and wait for its /healthz. 0 or -1. */
int mesh_start_broker(mesh_t *m);
/* Start worker i and wait for its /healthz. 0 or -1. */
int mesh_start_worker(mesh_t *m, int i);
/* Wait until the broker reports n live workers. 0 or -1. */
int mesh_wait_live(mesh_t *m, int n, int timeout_ms);
/* Stop everything with SIGTERM; returns the number of processes that did
 * not exit cleanly (status != 0: a crash, or a leak under LeakSanitizer). */
int mesh_stop_all(mesh_t *m);
/* A client connected to this mesh's broker (caller destroys). */
mesh_client_t *mesh_client(mesh_t *m);

/* The value of one series (exact text before the value, e.g.
 * "postchi_broker_workers_live" or
 * "postchi_broker_messages_dropped_total{reason=\"malformed\"}") on the
 * status server at port; NAN when absent or unreachable. */
double mesh_metric(int port, const char *series);

#endif
