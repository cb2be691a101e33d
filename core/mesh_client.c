/*
 * mesh_client - requests and replies over a mesh_peer. See mesh_client.h.
 *
 * Correlation ids start from a random point so a client restarted under
 * the same node id cannot mistake a stale reply for a fresh one.
 *
 * A call resends its request when it hears nothing for a while (see
 * mesh_client_call): the broker learns of a dead worker only when ZeroMQ
 * has seen its connection close, and a frame routed to it before that, or
 * waiting in its pipe or mailbox when it died, is gone. The end that waits
 * for the answer is the only one that knows an answer is missing, so the
 * retry lives here; the happy path sends once and waits once, as before.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <zmq.h>

#include "envelope.h"
#include "mesh_client.h"
#include "mesh_peer.h"

/* Resends of one call: the first after a slice of its timeout, bounded so
 * a short timeout does not resend at once and a long one is not silent for
 * long; each later gap is twice the one before. */
#define CALL_RESENDS 3
#define CALL_SLICE_DIV 8
#define CALL_SLICE_MIN_MS 50
#define CALL_SLICE_MAX_MS 1000

struct mesh_client {
    void *zctx;        /* owned ZeroMQ context */
    mesh_peer_t *peer; /* broker connection */
    uint64_t next_corr;/* next correlation id */
};

mesh_client_t *mesh_client_new(const config_t *cfg, const char *node_id, sbuf_t *err)
{
    static atomic_int seq;
    mesh_client_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    char id[128];
    if (node_id && node_id[0])
        snprintf(id, sizeof id, "%s", node_id);
    else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(id, sizeof id, "%s-%d-client-%d", host, (int)getpid(),
                 atomic_fetch_add(&seq, 1));
    }
    if (getrandom(&self->next_corr, sizeof self->next_corr, 0) != sizeof self->next_corr)
        self->next_corr = (uint64_t)mesh_now_ms() << 20;
    self->next_corr = (self->next_corr >> 1) | 1; /* never 0: 0 means one-way */
    self->zctx = zmq_ctx_new();
    if (!self->zctx) {
        sbuf_appendf(err, "cannot create ZeroMQ context: %s", zmq_strerror(errno));
        mesh_client_destroy(&self);
        return NULL;
    }
    mesh_peer_opts_t po = {
        .endpoint = config_str(cfg, "broker_endpoint"),
        .node_id = id,
        .role = "client",
        .capacity = 0,
        .heartbeat_ms = (int)config_int(cfg, "heartbeat_interval_ms"),
        .liveness = (int)config_int(cfg, "heartbeat_liveness"),
        .hwm = (int)config_int(cfg, "zmq_hwm"),
        .max_frame = (size_t)config_int(cfg, "max_frame_bytes"),
    };
    self->peer = mesh_peer_new(self->zctx, &po, err);
    if (!self->peer) {
        mesh_client_destroy(&self);
        return NULL;
    }
    return self;
}

void mesh_client_destroy(mesh_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    mesh_client_t *self = *self_p;
    mesh_peer_destroy(&self->peer);
    if (self->zctx)
        zmq_ctx_term(self->zctx);
    free(self);
    *self_p = NULL;
}

static int s_send(mesh_client_t *self, const char *target, const char *name, const void *body,
                  size_t len, uint64_t corr)
{
    const char *addr = mesh_peer_address(self->peer);
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = MSG_SEND,
        .target = target,
        .target_len = strlen(target),
        .sender = addr,
        .sender_len = strlen(addr),
        .name = name ? name : "",
        .name_len = name ? strlen(name) : 0,
        .corr = corr,
        .body = body,
        .body_len = len,
    };
    return mesh_peer_send(self->peer, &env);
}

int mesh_client_send(mesh_client_t *self, const char *target, const char *name,
                     const void *body, size_t len)
{
    return s_send(self, target, name, body, len, 0);
}

uint64_t mesh_client_request(mesh_client_t *self, const char *target, const char *name,
                             const void *body, size_t len)
{
    uint64_t corr = self->next_corr++;
    if (self->next_corr == 0)
        self->next_corr = 1;
    return s_send(self, target, name, body, len, corr) == 0 ? corr : 0;
}

