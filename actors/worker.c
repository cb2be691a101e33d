/*
 * worker - actor runtime: activation, mailboxes, scheduling, passivation.
 *
 * Threads: the I/O thread (the caller of worker_main) owns the broker
 * socket, the actor table and the passivation sweep. Pool threads take
 * runnable actors from one run queue, run their handlers, and send what the
 * handlers produce back through an inproc PUSH socket that the I/O thread
 * forwards to the broker (ZeroMQ sockets are not shared between threads).
 *
 * One mutex guards the run queue and every mailbox. It is held only to link
 * or unlink, never while a handler runs, so it is cheap at the rates a
 * 2-core worker reaches; a scheduled actor is on the queue or on exactly one
 * pool thread, which is how "one message at a time per actor" holds.
 *
 * What can go wrong: a handler that blocks stalls one pool thread, not the
 * others or the I/O thread; a broker whose pipe is full stops the I/O thread
 * reading handler output (back-pressure) instead of dropping it.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "actor.h"
#include "db.h"
#include "delivery.h"
#include "dict.h"
#include "hashring.h"
#include "inbound.h"
#include "kv.h"
#include "log.h"
#include "mesh_peer.h"
#include "metrics.h"
#include "statusd.h"
#include "sweeper.h"
#include "worker.h"

#define ACTOR_SCHEDULED 1u /* on the run queue or on a pool thread */
#define ACTOR_ACTIVE 2u    /* activate succeeded; state is live */
#define SWEEP_BATCH 65536  /* actors examined per sweep step */
#define OUT_ENDPOINT "inproc://postchi-worker-out"

typedef struct mail {
    struct mail *next; /* mailbox order */
    size_t len;        /* frame length */
    char frame[];      /* the envelope as received */
} mail_t;

typedef struct actor {
    void *state;           /* the kind's state, NULL until activated */
    uint64_t last_request; /* fingerprint of the last request queued, 0 for none */
    mail_t *head;          /* mailbox front */
    mail_t *tail;          /* mailbox back */
    struct actor *rq_next; /* run queue link */
    int64_t last_active;   /* when its last message finished */
    uint32_t flags;        /* ACTOR_* */
    uint32_t kind;         /* index in actor_kinds */
    uint32_t key_off;      /* where the key starts in address */
    char address[];        /* "kind/key", NUL-terminated */
} actor_t;

typedef struct {
    metric_t *activated;   /* activations */
    metric_t *passivated;  /* passivations */
    metric_t *active;      /* live activations */
    metric_t *handled;     /* messages handled */
    metric_t *latency;     /* handler time */
} kind_metrics_t;

typedef struct {
    char node_id[128];        /* this worker's id */
    void *zctx;               /* ZeroMQ context */
    mesh_peer_t *peer;        /* broker connection (I/O thread) */
    void *pull;               /* handler output, from pool threads */
    dict_t *actors;           /* address -> actor_t (I/O thread) */
    size_t sweep_cursor;      /* passivation sweep position */
    int64_t idle_ms;          /* actor_idle_ms */
    size_t max_frame;         /* max_frame_bytes */
    pthread_mutex_t lock;     /* run queue + mailboxes + actor flags */
    pthread_cond_t cond;      /* run queue not empty, or stopping */
    actor_t *rq_head;         /* run queue front */
    actor_t *rq_tail;         /* run queue back */
    int stopping;             /* pool threads exit when set */
    pthread_t *threads;       /* the pool */
    int nthreads;             /* pool size */
    atomic_long depth;        /* mails waiting in all mailboxes */
    kind_metrics_t *km;       /* per kind, same order as actor_kinds */
    metric_t *m_depth;        /* mailbox depth gauge */
    metric_t *m_malformed;    /* frames refused */
    metric_t *m_repeats;      /* resent requests dropped */
    db_t *db;                 /* PostgreSQL (checked at start; kinds will use it) */
    kv_t *kv;                 /* Redis (checked at start) */
    sbuf_t *scratch;          /* I/O thread encoding buffer */
    char *conninfo;           /* PostgreSQL connection string for pool threads */
} worker_t;

