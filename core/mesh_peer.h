/*
 * mesh_peer - one process's connection to the broker: a ZeroMQ DEALER whose
 * routing id is the node id, so the broker (and a restarted broker) always
 * knows who is speaking.
 *
 * The peer announces itself with HELLO and then sends a HEARTBEAT every
 * interval; each beat carries the same hello body, so a broker that
 * restarted relearns every peer within one interval, with no manual step.
 * When nothing has come from the broker for `liveness` intervals the peer
 * counts it gone, says HELLO again and keeps beating; ZeroMQ reconnects the
 * TCP connection underneath on its own. Heartbeats from the broker are
 * consumed here; everything else is handed to the caller.
 *
 * Not thread-safe: the thread that polls the socket owns the peer.
 */
#ifndef POSTCHI_MESH_PEER_H
#define POSTCHI_MESH_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "metrics.h"
#include "sbuf.h"

typedef struct mesh_peer mesh_peer_t;

typedef struct {
    const char *endpoint; /* broker endpoint to connect */
    const char *node_id;  /* routing id; the peer's address is node/<id> */
    const char *role;     /* "worker" or "client" */
    uint32_t capacity;    /* ring weight (workers) */
    int heartbeat_ms;     /* beat interval */
    int liveness;         /* missed beats before the broker counts as gone */
    int hwm;              /* send/receive high-water marks */
    size_t max_frame;     /* largest frame accepted */
    metric_t *m_malformed;  /* frames refused (may be NULL) */
    metric_t *m_missed;     /* broker beats missed (may be NULL) */
    metric_t *m_reconnects; /* times the broker was found gone (may be NULL) */
    metric_t *m_connected;  /* gauge 0/1 (may be NULL) */
} mesh_peer_opts_t;

/* Connect and say HELLO. zctx is the caller's ZeroMQ context. NULL with err
 * set when the socket cannot be made or the endpoint is invalid (an absent
 * broker is not an error: ZeroMQ connects when it appears). */
mesh_peer_t *mesh_peer_new(void *zctx, const mesh_peer_opts_t *opts, sbuf_t *err);
/* Says BYE (best effort) and closes. NULL-safe, sets *self_p to NULL. */
void mesh_peer_destroy(mesh_peer_t **self_p);

/* The socket, for zmq_poll (ZMQ_POLLIN). */
void *mesh_peer_socket(mesh_peer_t *self);
/* "node/<id>", NUL-terminated. */
const char *mesh_peer_address(const mesh_peer_t *self);

/* Encode and send. 0, or -1 (errno EAGAIN when the high-water mark is hit,
 * EMSGSIZE when a field is too long). */
int mesh_peer_send(mesh_peer_t *self, const envelope_t *env);
/* Send an already encoded frame. 0 or -1. */
int mesh_peer_send_frame(mesh_peer_t *self, const void *frame, size_t len);

/* Take one frame if one is waiting (never blocks). 1: *env holds it, valid
 * until the next recv; 2: a frame was consumed here (a beat, or a malformed
 * frame), call again; 0: none waiting; -1: socket error. */
int mesh_peer_recv(mesh_peer_t *self, envelope_t *env);

/* The raw bytes of the frame the last successful recv returned. */
const void *mesh_peer_frame(const mesh_peer_t *self, size_t *len);

/* Beat when due and check the broker's liveness. Call at least every
 * interval; returns milliseconds until it wants to be called again. */
int mesh_peer_tick(mesh_peer_t *self);
/* 1 when the broker was heard within the liveness window. */
int mesh_peer_connected(const mesh_peer_t *self);

/* Monotonic milliseconds (shared clock for the mesh). */
int64_t mesh_now_ms(void);

#endif