int mesh_client_resend(mesh_client_t *self, uint64_t corr, const char *target, const char *name,
                       const void *body, size_t len)
{
    if (corr == 0) {
        errno = EINVAL;
        return -1;
    }
    return s_send(self, target, name, body, len, corr);
}

int mesh_client_tick(mesh_client_t *self)
{
    return mesh_peer_tick(self->peer);
}

int mesh_client_wait(mesh_client_t *self, int timeout_ms, mesh_reply_t *out)
{
    int64_t deadline = mesh_now_ms() + timeout_ms;
    for (;;) {
        envelope_t env;
        int rc;
        while ((rc = mesh_peer_recv(self->peer, &env)) != 0) {
            if (rc < 0)
                return -1;
            if (rc != 1 || (env.type != MSG_REPLY && env.type != MSG_ERROR))
                continue;
            memset(out, 0, sizeof *out);
            out->type = env.type;
            out->corr = env.corr;
            out->body = env.body;
            out->body_len = env.body_len;
            if (env.type == MSG_ERROR &&
                envelope_error_decode(env.body, env.body_len, out->code, sizeof out->code,
                                      out->reason, sizeof out->reason) != 0) {
                snprintf(out->code, sizeof out->code, "bad_error");
                snprintf(out->reason, sizeof out->reason, "undecodable error body");
            }
            return 1;
        }
        int64_t now = mesh_now_ms();
        if (now >= deadline)
            return 0;
        int wait = mesh_peer_tick(self->peer);
        if (deadline - now < wait)
            wait = (int)(deadline - now);
        zmq_pollitem_t item = {mesh_peer_socket(self->peer), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait) < 0 && errno != EINTR)
            return -1;
    }
}

/* The first resend's delay for a call of timeout_ms. */
static int64_t s_slice(int timeout_ms)
{
    int64_t slice = timeout_ms / CALL_SLICE_DIV;
    if (slice < CALL_SLICE_MIN_MS)
        return CALL_SLICE_MIN_MS;
    return slice > CALL_SLICE_MAX_MS ? CALL_SLICE_MAX_MS : slice;
}

/* mesh_client_call with at most resends resends. */
static int s_call(mesh_client_t *self, const char *target, const char *name, const void *body,
                  size_t len, int timeout_ms, int resends, sbuf_t *reply, sbuf_t *err)
{
    uint64_t corr = mesh_client_request(self, target, name, body, len);
    if (!corr) {
        if (err)
            sbuf_appendf(err, "send_failed: %s", zmq_strerror(errno));
        return -1;
    }
    int64_t now = mesh_now_ms();
    int64_t deadline = now + timeout_ms;
    int64_t gap = s_slice(timeout_ms);
    int64_t resend_at = resends > 0 ? now + gap : deadline;
    for (;;) {
        now = mesh_now_ms();
        if (now >= deadline)
            return -2;
        if (now >= resend_at) {
            /* A full pipe only skips this resend: the next one, or the
             * original, may still be answered. */
            s_send(self, target, name, body, len, corr);
            gap *= 2;
            resend_at = --resends > 0 ? now + gap : deadline;
        }
        int64_t until = resend_at < deadline ? resend_at : deadline;
        mesh_reply_t r;
        int rc = mesh_client_wait(self, (int)(until - now), &r);
        if (rc == 0)
            continue;
        if (rc < 0) {
            if (err)
                sbuf_appendf(err, "socket: %s", zmq_strerror(errno));
            return -1;
        }
        if (r.corr != corr)
            continue;
        if (r.type == MSG_ERROR) {
            if (err)
                sbuf_appendf(err, "%s: %s", r.code, r.reason);
            return -1;
        }
        if (reply)
            sbuf_append(reply, r.body, r.body_len);
        return 0;
    }
}

int mesh_client_call(mesh_client_t *self, const char *target, const char *name,
                     const void *body, size_t len, int timeout_ms, sbuf_t *reply, sbuf_t *err)
{
    return s_call(self, target, name, body, len, timeout_ms, CALL_RESENDS, reply, err);
}

int mesh_client_call_once(mesh_client_t *self, const char *target, const char *name,
                          const void *body, size_t len, int timeout_ms, sbuf_t *reply,
                          sbuf_t *err)
{
    return s_call(self, target, name, body, len, timeout_ms, 0, reply, err);
}

int mesh_client_connected(const mesh_client_t *self)
{
    return mesh_peer_connected(self->peer);
}
