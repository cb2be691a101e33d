/*
 * mesh_client - talk to actors from outside the mesh (API nodes, tools,
 * tests, benchmarks): one-way sends, and requests whose replies are matched
 * by correlation id, with timeouts.
 *
 * A client is a mesh peer with role "client": the broker routes replies to
 * it by its address "node/<id>". Not thread-safe: one thread owns a client
 * (an API node keeps one per I/O thread).
 */
#ifndef POSTCHI_MESH_CLIENT_H
#define POSTCHI_MESH_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "sbuf.h"

typedef struct mesh_client mesh_client_t;

typedef struct {
    uint32_t type;      /* MSG_REPLY or MSG_ERROR */
    uint64_t corr;      /* the request it answers */
    const void *body;   /* reply body; valid until the next client call */
    size_t body_len;
    char code[32];      /* MSG_ERROR: machine code ("no_route", "expired", ...) */
    char reason[160];   /* MSG_ERROR: human reason */
} mesh_reply_t;

/* Connect to broker_endpoint with the mesh settings of cfg. node_id NULL or
 * "" means "<hostname>-<pid>-client-<n>". NULL with err set on failure. */
mesh_client_t *mesh_client_new(const config_t *cfg, const char *node_id, sbuf_t *err);
void mesh_client_destroy(mesh_client_t **self_p);

/* One-way message. 0, or -1 (errno EAGAIN when the pipe is full). */
int mesh_client_send(mesh_client_t *self, const char *target, const char *name,
                     const void *body, size_t len);
/* Send a request; returns its correlation id, or 0 on failure. */
uint64_t mesh_client_request(mesh_client_t *self, const char *target, const char *name,
                             const void *body, size_t len);
/* Send a request again under the correlation id the first send returned,
 * for a caller that pipelines with request/wait and heard nothing back in
 * time (its frame may have gone to a worker that died). Whichever answer
 * comes first is the answer; a later one carries the same id and is the
 * caller's to discard. Only for requests that are safe to repeat (see
 * mesh_client_call). 0, or -1 (errno EAGAIN when the pipe is full). */
int mesh_client_resend(mesh_client_t *self, uint64_t corr, const char *target, const char *name,
                       const void *body, size_t len);
/* Wait up to timeout_ms for the next reply or error to any request. 1 with
 * *out filled, 0 on timeout, -1 on socket error. Heartbeats are kept. */
int mesh_client_wait(mesh_client_t *self, int timeout_ms, mesh_reply_t *out);

/* Request and wait for its answer (other replies arriving meanwhile are
 * discarded: use request/wait to pipeline). 0 with the body in reply;
 * -1 when the mesh answered an error (code and reason in err); -2 on
 * timeout.
 *
 * A request sent to a worker in the moment it dies is lost with it, so
 * when no answer has come after a slice of timeout_ms (an eighth, within
 * 50 ms .. 1 s) the same request is sent again under the same correlation
 * id, then again after twice that gap, at most three times, all within
 * timeout_ms; the first answer wins. The receiving kind must therefore
 * tolerate a repeat: every kind in actors/ does (see docs/ARCHITECTURE.md,
 * "Requests across a worker's death"), and a worker drops a repeat that
 * reaches the activation that had the original. An error answer is final
 * and is not retried. */
int mesh_client_call(mesh_client_t *self, const char *target, const char *name,
                     const void *body, size_t len, int timeout_ms, sbuf_t *reply, sbuf_t *err);
/* mesh_client_call for a request that must not be delivered twice: sent
 * once, so a worker's death means a timeout (-2) and the caller decides. */
int mesh_client_call_once(mesh_client_t *self, const char *target, const char *name,
                          const void *body, size_t len, int timeout_ms, sbuf_t *reply,
                          sbuf_t *err);

/* 1 when the broker was heard within the liveness window. */
int mesh_client_connected(const mesh_client_t *self);
/* Keep heartbeats going when idle; returns ms until it wants to run again. */
int mesh_client_tick(mesh_client_t *self);

#endif