struct actor_ctx {
    worker_t *w;              /* the worker */
    actor_t *actor;           /* the actor being run */
    const envelope_t *msg;    /* the message being handled */
    void *push;               /* this pool thread's PUSH socket */
    sbuf_t *out;              /* this pool thread's encoding buffer */
    int replied;              /* the request got its answer */
    db_t **db;                /* this pool thread's connection slot */
};

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

const char *actor_key(const actor_ctx_t *ctx)
{
    return ctx->actor->address + ctx->actor->key_off;
}

const char *actor_node_id(const actor_ctx_t *ctx)
{
    return ctx->w->node_id;
}

db_t *actor_db(actor_ctx_t *ctx)
{
    if (db_usable(*ctx->db))
        return *ctx->db;
    db_destroy(ctx->db);
    sbuf_t *err = sbuf_new(64);
    *ctx->db = db_connect(ctx->w->conninfo, 0, err);
    if (!*ctx->db && log_should("actor-db", 8, 10000))
        log_error("%s", err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    return *ctx->db;
}

static int s_ctx_send(actor_ctx_t *ctx, const envelope_t *env)
{
    sbuf_reset(ctx->out);
    if (envelope_encode(env, ctx->out) != 0)
        return -1;
    return zmq_send(ctx->push, sbuf_data(ctx->out), sbuf_len(ctx->out), 0) < 0 ? -1 : 0;
}

int actor_reply(actor_ctx_t *ctx, const void *body, size_t len)
{
    const envelope_t *m = ctx->msg;
    if (m->corr == 0 || m->sender_len == 0)
        return -1;
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = MSG_REPLY,
        .target = m->sender,
        .target_len = m->sender_len,
        .sender = ctx->actor->address,
        .sender_len = strlen(ctx->actor->address),
        .name = m->name,
        .name_len = m->name_len,
        .corr = m->corr,
        .body = body,
        .body_len = len,
    };
    int rc = s_ctx_send(ctx, &env);
    if (rc == 0)
        ctx->replied = 1;
    return rc;
}

int actor_send(actor_ctx_t *ctx, const char *target, const char *name, const void *body,
               size_t len)
{
    envelope_t env = {
        .version = ENVELOPE_VERSION,
        .type = MSG_SEND,
        .target = target,
        .target_len = strlen(target),
        .sender = ctx->actor->address,
        .sender_len = strlen(ctx->actor->address),
        .name = name ? name : "",
        .name_len = name ? strlen(name) : 0,
        .body = body,
        .body_len = len,
    };
    return s_ctx_send(ctx, &env);
}

static void s_ctx_error(actor_ctx_t *ctx, const char *code, const char *reason)
{
    const envelope_t *m = ctx->msg;
    if (m->sender_len == 0 || m->type == MSG_ERROR)
        return;
    sbuf_t *body = sbuf_new(64);
    if (body && envelope_error_encode(body, code, reason) == 0) {
        envelope_t env = {
            .version = ENVELOPE_VERSION,
            .type = MSG_ERROR,
            .target = m->sender,
            .target_len = m->sender_len,
            .sender = ctx->actor->address,
            .sender_len = strlen(ctx->actor->address),
            .name = m->name,
            .name_len = m->name_len,
            .corr = m->corr,
            .body = sbuf_data(body),
            .body_len = sbuf_len(body),
        };
        s_ctx_send(ctx, &env);
    }
    sbuf_destroy(&body);
}

