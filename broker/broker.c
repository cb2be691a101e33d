/*
 * broker - ROUTER loop, peer registry, routing. See broker.h.
 *
 * Single-threaded by design: one loop owns the socket, the ring and the
 * hold queue, so routing needs no locks. Frames are moved, not copied: the
 * ZeroMQ message received is the one sent on.
 *
 * What can go wrong: a peer vanishes (kill -9). Once ZeroMQ has seen its
 * connection close, ROUTER_MANDATORY turns a send to it into EHOSTUNREACH,
 * so the broker drops that worker from the ring and re-routes the same
 * frame to a survivor without waiting for missed heartbeats. Frames routed
 * to it before that moment are lost with it: callers resend requests they
 * hear nothing back for (mesh_client_call), and the sweeper re-drives
 * one-way nudges from PostgreSQL. Hostile or malformed frames are counted,
 * logged at most once per peer per minute, and discarded.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "broker.h"
#include "dict.h"
#include "envelope.h"
#include "hashring.h"
#include "log.h"
#include "mesh_peer.h"
#include "metrics.h"
#include "statusd.h"

typedef struct {
    char *id;          /* routing id (node id) */
    size_t id_len;     /* its length */
    int is_worker;     /* announced role "worker" */
    uint32_t capacity; /* ring weight */
    int in_ring;       /* currently owns a share */
    int64_t last_seen; /* when it last sent anything */
} peer_t;

typedef struct held {
    struct held *next; /* FIFO order */
    int64_t since;     /* when it was held */
    zmq_msg_t frame;   /* the frame, unchanged */
} held_t;

typedef struct {
    void *zctx;          /* ZeroMQ context */
    void *sock;          /* ROUTER */
    dict_t *peers;       /* id -> peer_t */
    hashring_t *ring;    /* live workers */
    held_t *held_head;   /* frames waiting for a worker */
    held_t *held_tail;   /* append point */
    size_t held_count;   /* queue length */
    size_t held_max;     /* broker_queue_max */
    int64_t held_ttl;    /* broker_queue_ttl_ms */
    size_t max_frame;    /* max_frame_bytes */
    int heartbeat_ms;    /* beat interval */
    int liveness;        /* beats a peer may miss */
    sbuf_t *scratch;     /* error replies are encoded here */
    int64_t now;         /* loop time */
    metric_t *m_routed, *m_queued, *m_malformed, *m_live, *m_missed, *m_joined, *m_lost,
        *m_clients;
    metric_t *m_drop_no_route, *m_drop_queue_full, *m_drop_expired, *m_drop_malformed,
        *m_drop_unreachable;
} broker_t;

/* Held frames beyond which the broker stops reading input. */
#define READ_GATE 1024

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void s_metrics_init(broker_t *b)
{
    b->m_routed = metrics_counter("postchi_broker_messages_routed_total",
                                  "Messages the broker delivered to a peer.");
    b->m_queued = metrics_gauge("postchi_broker_queue_depth",
                                "Messages held while no worker could take them.");
    b->m_malformed = metrics_counter("postchi_broker_frames_malformed_total",
                                     "Frames refused by the envelope decoder.");
    b->m_live = metrics_gauge("postchi_broker_workers_live", "Workers owning a ring share.");
    b->m_missed = metrics_counter("postchi_broker_heartbeats_missed_total",
                                  "Heartbeat intervals a peer stayed silent.");
    b->m_joined = metrics_counter("postchi_broker_workers_joined_total", "Workers that joined.");
    b->m_lost = metrics_counter("postchi_broker_workers_lost_total",
                                "Workers dropped as dead or gone.");
    b->m_clients = metrics_gauge("postchi_broker_clients_live", "Connected non-worker peers.");
    static const char *const labels[] = {"reason", NULL};
    metric_family_t *f =
        metrics_family(METRIC_COUNTER, "postchi_broker_messages_dropped_total",
                       "Messages the broker could not deliver, by reason.", labels, NULL, 0);
    b->m_drop_no_route = metrics_series(f, (const char *const[]){"no_route", NULL});
    b->m_drop_queue_full = metrics_series(f, (const char *const[]){"queue_full", NULL});
    b->m_drop_expired = metrics_series(f, (const char *const[]){"expired", NULL});
    b->m_drop_malformed = metrics_series(f, (const char *const[]){"malformed", NULL});
    b->m_drop_unreachable = metrics_series(f, (const char *const[]){"unreachable", NULL});
}

static void s_update_gauges(broker_t *b)
{
    size_t live = hashring_size(b->ring);
    metric_set(b->m_live, (double)live);
    metric_set(b->m_clients, (double)(dict_size(b->peers) - live));
}

