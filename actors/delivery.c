/*
 * delivery - one thread polling every outgoing SMTP connection. See
 * delivery.h.
 *
 * Jobs arrive on a mutex-guarded list and a wake pipe. Each destination
 * (host:port) keeps a FIFO of jobs and up to delivery_connections
 * connections; an idle connection takes the next job, so a connection
 * carries many messages. The smtp_client guarantees one result per
 * submitted transaction, even when the connection dies, so every job ends
 * in exactly one recorded outcome. A destination that cannot be reached at
 * all defers its queued jobs instead of retrying in a loop.
 *
 * Recording an outcome is one SQL statement on this thread's own
 * connection; the statements only touch a row that is still 'sending'.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "delivery.h"
#include "dict.h"
#include "log.h"
#include "metrics.h"
#include "smtp_client.h"

#define MAX_POLL 4096

typedef struct job {
    struct job *next;      /* FIFO link */
    delivery_job_t *j;     /* the work */
    int64_t queued_at;     /* when it reached the engine (for latency) */
} job_t;

typedef struct dest dest_t;

typedef struct conn {
    struct conn *next;     /* the destination's connections */
    smtp_conn_t *c;        /* the SMTP state machine */
    job_t *inflight;       /* the job submitted on it, or NULL */
    int idle;              /* ready for a transaction */
    int64_t started;       /* when inflight was submitted */
} conn_t;

struct dest {
    char key[300];         /* "host:port" */
    char host[256];        /* numeric address */
    int port;              /* port */
    job_t *head, *tail;    /* waiting jobs */
    conn_t *conns;         /* open connections */
    int nconns;            /* how many */
};

struct delivery {
    pthread_t thread;       /* the engine */
    pthread_mutex_t lock;   /* guards incoming and stopping */
    job_t *in_head, *in_tail; /* submitted, not yet taken by the thread */
    int stopping;           /* thread should end */
    int wake[2];            /* pipe: a byte means "look at incoming" */
    dict_t *dests;          /* key -> dest_t (thread only) */
    db_t *db;               /* outcome writes (thread only) */
    char *conninfo;         /* to reconnect */
    smtp_opts_t opts;       /* connection options */
    char *helo;             /* opts.helo_name storage */
    int max_conns;          /* per destination */
    char max_age[32];       /* delivery_max_age_s as text */
    metric_t *m_sent, *m_deferred, *m_bounced, *m_failed, *m_open, *m_latency;
};

static delivery_t *s_instance;

delivery_t *delivery_instance(void)
{
    return s_instance;
}

void delivery_set_instance(delivery_t *d)
{
    s_instance = d;
}

void delivery_job_free(delivery_job_t **job_p)
{
    if (!job_p || !*job_p)
        return;
    delivery_job_t *j = *job_p;
    free(j->mail_from);
    free(j->rcpt);
    free(j->data);
    free(j);
    *job_p = NULL;
}

/* ---------------------------------------------------------------- outcomes */

