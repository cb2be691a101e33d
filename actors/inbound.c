/*
 * inbound - the return-path SMTP listener (see inbound.h).
 *
 * How: one thread runs poll() over a self-pipe (stop), the listening socket
 * and up to INBOUND_MAX_CONNS sessions. Each session keeps a small input
 * buffer (never more than one command line, or one DATA line up to
 * INBOUND_MAX_LINE, plus one read), an output buffer, and during DATA the
 * message being received. Commands are handled as soon as their line is
 * complete, so PIPELINING needs nothing special; a session whose output is
 * not being read is not read either (back-pressure instead of memory).
 *
 * A recipient is accepted only when it is ours: a VERP address whose token
 * passes its MAC, an unsubscribe address whose token does, or the fixed
 * feedback-loop address (FBL_LOCAL@<any domain>); anything else gets 550 at
 * RCPT, so mail nobody authenticated is never parsed. After the final dot
 * the message is checked and parsed once (core/inbound_report), whatever
 * the number of recipients, and for each recipient, when it is a DSN or an
 * ARF complaint, recorded by one SQL statement that also updates the
 * contact and the suppressions of that row's organization. The
 * statements are idempotent where a retry could repeat them (status only
 * moves from sent/deferred/sending; one complaint event per message;
 * suppressions ON CONFLICT DO NOTHING), so a 451 followed by a retry does
 * not double anything but a 'deferred' note.
 *
 * The statements run on a database thread of their own, with its own
 * PostgreSQL session, so a slow or locked statement delays only the
 * reports queued behind it, never another session's greeting or replies.
 * At the dot the poll thread parses the message, gives the DATA bytes back
 * to the budget, and hands a job (the parsed report and the recipients
 * that need the database) to the thread through a queue of
 * INBOUND_DB_QUEUE; the session is parked (read, but its input not
 * handled) until the job comes back through an eventfd, and only then is
 * the final reply written: 250 once every statement committed, 451 4.3.0
 * when one failed or the job waited INBOUND_DB_WAIT_MS, 451 4.3.2 at once
 * when the queue is full. A job owns everything it uses and names its
 * session by slot and serial number, never by pointer: a client that hangs
 * up while its job runs is freed at once, and the result that comes back
 * later finds no session with that serial and is dropped. The report is
 * then still applied (the sender saw no 250 and retries, which changes
 * nothing).
 *
 * Security note: a token is acted on only when its MAC checks under
 * secret_key (core/verp.h), so knowing a message id is not enough to get
 * its recipient bounced or suppressed. A token that fails (forged, made
 * under another key, or the unsigned format of mail sent before tokens had
 * a MAC) is refused at RCPT. A report to the feedback-loop address is
 * applied to the first of its own candidate tokens (inbound_report.h) that
 * passes the MAC, else counted and logged as unknown and writes nothing.
 * Each client address (IPv4, or IPv6 /64) gets INBOUND_MAX_PER_CLIENT
 * sessions, and all sessions together buffer at most INBOUND_MAX_BUFFERED
 * bytes of DATA (past it a message gets 452 and is retried later).
 *
 * What can go wrong: while PostgreSQL is slow, reports wait in the queue
 * (the sending MTA waits 10 minutes for the reply to the dot, we answer
 * 451 after INBOUND_DB_WAIT_MS at most) and past INBOUND_DB_QUEUE they get
 * a quick 451. A failed connect is not retried for a second, so a dead
 * server costs each message one quick 451. inbound_stop abandons the jobs
 * still queued (their sessions are closed unanswered, the MTAs retry) and
 * waits for the one running, which its session's statement_timeout bounds.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "db.h"
#include "inbound_report.h"
#include "log.h"
#include "mesh_peer.h"
#include "metrics.h"
#include "mime.h"
#include "secretbox.h"
#include "unsub_token.h"
#include "verp.h"
#include "inbound.h"

#define READ_CHUNK 16384            /* bytes read per readable event */
#define OUT_HIGH (64u * 1024)       /* stop reading a session whose replies pile up */
#define SESSION_MAX_MS (30 * 60000) /* a session lives at most this long */
#define RECONNECT_MS 1000           /* pause after a failed PostgreSQL connect */
#define VERP_LOCAL "bounces"
#define FBL_LOCAL "fbl" /* feedback loops deliver to fbl@<return path domain> */
#define STALL_MS 1000   /* a loop turn this long was our stall, not the clients' silence */
#define PEER_LEN 9      /* family byte, then an IPv4 address or an IPv6 /64 */

typedef enum { RCPT_VERP, RCPT_UNSUB, RCPT_FBL } rcpt_kind_t;

/* One accepted recipient, already authenticated. */
typedef struct {
    rcpt_kind_t kind; /* what the address is */
    char id[64];      /* VERP: the row uuid; UNSUB: the token; FBL: "" */
} rcpt_t;
_Static_assert(VERP_UUID_SIZE <= 64 && UNSUB_TOKEN_LEN + 1 <= 64, "rcpt_t.id holds either");

/* ST_WAIT: the dot was read and the report handed to the database thread;
 * the final reply waits for its result. */
typedef enum { ST_CMD, ST_DATA, ST_WAIT, ST_CLOSING } sess_state_t;

typedef struct {
    int fd;             /* the client socket */
    uint64_t serial;    /* unique for the listener's life: what a job names */
    sess_state_t state; /* reading commands, DATA, waiting for the database, or closing */
    sbuf_t *in;         /* bytes read, not yet a complete line */
    sbuf_t *out;        /* replies not yet written */
    size_t out_off;     /* how much of out is written */
    sbuf_t *data;       /* the message being received (unstuffed) */
    int helo;           /* EHLO/HELO seen */
    int mail;           /* MAIL FROM seen in this transaction */
    rcpt_t *rcpts;      /* accepted recipients, each once */
    int nrcpts;         /* how many */
    int skip;           /* discarding the rest of an over-long line */
    int bol;            /* DATA: at the beginning of a line */
    int over;           /* DATA discarded: 1 message too big, 2 INBOUND_MAX_BUFFERED reached */
    int errors;         /* bad commands so far */
    int64_t last_ms;    /* last byte read */
    int64_t start_ms;   /* accepted at */
    unsigned char peer[PEER_LEN]; /* the client's address, as counted for INBOUND_MAX_PER_CLIENT */
    int slot;                     /* where it is in sess[] */
} sess_t;

/* One message's database work. The poll thread fills it and hands it over;
 * from then until it is back on the done list only the database thread
 * touches it. It points at nothing the session owns. */