/* Send frame to the peer with routing id id. Consumes frame on success.
 * 0, or -1 with errno (EHOSTUNREACH: peer gone; EAGAIN: its pipe is full). */
static int s_send_to(broker_t *b, const char *id, size_t id_len, zmq_msg_t *frame)
{
    if (zmq_send(b->sock, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    /* With ROUTER_MANDATORY the identity part fails if the peer is gone, so
     * once it is accepted the body part cannot fail for routing reasons. */
    return zmq_msg_send(frame, b->sock, ZMQ_DONTWAIT) < 0 ? -1 : 0;
}

static void s_peer_free(peer_t *p)
{
    if (p) {
        free(p->id);
        free(p);
    }
}

static void s_ring_drop(broker_t *b, peer_t *p, const char *why)
{
    if (!p->in_ring)
        return;
    hashring_remove(b->ring, p->id);
    p->in_ring = 0;
    metric_inc(b->m_lost);
    log_warn("worker left the ring node=%s reason=%s live=%zu", p->id, why,
             hashring_size(b->ring));
}

static void s_peer_forget(broker_t *b, const char *id, size_t id_len, const char *why)
{
    peer_t *p = dict_remove(b->peers, id, id_len);
    if (!p)
        return;
    s_ring_drop(b, p, why);
    s_peer_free(p);
    s_update_gauges(b);
}

typedef enum {
    ROUTE_SENT,      /* handed to ZeroMQ; frame consumed */
    ROUTE_DROPPED,   /* undeliverable; counted and the sender told */
    ROUTE_BUSY,      /* owner's pipe is full; frame kept by the caller */
    ROUTE_NO_WORKER  /* no live worker; frame kept by the caller */
} route_rc_t;

static route_rc_t s_try_route(broker_t *b, zmq_msg_t *frame, const envelope_t *env);

/* Tell the sender of env that its message was not delivered. Sent at most
 * once and never queued: if the sender cannot be reached either, the drop
 * counter is the only trace (never an error about an error). */
static void s_reply_error(broker_t *b, const envelope_t *env, const char *code,
                          const char *reason)
{
    if (env->type == MSG_ERROR || env->sender_len == 0)
        return;
    sbuf_t *body = sbuf_new(64);
    if (!body)
        return;
    sbuf_reset(b->scratch);
    envelope_t err = {
        .version = ENVELOPE_VERSION,
        .type = MSG_ERROR,
        .target = env->sender,
        .target_len = env->sender_len,
        .sender = "broker",
        .sender_len = 6,
        .name = env->name,
        .name_len = env->name_len,
        .corr = env->corr,
    };
    if (envelope_error_encode(body, code, reason) == 0) {
        err.body = sbuf_data(body);
        err.body_len = sbuf_len(body);
        zmq_msg_t msg;
        if (envelope_encode(&err, b->scratch) == 0 &&
            zmq_msg_init_size(&msg, sbuf_len(b->scratch)) == 0) {
            memcpy(zmq_msg_data(&msg), sbuf_data(b->scratch), sbuf_len(b->scratch));
            envelope_t view;
            const char *why;
            /* Re-decode so the envelope points into msg, which we own. */
            if (envelope_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), b->max_frame, &view,
                                &why) == 0)
                s_try_route(b, &msg, &view);
            zmq_msg_close(&msg);
        }
    }
    sbuf_destroy(&body);
}

static route_rc_t s_drop(broker_t *b, const envelope_t *env, metric_t *counter,
                         const char *code, const char *reason)
{
    metric_inc(counter);
    if (log_should(code, strlen(code), 10000)) {
        char target[96];
        log_warn("message not delivered code=%s target=%s", code,
                 log_printable(target, sizeof target, env->target, env->target_len));
    }
    s_reply_error(b, env, code, reason);
    return ROUTE_DROPPED;
}

/* Keep frame at the back of the hold queue (it takes the frame's content),
 * or drop it when the queue is full. */
static void s_hold(broker_t *b, zmq_msg_t *frame, const envelope_t *env)
{
    held_t *h = b->held_count < b->held_max ? malloc(sizeof *h) : NULL;
    if (!h) {
        s_drop(b, env, b->m_drop_queue_full, "queue_full",
               "the broker's hold queue is full: no worker can take the message");
        return;
    }
    h->next = NULL;
    h->since = b->now;
    zmq_msg_init(&h->frame);
    zmq_msg_move(&h->frame, frame);
    if (b->held_tail)
        b->held_tail->next = h;
    else
        b->held_head = h;
    b->held_tail = h;
    b->held_count++;
    metric_set(b->m_queued, (double)b->held_count);
}