/* Run every mail an actor has, one at a time, on the calling pool thread. */
static void s_run_actor(worker_t *w, actor_t *a, mail_t *mails, void *push, sbuf_t *out,
                        db_t **db)
{
    const actor_kind_t *kind = actor_kinds[a->kind];
    kind_metrics_t *km = &w->km[a->kind];
    while (mails) {
        mail_t *m = mails;
        mails = m->next;
        envelope_t env;
        const char *why;
        actor_ctx_t ctx = {w, a, &env, push, out, 0, db};
        if (envelope_decode(m->frame, m->len, w->max_frame, &env, &why) == 0) {
            int ok = 1;
            if (!(a->flags & ACTOR_ACTIVE)) {
                void *state = NULL;
                if (kind->activate && kind->activate(&ctx, &state) != 0) {
                    s_ctx_error(&ctx, "activation_failed", "the actor could not be activated");
                    ok = 0;
                } else {
                    a->state = state;
                    a->flags |= ACTOR_ACTIVE;
                    metric_inc(km->activated);
                    metric_inc(km->active);
                }
            }
            if (ok) {
                struct timespec ts0, ts1;
                clock_gettime(CLOCK_MONOTONIC, &ts0);
                int rc = kind->receive(&ctx, a->state, &env);
                clock_gettime(CLOCK_MONOTONIC, &ts1);
                metric_observe(km->latency, (double)(ts1.tv_sec - ts0.tv_sec) +
                                                (double)(ts1.tv_nsec - ts0.tv_nsec) * 1e-9);
                metric_inc(km->handled);
                if (rc != 0 && env.corr && !ctx.replied)
                    s_ctx_error(&ctx, "handler_failed", "the actor failed to handle the message");
            }
        }
        free(m);
        atomic_fetch_sub(&w->depth, 1);
    }
}

static void *s_pool_thread(void *arg)
{
    worker_t *w = arg;
    void *push = zmq_socket(w->zctx, ZMQ_PUSH);
    sbuf_t *out = sbuf_new(256);
    db_t *db = NULL; /* connected by the first handler that asks */
    int hwm = 0; /* unbounded: the I/O thread applies back-pressure instead */
    if (!push || !out || zmq_setsockopt(push, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_connect(push, OUT_ENDPOINT) != 0)
        log_panic("cannot set up pool thread: %s", zmq_strerror(errno));
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->rq_head && !w->stopping)
            pthread_cond_wait(&w->cond, &w->lock);
        if (!w->rq_head)
            break;
        actor_t *a = w->rq_head;
        w->rq_head = a->rq_next;
        if (!w->rq_head)
            w->rq_tail = NULL;
        a->rq_next = NULL;
        mail_t *mails = a->head;
        a->head = a->tail = NULL;
        pthread_mutex_unlock(&w->lock);

        s_run_actor(w, a, mails, push, out, &db);

        pthread_mutex_lock(&w->lock);
        a->last_active = mesh_now_ms();
        if (a->head) {
            /* More arrived while it ran: back of the queue, for fairness. */
            if (w->rq_tail)
                w->rq_tail->rq_next = a;
            else
                w->rq_head = a;
            w->rq_tail = a;
        } else {
            a->flags &= ~ACTOR_SCHEDULED;
        }
    }
    pthread_mutex_unlock(&w->lock);
    zmq_close(push);
    sbuf_destroy(&out);
    db_destroy(&db);
    return NULL;
}

static int s_kind_index(const char *kind, size_t len)
{
    for (int i = 0; actor_kinds[i]; i++)
        if (strlen(actor_kinds[i]->name) == len && memcmp(actor_kinds[i]->name, kind, len) == 0)
            return i;
    return -1;
}

static void s_io_error(worker_t *w, const envelope_t *env, const char *code, const char *reason)
{
    if (env->sender_len == 0 || env->type == MSG_ERROR)
        return;
    sbuf_t *body = sbuf_new(64);
    if (body && envelope_error_encode(body, code, reason) == 0) {
        envelope_t e = {
            .version = ENVELOPE_VERSION,
            .type = MSG_ERROR,
            .target = env->sender,
            .target_len = env->sender_len,
            .sender = mesh_peer_address(w->peer),
            .sender_len = strlen(mesh_peer_address(w->peer)),
            .name = env->name,
            .name_len = env->name_len,
            .corr = env->corr,
            .body = sbuf_data(body),
            .body_len = sbuf_len(body),
        };
        mesh_peer_send(w->peer, &e);
    }
    sbuf_destroy(&body);
}