static db_t *s_db(delivery_t *d)
{
    if (db_usable(d->db))
        return d->db;
    db_destroy(&d->db);
    sbuf_t *err = sbuf_new(64);
    d->db = db_connect(d->conninfo, 0, err);
    if (!d->db && log_should("delivery-db", 11, 10000))
        log_error("%s", err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    return d->db;
}

/* One statement per outcome; each only touches a row still 'sending'. */
static const char *const SQL_SENT =
    "WITH m AS (UPDATE messages SET status = 'sent', lease_until = NULL, last_response = $2,"
    " updated_at = now() WHERE id = $1 AND status = 'sending'"
    " RETURNING id, organization_id, attempts)"
    " INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'sent', jsonb_build_object('response', $2::text,"
    " 'attempt', attempts) FROM m";

static const char *const SQL_BOUNCED =
    "WITH m AS (UPDATE messages SET status = 'bounced', lease_until = NULL, last_response = $2,"
    " updated_at = now() WHERE id = $1 AND status = 'sending'"
    " RETURNING id, organization_id, recipient, attempts),"
    " c AS (UPDATE contacts SET status = 'bounced', updated_at = now() FROM m"
    " WHERE contacts.organization_id = m.organization_id"
    " AND lower(contacts.email) = lower(m.recipient) RETURNING contacts.id),"
    " s AS (INSERT INTO suppressions (organization_id, email, reason)"
    " SELECT organization_id, recipient, 'bounce' FROM m"
    " ON CONFLICT (organization_id, lower(email)) DO NOTHING RETURNING id)"
    " INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'bounced', jsonb_build_object('response', $2::text,"
    " 'enhanced', $3::text, 'attempt', attempts) FROM m";

/* Deferred with exponential back-off and jitter, or failed once the
 * message is older than delivery_max_age_s. */
static const char *const SQL_DEFERRED =
    "WITH m AS (UPDATE messages SET"
    " status = CASE WHEN created_at < now() - make_interval(secs => $3::int)"
    "   THEN 'failed' ELSE 'deferred' END,"
    " next_attempt_at = now() + make_interval(secs => least(60 * power(2,"
    "   greatest(attempts - 1, 0)), 21600) * (0.75 + random() * 0.5)),"
    " lease_until = NULL, last_response = $2, updated_at = now()"
    " WHERE id = $1 AND status = 'sending'"
    " RETURNING id, organization_id, status, attempts, next_attempt_at)"
    " INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, status, jsonb_build_object('response', $2::text,"
    " 'attempt', attempts, 'next_attempt_at', next_attempt_at) FROM m";

static void s_record(delivery_t *d, job_t *job, int code, const char *enhanced,
                     const char *text)
{
    char response[600];
    snprintf(response, sizeof response, "%d%s%s %s", code, enhanced && enhanced[0] ? " " : "",
             enhanced ? enhanced : "", text ? text : "");
    db_t *db = s_db(d);
    sbuf_t *err = sbuf_new(64);
    int rc = -1;
    if (db) {
        if (code >= 200 && code < 300) {
            const char *p[] = {job->j->id, response};
            rc = db_exec(db, SQL_SENT, 2, p, err);
            metric_inc(d->m_sent);
        } else if (code >= 500 && code < 600) {
            const char *p[] = {job->j->id, response, enhanced ? enhanced : ""};
            rc = db_exec(db, SQL_BOUNCED, 3, p, err);
            metric_inc(d->m_bounced);
        } else {
            const char *p[] = {job->j->id, response, d->max_age};
            rc = db_exec(db, SQL_DEFERRED, 3, p, err);
            metric_inc(d->m_deferred);
        }
    }
    /* Not recorded: the row stays 'sending' and is re-driven when its
     * lease ends; a repeat send is the price of never losing one. */
    if (rc != 0 && log_should("delivery-record", 15, 10000))
        log_error("outcome not recorded message=%s code=%d: %s", job->j->id, code,
                  err ? sbuf_data(err) : "no database");
    sbuf_destroy(&err);
    metric_observe(d->m_latency, (double)(smtp_now_ms() - job->queued_at) / 1000.0);
}

static void s_job_done(delivery_t *d, job_t *job, int code, const char *enhanced,
                       const char *text)
{
    s_record(d, job, code, enhanced, text);
    delivery_job_free(&job->j);
    free(job);
}

/* --------------------------------------------------------------- the loop */

static dest_t *s_dest(delivery_t *d, const delivery_job_t *j)
{
    char key[300];
    snprintf(key, sizeof key, "%s:%d", j->host, j->port);
    dest_t *dst = dict_get(d->dests, key, strlen(key));
    if (dst)
        return dst;
    dst = calloc(1, sizeof *dst);
    if (!dst)
        return NULL;
    snprintf(dst->key, sizeof dst->key, "%s", key);
    snprintf(dst->host, sizeof dst->host, "%s", j->host);
    dst->port = j->port;
    if (dict_put(d->dests, key, strlen(key), dst) != 0) {
        free(dst);
        return NULL;
    }
    return dst;
}

static void s_take_incoming(delivery_t *d)
{
    char buf[256];
    while (read(d->wake[0], buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&d->lock);
    job_t *list = d->in_head;
    d->in_head = d->in_tail = NULL;
    pthread_mutex_unlock(&d->lock);
    while (list) {
        job_t *job = list;
        list = job->next;
        job->next = NULL;
        dest_t *dst = s_dest(d, job->j);
        if (!dst) {
            s_job_done(d, job, 0, NULL, "delivery engine out of memory");
            continue;
        }
        if (dst->tail)
            dst->tail->next = job;
        else
            dst->head = job;
        dst->tail = job;
    }
}

static void s_conn_close(delivery_t *d, dest_t *dst, conn_t *cn)
{
    conn_t **link = &dst->conns;
    while (*link && *link != cn)
        link = &(*link)->next;
    if (*link)
        *link = cn->next;
    if (cn->inflight) /* never expected: the client answers every transaction */
        s_job_done(d, cn->inflight, 0, NULL, "connection closed");
    smtp_conn_destroy(&cn->c);
    free(cn);
    dst->nconns--;
    metric_add(d->m_open, -1);
}

/* Hand waiting jobs to idle connections; open more when allowed. */
static void s_dispatch(delivery_t *d, dest_t *dst)
{
    for (conn_t *cn = dst->conns; cn && dst->head; cn = cn->next) {
        if (!cn->idle)
            continue;
        job_t *job = dst->head;
        dst->head = job->next;
        if (!dst->head)
            dst->tail = NULL;
        job->next = NULL;
        const char *rcpts[] = {job->j->rcpt};
        int rc = smtp_conn_submit(cn->c, job->j->mail_from, rcpts, 1, job->j->data, job->j->len,
                                  job->j->smtputf8);
        if (rc == SMTP_STEP_RESULT) {
            smtp_result_t r;
            memset(&r, 0, sizeof r);
            smtp_conn_take_result(cn->c, &r);
            s_job_done(d, job, r.code, r.enhanced, r.text);
            smtp_result_clear(&r);
        } else if (rc < 0) {
            s_job_done(d, job, 0, NULL, "could not submit the transaction");
        } else {
            cn->inflight = job;
            cn->idle = 0;
            cn->started = smtp_now_ms();
        }
    }
    while (dst->head && dst->nconns < d->max_conns) {
        sbuf_t *err = sbuf_new(64);
        smtp_conn_t *c = smtp_conn_new(dst->host, dst->port, &d->opts, err);
        conn_t *cn = c ? calloc(1, sizeof *cn) : NULL;
        if (!cn) {
            /* Cannot even start: defer what waits here rather than spin. */
            while (dst->head) {
                job_t *job = dst->head;
                dst->head = job->next;
                s_job_done(d, job, 0, NULL, err ? sbuf_data(err) : "cannot connect");
            }
            dst->tail = NULL;
            smtp_conn_destroy(&c);
            sbuf_destroy(&err);
            return;
        }
        sbuf_destroy(&err);
        cn->c = c;
        cn->next = dst->conns;
        dst->conns = cn;
        dst->nconns++;
        metric_inc(d->m_open);
    }
}

/* Advance one connection after poll. */
static void s_advance(delivery_t *d, dest_t *dst, conn_t *cn, short revents)
{
    int rc = smtp_conn_step(cn->c, revents);
    for (;;) {
        if (rc == SMTP_STEP_RESULT) {
            smtp_result_t r;
            memset(&r, 0, sizeof r);
            smtp_conn_take_result(cn->c, &r);
            job_t *job = cn->inflight;
            cn->inflight = NULL;
            if (job)
                s_job_done(d, job, r.code, r.enhanced, r.text);
            smtp_result_clear(&r);
            rc = smtp_conn_step(cn->c, 0);
            continue;
        }
        if (rc == SMTP_STEP_IDLE) {
            cn->idle = 1;
            return;
        }
        if (rc == SMTP_STEP_CLOSED) {
            int never_worked = smtp_conn_messages(cn->c) == 0 && !cn->inflight;
            const char *why = smtp_conn_error(cn->c);
            char reason[256];
            snprintf(reason, sizeof reason, "%s", why ? why : "connection closed");
            s_conn_close(d, dst, cn);
            /* The destination refused us before any message: the jobs
             * waiting for it wait for their back-off instead. */
            if (never_worked && dst->nconns == 0) {
                while (dst->head) {
                    job_t *job = dst->head;
                    dst->head = job->next;
                    s_job_done(d, job, 0, NULL, reason);
                }
                dst->tail = NULL;
            }
            return;
        }
        cn->idle = 0;
        return;
    }
}

typedef struct {
    delivery_t *d;            /* the engine */
    struct pollfd *fds;       /* poll set being built */
    conn_t **who;             /* connection per fds entry */
    dest_t **where;           /* its destination */
    int n;                    /* entries used */
    int64_t deadline;         /* earliest step deadline */
} pollset_t;

static int s_collect(void *arg, const void *key, size_t len, void *value)
{
    pollset_t *ps = arg;
    dest_t *dst = value;
    (void)key;
    (void)len;
    s_dispatch(ps->d, dst);
    for (conn_t *cn = dst->conns; cn && ps->n < MAX_POLL; cn = cn->next) {
        short ev = smtp_conn_events(cn->c);
        int64_t dl = smtp_conn_deadline(cn->c);
        if (dl >= 0 && (ps->deadline < 0 || dl < ps->deadline))
            ps->deadline = dl;
        ps->fds[ps->n].fd = smtp_conn_fd(cn->c);
        ps->fds[ps->n].events = ev;
        ps->fds[ps->n].revents = 0;
        ps->who[ps->n] = cn;
        ps->where[ps->n] = dst;
        ps->n++;
    }
    return 0;
}

static void *s_thread(void *arg)
{
    delivery_t *d = arg;
    struct pollfd *fds = calloc(MAX_POLL + 1, sizeof *fds);
    conn_t **who = calloc(MAX_POLL + 1, sizeof *who);
    dest_t **where = calloc(MAX_POLL + 1, sizeof *where);
    if (!fds || !who || !where)
        log_panic("delivery: out of memory");
    for (;;) {
        pthread_mutex_lock(&d->lock);
        int stop = d->stopping;
        pthread_mutex_unlock(&d->lock);
        if (stop)
            break;
        s_take_incoming(d);
        pollset_t ps = {d, fds + 1, who + 1, where + 1, 0, -1};
        size_t cursor = 0;
        dict_sweep(d->dests, &cursor, dict_size(d->dests) + 16, s_collect, &ps);
        fds[0].fd = d->wake[0];
        fds[0].events = POLLIN;
        fds[0].revents = 0;
        int64_t now = smtp_now_ms();
        int timeout = 1000;
        if (ps.deadline >= 0 && ps.deadline - now < timeout)
            timeout = ps.deadline - now < 0 ? 0 : (int)(ps.deadline - now);
        if (poll(fds, (nfds_t)ps.n + 1, timeout) < 0 && errno != EINTR) {
            log_error("delivery poll: %s", strerror(errno));
            continue;
        }
        now = smtp_now_ms();
        for (int i = 0; i < ps.n; i++) {
            int64_t dl = smtp_conn_deadline(who[i + 1]->c);
            if (fds[i + 1].revents || (dl >= 0 && dl <= now))
                s_advance(d, where[i + 1], who[i + 1], fds[i + 1].revents);
        }
    }
    free(fds);
    free(who);
    free(where);
    return NULL;
}

/* ------------------------------------------------------------ life cycle */

delivery_t *delivery_start(const config_t *cfg, sbuf_t *err)
{
    delivery_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    pthread_mutex_init(&d->lock, NULL);
    d->wake[0] = d->wake[1] = -1;
    d->dests = dict_new();
    d->conninfo = db_conninfo_from_config(cfg);
    d->helo = strdup(config_str(cfg, "smtp_helo_name"));
    if (!d->dests || !d->conninfo || !d->helo || pipe2(d->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        sbuf_appendf(err, "delivery: cannot set up: %s", strerror(errno));
        delivery_stop(&d);
        return NULL;
    }
    d->opts.helo_name = d->helo;
    d->opts.tls = SMTP_TLS_OPPORTUNISTIC;
    d->max_conns = (int)config_int(cfg, "delivery_connections");
    snprintf(d->max_age, sizeof d->max_age, "%lld",
             (long long)config_int(cfg, "delivery_max_age_s"));
    static const char *const labels[] = {"outcome", NULL};
    metric_family_t *f = metrics_family(METRIC_COUNTER, "postchi_delivery_messages_total",
                                        "Delivery outcomes recorded, by outcome.", labels, NULL, 0);
    d->m_sent = metrics_series(f, (const char *const[]){"sent", NULL});
    d->m_deferred = metrics_series(f, (const char *const[]){"deferred", NULL});
    d->m_bounced = metrics_series(f, (const char *const[]){"bounced", NULL});
    d->m_failed = metrics_series(f, (const char *const[]){"failed", NULL});
    d->m_open = metrics_gauge("postchi_delivery_connections_open", "SMTP connections open.");
    d->m_latency = metrics_histogram("postchi_delivery_smtp_seconds",
                                     "Time from handing a message to the engine to its outcome.",
                                     NULL, 0);
    if (pthread_create(&d->thread, NULL, s_thread, d) != 0) {
        sbuf_appendf(err, "delivery: cannot start its thread");
        delivery_stop(&d);
        return NULL;
    }
    return d;
}

static int s_free_dest(void *arg, const void *key, size_t len, void *value)
{
    delivery_t *d = arg;
    dest_t *dst = value;
    (void)key;
    (void)len;
    while (dst->conns) {
        conn_t *cn = dst->conns;
        dst->conns = cn->next;
        if (cn->inflight) {
            delivery_job_free(&cn->inflight->j);
            free(cn->inflight);
        }
        smtp_conn_destroy(&cn->c);
        free(cn);
        metric_add(d->m_open, -1);
    }
    while (dst->head) {
        job_t *job = dst->head;
        dst->head = job->next;
        delivery_job_free(&job->j);
        free(job);
    }
    free(dst);
    return 1;
}

void delivery_stop(delivery_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    delivery_t *d = *self_p;
    if (d->thread) {
        pthread_mutex_lock(&d->lock);
        d->stopping = 1;
        pthread_mutex_unlock(&d->lock);
        if (write(d->wake[1], "x", 1) < 0)
            (void)0; /* the loop also wakes on its own each second */
        pthread_join(d->thread, NULL);
    }
    /* Jobs not sent stay 'sending': their lease ends and they are re-driven. */
    while (d->in_head) {
        job_t *job = d->in_head;
        d->in_head = job->next;
        delivery_job_free(&job->j);
        free(job);
    }
    if (d->dests) {
        size_t cursor = 0;
        dict_sweep(d->dests, &cursor, dict_size(d->dests) + 16, s_free_dest, d);
        dict_destroy(&d->dests);
    }
    if (d->wake[0] >= 0)
        close(d->wake[0]);
    if (d->wake[1] >= 0)
        close(d->wake[1]);
    db_destroy(&d->db);
    free(d->conninfo);
    free(d->helo);
    pthread_mutex_destroy(&d->lock);
    free(d);
    *self_p = NULL;
}

int delivery_submit(delivery_t *self, delivery_job_t **job_p)
{
    job_t *job = calloc(1, sizeof *job);
    if (!job)
        return -1;
    job->j = *job_p;
    job->queued_at = smtp_now_ms();
    pthread_mutex_lock(&self->lock);
    if (self->stopping) {
        pthread_mutex_unlock(&self->lock);
        free(job);
        return -1;
    }
    if (self->in_tail)
        self->in_tail->next = job;
    else
        self->in_head = job;
    self->in_tail = job;
    pthread_mutex_unlock(&self->lock);
    *job_p = NULL;
    if (write(self->wake[1], "x", 1) < 0 && errno != EAGAIN)
        log_warn("delivery: cannot wake the engine: %s", strerror(errno));
    return 0;
}
