/*
 * mesh_peer - DEALER side of the mesh protocol. See mesh_peer.h.
 *
 * Security: frames from the broker are decoded with the hostile-input
 * decoder and bounded by max_frame (ZMQ_MAXMSGSIZE too, so ZeroMQ drops a
 * giant frame before allocating for it).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "log.h"
#include "mesh_peer.h"

struct mesh_peer {
    void *sock;          /* DEALER connected to the broker */
    char *address;       /* "node/<id>" */
    char *node_id;       /* routing id */
    sbuf_t *hello;       /* encoded hello body, resent with every beat */
    sbuf_t *out;         /* scratch for encoding */
    zmq_msg_t in;        /* last received frame; env points into it */
    int in_live;         /* in holds a frame that must be closed */
    int heartbeat_ms;    /* beat interval */
    int liveness;        /* beats the broker may miss */
    size_t max_frame;    /* frame bound */
    int64_t next_beat;   /* when we next beat */
    int64_t last_heard;  /* when the broker last spoke */
    int64_t next_missed; /* when the next missed beat is counted */
    int connected;       /* broker heard within the window */
    mesh_peer_opts_t o;  /* metric handles */
};

int64_t mesh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_gauge(metric_t *m, double v)
{
    if (m)
        metric_set(m, v);
}

static void s_count(metric_t *m)
{
    if (m)
        metric_inc(m);
}

static int s_send_control(mesh_peer_t *self, msg_type_t type)
{
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = type,
        .target = "broker",
        .target_len = 6,
        .sender = self->address,
        .sender_len = strlen(self->address),
        .body = sbuf_data(self->hello),
        .body_len = type == MSG_BYE ? 0 : sbuf_len(self->hello),
    };
    return mesh_peer_send(self, &env);
}

mesh_peer_t *mesh_peer_new(void *zctx, const mesh_peer_opts_t *opts, sbuf_t *err)
{
    mesh_peer_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->o = *opts;
    self->heartbeat_ms = opts->heartbeat_ms > 0 ? opts->heartbeat_ms : 1000;
    self->liveness = opts->liveness > 0 ? opts->liveness : 3;
    self->max_frame = opts->max_frame;
    self->node_id = strdup(opts->node_id);
    self->hello = sbuf_new(64);
    self->out = sbuf_new(256);
    if (self->node_id)
        self->address = malloc(strlen(opts->node_id) + 6);
    if (!self->node_id || !self->hello || !self->out || !self->address)
        goto fail;
    sprintf(self->address, "node/%s", opts->node_id);
    if (strlen(self->address) > ENVELOPE_ADDR_MAX) {
        sbuf_appendf(err, "node id is longer than %d bytes", ENVELOPE_ADDR_MAX - 5);
        goto fail;
    }
    if (envelope_hello_encode(self->hello, opts->role, opts->capacity) != 0)
        goto fail;

    self->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!self->sock)
        goto zfail;
    int hwm = opts->hwm > 0 ? opts->hwm : 100000;
    int linger = 0, ivl = 100, ivl_max = 1000;
    int64_t maxmsg = (int64_t)opts->max_frame;
    if (zmq_setsockopt(self->sock, ZMQ_ROUTING_ID, self->node_id, strlen(self->node_id)) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0)
        goto zfail;
    if (zmq_connect(self->sock, opts->endpoint) != 0) {
        sbuf_appendf(err, "cannot connect to broker endpoint '%s': %s", opts->endpoint,
                     zmq_strerror(errno));
        goto fail;
    }
    zmq_msg_init(&self->in);
    self->in_live = 1;
    int64_t now = mesh_now_ms();
    self->last_heard = now;
    self->next_beat = now + self->heartbeat_ms;
    self->next_missed = now + (int64_t)self->heartbeat_ms * 3 / 2;
    s_gauge(self->o.m_connected, 0);
    if (s_send_control(self, MSG_HELLO) != 0)
        log_warn("cannot queue HELLO for %s: %s", self->address, zmq_strerror(errno));
    return self;
zfail:
    sbuf_appendf(err, "cannot create broker socket: %s", zmq_strerror(errno));
fail:
    mesh_peer_destroy(&self);
    return NULL;
}