/* 1 when env is a resend of the last request this actor was given (a
 * client resends a request it heard nothing back for, under the same
 * correlation id; see mesh_client_call). The original is then queued,
 * running, or answered moments ago, so the repeat is dropped rather than
 * handled twice. A resend that reaches another activation (its worker
 * died, or the ring changed) is handled: kinds tolerate a repeat. Only the
 * last request is remembered: one word per actor, one hash per request. */
static int s_repeated(actor_t *a, const envelope_t *env)
{
    if (env->type != MSG_SEND || env->corr == 0)
        return 0;
    uint64_t print = hashring_hash(env->sender, env->sender_len, env->corr) | 1;
    if (a->last_request == print)
        return 1;
    a->last_request = print;
    return 0;
}

/* A frame for an actor arrived: find or create the actor, queue the mail,
 * schedule the actor if it is idle. */
static void s_deliver(worker_t *w, const envelope_t *env)
{
    const char *kind, *key;
    size_t kind_len, key_len;
    if (envelope_addr_split(env->target, env->target_len, &kind, &kind_len, &key, &key_len) != 0)
        return; /* the broker only routes kind/key here */
    if (kind_len == 4 && memcmp(kind, "node", 4) == 0) {
        /* Answers to this process itself (errors about our own sends). */
        if (env->type == MSG_ERROR && log_should("worker-node-error", 17, 10000)) {
            char name[64];
            log_warn("a message from this worker was not delivered name=%s",
                     log_printable(name, sizeof name, env->name, env->name_len));
        }
        return;
    }
    actor_t *a = dict_get(w->actors, env->target, env->target_len);
    if (!a) {
        int k = s_kind_index(kind, kind_len);
        if (k < 0) {
            s_io_error(w, env, "unknown_kind", "no actor kind by that name");
            return;
        }
        a = calloc(1, sizeof *a + env->target_len + 1);
        if (!a || dict_put(w->actors, env->target, env->target_len, a) != 0) {
            free(a);
            s_io_error(w, env, "overloaded", "worker out of memory");
            return;
        }
        memcpy(a->address, env->target, env->target_len);
        a->kind = (uint32_t)k;
        a->key_off = (uint32_t)kind_len + 1;
    }
    if (s_repeated(a, env)) {
        metric_inc(w->m_repeats);
        return;
    }
    size_t len;
    const void *frame = mesh_peer_frame(w->peer, &len);
    mail_t *m = malloc(sizeof *m + len);
    if (!m) {
        s_io_error(w, env, "overloaded", "worker out of memory");
        return;
    }
    m->next = NULL;
    m->len = len;
    memcpy(m->frame, frame, len);
    atomic_fetch_add(&w->depth, 1);
    pthread_mutex_lock(&w->lock);
    if (a->tail)
        a->tail->next = m;
    else
        a->head = m;
    a->tail = m;
    if (!(a->flags & ACTOR_SCHEDULED)) {
        a->flags |= ACTOR_SCHEDULED;
        if (w->rq_tail)
            w->rq_tail->rq_next = a;
        else
            w->rq_head = a;
        w->rq_tail = a;
        pthread_cond_signal(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
}

static void s_actor_free(worker_t *w, actor_t *a)
{
    if (a->flags & ACTOR_ACTIVE) {
        const actor_kind_t *kind = actor_kinds[a->kind];
        if (kind->passivate)
            kind->passivate(a->state);
        metric_inc(w->km[a->kind].passivated);
        metric_add(w->km[a->kind].active, -1);
    }
    while (a->head) {
        mail_t *m = a->head;
        a->head = m->next;
        free(m);
        atomic_fetch_sub(&w->depth, 1);
    }
    free(a);
}

typedef struct {
    worker_t *w;     /* the worker */
    int64_t now;     /* sweep time */
    int all;         /* passivate regardless of idleness (shutdown) */
} sweep_t;

static int s_sweep_visit(void *arg, const void *key, size_t len, void *value)
{
    sweep_t *s = arg;
    actor_t *a = value;
    (void)key;
    (void)len;
    if (!s->all && ((a->flags & ACTOR_SCHEDULED) || a->head || s->now - a->last_active < s->w->idle_ms))
        return 0;
    s_actor_free(s->w, a);
    return 1;
}

static void s_sweep(worker_t *w, int all)
{
    sweep_t s = {w, mesh_now_ms(), all};
    pthread_mutex_lock(&w->lock);
    if (all) {
        size_t cursor = 0;
        dict_sweep(w->actors, &cursor, dict_size(w->actors) + 16, s_sweep_visit, &s);
    } else {
        dict_sweep(w->actors, &w->sweep_cursor, SWEEP_BATCH, s_sweep_visit, &s);
    }
    pthread_mutex_unlock(&w->lock);
}

static void s_metrics_init(worker_t *w)
{
    static const char *const labels[] = {"kind", NULL};
    metric_family_t *f_act = metrics_family(METRIC_GAUGE, "postchi_worker_actors_active",
                                            "Activated actors by kind.", labels, NULL, 0);
    metric_family_t *f_in = metrics_family(METRIC_COUNTER, "postchi_worker_actors_activated_total",
                                           "Actor activations by kind.", labels, NULL, 0);
    metric_family_t *f_out =
        metrics_family(METRIC_COUNTER, "postchi_worker_actors_passivated_total",
                       "Actor passivations by kind.", labels, NULL, 0);
    metric_family_t *f_msg = metrics_family(METRIC_COUNTER, "postchi_worker_messages_handled_total",
                                            "Messages handled by kind.", labels, NULL, 0);
    metric_family_t *f_lat =
        metrics_family(METRIC_HISTOGRAM, "postchi_worker_handler_duration_seconds",
                       "Time a handler takes for one message, by kind.", labels, NULL, 0);
    int n = 0;
    while (actor_kinds[n])
        n++;
    w->km = calloc((size_t)n, sizeof *w->km);
    if (!w->km)
        log_fatal("out of memory");
    for (int i = 0; i < n; i++) {
        const char *v[] = {actor_kinds[i]->name, NULL};
        w->km[i].active = metrics_series(f_act, v);
        w->km[i].activated = metrics_series(f_in, v);
        w->km[i].passivated = metrics_series(f_out, v);
        w->km[i].handled = metrics_series(f_msg, v);
        w->km[i].latency = metrics_series(f_lat, v);
    }
    w->m_depth = metrics_gauge("postchi_worker_mailbox_depth",
                               "Messages waiting in actor mailboxes.");
    w->m_malformed = metrics_counter("postchi_worker_frames_malformed_total",
                                     "Frames from the broker refused by the decoder.");
    w->m_repeats = metrics_counter("postchi_worker_requests_repeated_total",
                                   "Resent requests dropped: their actor had the original.");
    actor_tenant_metrics();
}

static int s_ready(void *arg, sbuf_t *body)
{
    worker_t *w = arg;
    /* Read without the peer: its flag is an int written by the I/O thread;
     * a stale read only delays readiness by one poll. */
    int ok = w->peer && mesh_peer_connected(w->peer);
    sbuf_appendf(body, "{\"status\":\"%s\",\"broker\":%s}", ok ? "ok" : "unavailable",
                 ok ? "true" : "false");
    return ok;
}

static int s_connect_stores(worker_t *w, const config_t *cfg)
{
    sbuf_t *err = sbuf_new(128);
    int64_t wait = config_int(cfg, "startup_wait_ms");
    w->conninfo = db_conninfo_from_config(cfg);
    int rc = -1;
    if (!err || !w->conninfo)
        goto done;
    w->db = db_connect(w->conninfo, wait, err);
    if (!w->db) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    sbuf_reset(err);
    w->kv = kv_connect(config_str(cfg, "redis_host"), (int)config_int(cfg, "redis_port"), 2000,
                       wait, err);
    if (!w->kv) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    rc = 0;
done:
    sbuf_destroy(&err);
    return rc;
}

int mailer_configure(const config_t *cfg, sbuf_t *err);
void mailer_shutdown(void);

int worker_main(const config_t *cfg)
{
    delivery_t *delivery = NULL;
    worker_t w = {0};
    int status = 1;
    statusd_t *srv = NULL;
    sweeper_t *sweeper = NULL; /* outbox re-sender, its own thread */
    inbound_t *inbound = NULL; /* return-path SMTP listener, its own thread */
    sbuf_t *err = sbuf_new(128);
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    atomic_init(&w.depth, 0);

    const char *id = config_str(cfg, "node_id");
    if (id[0])
        snprintf(w.node_id, sizeof w.node_id, "%s", id);
    else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(w.node_id, sizeof w.node_id, "%s-%d", host, (int)getpid());
    }
    w.idle_ms = config_int(cfg, "actor_idle_ms");
    w.max_frame = (size_t)config_int(cfg, "max_frame_bytes");
    w.actors = dict_new();
    w.scratch = sbuf_new(256);
    if (!err || !w.actors || !w.scratch)
        log_fatal("out of memory");
    s_metrics_init(&w);

    if (s_connect_stores(&w, cfg) != 0)
        goto done;
    /* The delivery engine before any actor can run: mailer actors hand it
     * their messages. */
    if (mailer_configure(cfg, err) != 0) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    delivery = delivery_start(cfg, w.node_id, err);
    if (!delivery) {
        log_error("%s", sbuf_data(err));
        goto done;
    }
    delivery_set_instance(delivery);

    w.zctx = zmq_ctx_new();
    w.pull = w.zctx ? zmq_socket(w.zctx, ZMQ_PULL) : NULL;
    if (!w.pull || zmq_bind(w.pull, OUT_ENDPOINT) != 0) {
        log_error("cannot create handler output socket: %s", zmq_strerror(errno));
        goto done;
    }
    w.nthreads = (int)config_int(cfg, "worker_threads");
    w.threads = calloc((size_t)w.nthreads, sizeof *w.threads);
    if (!w.threads)
        log_fatal("out of memory");
    for (int i = 0; i < w.nthreads; i++)
        if (pthread_create(&w.threads[i], NULL, s_pool_thread, &w) != 0)
            log_fatal("cannot start pool thread %d", i);

    mesh_peer_opts_t po = {
        .endpoint = config_str(cfg, "broker_endpoint"),
        .node_id = w.node_id,
        .role = "worker",
        .capacity = (uint32_t)config_int(cfg, "worker_capacity"),
        .heartbeat_ms = (int)config_int(cfg, "heartbeat_interval_ms"),
        .liveness = (int)config_int(cfg, "heartbeat_liveness"),
        .hwm = (int)config_int(cfg, "zmq_hwm"),
        .max_frame = w.max_frame,
        .m_malformed = w.m_malformed,
        .m_missed = metrics_counter("postchi_worker_heartbeats_missed_total",
                                    "Heartbeat intervals the broker stayed silent."),
        .m_reconnects = metrics_counter("postchi_worker_broker_reconnects_total",
                                        "Times the broker was found gone and re-announced to."),
        .m_connected = metrics_gauge("postchi_worker_broker_connected",
                                     "1 when the broker was heard within the liveness window."),
    };
    w.peer = mesh_peer_new(w.zctx, &po, err);
    if (!w.peer) {
        log_error("%s", sbuf_data(err));
        goto stop_pool;
    }
    int mport = (int)config_int(cfg, "metrics_port");
    if (mport > 0) {
        srv = statusd_start(config_str(cfg, "metrics_bind"), mport, s_ready, &w, err);
        if (!srv) {
            log_error("cannot start status server: %s", sbuf_data(err));
            goto stop_pool;
        }
    }
    sweeper = sweeper_start(cfg, w.node_id, err);
    if (!sweeper) {
        log_error("cannot start the outbox sweeper: %s", sbuf_data(err));
        goto stop_pool;
    }
    inbound = inbound_start(cfg, err);
    if (!inbound) {
        log_error("cannot start the return-path listener: %s", sbuf_data(err));
        goto stop_pool;
    }
    log_info("worker started node=%s threads=%d broker=%s metrics_port=%d", w.node_id,
             w.nthreads, po.endpoint, mport);

    int64_t sweep_every = w.idle_ms / 4 < 250 ? w.idle_ms / 4 : 250;
    if (sweep_every < 25)
        sweep_every = 25;
    int64_t next_sweep = mesh_now_ms() + sweep_every;
    zmq_msg_t pending; /* handler output the broker pipe could not take yet */
    int has_pending = 0;
    zmq_msg_init(&pending);
    while (!s_stop) {
        int wait = mesh_peer_tick(w.peer);
        int64_t to_sweep = next_sweep - mesh_now_ms();
        if (to_sweep < wait)
            wait = to_sweep < 0 ? 0 : (int)to_sweep;
        zmq_pollitem_t items[2] = {
            {mesh_peer_socket(w.peer), 0, (short)(ZMQ_POLLIN | (has_pending ? ZMQ_POLLOUT : 0)), 0},
            {w.pull, 0, has_pending ? 0 : ZMQ_POLLIN, 0},
        };
        if (zmq_poll(items, 2, wait) < 0 && errno != EINTR) {
            log_error("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            for (int i = 0; i < 4096; i++) {
                envelope_t env;
                int rc = mesh_peer_recv(w.peer, &env);
                if (rc < 0) {
                    log_error("broker socket: %s", zmq_strerror(errno));
                    break;
                }
                if (rc == 0)
                    break;
                if (rc == 1 &&
                    (env.type == MSG_SEND || env.type == MSG_REPLY || env.type == MSG_ERROR))
                    s_deliver(&w, &env);
            }
        }
        /* Forward handler output; stop at the first frame the broker pipe
         * refuses and keep it, so nothing a handler sent is lost. */
        for (int i = 0; i < 4096; i++) {
            if (!has_pending) {
                if (zmq_msg_recv(&pending, w.pull, ZMQ_DONTWAIT) < 0)
                    break;
                has_pending = 1;
            }
            if (mesh_peer_send_frame(w.peer, zmq_msg_data(&pending), zmq_msg_size(&pending)) != 0)
                break;
            has_pending = 0;
        }
        metric_set(w.m_depth, (double)atomic_load(&w.depth));
        if (mesh_now_ms() >= next_sweep) {
            s_sweep(&w, 0);
            next_sweep = mesh_now_ms() + sweep_every;
        }
    }
    zmq_msg_close(&pending);
    log_info("worker stopping node=%s actors=%zu", w.node_id, dict_size(w.actors));
    status = 0;
stop_pool:
    inbound_stop(&inbound);
    sweeper_stop(&sweeper);
    pthread_mutex_lock(&w.lock);
    w.stopping = 1;
    pthread_cond_broadcast(&w.cond);
    pthread_mutex_unlock(&w.lock);
    for (int i = 0; i < w.nthreads; i++)
        pthread_join(w.threads[i], NULL);
    free(w.threads);
done:
    /* After the pool: no mailer is still handing the engine work. */
    delivery_set_instance(NULL);
    delivery_stop(&delivery);
    mailer_shutdown();
    statusd_stop(&srv);
    if (w.actors) {
        s_sweep(&w, 1);
        dict_destroy(&w.actors);
    }
    mesh_peer_destroy(&w.peer);
    if (w.pull)
        zmq_close(w.pull);
    if (w.zctx)
        zmq_ctx_term(w.zctx);
    db_destroy(&w.db);
    kv_destroy(&w.kv);
    free(w.km);
    free(w.conninfo);
    sbuf_destroy(&w.scratch);
    sbuf_destroy(&err);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cond);
    metrics_shutdown();
    return status;
}