/* One attempt to deliver frame (decoded as env) to its owner. */
static route_rc_t s_try_route(broker_t *b, zmq_msg_t *frame, const envelope_t *env)
{
    const char *kind, *key;
    size_t kind_len, key_len;
    if (envelope_addr_split(env->target, env->target_len, &kind, &kind_len, &key, &key_len) != 0)
        return s_drop(b, env, b->m_drop_no_route, "no_route", "target is not kind/key");
    if (kind_len == 4 && memcmp(kind, "node", 4) == 0) {
        if (s_send_to(b, key, key_len, frame) == 0) {
            metric_inc(b->m_routed);
            return ROUTE_SENT;
        }
        if (errno == EAGAIN)
            return ROUTE_BUSY;
        s_peer_forget(b, key, key_len, "unreachable");
        return s_drop(b, env, b->m_drop_unreachable, "unreachable", "peer is not connected");
    }
    /* An actor: its owner, trying survivors while owners prove gone. */
    for (;;) {
        peer_t *p = hashring_lookup(b->ring, env->target, env->target_len, NULL);
        if (!p)
            return ROUTE_NO_WORKER;
        if (s_send_to(b, p->id, p->id_len, frame) == 0) {
            metric_inc(b->m_routed);
            return ROUTE_SENT;
        }
        if (errno == EAGAIN)
            return ROUTE_BUSY;
        s_peer_forget(b, p->id, p->id_len, "unreachable");
    }
}

/* A fresh frame from a peer. Held frames go first, so a frame never
 * overtakes one from before a gap. */
static void s_route(broker_t *b, zmq_msg_t *frame, const envelope_t *env)
{
    if (b->held_head) {
        s_hold(b, frame, env);
        return;
    }
    route_rc_t rc = s_try_route(b, frame, env);
    if (rc == ROUTE_BUSY || rc == ROUTE_NO_WORKER)
        s_hold(b, frame, env);
}

/* Deliver held frames in order until one cannot go. 1 when the queue is
 * empty afterwards. */
static int s_flush_held(broker_t *b)
{
    while (b->held_head) {
        held_t *h = b->held_head;
        envelope_t env;
        const char *why;
        if (envelope_decode(zmq_msg_data(&h->frame), zmq_msg_size(&h->frame), b->max_frame, &env,
                            &why) == 0) {
            route_rc_t rc = s_try_route(b, &h->frame, &env);
            if (rc == ROUTE_BUSY || rc == ROUTE_NO_WORKER)
                break;
        }
        b->held_head = h->next;
        if (!b->held_head)
            b->held_tail = NULL;
        b->held_count--;
        zmq_msg_close(&h->frame);
        free(h);
    }
    metric_set(b->m_queued, (double)b->held_count);
    return b->held_head == NULL;
}

static void s_expire_held(broker_t *b)
{
    while (b->held_head && b->now - b->held_head->since >= b->held_ttl) {
        held_t *h = b->held_head;
        b->held_head = h->next;
        if (!b->held_head)
            b->held_tail = NULL;
        b->held_count--;
        envelope_t env;
        const char *why;
        if (envelope_decode(zmq_msg_data(&h->frame), zmq_msg_size(&h->frame), b->max_frame, &env,
                            &why) == 0)
            s_drop(b, &env, b->m_drop_expired, "expired",
                   hashring_size(b->ring) ? "the owning worker did not take it in time"
                                          : "no worker became live in time");
        zmq_msg_close(&h->frame);
        free(h);
    }
    metric_set(b->m_queued, (double)b->held_count);
}

/* HELLO and HEARTBEAT: learn or refresh the peer. A beat from a peer we do
 * not know (we restarted) registers it like a HELLO. */
static void s_announce(broker_t *b, const char *id, size_t id_len, const envelope_t *env)
{
    char role[16];
    uint32_t capacity = 1;
    if (envelope_hello_decode(env->body, env->body_len, role, sizeof role, &capacity) != 0) {
        metric_inc(b->m_malformed);
        metric_inc(b->m_drop_malformed);
        return;
    }
    peer_t *p = dict_get(b->peers, id, id_len);
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p)
            return;
        p->id = malloc(id_len + 1);
        if (!p->id || dict_put(b->peers, id, id_len, p) != 0) {
            s_peer_free(p);
            return;
        }
        memcpy(p->id, id, id_len);
        p->id[id_len] = 0;
        p->id_len = id_len;
    }
    p->last_seen = b->now;
    int is_worker = strcmp(role, "worker") == 0;
    if (is_worker && (!p->in_ring || p->capacity != capacity)) {
        if (capacity < 1)
            capacity = 1;
        hashring_add(b->ring, p->id, capacity, p);
        if (!p->in_ring) {
            metric_inc(b->m_joined);
            char safe[96];
            log_info("worker joined node=%s capacity=%u live=%zu",
                     log_printable(safe, sizeof safe, p->id, p->id_len), capacity,
                     hashring_size(b->ring));
        }
        p->in_ring = 1;
        p->capacity = capacity;
    }
    p->is_worker = is_worker;
    s_update_gauges(b);
    if (p->in_ring)
        s_flush_held(b);
}