typedef struct job {
    struct job *next;   /* on the pending or the done list */
    int slot;           /* the waiting session's slot in sess[] */
    uint64_t serial;    /* and its serial: the slot may hold another by then */
    int64_t queued_ms;  /* handed over at */
    inbound_report_t r; /* the report, parsed once */
    rcpt_t *rcpts;      /* the recipients that need the database */
    int nrcpts;         /* how many */
    int failed;         /* result: a statement failed, or the job waited too long */
} job_t;

struct inbound {
    pthread_t thread;                /* the poll thread */
    int running;                     /* the thread was started */
    int lfd;                         /* listening socket, -1 when off */
    int wake[2];                     /* self-pipe: inbound_stop writes to wake[1] */
    sess_t *sess[INBOUND_MAX_CONNS]; /* sessions, NULL slots free */
    int nsess;                       /* sessions open */
    size_t buffered;                 /* DATA bytes held by all sessions */
    uint64_t next_serial;            /* the next session's serial (poll thread) */
    char *conninfo;                  /* PostgreSQL connection string */
    db_t *db;                        /* the database thread's connection, NULL until needed */
    int64_t db_failed_ms;            /* when the last connect failed (database thread) */
    pthread_t db_thread;             /* runs the jobs */
    int db_running;                  /* it was started */
    pthread_mutex_t lock;            /* guards the lists below */
    pthread_cond_t wakeup;           /* a job was queued, or stop */
    job_t *pending, *pending_tail;   /* jobs not started, oldest first */
    int npending;                    /* how many (at most INBOUND_DB_QUEUE) */
    job_t *done;                     /* jobs finished, not yet answered */
    atomic_int stopping;             /* inbound_stop: the database thread leaves */
    int done_fd;                     /* eventfd: the database thread finished a job */
    char host[256];                  /* our name in the greeting and EHLO */
    unsigned char key[VERP_KEY_LEN]; /* secret_key: checks VERP tokens */
    int have_key;                    /* secret_key was valid (else no token checks) */
    metric_t *m_hard;                /* reports: DSN failed 5.x.x */
    metric_t *m_soft;                /* reports: DSN failed otherwise (4.x.x: the queue expired) */
    metric_t *m_delayed;             /* reports: DSN delayed */
    metric_t *m_arf;                 /* reports: ARF abuse */
    metric_t *m_unknown;             /* reports: anything else, or no such message */
    metric_t *m_open;                /* sessions open */
    metric_t *m_queue;               /* reports waiting for the database thread */
    metric_t *m_busy;                /* reports answered 451 4.3.2: the queue was full */
    metric_t *m_unsub;               /* messages to unsubscribe+<token>@ acted on */
    unsigned char unsub_key[UNSUB_TOKEN_KEY_LEN]; /* secret_key: checks unsubscribe tokens */
    int have_unsub_key;              /* it parsed; without it no unsubscribe address is ours */
};

/* Hard bounce: the row moves to 'bounced' (from any state a message that
 * went out can be in: a 250 lost to a timeout leaves it deferred, queued
 * again or failed by age), and, whatever its state, the contact is marked
 * and the address suppressed, all within the row's own organization; one
 * async bounced event per message. Returns (row exists, event written). */
static const char *const SQL_HARD =
    "WITH r AS (SELECT id, organization_id, recipient FROM messages WHERE id = $1::uuid),"
    " m AS (UPDATE messages SET status = 'bounced', lease_until = NULL,"
    " last_response = $2, updated_at = now()"
    " WHERE id = $1::uuid AND status IN ('sent', 'deferred', 'sending', 'queued', 'failed')"
    " RETURNING id),"
    " c AS (UPDATE contacts SET status = 'bounced', updated_at = now() FROM r"
    " WHERE contacts.organization_id = r.organization_id"
    " AND lower(contacts.email) = lower(r.recipient) RETURNING contacts.id),"
    " s AS (INSERT INTO suppressions (organization_id, email, reason)"
    " SELECT organization_id, recipient, 'bounce' FROM r"
    " ON CONFLICT (organization_id, lower(email)) DO NOTHING RETURNING id),"
    " e AS (INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'bounced', jsonb_build_object('status', $3::text,"
    " 'diagnostic', $2::text, 'async', true) FROM r WHERE NOT EXISTS (SELECT 1"
    " FROM message_events x WHERE x.message_id = r.id AND x.type = 'bounced'"
    " AND x.detail->>'async' = 'true') RETURNING id)"
    " SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1::uuid), (SELECT count(*) FROM e)";

/* Failed for a temporary reason (the remote gave up retrying, 4.x.x, or
 * gave no usable status): the message is bounced with its event, but the
 * contact and the suppressions are left alone, a later send may well get
 * through. */
static const char *const SQL_SOFT =
    "WITH m AS (UPDATE messages SET status = 'bounced', lease_until = NULL,"
    " last_response = $2, updated_at = now()"
    " WHERE id = $1::uuid AND status IN ('sent', 'deferred', 'sending')"
    " RETURNING id, organization_id),"
    " e AS (INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'bounced', jsonb_build_object('status', $3::text,"
    " 'diagnostic', $2::text, 'async', true, 'soft', true) FROM m RETURNING id)"
    " SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1::uuid), (SELECT count(*) FROM e)";

/* Delayed: a note on the message, nothing else changes. A report the
 * message already has (same status and diagnostic: a replay, an MTA
 * sending it twice) adds nothing, and a message takes at most
 * DELAYED_MAX notes, so whoever holds one Return-Path cannot fill its
 * history. */
#define DELAYED_MAX "20"
static const char *const SQL_DELAYED =
    "WITH m AS (SELECT id, organization_id FROM messages WHERE id = $1::uuid),"
    " k AS (SELECT count(*) AS n, count(*) FILTER (WHERE x.detail->>'status' = $3::text"
    "   AND x.detail->>'diagnostic' = $2::text) AS same FROM message_events x"
    "   WHERE x.message_id = $1::uuid AND x.type = 'deferred' AND x.detail->>'async' = 'true'),"
    " e AS (INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'deferred', jsonb_build_object('status', $3::text,"
    " 'diagnostic', $2::text, 'async', true) FROM m, k"
    " WHERE k.same = 0 AND k.n < " DELAYED_MAX " RETURNING id)"
    " SELECT EXISTS (SELECT 1 FROM m), (SELECT count(*) FROM e)";

/* Complaint: one event per message, the contact marked, the address
 * suppressed, within the row's own organization. */
