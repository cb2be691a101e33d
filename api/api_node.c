/*
 * api_node - process set-up for the API node: stores, mesh client, HTTP
 * server, and the loop that keeps the mesh connection alive.
 *
 * Readiness is checked on civetweb threads; PostgreSQL and Redis handles are
 * single-threaded, so the check takes store_lock around them, and it reads
 * the broker state from an atomic the main loop keeps current.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <zmq.h>

#include "api.h"
#include "db.h"
#include "kv.h"
#include "log.h"
#include "mesh_client.h"
#include "metrics.h"
#include "statusd.h"

typedef struct {
    db_t *db;                   /* readiness probe connection */
    kv_t *kv;                   /* readiness probe connection */
    pthread_mutex_t store_lock; /* db and kv are single-threaded */
    atomic_int broker_ok;       /* main loop's view of the broker */
} api_node_t;

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static int s_ready(void *arg, sbuf_t *body)
{
    api_node_t *n = arg;
    pthread_mutex_lock(&n->store_lock);
    int pg = db_ping(n->db);
    int redis = kv_ping(n->kv);
    pthread_mutex_unlock(&n->store_lock);
    int broker = atomic_load(&n->broker_ok);
    int ok = pg && redis && broker;
    sbuf_appendf(body, "{\"status\":\"%s\",\"postgres\":%s,\"redis\":%s,\"broker\":%s}",
                 ok ? "ok" : "unavailable", pg ? "true" : "false", redis ? "true" : "false",
                 broker ? "true" : "false");
    return ok;
}

int api_main(const config_t *cfg)
{
    api_node_t n = {0};
    int status = 1;
    statusd_t *srv = NULL;
    mesh_client_t *mesh = NULL;
    sbuf_t *err = sbuf_new(128);
    char *conninfo = db_conninfo_from_config(cfg);
    int64_t wait = config_int(cfg, "startup_wait_ms");
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&n.store_lock, NULL);
    if (!err || !conninfo)
        log_fatal("out of memory");

    n.db = db_connect(conninfo, wait, err);
    if (!n.db) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    n.kv = kv_connect(config_str(cfg, "redis_host"), (int)config_int(cfg, "redis_port"), 2000,
                      wait, err);
    if (!n.kv) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    const char *id = config_str(cfg, "node_id");
    mesh = mesh_client_new(cfg, id[0] ? id : NULL, err);
    if (!mesh) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    srv = statusd_start(config_str(cfg, "api_bind"), (int)config_int(cfg, "api_port"), s_ready,
                        &n, err);
    if (!srv) {
        log_error("cannot start API server: %s", sbuf_data(err));
        goto done;
    }
    log_info("api listening bind=%s port=%d", config_str(cfg, "api_bind"), statusd_port(srv));
    while (!s_stop) {
        mesh_reply_t r;
        /* Replies to nobody in particular are dropped; requests come later. */
        int wait_ms = mesh_client_tick(mesh);
        if (wait_ms > 200)
            wait_ms = 200;
        mesh_client_wait(mesh, wait_ms, &r);
        atomic_store(&n.broker_ok, mesh_client_connected(mesh));
    }
    log_info("api stopping");
    status = 0;
done:
    statusd_stop(&srv);
    mesh_client_destroy(&mesh);
    db_destroy(&n.db);
    kv_destroy(&n.kv);
    free(conninfo);
    sbuf_destroy(&err);
    pthread_mutex_destroy(&n.store_lock);
    metrics_shutdown();
    return status;
}