static void s_on_frame(broker_t *b, zmq_msg_t *idmsg, zmq_msg_t *frame)
{
    const char *id = zmq_msg_data(idmsg);
    size_t id_len = zmq_msg_size(idmsg);
    envelope_t env;
    const char *why = NULL;
    if (envelope_decode(zmq_msg_data(frame), zmq_msg_size(frame), b->max_frame, &env, &why) != 0) {
        metric_inc(b->m_malformed);
        metric_inc(b->m_drop_malformed);
        char key[300];
        snprintf(key, sizeof key, "malformed/%.*s", (int)(id_len > 200 ? 200 : id_len), id);
        if (log_should(key, strlen(key), 60000)) {
            char safe[96];
            log_warn("malformed frame peer=%s reason=%s size=%zu",
                     log_printable(safe, sizeof safe, id, id_len), why, zmq_msg_size(frame));
        }
        return;
    }
    peer_t *p = dict_get(b->peers, id, id_len);
    if (p)
        p->last_seen = b->now;
    switch (env.type) {
    case MSG_HELLO:
    case MSG_HEARTBEAT:
        s_announce(b, id, id_len, &env);
        break;
    case MSG_BYE:
        s_peer_forget(b, id, id_len, "said bye");
        break;
    default:
        s_route(b, frame, &env);
        break;
    }
}

