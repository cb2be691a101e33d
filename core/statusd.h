/*
 * statusd - the small HTTP server every process runs for operators:
 * GET /metrics (Prometheus text), GET /healthz (process up: 200 "ok"),
 * GET /readyz (200 or 503 with a JSON body from the process's check).
 *
 * It runs on civetweb's own threads; the ready callback is called on one of
 * them, so it must be thread-safe and quick (read state, do not block long).
 * The API process mounts its REST routes on the same server (statusd_handle).
 */
#ifndef POSTCHI_STATUSD_H
#define POSTCHI_STATUSD_H

#include "sbuf.h"

typedef struct statusd statusd_t;

/* Fill body (JSON) and return 1 when ready, 0 when not. */
typedef int (*statusd_ready_fn)(void *arg, sbuf_t *body);

/* Listen on bind:port (port 0 picks a free port; see statusd_port).
 * ready may be NULL (always ready). NULL with err set when it cannot listen. */
statusd_t *statusd_start(const char *bind, int port, statusd_ready_fn ready, void *arg,
                         sbuf_t *err);
/* The API node's variant: threads serving requests, per-request timeout,
 * and HTTP keep-alive (what API clients reuse connections with). */
typedef struct {
    int threads;        /* civetweb worker threads (default 4) */
    int timeout_ms;     /* request_timeout_ms (default 10000) */
    int keep_alive;     /* 1: keep connections open between requests */
    int raw_urls;       /* 1: hand paths to handlers still percent-encoded, so
                           an encoded '/' or NUL cannot change a path's shape */
} statusd_opts_t;
statusd_t *statusd_start_opts(const char *bind, int port, const statusd_opts_t *opts,
                              statusd_ready_fn ready, void *arg, sbuf_t *err);

/* The port actually bound. */
int statusd_port(const statusd_t *self);
/* Stops the server and waits for its threads. NULL-safe, sets *self_p NULL. */
void statusd_stop(statusd_t **self_p);

/* Mount an extra handler for uri (civetweb's request handler signature:
 * int handler(struct mg_connection *, void *cbdata)). */
struct mg_connection;
void statusd_handle(statusd_t *self, const char *uri,
                    int (*handler)(struct mg_connection *, void *), void *cbdata);

#endif