void mesh_peer_destroy(mesh_peer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    mesh_peer_t *self = *self_p;
    if (self->sock) {
        s_send_control(self, MSG_BYE);
        zmq_close(self->sock);
    }
    if (self->in_live)
        zmq_msg_close(&self->in);
    sbuf_destroy(&self->hello);
    sbuf_destroy(&self->out);
    free(self->address);
    free(self->node_id);
    free(self);
    *self_p = NULL;
}

void *mesh_peer_socket(mesh_peer_t *self)
{
    return self->sock;
}

const char *mesh_peer_address(const mesh_peer_t *self)
{
    return self->address;
}

int mesh_peer_send_frame(mesh_peer_t *self, const void *frame, size_t len)
{
    /* DONTWAIT: a full pipe must surface as EAGAIN (back-pressure), never
     * park the owning thread while the broker is away. */
    return zmq_send(self->sock, frame, len, ZMQ_DONTWAIT) < 0 ? -1 : 0;
}

int mesh_peer_send(mesh_peer_t *self, const envelope_t *env)
{
    sbuf_reset(self->out);
    if (envelope_encode(env, self->out) != 0) {
        errno = EMSGSIZE;
        return -1;
    }
    return mesh_peer_send_frame(self, sbuf_data(self->out), sbuf_len(self->out));
}

static void s_heard(mesh_peer_t *self, int64_t now)
{
    self->last_heard = now;
    self->next_missed = now + (int64_t)self->heartbeat_ms * 3 / 2;
    if (!self->connected) {
        self->connected = 1;
        s_gauge(self->o.m_connected, 1);
        log_info("broker reachable node=%s", self->node_id);
    }
}

int mesh_peer_recv(mesh_peer_t *self, envelope_t *env)
{
    zmq_msg_close(&self->in);
    zmq_msg_init(&self->in);
    if (zmq_msg_recv(&self->in, self->sock, ZMQ_DONTWAIT) < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    int more = zmq_msg_more(&self->in);
    if (more) {
        /* We never send multipart; drain it so the socket stays usable. */
        while (more) {
            zmq_msg_close(&self->in);
            zmq_msg_init(&self->in);
            if (zmq_msg_recv(&self->in, self->sock, ZMQ_DONTWAIT) < 0)
                break;
            more = zmq_msg_more(&self->in);
        }
        s_count(self->o.m_malformed);
        return 2;
    }
    const char *why = NULL;
    if (envelope_decode(zmq_msg_data(&self->in), zmq_msg_size(&self->in), self->max_frame, env,
                        &why) != 0) {
        s_count(self->o.m_malformed);
        if (log_should("peer-malformed", 14, 60000))
            log_warn("malformed frame from broker node=%s reason=%s", self->node_id, why);
        return 2;
    }
    s_heard(self, mesh_now_ms());
    return env->type == MSG_HEARTBEAT ? 2 : 1;
}

const void *mesh_peer_frame(const mesh_peer_t *self, size_t *len)
{
    *len = zmq_msg_size((zmq_msg_t *)&self->in);
    return zmq_msg_data((zmq_msg_t *)&self->in);
}

int mesh_peer_tick(mesh_peer_t *self)
{
    int64_t now = mesh_now_ms();
    if (now >= self->next_beat) {
        if (s_send_control(self, MSG_HEARTBEAT) != 0 && errno != EAGAIN)
            log_warn("heartbeat send failed node=%s: %s", self->node_id, zmq_strerror(errno));
        self->next_beat = now + self->heartbeat_ms;
    }
    if (now >= self->next_missed) {
        s_count(self->o.m_missed);
        self->next_missed = now + self->heartbeat_ms;
    }
    if (self->connected && now - self->last_heard > (int64_t)self->heartbeat_ms * self->liveness) {
        self->connected = 0;
        s_gauge(self->o.m_connected, 0);
        s_count(self->o.m_reconnects);
        log_warn("broker silent for %lld ms, announcing again node=%s",
                 (long long)(now - self->last_heard), self->node_id);
        s_send_control(self, MSG_HELLO);
    }
    int64_t wait = self->next_beat - now;
    if (self->next_missed - now < wait)
        wait = self->next_missed - now;
    return wait < 0 ? 0 : (int)wait;
}

int mesh_peer_connected(const mesh_peer_t *self)
{
    return self->connected;
}
