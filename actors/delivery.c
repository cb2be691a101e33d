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
 * Outcomes are written by a second thread, the recorder, on its own
 * connection: each loop round hands its outcomes over and the recorder
 * writes everything handed over since its last write in one statement (a
 * group commit that grows with the load; a round under 64 rows waits up to
 * 5 ms for more, since its fixed cost is most of its cost), so SMTP
 * sessions never wait for PostgreSQL. The statement only touches rows
 * still 'sending'.
 *
 * Shaping (see delivery.h): the head job of a destination goes on an idle
 * connection only with a token from "shape:<its shape key>" (ratelimit:
 * a Redis bucket shared by all workers, one ratelimit_t per distinct
 * budget), taken in batches for the jobs waiting and spent within a
 * second. Refused, the destination notes when to ask again (one token
 * interval later) and the poll timeout wakes the loop then, so a held queue
 * costs one Redis call per token interval, not a spin. New connections go
 * through a small local bucket per destination. The thread has its own
 * Redis connection; when Redis fails it is left alone for a second (the
 * local share decides meanwhile) so a dead Redis costs at most one timeout
 * a second.
 *
 * What can go wrong: a queue longer than the budget drains in half a lease
 * would outlive the rows' leases and be sent twice; such jobs go back to
 * the outbox ('queued', due when the queue ahead should have drained)
 * instead. Before that, the backlog bound (delivery_admit) keeps mailers
 * from claiming more of a domain than the worker holds room for, so
 * backpressure reaches the outbox and the API's queue depth rather than
 * memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/x509_vfy.h>

#include "db.h"
#include "delivery.h"
#include "dict.h"
#include "kv.h"
#include "log.h"
#include "mailer_shard.h"
#include "mesh_client.h"
#include "metrics.h"
#include "ratelimit.h"
#include "smtp_client.h"

#define MAX_POLL 4096
#define REFUSED_PAUSE_MS 5000 /* no new connection to a refusing destination before this */
#define PEER_CAP_MS 60000     /* a peer that capped our connections is held to that long */
#define KV_TIMEOUT_MS 100   /* the engine thread waits this long for Redis at most */
#define KV_RETRY_MS 1000    /* a failing Redis is tried again this often */
#define SHAPE_WAIT_MIN_MS 5 /* shortest wait before asking a budget again */
#define SHAPE_BATCH_MAX 64  /* shaping tokens taken in one Redis round trip */
#define REC_GATHER_ROWS 64  /* a recorder round this big is written at once */
#define REC_GATHER_MS 5     /* else it waits this long for more */

typedef struct job {
    struct job *next;      /* FIFO link */
    delivery_job_t *j;     /* the work */
    int64_t queued_at;     /* when it reached the engine (for latency) */
    uint64_t seq;          /* arrival number (engine-wide) */
} job_t;

typedef struct dest dest_t;

typedef struct conn {
    struct conn *next;     /* the destination's connections */
    smtp_conn_t *c;        /* the SMTP state machine */
    job_t *inflight;       /* the job submitted on it, or NULL */
    int idle;              /* ready for a transaction */
    int ever_idle;         /* the session got as far as IDLE once */
    int64_t idle_at;       /* ms: when it last became idle */
    int64_t started_us;    /* when inflight was submitted (monotonic µs) */
} conn_t;

struct dest {
    char key[600];         /* "host:port", or "host:port/tls name" */
    char host[256];        /* numeric address */
    char tls_name[256];    /* the MX host name its certificate must match, or "" */
    int port;              /* port */
    job_t *head, *tail;    /* waiting jobs */
    conn_t *conns;         /* open connections */
    int nconns;            /* how many */
    int njobs;             /* jobs in head..tail */
    int64_t shape_at;      /* ms: ask the budget again no sooner (0: now) */
    uint64_t held_upto;    /* jobs up to this seq were held back by the budget */
    double conn_tokens;    /* connection-rate bucket: tokens at conn_ts */
    int64_t conn_ts;       /* ms of its last refill */
    int64_t conn_at;       /* ms: open a connection no sooner (0: now) */
    int64_t refused_until; /* ms: it refused us; jobs with another address go there */
    int peer_cap;          /* connections the peer took at most, while peer_cap_until */
    int64_t peer_cap_until; /* ms */
    int credit;            /* shaping tokens taken in a batch, not yet spent */
    char credit_key[620];  /* the budget they came from */
    int64_t credit_until;  /* ms: unspent credit is dropped then */
    int max_conns;         /* connections at most (its latest job's, or the default) */
    int per_conn;          /* messages per connection */
    double conn_rate;      /* new connections a second */
};