static const char *const SQL_COMPLAINT =
    "WITH m AS (SELECT id, organization_id, recipient FROM messages WHERE id = $1::uuid),"
    " c AS (UPDATE contacts SET status = 'complained', updated_at = now() FROM m"
    " WHERE contacts.organization_id = m.organization_id"
    " AND lower(contacts.email) = lower(m.recipient) RETURNING contacts.id),"
    " s AS (INSERT INTO suppressions (organization_id, email, reason)"
    " SELECT organization_id, recipient, 'complaint' FROM m"
    " ON CONFLICT (organization_id, lower(email)) DO NOTHING RETURNING id),"
    " e AS (INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT organization_id, id, 'complaint', jsonb_build_object('feedback_type', $2::text,"
    " 'async', true) FROM m WHERE NOT EXISTS (SELECT 1 FROM message_events x"
    " WHERE x.message_id = m.id AND x.type = 'complaint') RETURNING id)"
    " SELECT EXISTS (SELECT 1 FROM m), (SELECT count(*) FROM e)";

static void s_sess_free(sess_t *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    sbuf_destroy(&s->in);
    sbuf_destroy(&s->out);
    sbuf_destroy(&s->data);
    free(s->rcpts);
    free(s);
}

/* Free the DATA a session holds and give its bytes back to the budget. */
static void s_drop_data(inbound_t *in, sess_t *s)
{
    if (s->data)
        in->buffered -= sbuf_len(s->data);
    sbuf_destroy(&s->data);
}

static void s_reset_tx(inbound_t *in, sess_t *s)
{
    s->mail = 0;
    s->nrcpts = 0;
    s_drop_data(in, s);
    s->over = 0;
}

static void s_reply(sess_t *s, const char *text)
{
    sbuf_append_str(s->out, text);
    sbuf_append_str(s->out, "\r\n");
}

/* The VERP token of addr ("bounces+<token>@<any domain>", optionally in
 * angle brackets) into token[size]: 0, or -1 when addr is not one of ours. */
static int s_rcpt_token(const char *addr, char *token, size_t size)
{
    const char *at = strrchr(addr, '@');
    if (!at || at[1] == '\0')
        return -1;
    size_t dlen = strcspn(at + 1, ">");
    if (dlen == 0 || dlen > 253)
        return -1;
    char domain[256];
    memcpy(domain, at + 1, dlen);
    domain[dlen] = '\0';
    return mime_verp_parse(addr, VERP_LOCAL, domain, token, size);
}

/* The address in "FROM:<addr> params" / "TO:<addr> params" after the colon:
 * copied (with its brackets stripped) into a malloc'd string, NULL when the
 * syntax is wrong. *params_p points past the address. */
static char *s_path(const char *arg, const char **params_p)
{
    while (*arg == ' ')
        arg++;
    if (*arg != '<')
        return NULL;
    const char *end = strchr(arg, '>');
    if (!end)
        return NULL;
    size_t n = (size_t)(end - arg - 1);
    char *a = malloc(n + 1);
    if (!a)
        return NULL;
    memcpy(a, arg + 1, n);
    a[n] = '\0';
    if (params_p)
        *params_p = end + 1;
    return a;
}

static db_t *s_db(inbound_t *in)
{
    if (db_usable(in->db))
        return in->db;
    db_destroy(&in->db);
    int64_t now = mesh_now_ms();
    if (in->db_failed_ms && now - in->db_failed_ms < RECONNECT_MS)
        return NULL;
    sbuf_t *err = sbuf_new(64);
    in->db = db_connect(in->conninfo, 0, err);
    /* A row lock held elsewhere, or a statement that hangs, must cost the
     * report a 451 (the MTA retries), not hold up every report queued
     * behind it. */
    if (in->db &&
        db_exec_script(in->db, "SET statement_timeout = 5000; SET lock_timeout = 2000", err) != 0)
        db_destroy(&in->db);
    if (!in->db) {
        in->db_failed_ms = now;
        if (log_should("inbound-db", 10, 10000))
            log_error("%s", err ? sbuf_data(err) : "out of memory");
    } else {
        in->db_failed_ms = 0;
    }
    sbuf_destroy(&err);
    return in->db;
}

/* The row id a token names, into uuid[VERP_UUID_SIZE]: 0, or -1 when the
 * token is not one we made (bad MAC, old unsigned format, garbage, or no
 * valid secret_key to check it with). */
static int s_token_uuid(const inbound_t *in, const char *token, char *uuid)
{
    uuid[0] = '\0';
    return in->have_key ? verp_token_check(in->key, token, uuid) : -1;
}

static void s_unknown(inbound_t *in, const char *why, const char *token)
{
    metric_inc(in->m_unknown);
    if (log_should("inbound-unknown", 15, 60000)) {
        char t[80];
        log_info("report dropped (%s) token=%s", why,
                 log_printable(t, sizeof t, token, strlen(token)));
    }
}

/* What a report does to the row its token names: the statement and the
 * counter, or no statement and why (for the unknown count). */
typedef struct {
    const char *sql; /* NULL: nothing to record */
    metric_t *m;     /* counted when the row exists */
    const char *why; /* when sql is NULL */
} action_t;

static action_t s_action(const inbound_t *in, const inbound_report_t *r)
{
    if (r->kind == REPORT_DSN && r->hard)
        return (action_t){SQL_HARD, in->m_hard, NULL};
    if (r->kind == REPORT_DSN && strcmp(r->action, "failed") == 0)
        /* The remote gave up for good, only for a reason that was not
         * permanent (Postfix and Exchange say 4.4.x when the queue expires). */
        return (action_t){SQL_SOFT, in->m_soft, NULL};
    if (r->kind == REPORT_DSN && strcmp(r->action, "delayed") == 0)
        return (action_t){SQL_DELAYED, in->m_delayed, NULL};
    if (r->kind == REPORT_ARF && r->hard)
        return (action_t){SQL_COMPLAINT, in->m_arf, NULL};
    return (action_t){NULL, NULL,
                      r->kind == REPORT_ARF   ? "feedback type not acted on"
                      : r->kind == REPORT_DSN ? "DSN action not acted on"
                                              : "not a report"};
}

/* Record report r (parsed once for the whole message) for the row uuid,
 * whose token passed its MAC (database thread). 0 when it is done
 * (recorded, or nothing to record), -1 when the database could not be
 * reached or refused: the caller answers 451 and the MTA retries. */
