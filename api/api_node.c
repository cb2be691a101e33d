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
#include "rest_internal.h"
#include "statusd.h"

typedef struct {
    db_t *db;                   /* readiness probe connection */
    kv_t *kv;                   /* readiness probe connection */
    pthread_mutex_t store_lock; /* db and kv are single-threaded */
    atomic_int broker_ok;       /* main loop's view of the broker */
    mesh_client_t *mesh;        /* the node's one broker connection */
    pthread_mutex_t mesh_lock;  /* request threads and the loop share it */
} api_node_t;

/* Resource modules that need settings at start-up: weak, so the node links
 * while a module is not built in. Each returns 0, or -1 with err set. */
extern int auth_configure(const config_t *cfg, sbuf_t *err) __attribute__((weak));
extern int domains_configure(const config_t *cfg, sbuf_t *err) __attribute__((weak));
extern int messages_configure(const config_t *cfg, sbuf_t *err) __attribute__((weak));
extern int unsubscribe_configure(const config_t *cfg, sbuf_t *err) __attribute__((weak));
extern int webhooks_configure(const config_t *cfg, sbuf_t *err) __attribute__((weak));

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

/* A ZeroMQ socket may move between threads with a full barrier between
 * uses; the mutex is that barrier and the exclusion. */
static int s_mesh_send(void *arg, const char *target, const char *name, const void *body,
                       size_t len)
{
    api_node_t *n = arg;
    pthread_mutex_lock(&n->mesh_lock);
    int rc = mesh_client_send(n->mesh, target, name, body, len);
    pthread_mutex_unlock(&n->mesh_lock);
    return rc;
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
    pthread_mutex_init(&n.mesh_lock, NULL);
    int rest_ready = 0;
    if (!err || !conninfo)
        log_fatal("out of memory");
    if (rest_init(cfg, s_mesh_send, &n, err) != 0) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    rest_ready = 1;
    if ((auth_configure && auth_configure(cfg, err) != 0) ||
        (domains_configure && domains_configure(cfg, err) != 0) ||
        (messages_configure && messages_configure(cfg, err) != 0) ||
        (unsubscribe_configure && unsubscribe_configure(cfg, err) != 0) ||
        (webhooks_configure && webhooks_configure(cfg, err) != 0)) {
        log_error("%s", sbuf_data(err));
        goto done;
    }

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
    n.mesh = mesh;
    statusd_opts_t so = {(int)config_int(cfg, "api_threads"),
                         (int)config_int(cfg, "api_request_timeout_ms"), 1, 1};
    srv = statusd_start_opts(config_str(cfg, "api_bind"), (int)config_int(cfg, "api_port"), &so,
                             s_ready, &n, err);
    if (!srv) {
        log_error("cannot start API server: %s", sbuf_data(err));
        goto done;
    }
    statusd_handle(srv, "/api/v1", rest_handle, NULL);
    log_info("api listening bind=%s port=%d", config_str(cfg, "api_bind"), statusd_port(srv));
    while (!s_stop) {
        mesh_reply_t r;
        /* Errors about our one-way sends are the only replies: the outbox
         * sweeper re-drives what they concern, so they are only drained.
         * Never hold the lock while sleeping: request threads send. */
        pthread_mutex_lock(&n.mesh_lock);
        mesh_client_wait(mesh, 0, &r);
        mesh_client_tick(mesh);
        atomic_store(&n.broker_ok, mesh_client_connected(mesh));
        pthread_mutex_unlock(&n.mesh_lock);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    log_info("api stopping");
    status = 0;
done:
    statusd_stop(&srv);
    if (rest_ready)
        rest_shutdown();
    mesh_client_destroy(&mesh);
    db_destroy(&n.db);
    kv_destroy(&n.kv);
    free(conninfo);
    sbuf_destroy(&err);
    pthread_mutex_destroy(&n.store_lock);
    pthread_mutex_destroy(&n.mesh_lock);
    metrics_shutdown();
    return status;
}