struct delivery {
    pthread_t thread;       /* the engine */
    pthread_mutex_t lock;   /* guards incoming and stopping */
    job_t *in_head, *in_tail; /* submitted, not yet taken by the thread */
    int stopping;           /* thread should end */
    int wake[2];            /* pipe: a byte means "look at incoming" */
    dict_t *dests;          /* key -> dest_t (thread only) */
    db_t *db;               /* outcome writes (recorder only) */
    char *conninfo;         /* to reconnect */
    smtp_opts_t opts;       /* connection options */
    char *helo;             /* opts.helo_name storage */
    char *ca_file;          /* opts.tls_ca_file storage (smtp_tls_ca_file), or NULL */
    char *auth_user;        /* opts.auth_user storage (smtp_relay_user), or NULL */
    char *auth_pass;        /* opts.auth_pass storage, wiped when freed */
    int max_conns;          /* per destination: delivery_connections */
    int per_conn;           /* delivery_messages_per_connection */
    double conn_rate;       /* delivery_connection_rate */
    char max_age[32];       /* delivery_max_age_s as text */
    struct outcome *out_head, *out_tail; /* this round's outcomes (thread only) */
    pthread_t recorder;     /* writes outcomes to PostgreSQL */
    int recorder_started;   /* recorder was created */
    pthread_mutex_t rec_lock; /* guards rec_* */
    pthread_cond_t rec_cond;  /* signals rec_head or rec_stopping */
    struct outcome *rec_head, *rec_tail; /* handed over, not yet written */
    int rec_count;          /* how many that is */
    int rec_stopping;       /* the engine is gone: write what is left, then end */
    dict_t *backlog;        /* recipient domain -> backlog_t (under rec_lock) */
    int backlog_max;        /* delivery_backlog */
    mesh_client_t *client;  /* the recorder's mesh connection, for wake-ups */
    dict_t *shapers;        /* "rate/burst" -> ratelimit_t (thread only) */
    double def_rate;        /* shaping_rate, for jobs without a budget */
    double def_burst;       /* shaping_burst */
    int64_t hold_ms;        /* a job queued longer goes back to the outbox */
    int64_t idle_ms;        /* delivery_idle_s: an unused connection is closed after this */
    char *redis_host;       /* redis_host */
    int redis_port;         /* redis_port */
    kv_t *kv;               /* this thread's Redis connection, or NULL */
    int64_t kv_retry_at;    /* ms: Redis failed; try it again no sooner */
    int queued;             /* jobs waiting across destinations */
    uint64_t seq;           /* arrivals so far */
    metric_t *m_sent, *m_deferred, *m_bounced, *m_failed, *m_open, *m_latency;
    metric_t *m_txn;        /* one SMTP transaction: MAIL FROM to the reply after DATA */
    metric_t *m_waits, *m_depth; /* shaping waits, queue depth */
    metric_t *m_backlog, *m_refused; /* held between claim and outcome; claims refused */
    dict_t *by_dest;        /* destination label -> dest_metrics_t (thread only) */
    metric_family_t *f_dest_out, *f_dest_depth; /* per destination families */
    int backlog_total;      /* jobs held, all domains (under rec_lock) */
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

/* ------------------------------------------------- per destination metrics */

/* Series of one destination: the shaping key (the MX rollup: a provider,
 * or the relay), so the label's values are as many as the budgets, not as
 * the recipient domains. Past DEST_LABELS_MAX distinct values, "other". */
#define DEST_LABELS_MAX 200

typedef struct {
    metric_t *sent, *bounced, *deferred; /* outcomes */
    metric_t *depth;                     /* jobs waiting in the engine */
    int waiting;                         /* this round's sum over its destinations */
} dest_metrics_t;

static dest_metrics_t *s_dest_metrics(delivery_t *d, const char *label)
{
    dest_metrics_t *m = dict_get(d->by_dest, label, strlen(label));
    if (m)
        return m;
    if (dict_size(d->by_dest) >= DEST_LABELS_MAX)
        label = "other";
    if ((m = dict_get(d->by_dest, label, strlen(label))) != NULL)
        return m;
    if (!(m = calloc(1, sizeof *m)))
        return NULL;
    m->sent = metrics_series(d->f_dest_out, (const char *const[]){label, "sent", NULL});
    m->bounced = metrics_series(d->f_dest_out, (const char *const[]){label, "bounced", NULL});
    m->deferred = metrics_series(d->f_dest_out, (const char *const[]){label, "deferred", NULL});
    m->depth = metrics_series(d->f_dest_depth, (const char *const[]){label, NULL});
    if (dict_put(d->by_dest, label, strlen(label), m) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

/* The label of a job: its shaping key, else its destination address. */
static const char *s_dest_label(const delivery_job_t *j, char *buf, size_t size)
{
    if (j->shape_key[0])
        return j->shape_key;
    snprintf(buf, size, "%s:%d", j->host, j->port);
    return buf;
}

/* ---------------------------------------------------------------- outcomes */

/* Every outcome of a recorder round in one statement: the rows still
 * 'sending' on the claim that made the job (attempts is the claim's
 * fencing token: an outcome arriving after the lease ran out and the row
 * was claimed again must not land on the new claim) take their new status
 * (2xx sent; 5xx bounced, and when the refusal is about the recipient
 * the contact bounced and suppressed (not for 5.7.x policy refusals such
 * as a blocklisted sending address, 5.6.x content, 5.5.x protocol or
 * 5.3.1-9 mail system states: those say nothing about the address, and
 * one blocklisting must not suppress a whole list); anything
 * else deferred with exponential back-off and jitter, or failed once due
 * longer than $2 seconds: due since send_at for a scheduled message, so a
 * send scheduled days ahead still gets its retries), and each gets its
 * message_events row. The back-off's exponent is capped before power():
 * PostgreSQL raises an error on overflow, which would fail the round.
 * One statement is one transaction and one WAL flush for the whole
 * round. */
static const char *const SQL_OUTCOMES =
    "WITH o AS (SELECT * FROM jsonb_to_recordset($1::jsonb)"
    "   AS x(id uuid, attempt int, code int, enhanced text, response text)),"
    " m AS (UPDATE messages m SET"
    "   status = CASE WHEN o.code BETWEEN 200 AND 299 THEN 'sent'"
    "     WHEN o.code BETWEEN 500 AND 599 THEN 'bounced'"
    "     WHEN greatest(m.created_at, m.send_at) < now() - make_interval(secs => $2::int)"
    "     THEN 'failed' ELSE 'deferred' END,"
    "   next_attempt_at = CASE WHEN o.code BETWEEN 200 AND 299 OR o.code BETWEEN 500 AND 599"
    "     THEN m.next_attempt_at ELSE now() + make_interval(secs => least(60 * power(2,"
    "     least(greatest(m.attempts - 1, 0), 10)), 21600) * (0.75 + random() * 0.5)) END,"
    "   lease_until = NULL, last_response = o.response, updated_at = now()"
    "   FROM o WHERE m.id = o.id AND m.status = 'sending' AND m.attempts = o.attempt"
    "   RETURNING m.id, m.organization_id, m.recipient, m.status, m.attempts,"
    "   m.next_attempt_at, o.response, o.enhanced,"
    "   o.enhanced !~ '^5\\.([567]\\.|3\\.[1-9])' AS hard),"
    " c AS (UPDATE contacts SET status = 'bounced', updated_at = now() FROM m"
    "   WHERE m.status = 'bounced' AND m.hard AND contacts.organization_id = m.organization_id"
    "   AND lower(contacts.email) = lower(m.recipient) RETURNING contacts.id),"
    " s AS (INSERT INTO suppressions (organization_id, email, reason)"
    "   SELECT organization_id, recipient, 'bounce' FROM m WHERE m.status = 'bounced' AND m.hard"
    "   ON CONFLICT (organization_id, lower(email)) DO NOTHING RETURNING id)"
    " INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, status, CASE status"
    "   WHEN 'sent' THEN jsonb_build_object('response', response, 'attempt', attempts)"
    "   WHEN 'bounced' THEN jsonb_build_object('response', response, 'enhanced', enhanced,"
    "     'attempt', attempts, 'suppressed', hard)"
    "   ELSE jsonb_build_object('response', response, 'attempt', attempts,"
    "     'next_attempt_at', next_attempt_at) END FROM m";

/* Outbox re-queue: the row was never tried on this claim, so the attempt
 * it cost is given back (on this claim only: $3 fences it). */
static const char *const SQL_REQUEUE =
    "UPDATE messages SET status = 'queued', attempts = greatest(attempts - 1, 0),"
    " lease_until = NULL, next_attempt_at = now() + make_interval(secs => $2::int),"
    " updated_at = now() WHERE id = $1 AND status = 'sending' AND attempts = $3::int";

/* What the engine hands the recorder: an outcome, or a job given back to
 * the outbox untried (requeue_s > 0). */
typedef struct outcome {
    struct outcome *next; /* in arrival order */
    char domain[256];     /* the job's recipient domain (backlog) */
    size_t bytes;         /* the job's size (backlog) */
    char id[40];          /* messages.id */
    int attempt;          /* the claim's attempts (fencing token) */
    int recorded;         /* its statement committed (metrics count it) */
    int code;             /* SMTP code, 0 for connection trouble */
    int requeue_s;        /* > 0: back to 'queued', due in this many seconds */
    char enhanced[16];    /* enhanced status or "" */
    char response[600];   /* what goes into last_response (printable ASCII) */
    metric_t *counted;    /* the destination's series for this outcome, or NULL */
} outcome_t;

/* One recipient domain's work held by this worker, and the mailers to
 * wake when it is down to the low mark. */
typedef struct {
    int jobs;                              /* submitted, outcome not yet written */
    size_t bytes;                          /* their sizes */
    int nwait;                             /* entries in wait */
    char wait[MAILER_SHARDS + 1][300];     /* mailer addresses that were refused */
} backlog_t;

/* Count a job in (n = 1) or out (n = -1); under rec_lock. Mailers to wake
 * are appended to wake (NULL: none may be woken now). */
static void s_backlog_add(delivery_t *d, const char *domain, size_t bytes, int n, sbuf_t *wake)
{
    size_t dl = strlen(domain);
    backlog_t *b = dict_get(d->backlog, domain, dl);
    if (!b) {
        if (n < 0 || !(b = calloc(1, sizeof *b)))
            return;
        if (dict_put(d->backlog, domain, dl, b) != 0) {
            free(b);
            return;
        }
    }
    b->jobs += n;
    b->bytes = n > 0 ? b->bytes + bytes : (b->bytes > bytes ? b->bytes - bytes : 0);
    d->backlog_total += n;
    metric_set(d->m_backlog, d->backlog_total);
    if (b->nwait > 0 && wake && b->jobs <= d->backlog_max / 2 &&
        b->bytes <= DELIVERY_BACKLOG_BYTES / 2) {
        for (int i = 0; i < b->nwait; i++)
            sbuf_append(wake, b->wait[i], strlen(b->wait[i]) + 1);
        b->nwait = 0;
    }
    if (b->jobs <= 0 && b->nwait == 0)
        free(dict_remove(d->backlog, domain, dl));
}

int delivery_admit(delivery_t *self, const char *domain, const char *address)
{
    pthread_mutex_lock(&self->rec_lock);
    backlog_t *b = dict_get(self->backlog, domain, strlen(domain));
    int ok = !b ? self->backlog_max
             : b->jobs < self->backlog_max && b->bytes < DELIVERY_BACKLOG_BYTES
                 ? self->backlog_max - b->jobs
                 : 0;
    if (!ok) {
        int known = 0;
        for (int i = 0; i < b->nwait && !known; i++)
            known = strcmp(b->wait[i], address) == 0;
        if (!known && b->nwait < MAILER_SHARDS + 1)
            snprintf(b->wait[b->nwait++], sizeof b->wait[0], "%s", address);
        else if (!known)
            ok = 1; /* no room to remember it: better claim than be forgotten */
        if (!ok)
            metric_inc(self->m_refused);
    }
    pthread_mutex_unlock(&self->rec_lock);
    return ok;
}

/* A job that will never reach the recorder leaves the backlog now. */
static void s_backlog_drop(delivery_t *d, const delivery_job_t *j)
{
    pthread_mutex_lock(&d->rec_lock);
    s_backlog_add(d, j->domain, j->len, -1, NULL);
    pthread_mutex_unlock(&d->rec_lock);
}

/* Transactions to a near peer take well under a millisecond. */
static int64_t s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void s_queue_outcome(delivery_t *d, outcome_t *o)
{
    if (d->out_tail)
        d->out_tail->next = o;
    else
        d->out_head = o;
    d->out_tail = o;
}

static void s_record(delivery_t *d, job_t *job, int code, const char *enhanced,
                     const char *text)
{
    outcome_t *o = calloc(1, sizeof *o);
    metric_observe(d->m_latency, (double)(smtp_now_ms() - job->queued_at) / 1000.0);
    if (!o) {
        /* Not recorded: the row stays 'sending' and is re-driven when its
         * lease ends; a repeat send is the price of never losing one. */
        log_error("outcome not recorded message=%s code=%d: out of memory", job->j->id, code);
        s_backlog_drop(d, job->j);
        return;
    }
    snprintf(o->domain, sizeof o->domain, "%s", job->j->domain);
    o->bytes = job->j->len;
    snprintf(o->id, sizeof o->id, "%s", job->j->id);
    o->attempt = job->j->attempt;
    o->code = code;
    char lb[320];
    dest_metrics_t *dm = s_dest_metrics(d, s_dest_label(job->j, lb, sizeof lb));
    if (dm)
        o->counted = code >= 200 && code < 300 ? dm->sent
                     : code >= 500 && code < 600 ? dm->bounced
                                                 : dm->deferred;
    snprintf(o->enhanced, sizeof o->enhanced, "%s", enhanced ? enhanced : "");
    snprintf(o->response, sizeof o->response, "%d%s%s %s", code,
             enhanced && enhanced[0] ? " " : "", enhanced ? enhanced : "", text ? text : "");
    /* The text goes to PostgreSQL inside JSON: a byte that is not printable
     * ASCII would make the document (and with it the whole round) invalid. */
    for (char *c = o->response; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
            *c = '?';
    s_queue_outcome(d, o);
}

/* Hand the round's outcomes to the recorder thread: the SMTP loop never
 * waits for PostgreSQL, and while one round commits the next one gathers
 * (a group commit whose size follows the load). */
static void s_flush_outcomes(delivery_t *d)
{
    outcome_t *list = d->out_head;
    if (!list)
        return;
    int n = 0;
    for (outcome_t *o = list; o; o = o->next)
        n++;
    pthread_mutex_lock(&d->rec_lock);
    if (d->rec_tail)
        d->rec_tail->next = list;
    else
        d->rec_head = list;
    d->rec_tail = d->out_tail;
    d->rec_count += n;
    pthread_cond_signal(&d->rec_cond);
    pthread_mutex_unlock(&d->rec_lock);
    d->out_head = d->out_tail = NULL;
}

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

/* Run SQL_OUTCOMES for the outcomes of list from first on; with one,
 * only first. 0 when the statement ran. */
static int s_write_outcomes(delivery_t *d, db_t *db, outcome_t *first, int one, sbuf_t *err)
{
    json_t *arr = json_array();
    int n = 0, rc = arr ? 0 : -1;
    for (outcome_t *o = first; o && rc == 0 && !(one && n == 1); o = o->next) {
        if (o->requeue_s > 0)
            continue;
        json_t *row = json_pack("{s:s, s:i, s:i, s:s, s:s}", "id", o->id, "attempt", o->attempt,
                                "code", o->code, "enhanced", o->enhanced, "response", o->response);
        if (!row || json_array_append_new(arr, row) != 0)
            rc = -1;
        n++;
    }
    char *doc = rc == 0 && n > 0 ? json_dumps(arr, JSON_COMPACT) : NULL;
    if (n > 0) {
        const char *p[] = {doc, d->max_age};
        /* Planned per round, not prepared: a generic plan made while the
         * table was small hashes a sequential scan of messages, and stays
         * cached as the table grows (measured: a third of PostgreSQL's time
         * in a 40,000-message send). A custom plan sees the current size
         * and walks the primary key; planning costs less than a
         * millisecond for a whole round. */
        db_result_t *res = doc ? db_query(db, SQL_OUTCOMES, 2, p, err) : NULL;
        rc = res ? 0 : -1;
        db_result_free(&res);
    }
    free(doc);
    json_decref(arr);
    return rc;
}

/* Write one round. -1 when the database could not be reached (down, or
 * the connection broke under the statement): nothing was given up, and
 * the recorder tries the same round again; every statement is fenced by
 * status and attempt, so what did commit is not applied twice. When the
 * connection is fine but the round's statement failed (a row the
 * statement cannot take), the outcomes are written one by one, so one
 * bad row costs only itself: it stays 'sending' and is re-driven after
 * its lease. With give_up (the engine stopped long ago) a round that
 * cannot be written is dropped the same way. */
static int s_write_round(delivery_t *d, outcome_t *list, int give_up)
{
    db_t *db = s_db(d);
    if (!db && !give_up)
        return -1;
    sbuf_t *err = sbuf_new(64);
    int n = 0, rc = db ? 0 : -1;
    for (outcome_t *o = list; o; o = o->next) {
        if (o->requeue_s <= 0) {
            n++;
            continue;
        }
        if (!db)
            continue; /* given up: re-driven after its lease */
        char secs[16], attempt[16];
        snprintf(secs, sizeof secs, "%d", o->requeue_s);
        snprintf(attempt, sizeof attempt, "%d", o->attempt);
        const char *p[] = {o->id, secs, attempt};
        if (db_exec(db, SQL_REQUEUE, 3, p, NULL) != 0) {
            if (!db_usable(db) && !give_up) {
                sbuf_destroy(&err);
                return -1;
            }
            if (log_should("delivery-requeue", 16, 10000))
                log_error("held message not given back to the outbox message=%s", o->id);
        }
    }
    if (n > 0 && db) {
        rc = s_write_outcomes(d, db, list, 0, err);
        if (rc != 0 && !db_usable(db) && !give_up) {
            if (log_should("delivery-record", 15, 10000))
                log_warn("a round of %d outcomes waits for the database: %s", n,
                         err && sbuf_len(err) ? sbuf_data(err) : "no connection");
            sbuf_destroy(&err);
            return -1;
        }
        if (rc != 0 && db_usable(db)) {
            if (log_should("delivery-record", 15, 10000))
                log_error("a round of %d outcomes failed, writing them one by one: %s", n,
                          err && sbuf_len(err) ? sbuf_data(err) : "out of memory");
            for (outcome_t *o = list; o; o = o->next) {
                if (o->requeue_s > 0)
                    continue;
                if (err)
                    sbuf_reset(err);
                o->recorded = s_write_outcomes(d, db, o, 1, err) == 0;
                if (!o->recorded)
                    log_error("outcome not recorded message=%s (re-driven after its lease): %s",
                              o->id, err && sbuf_len(err) ? sbuf_data(err) : "out of memory");
            }
        } else if (rc == 0) {
            for (outcome_t *o = list; o; o = o->next)
                o->recorded = 1;
        } else {
            log_error("a round of %d outcomes was not recorded (re-driven after the lease): %s",
                      n, err && sbuf_len(err) ? sbuf_data(err) : "no database");
        }
    } else if (n > 0) {
        log_error("a round of %d outcomes was not recorded (re-driven after the lease): "
                  "no database", n);
    }
    /* Written (or given up: then the rows come back after their lease):
     * either way these jobs leave the backlog, and mailers held back may
     * claim again. */
    sbuf_t *wake = sbuf_new(256);
    pthread_mutex_lock(&d->rec_lock);
    for (outcome_t *o = list; o; o = o->next)
        s_backlog_add(d, o->domain, o->bytes, -1, wake);
    pthread_mutex_unlock(&d->rec_lock);
    for (size_t off = 0; wake && off < sbuf_len(wake);) {
        const char *addr = sbuf_data(wake) + off;
        if (mesh_client_send(d->client, addr, "wake", "{}", 2) != 0 &&
            log_should("delivery-wake", 13, 10000))
            log_warn("cannot wake %s (the sweeper will)", addr);
        off += strlen(addr) + 1;
    }
    sbuf_destroy(&wake);
    while (list) {
        outcome_t *o = list;
        list = o->next;
        if (o->recorded && o->requeue_s <= 0) {
            metric_inc(o->code >= 200 && o->code < 300   ? d->m_sent
                       : o->code >= 500 && o->code < 600 ? d->m_bounced
                                                         : d->m_deferred);
            if (o->counted)
                metric_inc(o->counted);
        }
        free(o);
    }
    sbuf_destroy(&err);
    return 0;
}

/* How long a round that cannot reach the database is tried again once
 * the engine has stopped: the worker's exit waits this long at most. */
#define REC_STOP_RETRY_MS 5000

static int64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The recorder: takes whatever the engine has handed over, writes it, and
 * goes on until the engine has stopped and nothing is left. A round the
 * database did not take goes back to the front of the list and is tried
 * again, from 100 ms doubling to 2 s apart: its jobs stay in the backlog
 * meanwhile, so mailers stop claiming while PostgreSQL is away. */
static void *s_recorder(void *arg)
{
    delivery_t *d = arg;
    int pause_ms = 0;
    int64_t stop_at = 0;
    for (;;) {
        pthread_mutex_lock(&d->rec_lock);
        while (!d->rec_head && !d->rec_stopping)
            pthread_cond_wait(&d->rec_cond, &d->rec_lock);
        /* A round is planned, parsed and committed whether it holds ten
         * rows or a hundred: under load, gather for a few milliseconds
         * first (measured at 3,400 msg/s: 1,224 rounds became 609 per
         * 21,000 messages, their planning 0.51 s of PostgreSQL time became
         * 0.23 s). Alone, a message waits REC_GATHER_MS at most. After a
         * failed round, wait the retry pause instead. */
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        long wait_ms = pause_ms > 0 ? pause_ms : REC_GATHER_MS;
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (d->rec_head && (pause_ms > 0 || d->rec_count < REC_GATHER_ROWS) &&
               !d->rec_stopping &&
               pthread_cond_timedwait(&d->rec_cond, &d->rec_lock, &until) == 0)
            ;
        outcome_t *list = d->rec_head;
        d->rec_head = d->rec_tail = NULL;
        int count = d->rec_count;
        d->rec_count = 0;
        int stop = d->rec_stopping;
        pthread_mutex_unlock(&d->rec_lock);
        if (stop && !stop_at)
            stop_at = s_mono_ms();
        if (!list) {
            if (stop)
                break;
            continue;
        }
        int give_up = stop && s_mono_ms() - stop_at > REC_STOP_RETRY_MS;
        if (s_write_round(d, list, give_up) == 0) {
            pause_ms = 0;
            continue;
        }
        /* Not taken: put the round back in front of what came meanwhile. */
        outcome_t *tail = list;
        while (tail->next)
            tail = tail->next;
        pthread_mutex_lock(&d->rec_lock);
        tail->next = d->rec_head;
        if (!d->rec_head)
            d->rec_tail = tail;
        d->rec_head = list;
        d->rec_count += count;
        pthread_mutex_unlock(&d->rec_lock);
        pause_ms = pause_ms ? (pause_ms * 2 > 2000 ? 2000 : pause_ms * 2) : 100;
        if (stop) {
            /* the engine is gone: nothing will signal; sleep the pause */
            struct timespec ts = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
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
    char key[600];
    /* With a name to verify, connections to one address for two MX names
     * are two destinations: each must check its own certificate name. */
    snprintf(key, sizeof key, "%s:%d%s%s", j->host, j->port, j->tls_name[0] ? "/" : "",
             j->tls_name);
    dest_t *dst = dict_get(d->dests, key, strlen(key));
    if (!dst) {
        dst = calloc(1, sizeof *dst);
        if (!dst)
            return NULL;
        snprintf(dst->key, sizeof dst->key, "%s", key);
        snprintf(dst->host, sizeof dst->host, "%s", j->host);
        snprintf(dst->tls_name, sizeof dst->tls_name, "%s", j->tls_name);
        dst->port = j->port;
        if (dict_put(d->dests, key, strlen(key), dst) != 0) {
            free(dst);
            return NULL;
        }
    }
    /* A provider's override (shaping_overrides) travels with its jobs; a
     * changed setting reaches the destination with the next job. */
    dst->max_conns = j->max_conns > 0 ? j->max_conns : d->max_conns;
    dst->per_conn = j->max_per_conn > 0 ? j->max_per_conn : d->per_conn;
    dst->conn_rate = j->conn_rate > 0 ? j->conn_rate : d->conn_rate;
    return dst;
}

static void s_enqueue(delivery_t *d, dest_t *dst, job_t *job);

/* Move a job to its next fallback address (the caller checked one is left). */
static void s_next_alt(delivery_job_t *j)
{
    snprintf(j->host, sizeof j->host, "%s", j->alt[j->alt_next]);
    snprintf(j->tls_name, sizeof j->tls_name, "%s", j->alt_name[j->alt_next]);
    j->alt_next++;
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
        /* A destination that just refused us: straight to the next address. */
        int64_t now = smtp_now_ms();
        while (dst && dst->refused_until > now && job->j->alt_next < job->j->nalt) {
            s_next_alt(job->j);
            dst = s_dest(d, job->j);
        }
        if (!dst) {
            s_job_done(d, job, 0, NULL, "delivery engine out of memory");
            continue;
        }
        s_enqueue(d, dst, job);
    }
}

static void s_enqueue(delivery_t *d, dest_t *dst, job_t *job)
{
    job->next = NULL;
    if (dst->tail)
        dst->tail->next = job;
    else
        dst->head = job;
    dst->tail = job;
    job->seq = ++d->seq;
    dst->njobs++;
    d->queued++;
}

/* Take the head job of dst's queue (NULL when empty). */
static job_t *s_pop(delivery_t *d, dest_t *dst)
{
    job_t *job = dst->head;
    if (!job)
        return NULL;
    dst->head = job->next;
    if (!dst->head)
        dst->tail = NULL;
    job->next = NULL;
    dst->njobs--;
    d->queued--;
    /* Counted once, as it leaves: every job queued when the budget said
     * no was held back, not only the one at the head. */
    if (job->seq <= dst->held_upto)
        metric_inc(d->m_waits);
    return job;
}

/* dst cannot be reached: every job waiting for it moves to its next
 * address (MX fallback), or is deferred with why when it has none left. */
static void s_defer_all(delivery_t *d, dest_t *dst, const char *why)
{
    job_t *job;
    while ((job = s_pop(d, dst)) != NULL) {
        delivery_job_t *j = job->j;
        dest_t *next = NULL;
        if (j->alt_next < j->nalt) {
            s_next_alt(j);
            next = s_dest(d, j);
        }
        if (next && next != dst)
            s_enqueue(d, next, job);
        else
            s_job_done(d, job, 0, NULL, why);
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

/* ---------------------------------------------------------------- shaping */

/* The Redis connection to use now, or NULL while Redis is left alone. */
static kv_t *s_kv(delivery_t *d, int64_t now)
{
    if (now < d->kv_retry_at)
        return NULL;
    if (!d->kv) {
        sbuf_t *err = sbuf_new(64);
        d->kv = err ? kv_connect(d->redis_host, d->redis_port, KV_TIMEOUT_MS, 0, err) : NULL;
        if (!d->kv) {
            d->kv_retry_at = now + KV_RETRY_MS;
            if (log_should("delivery-kv", 11, 60000))
                log_warn("delivery shaping: Redis unavailable, local share applies: %s",
                         err ? sbuf_data(err) : "out of memory");
        }
        sbuf_destroy(&err);
    }
    return d->kv;
}

/* The limiter for a budget, created on first use; NULL when out of memory
 * or the budget is not a valid one. */
static ratelimit_t *s_shaper(delivery_t *d, double rate, double burst)
{
    char key[80];
    snprintf(key, sizeof key, "%.17g/%.17g", rate, burst);
    ratelimit_t *rl = dict_get(d->shapers, key, strlen(key));
    if (rl)
        return rl;
    rl = ratelimit_new(rate, burst);
    if (rl && dict_put(d->shapers, key, strlen(key), rl) != 0)
        ratelimit_destroy(&rl);
    return rl;
}

/* May dst's head job go now? 1: a token was taken; 0: held back (dst->
 * shape_at says when to ask again). A budget that cannot be set up does
 * not hold mail back. */
static int s_shape_take(delivery_t *d, dest_t *dst, int64_t now)
{
    job_t *job = dst->head;
    if (now < dst->shape_at)
        goto held;
    char key[620];
    snprintf(key, sizeof key, "shape:%s", job->j->shape_key[0] ? job->j->shape_key : dst->key);
    if (dst->credit > 0 && now < dst->credit_until && strcmp(dst->credit_key, key) == 0) {
        dst->credit--;
        return 1;
    }
    double rate = job->j->shape_rate > 0 ? job->j->shape_rate : d->def_rate;
    double burst = job->j->shape_burst > 0 ? job->j->shape_burst : d->def_burst;
    ratelimit_t *rl = s_shaper(d, rate, burst);
    if (!rl)
        return 1;
    /* Tokens for the jobs already waiting, in one round trip, at most a
     * tenth of a second's worth so one worker cannot take a budget's whole
     * burst ahead of the others; spent within a second or dropped. */
    int want = dst->njobs < SHAPE_BATCH_MAX ? dst->njobs : SHAPE_BATCH_MAX;
    if (want > rate / 10)
        want = rate / 10 < 1 ? 1 : (int)(rate / 10);
    kv_t *kv = s_kv(d, now);
    ratelimit_result_t r;
    if (ratelimit_take_n(rl, kv, key, want, &r) == 1 && kv)
        d->kv_retry_at = smtp_now_ms() + KV_RETRY_MS; /* Redis failed: leave it a second */
    if (r.granted > 0) {
        dst->shape_at = 0;
        dst->credit = (int)r.granted - 1;
        snprintf(dst->credit_key, sizeof dst->credit_key, "%s", key);
        dst->credit_until = now + 1000;
        return 1;
    }
    /* A whole token is at most one token interval away; the bucket keeps
     * any fraction, so asking a little late loses no throughput. */
    int64_t wait = (int64_t)(1000.0 / (r.local ? rate / 2 : rate) + 0.5);
    if (wait > r.retry_after_s * 1000)
        wait = r.retry_after_s * 1000;
    if (wait < SHAPE_WAIT_MIN_MS)
        wait = SHAPE_WAIT_MIN_MS;
    dst->shape_at = now + wait;
held:
    dst->held_upto = dst->tail->seq;
    return 0;
}

/* May a new connection to dst open now (the connection-rate bucket)? */
static int s_conn_take(dest_t *dst, int64_t now)
{
    double burst = dst->max_conns;
    if (now < dst->conn_at)
        return 0; /* paused (refused, or waiting for a token) */
    if (dst->conn_ts == 0) {
        dst->conn_tokens = burst;
        dst->conn_ts = now;
    }
    if (now > dst->conn_ts) {
        dst->conn_tokens += (double)(now - dst->conn_ts) * dst->conn_rate / 1000.0;
        if (dst->conn_tokens > burst)
            dst->conn_tokens = burst;
        dst->conn_ts = now;
    }
    if (dst->conn_tokens >= 1.0) {
        dst->conn_tokens -= 1.0;
        dst->conn_at = 0;
        return 1;
    }
    dst->conn_at = now + (int64_t)((1.0 - dst->conn_tokens) * 1000.0 / dst->conn_rate) + 1;
    return 0;
}

/* Jobs held longer than half a lease go back to the outbox, due when the
 * queue ahead of them should have drained. */
static void s_requeue_stale(delivery_t *d, dest_t *dst, int64_t now)
{
    while (dst->head && now - dst->head->queued_at > d->hold_ms) {
        double rate = dst->head->j->shape_rate > 0 ? dst->head->j->shape_rate : d->def_rate;
        long long secs = (long long)(dst->njobs / rate) + 1;
        job_t *job = s_pop(d, dst);
        /* Not written (out of memory, or the recorder fails): the row stays
         * 'sending' until its lease ends and is re-driven then; dropping
         * the job here is what keeps it single. */
        outcome_t *o = calloc(1, sizeof *o);
        if (!o)
            s_backlog_drop(d, job->j);
        if (o) {
            snprintf(o->domain, sizeof o->domain, "%s", job->j->domain);
            o->bytes = job->j->len;
            snprintf(o->id, sizeof o->id, "%s", job->j->id);
            o->attempt = job->j->attempt;
            o->requeue_s = secs > 86400 ? 86400 : (int)secs;
            s_queue_outcome(d, o);
        }
        delivery_job_free(&job->j);
        free(job);
    }
}

/* Connections left idle with nothing to send are closed politely after
 * delivery_idle_s: the next burst reuses them until then, and a send
 * across thousands of destinations does not keep a socket open to each
 * until every peer times it out (file descriptors, the poll set, and the
 * peers' own connection slots). */
static void s_quit_idle(delivery_t *d, dest_t *dst, int64_t now)
{
    if (dst->head)
        return;
    for (conn_t *cn = dst->conns; cn; cn = cn->next) {
        if (cn->idle && now - cn->idle_at >= d->idle_ms) {
            cn->idle = 0;
            smtp_conn_quit(cn->c);
        }
    }
}

/* Hand waiting jobs to idle connections; open more when allowed. */
static void s_dispatch(delivery_t *d, dest_t *dst)
{
    int64_t now = smtp_now_ms();
    s_requeue_stale(d, dst, now);
    s_quit_idle(d, dst, now);
    for (conn_t *cn = dst->conns; cn && dst->head; cn = cn->next) {
        if (!cn->idle)
            continue;
        if (!s_shape_take(d, dst, now))
            break;
        job_t *job = s_pop(d, dst);
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
            cn->started_us = s_now_us();
        }
    }
    /* No new connections while the budget holds the queue: they would sit
     * idle until the peer timed them out. */
    int max_conns = dst->max_conns;
    if (now < dst->peer_cap_until && dst->peer_cap < max_conns)
        max_conns = dst->peer_cap;
    while (dst->head && dst->nconns < max_conns && now >= dst->shape_at &&
           s_conn_take(dst, now)) {
        sbuf_t *err = sbuf_new(64);
        smtp_opts_t opts = d->opts;
        opts.max_messages = dst->per_conn;
        if (dst->tls_name[0])
            opts.tls_name = dst->tls_name; /* SNI, and the name verified mode checks */
        smtp_conn_t *c = smtp_conn_new(dst->host, dst->port, &opts, err);
        conn_t *cn = c ? calloc(1, sizeof *cn) : NULL;
        if (!cn) {
            /* Cannot even start: defer what waits here rather than spin. */
            s_defer_all(d, dst, err ? sbuf_data(err) : "cannot connect");
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
            if (job) {
                metric_observe(d->m_txn, (double)(s_now_us() - cn->started_us) / 1e6);
                s_job_done(d, job, r.code, r.enhanced, r.text);
            }
            smtp_result_clear(&r);
            rc = smtp_conn_step(cn->c, 0);
            continue;
        }
        if (rc == SMTP_STEP_IDLE) {
            cn->idle = 1;
            cn->ever_idle = 1;
            cn->idle_at = smtp_now_ms();
            return;
        }
        if (rc == SMTP_STEP_CLOSED) {
            /* A session that reached IDLE was not refused, even if the
             * peer later dropped it unused (shaping can keep it idle). */
            int never_worked =
                smtp_conn_messages(cn->c) == 0 && !cn->inflight && !cn->ever_idle;
            const char *why = smtp_conn_error(cn->c);
            char reason[256];
            snprintf(reason, sizeof reason, "%s", why ? why : "connection closed");
            s_conn_close(d, dst, cn);
            /* Refused while other connections to it are open: the peer
             * caps how many it takes from us (a 421 at the greeting). Stay
             * at the connections still open, for a minute, and keep the
             * queue; deferring it would cost every waiting job a retry.
             * If those fail too, the last one defers below. */
            if (never_worked && dst->conns) {
                dst->peer_cap = dst->nconns;
                dst->peer_cap_until = smtp_now_ms() + PEER_CAP_MS;
                if (dst->conn_at < smtp_now_ms() + REFUSED_PAUSE_MS)
                    dst->conn_at = smtp_now_ms() + REFUSED_PAUSE_MS;
                return;
            }
            /* The destination refused us before any message (or speaks no
             * SMTP): the jobs waiting for it take their back-off, whatever
             * other connections are still being tried, and the destination
             * is left alone a while instead of being reconnected in a loop. */
            if (never_worked) {
                int64_t later = smtp_now_ms() + REFUSED_PAUSE_MS;
                dst->refused_until = later;
                s_defer_all(d, dst, reason);
                if (dst->conn_at < later)
                    dst->conn_at = later;
            }
            return;
        }
        cn->idle = 0;
        return;
    }
}

/* Publish a destination's queue depth summed this round, and start over. */
static int s_depth_publish(void *arg, const void *key, size_t len, void *value)
{
    dest_metrics_t *m = value;
    (void)arg;
    (void)key;
    (void)len;
    metric_set(m->depth, m->waiting);
    m->waiting = 0;
    return 0;
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
    if (dst->head) {
        char lb[320];
        dest_metrics_t *dm = s_dest_metrics(ps->d, s_dest_label(dst->head->j, lb, sizeof lb));
        if (dm)
            dm->waiting += dst->njobs;
    }
    /* Held jobs wake the loop when their budget or connection slot is due. */
    int64_t waits[] = {dst->shape_at, dst->conn_at};
    for (size_t i = 0; i < 2 && dst->head; i++)
        if (waits[i] > 0 && (ps->deadline < 0 || waits[i] < ps->deadline))
            ps->deadline = waits[i];
    for (conn_t *cn = dst->conns; cn && ps->n < MAX_POLL; cn = cn->next) {
        short ev = smtp_conn_events(cn->c);
        int64_t dl = smtp_conn_deadline(cn->c);
        if (cn->idle && !dst->head && (dl < 0 || cn->idle_at + ps->d->idle_ms < dl))
            dl = cn->idle_at + ps->d->idle_ms; /* its QUIT is due then */
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
        metric_set(d->m_depth, d->queued);
        cursor = 0;
        dict_sweep(d->by_dest, &cursor, dict_size(d->by_dest) + 16, s_depth_publish, NULL);
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
        s_flush_outcomes(d);
    }
    s_flush_outcomes(d);
    free(fds);
    free(who);
    free(where);
    return NULL;
}

/* ------------------------------------------------------------ life cycle */

/* Fill d->opts' TLS, AUTH and timeout fields from the smtp_* settings: 0,
 * or -1 with err set when they do not make sense together.
 *
 * AUTH goes only to smtp_relay: with no relay every connection is to a
 * recipient's MX host, which must never see the relay's password, so
 * credentials without a relay are refused rather than ignored. The client
 * itself never sends them without TLS (a relay that offers no STARTTLS
 * gets none and its mail is deferred), whatever smtp_tls says, as Postfix
 * does by default; so opportunistic plus a password is allowed and
 * behaves as required for that relay.
 *
 * verified towards MX hosts checks each certificate against the MX host
 * name the address came from (carried on the job, one destination per
 * address and name), as RFC 7672 / MTA-STS style verification does. */
static int s_smtp_opts(delivery_t *d, const config_t *cfg, sbuf_t *err)
{
    const char *relay = config_str(cfg, "smtp_relay");
    const char *tls = config_str(cfg, "smtp_tls");
    const char *ca = config_str(cfg, "smtp_tls_ca_file");
    const char *user = config_str(cfg, "smtp_relay_user");
    const char *pass = config_str(cfg, "smtp_relay_password");
    d->opts.tls = strcmp(tls, "opportunistic") == 0 ? SMTP_TLS_OPPORTUNISTIC : SMTP_TLS_REQUIRED;
    d->opts.tls_verify = strcmp(tls, "verified") == 0;
    if (ca[0] && !d->opts.tls_verify)
        log_warn("setting 'smtp_tls_ca_file' is ignored unless smtp_tls is verified");
    if (ca[0] && d->opts.tls_verify) {
        /* Load it once here so a bad file stops start-up rather than
         * deferring every message with the same error. */
        X509_STORE *st = X509_STORE_new();
        int ok = st && X509_STORE_load_file(st, ca) == 1;
        X509_STORE_free(st);
        if (!ok) {
            sbuf_appendf(err, "setting 'smtp_tls_ca_file': cannot load '%s' as PEM certificates",
                         ca);
            return -1;
        }
        if (!(d->ca_file = strdup(ca)))
            goto oom;
        d->opts.tls_ca_file = d->ca_file;
    }
    if (!user[0] != !pass[0]) {
        sbuf_appendf(err, "settings 'smtp_relay_user' and 'smtp_relay_password' go together: "
                          "set both or neither");
        return -1;
    }
    if (user[0] && !relay[0]) {
        sbuf_appendf(err, "setting 'smtp_relay_user': AUTH is only ever sent to smtp_relay, "
                          "which is empty (direct MX delivery does not authenticate)");
        return -1;
    }
    if (user[0]) {
        if (strpbrk(user, "\r\n")) {
            sbuf_appendf(err, "setting 'smtp_relay_user': holds CR or LF");
            return -1;
        }
        if (!(d->auth_user = strdup(user)) || !(d->auth_pass = strdup(pass)))
            goto oom;
        d->opts.auth_user = d->auth_user;
        d->opts.auth_pass = d->auth_pass;
    }
    d->opts.connect_timeout_ms = (int)config_int(cfg, "smtp_connect_timeout_s") * 1000;
    d->opts.greeting_timeout_ms = (int)config_int(cfg, "smtp_greeting_timeout_s") * 1000;
    d->opts.command_timeout_ms = (int)config_int(cfg, "smtp_command_timeout_s") * 1000;
    d->opts.data_timeout_ms = (int)config_int(cfg, "smtp_data_timeout_s") * 1000; /* 0: RFC's */
    d->opts.final_timeout_ms = (int)config_int(cfg, "smtp_data_done_timeout_s") * 1000;
    return 0;
oom:
    sbuf_appendf(err, "delivery: out of memory");
    return -1;
}

delivery_t *delivery_start(const config_t *cfg, const char *node_id, sbuf_t *err)
{
    delivery_t *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->rec_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the gather wait is not wall time */
    pthread_cond_init(&d->rec_cond, &ca);
    pthread_condattr_destroy(&ca);
    d->wake[0] = d->wake[1] = -1;
    d->dests = dict_new();
    d->shapers = dict_new();
    d->backlog = dict_new();
    d->by_dest = dict_new();
    d->redis_host = strdup(config_str(cfg, "redis_host"));
    d->conninfo = db_conninfo_from_config(cfg);
    d->helo = strdup(config_str(cfg, "smtp_helo_name"));
    if (!d->dests || !d->shapers || !d->redis_host || !d->conninfo || !d->helo || pipe2(d->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        sbuf_appendf(err, "delivery: cannot set up: %s", strerror(errno));
        delivery_stop(&d);
        return NULL;
    }
    d->opts.helo_name = d->helo;
    d->per_conn = (int)config_int(cfg, "delivery_messages_per_connection");
    d->conn_rate = (double)config_int(cfg, "delivery_connection_rate");
    if (s_smtp_opts(d, cfg, err) != 0) {
        delivery_stop(&d);
        return NULL;
    }
    d->max_conns = (int)config_int(cfg, "delivery_connections");
    d->backlog_max = (int)config_int(cfg, "delivery_backlog");
    d->def_rate = (double)config_int(cfg, "shaping_rate");
    d->def_burst = (double)config_int(cfg, "shaping_burst");
    d->hold_ms = config_int(cfg, "delivery_lease_s") * 1000 / 2;
    d->idle_ms = config_int(cfg, "delivery_idle_s") * 1000;
    d->redis_port = (int)config_int(cfg, "redis_port");
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
    /* The peer's own time (and the wire's): a pipelined MAIL, RCPT and
     * DATA on an open session, then the message, to the final reply. */
    static const double txn_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                         5,      10,      30,     60,    180,    600};
    d->m_txn = metrics_histogram("postchi_delivery_smtp_transaction_seconds",
                                 "One SMTP transaction on an open session: from MAIL FROM to the "
                                 "server's reply to the message.",
                                 txn_buckets, sizeof txn_buckets / sizeof txn_buckets[0]);
    d->m_waits = metrics_counter("postchi_delivery_shaping_waits_total",
                                 "Messages held back by a destination's shaping budget.");
    static const char *const dest_out[] = {"destination", "outcome", NULL};
    static const char *const dest_only[] = {"destination", NULL};
    d->f_dest_out = metrics_family(METRIC_COUNTER, "postchi_delivery_destination_messages_total",
                                   "Delivery outcomes recorded, by destination (the shaping key: "
                                   "MX rollup or relay; at most 200, then \"other\") and outcome.",
                                   dest_out, NULL, 0);
    d->f_dest_depth = metrics_family(METRIC_GAUGE, "postchi_delivery_destination_queue_depth",
                                     "Messages waiting in the delivery engine, by destination.",
                                     dest_only, NULL, 0);
    d->m_backlog = metrics_gauge("postchi_delivery_backlog",
                                 "Messages this worker holds between a mailer's claim and the "
                                 "recorded outcome, all destinations.");
    d->m_refused = metrics_counter("postchi_delivery_claims_held_total",
                                   "Mailer claims held back because the worker already holds "
                                   "delivery_backlog messages of that domain.");
    d->m_depth = metrics_gauge("postchi_delivery_queue_depth",
                               "Messages waiting in the delivery engine, all destinations.");
    char cid[160];
    snprintf(cid, sizeof cid, "%s-delivery", node_id ? node_id : "");
    if (!d->backlog || !d->by_dest ||
        !(d->client = mesh_client_new(cfg, node_id ? cid : NULL, err))) {
        sbuf_appendf(err, "%sdelivery: cannot set up its mesh connection", sbuf_len(err) ? "; " : "");
        delivery_stop(&d);
        return NULL;
    }
    /* pthread_create is a full barrier: the client moves to the recorder,
     * its only user from here on. */
    if (pthread_create(&d->recorder, NULL, s_recorder, d) != 0) {
        sbuf_appendf(err, "delivery: cannot start its recorder thread");
        delivery_stop(&d);
        return NULL;
    }
    d->recorder_started = 1;
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
    job_t *job;
    while ((job = s_pop(d, dst)) != NULL) {
        delivery_job_free(&job->j);
        free(job);
    }
    free(dst);
    return 1;
}

static int s_free_value(void *arg, const void *key, size_t len, void *value)
{
    (void)arg;
    (void)key;
    (void)len;
    free(value);
    return 1;
}

static int s_free_shaper(void *arg, const void *key, size_t len, void *value)
{
    ratelimit_t *rl = value;
    (void)arg;
    (void)key;
    (void)len;
    ratelimit_destroy(&rl);
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
    s_flush_outcomes(d); /* a round the thread never handed over */
    if (d->recorder_started) {
        pthread_mutex_lock(&d->rec_lock);
        d->rec_stopping = 1;
        pthread_cond_signal(&d->rec_cond);
        pthread_mutex_unlock(&d->rec_lock);
        pthread_join(d->recorder, NULL);
    }
    mesh_client_destroy(&d->client);
    if (d->by_dest) {
        size_t cursor = 0;
        dict_sweep(d->by_dest, &cursor, dict_size(d->by_dest) + 16, s_free_value, NULL);
        dict_destroy(&d->by_dest);
    }
    if (d->backlog) {
        size_t cursor = 0;
        dict_sweep(d->backlog, &cursor, dict_size(d->backlog) + 16, s_free_value, NULL);
        dict_destroy(&d->backlog);
    }
    /* Jobs not sent stay 'sending': their lease ends and they are re-driven. */
    while (d->in_head) {
        job_t *job = d->in_head;
        d->in_head = job->next;
        delivery_job_free(&job->j);
        free(job);
    }
    while (d->rec_head) { /* only when the recorder never ran */
        outcome_t *o = d->rec_head;
        d->rec_head = o->next;
        free(o);
    }
    if (d->dests) {
        size_t cursor = 0;
        dict_sweep(d->dests, &cursor, dict_size(d->dests) + 16, s_free_dest, d);
        dict_destroy(&d->dests);
    }
    if (d->shapers) {
        size_t cursor = 0;
        dict_sweep(d->shapers, &cursor, dict_size(d->shapers) + 16, s_free_shaper, NULL);
        dict_destroy(&d->shapers);
    }
    if (d->m_depth)
        metric_set(d->m_depth, 0);
    kv_destroy(&d->kv);
    free(d->redis_host);
    if (d->wake[0] >= 0)
        close(d->wake[0]);
    if (d->wake[1] >= 0)
        close(d->wake[1]);
    db_destroy(&d->db);
    free(d->conninfo);
    free(d->helo);
    free(d->ca_file);
    free(d->auth_user);
    if (d->auth_pass)
        OPENSSL_cleanse(d->auth_pass, strlen(d->auth_pass));
    free(d->auth_pass);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->rec_lock);
    pthread_cond_destroy(&d->rec_cond);
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
    pthread_mutex_lock(&self->rec_lock);
    s_backlog_add(self, job->j->domain, job->j->len, 1, NULL);
    pthread_mutex_unlock(&self->rec_lock);
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