static int s_record(inbound_t *in, const inbound_report_t *r, const char *uuid)
{
    action_t a = s_action(in, r);
    if (!a.sql) {
        s_unknown(in, a.why, uuid);
        return 0;
    }
    const char *p[3] = {uuid, NULL, NULL};
    if (r->kind == REPORT_ARF)
        p[1] = r->feedback_type;
    else
        p[1] = r->diagnostic, p[2] = r->status;
    int rc = -1;
    sbuf_t *err = sbuf_new(64);
    db_t *db = s_db(in);
    db_result_t *res = db ? db_query(db, a.sql, a.sql == SQL_COMPLAINT ? 2 : 3, p, err) : NULL;
    if (res) {
        const char *exists = db_result_get(res, 0, 0);
        if (exists && exists[0] == 't') {
            metric_inc(a.m);
        } else {
            s_unknown(in, "no such message", uuid);
        }
        rc = 0;
    } else if (db && log_should("inbound-record", 14, 10000)) {
        log_error("report not recorded message=%s: %s", uuid,
                  err ? sbuf_data(err) : "out of memory");
    }
    db_result_free(&res);
    sbuf_destroy(&err);
    return rc;
}

/* ---- the List-Unsubscribe mailto route (unsubscribe+<token>@<any domain>) ---- */

/* 1 when addr is an unsubscribe address with a token made with our key
 * (copied into token[UNSUB_TOKEN_LEN + 1]), else 0. */
static int s_unsub_rcpt(const inbound_t *in, const char *addr, char *token)
{
    const char *at = strrchr(addr, '@');
    size_t dlen = at ? strcspn(at + 1, ">") : 0;
    if (!in->have_unsub_key || dlen == 0 || dlen > 253)
        return 0;
    char domain[256], uuid[37];
    memcpy(domain, at + 1, dlen);
    domain[dlen] = '\0';
    return mime_verp_parse(addr, UNSUB_LOCAL, domain, token, UNSUB_TOKEN_LEN + 1) == 0 &&
           unsub_token_check(in->unsub_key, token, uuid) == 0;
}

/* 1 when addr is the feedback-loop address, FBL_LOCAL@<any domain>. */
static int s_fbl_rcpt(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at && at - addr == (ptrdiff_t)strlen(FBL_LOCAL) &&
           strncasecmp(addr, FBL_LOCAL, strlen(FBL_LOCAL)) == 0 && at[1] != '\0';
}

/* Unsubscribe the recipient of the row the token names (whatever the
 * message says: the address is the request, as RFC 2369 mailto links
 * are), on the database thread. 0 when done or the row is gone, -1 when
 * the database failed (451: the sender retries). The events row it writes
 * is announced to the tenant actor by the sweeper's re-drive. */