static void s_send_beat(broker_t *b, peer_t *p)
{
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = MSG_HEARTBEAT,
        .target = "broker",
        .target_len = 6,
        .sender = "broker",
        .sender_len = 6,
    };
    sbuf_reset(b->scratch);
    if (envelope_encode(&env, b->scratch) != 0)
        return;
    if (zmq_send(b->sock, p->id, p->id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return; /* gone or full: liveness decides */
    zmq_send(b->sock, sbuf_data(b->scratch), sbuf_len(b->scratch), ZMQ_DONTWAIT);
}

static int s_beat_visit(void *arg, const void *key, size_t len, void *value)
{
    broker_t *b = arg;
    peer_t *p = value;
    (void)key;
    (void)len;
    int64_t silent = b->now - p->last_seen;
    if (silent > (int64_t)b->heartbeat_ms * b->liveness) {
        metric_inc(b->m_missed);
        s_ring_drop(b, p, "missed heartbeats");
        log_info("peer forgotten node=%s silent_ms=%lld", p->id, (long long)silent);
        s_peer_free(p);
        return 1;
    }
    if (silent > (int64_t)b->heartbeat_ms * 3 / 2)
        metric_inc(b->m_missed);
    s_send_beat(b, p);
    return 0;
}

static void s_heartbeat(broker_t *b)
{
    size_t cursor = 0;
    size_t n = dict_size(b->peers);
    if (n)
        dict_sweep(b->peers, &cursor, n + 16, s_beat_visit, b);
    s_update_gauges(b);
}

static int s_ready(void *arg, sbuf_t *body)
{
    (void)arg;
    sbuf_appendf(body, "{\"status\":\"ok\"}");
    return 1;
}

static int s_free_visit(void *arg, const void *key, size_t len, void *value)
{
    (void)arg;
    (void)key;
    (void)len;
    s_peer_free(value);
    return 1;
}

static void s_destroy(broker_t *b)
{
    while (b->held_head) {
        held_t *h = b->held_head;
        b->held_head = h->next;
        zmq_msg_close(&h->frame);
        free(h);
    }
    if (b->peers) {
        size_t cursor = 0;
        dict_sweep(b->peers, &cursor, dict_size(b->peers) + 16, s_free_visit, NULL);
    }
    dict_destroy(&b->peers);
    hashring_destroy(&b->ring);
    sbuf_destroy(&b->scratch);
    if (b->sock)
        zmq_close(b->sock);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
}

int broker_main(const config_t *cfg)
{
    broker_t b = {0};
    int status = 1;
    statusd_t *status_srv = NULL;
    sbuf_t *err = sbuf_new(128);
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    signal(SIGPIPE, SIG_IGN);

    b.held_max = (size_t)config_int(cfg, "broker_queue_max");
    b.held_ttl = config_int(cfg, "broker_queue_ttl_ms");
    b.max_frame = (size_t)config_int(cfg, "max_frame_bytes");
    b.heartbeat_ms = (int)config_int(cfg, "heartbeat_interval_ms");
    b.liveness = (int)config_int(cfg, "heartbeat_liveness");
    b.peers = dict_new();
    b.ring = hashring_new();
    b.scratch = sbuf_new(256);
    b.zctx = zmq_ctx_new();
    if (!err || !b.peers || !b.ring || !b.scratch || !b.zctx)
        log_fatal("out of memory");
    s_metrics_init(&b);

    const char *endpoint = config_str(cfg, "broker_endpoint");
    b.sock = zmq_socket(b.zctx, ZMQ_ROUTER);
    int one = 1, zero = 0, hwm = (int)config_int(cfg, "zmq_hwm");
    int64_t maxmsg = (int64_t)b.max_frame;
    if (!b.sock || zmq_setsockopt(b.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(b.sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(b.sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(b.sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(b.sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(b.sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) {
        log_error("cannot create ROUTER socket: %s", zmq_strerror(errno));
        goto done;
    }
    if (zmq_bind(b.sock, endpoint) != 0) {
        log_error("cannot bind broker_endpoint '%s': %s", endpoint, zmq_strerror(errno));
        goto done;
    }
    int mport = (int)config_int(cfg, "metrics_port");
    if (mport > 0) {
        status_srv = statusd_start(config_str(cfg, "metrics_bind"), mport, s_ready, &b, err);
        if (!status_srv) {
            log_error("cannot start status server: %s", sbuf_data(err));
            goto done;
        }
    }
    log_info("broker listening endpoint=%s metrics_port=%d heartbeat_ms=%d liveness=%d", endpoint,
             mport, b.heartbeat_ms, b.liveness);

    b.now = mesh_now_ms();
    int64_t next_beat = b.now + b.heartbeat_ms;
    zmq_msg_t idmsg, frame;
    zmq_msg_init(&idmsg);
    zmq_msg_init(&frame);
    while (!s_stop) {
        if (b.held_head && hashring_size(b.ring))
            s_flush_held(&b);
        /* Back-pressure: while owners' pipes are full, stop reading so the
         * senders' own pipes fill and they feel it, rather than queueing
         * without bound here. */
        int gated = b.held_count >= READ_GATE && hashring_size(b.ring) > 0;
        zmq_pollitem_t item = {b.sock, 0, gated ? 0 : ZMQ_POLLIN, 0};
        int64_t wait = gated ? 1 : next_beat - mesh_now_ms();
        if (b.held_head && b.held_head->since + b.held_ttl - b.now < wait)
            wait = b.held_head->since + b.held_ttl - b.now;
        if (wait < 0)
            wait = 0;
        int rc = zmq_poll(&item, 1, (long)wait);
        if (rc < 0 && errno != EINTR) {
            log_error("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        b.now = mesh_now_ms();
        /* Drain in a batch: polling once per message would halve throughput. */
        for (int i = 0; rc > 0 && !gated && i < 4096; i++) {
            if (zmq_msg_recv(&idmsg, b.sock, ZMQ_DONTWAIT) < 0)
                break;
            if (!zmq_msg_more(&idmsg)) {
                metric_inc(b.m_malformed);
                continue;
            }
            zmq_msg_recv(&frame, b.sock, ZMQ_DONTWAIT);
            if (zmq_msg_more(&frame)) {
                /* More parts than an envelope has: drain and refuse. */
                while (zmq_msg_more(&frame) && zmq_msg_recv(&frame, b.sock, ZMQ_DONTWAIT) >= 0)
                    ;
                metric_inc(b.m_malformed);
                metric_inc(b.m_drop_malformed);
                continue;
            }
            s_on_frame(&b, &idmsg, &frame);
        }
        if (b.held_head)
            s_expire_held(&b);
        if (b.now >= next_beat) {
            s_heartbeat(&b);
            next_beat = b.now + b.heartbeat_ms;
        }
    }
    zmq_msg_close(&idmsg);
    zmq_msg_close(&frame);
    log_info("broker stopping");
    status = 0;
done:
    statusd_stop(&status_srv);
    s_destroy(&b);
    sbuf_destroy(&err);
    metrics_shutdown();
    return status;
}