static int s_unsubscribe(inbound_t *in, const char *token)
{
    db_t *db = s_db(in);
    if (!db)
        return -1;
    sbuf_t *err = sbuf_new(64);
    unsub_result_t rc = unsub_token_apply(db, in->unsub_key, token, "mailto", NULL, NULL, NULL,
                                          NULL, err);
    if (rc == UNSUB_DONE)
        metric_inc(in->m_unsub);
    else if (rc == UNSUB_NOT_FOUND)
        s_unknown(in, "unsubscribe: no such message", token);
    else if (log_should("inbound-unsub", 13, 10000))
        log_error("unsubscribe not recorded: %s", err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    return rc == UNSUB_ERROR ? -1 : 0;
}

/* Keep at the front of s->rcpts the recipients whose report needs the
 * database and count the others as unknown here; how many are kept. A
 * feedback-loop recipient carries no token in its envelope: it becomes the
 * row of the first of the report's own candidates that passes the MAC
 * (each is authenticated on its own, so the order only matters for
 * reports that name two of our messages). parsed is 0 when r could not be
 * parsed (why says why): only unsubscribe recipients are kept then. */
static int s_needing_db(inbound_t *in, sess_t *s, const inbound_report_t *r, int parsed,
                        const char *why)
{
    action_t a = s_action(in, r);
    int n = 0;
    for (int i = 0; i < s->nrcpts; i++) {
        rcpt_t rc = s->rcpts[i];
        if (rc.kind != RCPT_UNSUB && !parsed) {
            s_unknown(in, why, rc.id);
            continue;
        }
        if (rc.kind == RCPT_FBL) {
            int k = 0;
            while (k < r->n_candidates && s_token_uuid(in, r->verp_candidates[k], rc.id) != 0)
                k++;
            if (k == r->n_candidates) {
                s_unknown(in, "feedback loop: no candidate token is ours", r->verp_token);
                continue;
            }
            rc.kind = RCPT_VERP;
        }
        if (rc.kind == RCPT_VERP && !a.sql) {
            s_unknown(in, a.why, rc.id);
            continue;
        }
        s->rcpts[n++] = rc;
    }
    return n;
}

static void s_job_free(job_t **job_p)
{
    if (!*job_p)
        return;
    free((*job_p)->rcpts);
    free(*job_p);
    *job_p = NULL;
}

/* Database thread: record the job's report for each of its recipients, in
 * order, stopping at the first failure (the retry redoes the rest, and
 * what was done changes nothing the second time). A job that has waited
 * INBOUND_DB_WAIT_MS fails without going on: its sender may have given up
 * on the reply, and a queue that slow should not grow older still. */
static void s_job_run(inbound_t *in, job_t *job)
{
    for (int i = 0; i < job->nrcpts && !job->failed; i++) {
        const rcpt_t *rc = &job->rcpts[i];
        int64_t waited = mesh_now_ms() - job->queued_ms;
        if (atomic_load(&in->stopping) || waited > INBOUND_DB_WAIT_MS) {
            if (waited > INBOUND_DB_WAIT_MS && log_should("inbound-wait", 12, 10000))
                log_error("report waited %lld ms for the database: answering 451",
                          (long long)waited);
            job->failed = 1;
        } else if (rc->kind == RCPT_UNSUB) {
            job->failed = s_unsubscribe(in, rc->id) != 0;
        } else {
            job->failed = s_record(in, &job->r, rc->id) != 0;
        }
    }
}

/* Give report r and the first n recipients of s (which the job takes) to
 * the database thread and park s until the result comes back. When that
 * cannot be done, answer 451 now: the MTA retries, and a full queue is
 * not worth making it wait for. */
static void s_hand_over(inbound_t *in, sess_t *s, const inbound_report_t *r, int n)
{
    job_t *job = calloc(1, sizeof *job);
    if (!job) {
        s_reply(s, "451 4.3.1 Insufficient system storage");
        return;
    }
    job->slot = s->slot;
    job->serial = s->serial;
    job->queued_ms = mesh_now_ms();
    job->r = *r;
    job->rcpts = s->rcpts;
    job->nrcpts = n;
    pthread_mutex_lock(&in->lock);
    int full = in->npending >= INBOUND_DB_QUEUE;
    if (!full) {
        if (in->pending_tail)
            in->pending_tail->next = job;
        else
            in->pending = job;
        in->pending_tail = job;
        in->npending++;
        metric_set(in->m_queue, in->npending);
        pthread_cond_signal(&in->wakeup);
    }
    pthread_mutex_unlock(&in->lock);
    if (full) {
        free(job);
        metric_inc(in->m_busy);
        if (log_should("inbound-queue", 13, 10000))
            log_warn("%d reports wait for the database: answering 451", INBOUND_DB_QUEUE);
        s_reply(s, "451 4.3.2 Too busy, try again later");
        return;
    }
    s->rcpts = NULL; /* the job's now */
    s->nrcpts = 0;
    s->state = ST_WAIT;
}

/* The final dot: check and parse the message once, then hand what needs
 * the database to its thread (the reply waits for it) or answer now. A
 * message GMime should not be given is refused with a 5xx for all
 * recipients: it is no report a real MTA writes. */
static void s_end_data(inbound_t *in, sess_t *s)
{
    const char *raw = s->data ? sbuf_data(s->data) : "";
    size_t len = s->data ? sbuf_len(s->data) : 0;
    int need_parse = 0;
    for (int i = 0; i < s->nrcpts; i++)
        need_parse |= s->rcpts[i].kind != RCPT_UNSUB;
    sbuf_t *err = sbuf_new(64);
    inbound_report_t r;
    memset(&r, 0, sizeof r);
    if (s->over == 1) {
        s_reply(s, "552 5.3.4 Message too big");
    } else if (s->over) {
        s_reply(s, "452 4.3.1 Insufficient system storage, try again later");
    } else if (need_parse && inbound_report_check(raw, len, err) != 0) {
        s_unknown(in, err ? sbuf_data(err) : "refused", "");
        sbuf_appendf(s->out, "554 5.6.0 Message refused: %s\r\n", err ? sbuf_data(err) : "refused");
    } else {
        int prc = need_parse ? inbound_report_parse(raw, len, NULL, VERP_LOCAL, NULL, &r, err) : 0;
        int n = s_needing_db(in, s, &r, prc == 0, err ? sbuf_data(err) : "not a message");
        if (n > 0)
            s_hand_over(in, s, &r, n);
        else
            s_reply(s, "250 2.0.0 Ok: report received");
    }
    sbuf_destroy(&err);
    s_reset_tx(in, s); /* the DATA bytes go back to the budget: the job holds the parsed report */
    if (s->state == ST_DATA)
        s->state = ST_CMD;
}

static void s_bad(sess_t *s, const char *reply)
{
    s_reply(s, reply);
    if (++s->errors >= INBOUND_MAX_ERRORS) {
        s_reply(s, "421 4.7.0 Too many errors, closing connection");
        s->state = ST_CLOSING;
    }
}

/* One command line (without its line end, NUL-free, NUL-terminated). */
static void s_command(inbound_t *in, sess_t *s, char *line)
{
    size_t vlen = strcspn(line, " ");
    char *arg = line + vlen;
    while (*arg == ' ')
        arg++;
#define VERB(v) (vlen == sizeof(v) - 1 && strncasecmp(line, v, vlen) == 0)
    if (VERB("EHLO") || VERB("HELO")) {
        if (!*arg) {
            s_bad(s, "501 5.5.4 Syntax: EHLO hostname");
            return;
        }
        s_reset_tx(in, s);
        s->helo = 1;
        if (VERB("HELO")) {
            sbuf_appendf(s->out, "250 %s\r\n", in->host);
        } else {
            sbuf_appendf(s->out, "250-%s\r\n250-SIZE %u\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                         in->host, INBOUND_MAX_MESSAGE);
        }
    } else if (VERB("MAIL")) {
        if (!s->helo) {
            s_bad(s, "503 5.5.1 Error: send HELO/EHLO first");
            return;
        }
        if (s->mail) {
            s_bad(s, "503 5.5.1 Error: nested MAIL command");
            return;
        }
        const char *params = NULL;
        char *from = strncasecmp(arg, "FROM:", 5) == 0 ? s_path(arg + 5, &params) : NULL;
        if (!from) {
            s_bad(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
            return;
        }
        free(from);
        /* SIZE=n: refuse at once what DATA would refuse at the end. */
        for (const char *p = params; p && (p = strchr(p, ' ')) != NULL;) {
            while (*p == ' ')
                p++;
            if (strncasecmp(p, "SIZE=", 5) == 0 &&
                strtoull(p + 5, NULL, 10) > INBOUND_MAX_MESSAGE) {
                s_reply(s, "552 5.3.4 Message size exceeds fixed limit");
                return;
            }
        }
        s->mail = 1;
        s_reply(s, "250 2.1.0 Ok");
    } else if (VERB("RCPT")) {
        if (!s->mail) {
            s_bad(s, "503 5.5.1 Error: need MAIL command");
            return;
        }
        char *to = strncasecmp(arg, "TO:", 3) == 0 ? s_path(arg + 3, NULL) : NULL;
        if (!to) {
            s_bad(s, "501 5.5.4 Syntax: RCPT TO:<address>");
            return;
        }
        rcpt_t rc = {.kind = RCPT_VERP};
        char token[128];
        if (s_unsub_rcpt(in, to, rc.id))
            rc.kind = RCPT_UNSUB;
        else if (s_fbl_rcpt(to))
            rc.kind = RCPT_FBL;
        else if (s_rcpt_token(to, token, sizeof token) != 0 ||
                 s_token_uuid(in, token, rc.id) != 0) {
            /* Not ours, or a token we did not make: refused here, so no
             * unauthenticated message is ever parsed. */
            free(to);
            s_bad(s, "550 5.1.1 Recipient address rejected: not a return path here");
            return;
        }
        free(to);
        for (int i = 0; i < s->nrcpts; i++) {
            if (s->rcpts[i].kind == rc.kind && strcmp(s->rcpts[i].id, rc.id) == 0) {
                /* Said twice: recorded once, or a replay would count twice. */
                s_reply(s, "250 2.1.5 Ok");
                return;
            }
        }
        if (s->nrcpts >= INBOUND_MAX_RCPTS) {
            s_reply(s, "452 4.5.3 Error: too many recipients");
            return;
        }
        rcpt_t *r = realloc(s->rcpts, (size_t)(s->nrcpts + 1) * sizeof *r);
        if (!r) {
            s_reply(s, "452 4.3.1 Insufficient system storage");
            return;
        }
        s->rcpts = r;
        s->rcpts[s->nrcpts++] = rc;
        s_reply(s, "250 2.1.5 Ok");
    } else if (VERB("DATA")) {
        if (!s->mail) {
            s_bad(s, "503 5.5.1 Error: need MAIL command");
            return;
        }
        if (s->nrcpts == 0) {
            s_bad(s, "554 5.5.1 Error: no valid recipients");
            return;
        }
        s->data = sbuf_new(4096);
        if (!s->data) {
            s_reply(s, "451 4.3.1 Insufficient system storage");
            return;
        }
        s->state = ST_DATA;
        s->bol = 1;
        s->over = 0;
        s_reply(s, "354 End data with <CR><LF>.<CR><LF>");
    } else if (VERB("RSET")) {
        s_reset_tx(in, s);
        s_reply(s, "250 2.0.0 Ok");
    } else if (VERB("NOOP")) {
        s_reply(s, "250 2.0.0 Ok");
    } else if (VERB("QUIT")) {
        s_reply(s, "221 2.0.0 Bye");
        s->state = ST_CLOSING;
    } else if (VERB("VRFY") || VERB("EXPN") || VERB("HELP") || VERB("STARTTLS") || VERB("AUTH") ||
               VERB("BDAT") || VERB("ETRN") || VERB("TURN")) {
        s_bad(s, "502 5.5.1 Error: command not implemented");
    } else {
        s_bad(s, "500 5.5.2 Error: command not recognized");
    }
#undef VERB
}

/* Append one DATA chunk (dot-unstuffed when it starts a line) unless the
 * message is already over its limit or all sessions together hold
 * INBOUND_MAX_BUFFERED (then it is discarded and answered 452 at the dot:
 * many slow sessions cannot make the worker hold gigabytes). */
static void s_data_append(inbound_t *in, sess_t *s, const char *p, size_t n)
{
    if (s->bol && n > 0 && p[0] == '.')
        p++, n--;
    if (s->over)
        return;
    if (sbuf_len(s->data) + n > INBOUND_MAX_MESSAGE || in->buffered + n > INBOUND_MAX_BUFFERED) {
        s->over = sbuf_len(s->data) + n > INBOUND_MAX_MESSAGE ? 1 : 2;
        s_drop_data(in, s);
        return;
    }
    if (sbuf_append(s->data, p, n) != 0)
        s->over = 1; /* out of memory: refused like an oversized message */
    else
        in->buffered += n;
}

/* Handle every complete line in s->in; keep a partial one for later unless
 * it is already too long to be a command or the end of data. A session
 * parked at its dot keeps the rest (pipelined commands) for when its reply
 * is written. */
static void s_process(inbound_t *in, sess_t *s)
{
    const char *buf = sbuf_data(s->in);
    size_t len = sbuf_len(s->in), pos = 0;
    while (pos < len && s->state != ST_CLOSING && s->state != ST_WAIT) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl) {
            size_t rest = len - pos;
            if (rest >= INBOUND_MAX_LINE) {
                if (s->state == ST_DATA) {
                    s_data_append(in, s, buf + pos, rest);
                    s->bol = 0;
                } else {
                    s->skip = 1;
                }
                pos = len;
            }
            break;
        }
        size_t n = (size_t)(nl - (buf + pos)) + 1; /* with the LF */
        const char *line = buf + pos;
        pos += n;
        if (s->state == ST_DATA) {
            if (s->bol && ((n == 3 && memcmp(line, ".\r\n", 3) == 0) ||
                           (n == 2 && memcmp(line, ".\n", 2) == 0))) {
                s_end_data(in, s);
                continue;
            }
            s_data_append(in, s, line, n);
            s->bol = 1;
            continue;
        }
        if (s->skip) {
            s->skip = 0;
            s_bad(s, "500 5.5.0 Error: line too long");
            continue;
        }
        size_t clen = n - 1;
        if (clen > 0 && line[clen - 1] == '\r')
            clen--;
        if (n > INBOUND_MAX_LINE || memchr(line, '\0', clen)) {
            s_bad(s, n > INBOUND_MAX_LINE ? "500 5.5.0 Error: line too long"
                                          : "500 5.5.2 Error: bad character in command");
            continue;
        }
        char cmd[INBOUND_MAX_LINE + 1];
        memcpy(cmd, line, clen);
        cmd[clen] = '\0';
        s_command(in, s, cmd);
    }
    if (pos >= len || s->state == ST_CLOSING)
        sbuf_reset(s->in); /* nothing left, or nothing more will be read */
    else
        sbuf_consume(s->in, pos); /* a partial line, or what a parked session has not handled */
}

static void s_close(inbound_t *in, int i)
{
    s_drop_data(in, in->sess[i]);
    s_sess_free(in->sess[i]);
    in->sess[i] = NULL;
    in->nsess--;
    metric_set(in->m_open, in->nsess);
}

/* What INBOUND_MAX_PER_CLIENT counts for the address sa: an IPv4 address
 * (IPv4-mapped IPv6 included), or an IPv6 /64 (one host commonly holds a
 * whole /64, so counting addresses would not limit it). */
static void s_peer(const struct sockaddr_storage *sa, unsigned char peer[PEER_LEN])
{
    memset(peer, 0, PEER_LEN);
    if (sa->ss_family == AF_INET) {
        peer[0] = 4;
        memcpy(peer + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            peer[0] = 4;
            memcpy(peer + 1, a->s6_addr + 12, 4);
        } else {
            peer[0] = 6;
            memcpy(peer + 1, a->s6_addr, 8);
        }
    }
}

/* Sessions open from peer. */
static int s_peer_count(const inbound_t *in, const unsigned char peer[PEER_LEN])
{
    int n = 0;
    for (int i = 0; i < INBOUND_MAX_CONNS; i++)
        n += in->sess[i] && memcmp(in->sess[i]->peer, peer, PEER_LEN) == 0;
    return n;
}

/* Tell a client we will not serve it and hang up. */
static void s_refuse(int fd, const char *reply)
{
    if (send(fd, reply, strlen(reply), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* Nothing to do: the client sees the close. */
    }
    close(fd);
}

static void s_accept(inbound_t *in)
{
    for (int k = 0; k < 64; k++) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        memset(&sa, 0, sizeof sa);
        int fd = accept4(in->lfd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED && log_should("inbound-accept", 14, 10000))
                log_warn("accept: %s", strerror(errno));
            return;
        }
        unsigned char peer[PEER_LEN];
        s_peer(&sa, peer);
        if (s_peer_count(in, peer) >= INBOUND_MAX_PER_CLIENT) {
            /* One client cannot take the slots (and the DATA budget) every
             * other MTA needs. */
            s_refuse(fd, "421 4.7.0 Too many connections from your address, try again later\r\n");
            continue;
        }
        int slot = -1;
        for (int i = 0; i < INBOUND_MAX_CONNS && slot < 0; i++)
            if (!in->sess[i])
                slot = i;
        sess_t *s = slot >= 0 ? calloc(1, sizeof *s) : NULL;
        if (s) {
            s->fd = fd;
            s->in = sbuf_new(1024);
            s->out = sbuf_new(512);
        }
        if (!s || !s->in || !s->out) {
            if (s) {
                s->fd = -1;
                s_sess_free(s);
            }
            s_refuse(fd, "421 4.3.2 Too many connections, try again later\r\n");
            continue;
        }
        memcpy(s->peer, peer, PEER_LEN);
        s->slot = slot;
        s->serial = ++in->next_serial;
        s->start_ms = s->last_ms = mesh_now_ms();
        sbuf_appendf(s->out, "220 %s ESMTP Postchi return path\r\n", in->host);
        in->sess[slot] = s;
        in->nsess++;
        metric_set(in->m_open, in->nsess);
    }
}

/* Read what is there and handle it: 0, or -1 when the session is over. */
static int s_read(inbound_t *in, sess_t *s)
{
    char buf[READ_CHUNK];
    ssize_t n = recv(s->fd, buf, sizeof buf, 0);
    if (n == 0)
        return -1;
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    s->last_ms = mesh_now_ms();
    if (sbuf_append(s->in, buf, (size_t)n) != 0)
        return -1;
    s_process(in, s);
    return 0;
}

/* Write what is pending: 0, or -1 when the session is over. */
static int s_write(sess_t *s)
{
    size_t len = sbuf_len(s->out);
    while (s->out_off < len) {
        ssize_t n = send(s->fd, sbuf_data(s->out) + s->out_off, len - s->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
        s->out_off += (size_t)n;
    }
    sbuf_reset(s->out);
    s->out_off = 0;
    return s->state == ST_CLOSING ? -1 : 0;
}

/* Database thread: run jobs oldest first until inbound_stop, then leave
 * the rest queued for it to free. */
static void *s_db_thread(void *arg)
{
    inbound_t *in = arg;
    pthread_mutex_lock(&in->lock);
    while (!atomic_load(&in->stopping)) {
        job_t *job = in->pending;
        if (!job) {
            pthread_cond_wait(&in->wakeup, &in->lock);
            continue;
        }
        in->pending = job->next;
        if (!in->pending)
            in->pending_tail = NULL;
        in->npending--;
        metric_set(in->m_queue, in->npending);
        pthread_mutex_unlock(&in->lock);
        s_job_run(in, job);
        pthread_mutex_lock(&in->lock);
        job->next = in->done;
        in->done = job;
        uint64_t one = 1;
        if (write(in->done_fd, &one, sizeof one) < 0) {
            /* Only EAGAIN, at a counter of 2^64 - 2: the poll thread is woken already. */
        }
    }
    pthread_mutex_unlock(&in->lock);
    db_destroy(&in->db);
    return NULL;
}

/* Poll thread: answer the sessions whose jobs came back. A session that
 * went away meanwhile (its slot empty, or holding a newer session) is not
 * there to answer: the result is dropped with its job. */
static void s_jobs_done(inbound_t *in)
{
    uint64_t count;
    if (read(in->done_fd, &count, sizeof count) < 0) {
        /* EAGAIN: a previous turn took the jobs this count was for. */
    }
    pthread_mutex_lock(&in->lock);
    job_t *list = in->done;
    in->done = NULL;
    pthread_mutex_unlock(&in->lock);
    while (list) {
        job_t *job = list;
        list = job->next;
        sess_t *s = in->sess[job->slot];
        if (s && s->serial == job->serial && s->state == ST_WAIT) {
            s_reply(s, job->failed ? "451 4.3.0 Temporary failure, try again later"
                                   : "250 2.0.0 Ok: report received");
            s->state = ST_CMD;
            s->last_ms = mesh_now_ms();
            s_process(in, s); /* commands pipelined after the dot */
        }
        s_job_free(&job);
    }
}

static void *s_thread(void *arg)
{
    inbound_t *in = arg;
    enum { FIXED = 3 }; /* stop pipe, listening socket, done eventfd */
    struct pollfd *pfd = calloc(INBOUND_MAX_CONNS + FIXED, sizeof *pfd);
    int *idx = calloc(INBOUND_MAX_CONNS + FIXED, sizeof *idx);
    if (!pfd || !idx)
        log_fatal("out of memory");
    for (;;) {
        int n = 0;
        pfd[n++] = (struct pollfd){in->wake[0], POLLIN, 0};
        /* Always: past the limit a client is told 421 at once, not left
         * waiting in the backlog. */
        pfd[n++] = (struct pollfd){in->lfd, POLLIN, 0};
        pfd[n++] = (struct pollfd){in->done_fd, POLLIN, 0};
        int64_t now = mesh_now_ms();
        for (int i = 0; i < INBOUND_MAX_CONNS; i++) {
            sess_t *s = in->sess[i];
            if (!s)
                continue;
            /* A parked session is silent because it waits for us. */
            if ((s->state != ST_WAIT && now - s->last_ms > INBOUND_IDLE_MS) ||
                now - s->start_ms > SESSION_MAX_MS) {
                static const char bye[] = "421 4.4.2 Timeout, closing connection\r\n";
                if (send(s->fd, bye, sizeof bye - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
                    /* The client is gone or not reading: closing is all that is left. */
                }
                s_close(in, i);
                continue;
            }
            short ev = 0;
            /* A parked session is still read (so a hang-up frees it at
             * once), up to one command line of what it pipelined. */
            if (s->state == ST_WAIT ? sbuf_len(s->in) < INBOUND_MAX_LINE
                                    : s->state != ST_CLOSING && sbuf_len(s->out) < OUT_HIGH)
                ev |= POLLIN;
            if (sbuf_len(s->out) > s->out_off)
                ev |= POLLOUT;
            idx[n] = i;
            pfd[n++] = (struct pollfd){s->fd, ev, 0};
        }
        if (poll(pfd, (nfds_t)n, 1000) < 0) {
            if (errno == EINTR)
                continue;
            log_error("poll: %s", strerror(errno));
            break;
        }
        if (pfd[0].revents)
            break;
        int64_t turn_ms = mesh_now_ms();
        for (int k = FIXED; k < n; k++) {
            int i = idx[k];
            sess_t *s = in->sess[i];
            short re = pfd[k].revents;
            int gone = 0;
            if (re & (POLLIN | POLLHUP | POLLERR))
                gone = s_read(in, s) != 0;
            if (!gone && sbuf_len(s->out) > s->out_off)
                gone = s_write(s) != 0;
            else if (!gone && s->state == ST_CLOSING)
                gone = 1;
            if (gone)
                s_close(in, i);
        }
        if (pfd[2].revents & POLLIN)
            s_jobs_done(in);
        if (pfd[1].revents & POLLIN)
            s_accept(in);
        /* A message parsed on this thread (bounded by inbound_report_check,
         * but GMime still takes its time) kept every other session from
         * being read: that time is not their silence. */
        int64_t stall = mesh_now_ms() - turn_ms;
        for (int i = 0; stall > STALL_MS && i < INBOUND_MAX_CONNS; i++)
            if (in->sess[i])
                in->sess[i]->last_ms += stall;
    }
    free(pfd);
    free(idx);
    return NULL;
}

static int s_listen(inbound_t *in, const char *bind_addr, int port, sbuf_t *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(bind_addr[0] ? bind_addr : NULL, ps, &hints, &res);
    if (rc != 0) {
        sbuf_appendf(err, "inbound: cannot resolve %s: %s", bind_addr, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0) {
        sbuf_appendf(err, "inbound: cannot listen on %s:%d: %s", bind_addr, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    in->lfd = fd;
    return 0;
}

inbound_t *inbound_start(const config_t *cfg, sbuf_t *err)
{
    static const char *const labels[] = {"kind", NULL};
    metric_family_t *f = metrics_family(METRIC_COUNTER, "postchi_inbound_reports_total",
                                        "Messages received on the return path, by what they were "
                                        "(dsn_hard, dsn_soft, dsn_delayed, arf, unsubscribe, unknown).",
                                        labels, NULL, 0);
    inbound_t *in = calloc(1, sizeof *in);
    if (!in) {
        sbuf_append_str(err, "inbound: out of memory");
        return NULL;
    }
    in->lfd = in->wake[0] = in->wake[1] = in->done_fd = -1;
    pthread_mutex_init(&in->lock, NULL);
    pthread_cond_init(&in->wakeup, NULL);
    in->m_hard = metrics_series(f, (const char *const[]){"dsn_hard", NULL});
    in->m_soft = metrics_series(f, (const char *const[]){"dsn_soft", NULL});
    in->m_delayed = metrics_series(f, (const char *const[]){"dsn_delayed", NULL});
    in->m_arf = metrics_series(f, (const char *const[]){"arf", NULL});
    in->m_unknown = metrics_series(f, (const char *const[]){"unknown", NULL});
    in->m_unsub = metrics_series(f, (const char *const[]){"unsubscribe", NULL});
    in->have_unsub_key = secretbox_key_parse(config_str(cfg, "secret_key"), in->unsub_key) == 0;
    in->m_open = metrics_gauge("postchi_inbound_connections_open",
                               "SMTP sessions open on the return-path listener.");
    in->m_queue = metrics_gauge("postchi_inbound_db_queue",
                                "Reports waiting for the return-path listener's database thread "
                                "(at most 32; past that a report gets 451 4.3.2).");
    in->m_busy = metrics_counter("postchi_inbound_db_busy_total",
                                 "Reports answered 451 4.3.2 because the database queue was full.");
    int port = (int)config_int(cfg, "inbound_port");
    if (port <= 0)
        return in; /* off */
    if (gethostname(in->host, sizeof in->host - 1) != 0 || !in->host[0])
        snprintf(in->host, sizeof in->host, "postchi");
    in->have_key = secretbox_key_parse(config_str(cfg, "secret_key"), in->key) == 0;
    if (!in->have_key)
        log_warn("secret_key is not set: every report will be dropped as unknown");
    in->conninfo = db_conninfo_from_config(cfg);
    in->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!in->conninfo || in->done_fd < 0 || pipe2(in->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        sbuf_append_str(err, "inbound: out of resources");
        inbound_stop(&in);
        return NULL;
    }
    if (s_listen(in, config_str(cfg, "inbound_bind"), port, err) != 0) {
        inbound_stop(&in);
        return NULL;
    }
    if (pthread_create(&in->db_thread, NULL, s_db_thread, in) != 0) {
        sbuf_append_str(err, "inbound: cannot start the database thread");
        inbound_stop(&in);
        return NULL;
    }
    in->db_running = 1;
    if (pthread_create(&in->thread, NULL, s_thread, in) != 0) {
        sbuf_append_str(err, "inbound: cannot start the thread");
        inbound_stop(&in);
        return NULL;
    }
    in->running = 1;
    log_info("listening on %s:%d", config_str(cfg, "inbound_bind"), port);
    return in;
}

static void s_jobs_free(job_t **list_p)
{
    while (*list_p) {
        job_t *job = *list_p;
        *list_p = job->next;
        s_job_free(&job);
    }
}

void inbound_stop(inbound_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    inbound_t *in = *self_p;
    if (in->running) {
        if (write(in->wake[1], "x", 1) < 0)
            log_panic("inbound_stop: cannot wake the thread: %s", strerror(errno));
        pthread_join(in->thread, NULL);
    }
    if (in->db_running) {
        /* The job running finishes (its statement_timeout bounds it), the
         * queued ones are abandoned: their sessions close unanswered below
         * and their senders retry. */
        pthread_mutex_lock(&in->lock);
        atomic_store(&in->stopping, 1);
        pthread_cond_signal(&in->wakeup);
        pthread_mutex_unlock(&in->lock);
        pthread_join(in->db_thread, NULL);
    }
    s_jobs_free(&in->pending);
    s_jobs_free(&in->done);
    for (int i = 0; i < INBOUND_MAX_CONNS; i++)
        if (in->sess[i])
            s_close(in, i);
    if (in->lfd >= 0)
        close(in->lfd);
    if (in->wake[0] >= 0)
        close(in->wake[0]);
    if (in->wake[1] >= 0)
        close(in->wake[1]);
    if (in->done_fd >= 0)
        close(in->done_fd);
    db_destroy(&in->db);
    pthread_cond_destroy(&in->wakeup);
    pthread_mutex_destroy(&in->lock);
    free(in->conninfo);
    OPENSSL_cleanse(in->key, sizeof in->key);
    free(in);
    *self_p = NULL;
}
