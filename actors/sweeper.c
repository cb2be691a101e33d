/*
 * sweeper - see sweeper.h.
 *
 * How: one thread per worker with its own mesh client and its own
 * PostgreSQL connection, so neither the worker's I/O thread nor its pool
 * ever waits on a sweep. Each round, a sweeper that is not yet the leader
 * tries pg_try_advisory_lock; the lock is session-level and kept, so the
 * leader stays the leader until its connection or process ends, and one
 * worker sweeps at a time. The leader selects the oldest undispatched rows
 * (created more than SWEEP_AGE ago, so it does not race the API's own
 * message) and sends each to tenant/<org> as a one-way message named after
 * the event, body {"event_id": id}. It marks nothing: the tenant actor does,
 * with "AND dispatched_at IS NULL", so a message lost again is simply sent
 * again next round and a duplicate marks nothing.
 *
 * What can go wrong: PostgreSQL down (the round is skipped and the
 * connection retried next round; the lock goes with the session, another
 * worker may take it); the broker unreachable (rounds are skipped until the
 * client hears it); a full pipe (the round stops, the rest go next round);
 * a database without the events table (logged, at most every minute). An
 * event row whose name the tenant actor refuses stays undispatched and is
 * re-sent every round; postchi_worker_outbox_pending shows it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "log.h"
#include "mailer_shard.h"
#include "mesh_client.h"
#include "mesh_peer.h"
#include "metrics.h"
#include "sweeper.h"

/* The advisory lock key: "postchiS" in ASCII (migrate uses "postchiM"). */
#define SWEEP_LOCK_KEY "8101821198383999315"
/* Rows younger than this are left to the API's own message. */
#define SWEEP_AGE "3 seconds"
/* Rows re-sent per round at most. */
#define SWEEP_BATCH "1000"
/* Growth below this many pages (8 kB each), or rows, is not worth an ANALYZE. */
#define GROWN_MIN_PAGES "8"
#define GROWN_MIN_ROWS "100"
/* How often the thread looks at its stop flag while idle. */
#define STOP_POLL_MS 100
/* Retry delay while the broker has not been heard yet. */
#define NOT_READY_MS 250

struct sweeper {
    pthread_t thread;      /* the sweeping thread */
    int started;           /* thread was created (join it) */
    atomic_int stopping;   /* set by sweeper_stop */
    char *conninfo;        /* PostgreSQL connection string */
    mesh_client_t *client; /* own broker connection (used by the thread only) */
    db_t *db;              /* own PostgreSQL connection (thread only), or NULL */
    int leader;            /* this session holds the advisory lock */
    metric_t *m_redriven;  /* events re-sent */
    metric_t *m_pending;   /* undispatched rows past SWEEP_AGE at the last sweep */
    metric_t *m_woken;     /* mailer wake-ups sent for due messages */
    metric_t *m_mail[4];   /* the mail outbox by status (OUTBOX_STATUSES order) */
    metric_t *m_lag;       /* seconds the oldest due row has waited */
    int64_t mail_at;       /* when the mail outbox was last counted (ms) */
    char max_age[32];      /* delivery_max_age_s as text */
    char due_from[256];    /* the due walk starts at this domain ("": the first) */
    int64_t cut_since;     /* ms: cut off from the broker since (0: connected) */
    metric_t *m_analyzed;  /* tables analyzed because they outgrew their statistics */
};

/* The mail outbox counted for the gauges, every OUTBOX_COUNT_MS by the
 * leader: each part through the partial index of its status (the queue,
 * the leases, the schedule), so the cost follows what waits, not the
 * history. Counted in PostgreSQL, not in the engines: a worker's engine
 * holds at most delivery_backlog rows of a domain, so under backpressure
 * its own queue gauge stays flat while this one grows. */
#define OUTBOX_COUNT_MS 10000
static const char *const OUTBOX_STATUSES[] = {"queued", "deferred", "sending", "scheduled", NULL};
static const char s_mail_count[] =
    "SELECT count(*) FILTER (WHERE s = 'queued'), count(*) FILTER (WHERE s = 'deferred'),"
    " count(*) FILTER (WHERE s = 'sending'), count(*) FILTER (WHERE s = 'scheduled'),"
    " coalesce(greatest(extract(epoch FROM now() - min(due)), 0), 0) FROM ("
    " SELECT status AS s, next_attempt_at AS due FROM messages"
    "  WHERE status IN ('queued', 'deferred')"
    " UNION ALL SELECT 'sending', NULL FROM messages"
    "  WHERE lease_until IS NOT NULL AND status = 'sending'"
    " UNION ALL SELECT 'scheduled', NULL FROM messages WHERE status = 'scheduled') q";

/* The rows to re-send, grouped by organization and in id order within one;
 * the window count is every such row, not just this batch (for the gauge). */
static const char s_select[] =
    "SELECT id, organization_id, name, total FROM ("
    " SELECT id, organization_id, name, count(*) OVER () AS total FROM events"
    " WHERE dispatched_at IS NULL AND created_at < now() - interval '" SWEEP_AGE "'"
    " ORDER BY id LIMIT " SWEEP_BATCH ") s"
    " ORDER BY organization_id, id";

/* Have a usable connection, and the lock: 1 when this sweeper may sweep,
 * 0 when it may not (no database, or another worker leads). */
static int s_lead(sweeper_t *self)
{
    self->cut_since = 0;
    if (self->db && !db_usable(self->db)) {
        db_destroy(&self->db); /* the lock went with the old session */
        self->leader = 0;
    }
    sbuf_t *err = sbuf_new(128);
    if (!self->db) {
        self->db = db_connect(self->conninfo, 0, err);
        if (!self->db) {
            if (log_should("sweeper-connect", 15, 60000))
                log_error("%s", err ? sbuf_data(err) : "out of memory");
            sbuf_destroy(&err);
            return 0;
        }
    }
    if (!self->leader) {
        const char *key[] = {SWEEP_LOCK_KEY};
        db_result_t *res =
            db_query(self->db, "SELECT pg_try_advisory_lock($1::bigint)", 1, key, err);
        const char *v = res ? db_result_get(res, 0, 0) : NULL;
        self->leader = v && strcmp(v, "t") == 0;
        if (!res && log_should("sweeper-lock", 12, 60000))
            log_error("cannot try the sweeper lock: %s", err ? sbuf_data(err) : "out of memory");
        if (self->leader)
            log_info("this worker now sweeps the outbox");
        db_result_free(&res);
    }
    sbuf_destroy(&err);
    return self->leader;
}

/* Send one row to its tenant actor. 0, 1 when the row cannot be sent at all
 * (skipped), -1 when the pipe is full (stop the round). */
static int s_resend(sweeper_t *self, sbuf_t *target, sbuf_t *body, const char *id, const char *org,
                    const char *name)
{
    sbuf_reset(target);
    sbuf_reset(body);
    if (sbuf_appendf(target, "tenant/%s", org) != 0 ||
        sbuf_appendf(body, "{\"event_id\":%s}", id) != 0)
        return -1;
    if (mesh_client_send(self->client, sbuf_data(target), name, sbuf_data(body), sbuf_len(body)) ==
        0)
        return 0;
    if (errno == EAGAIN)
        return -1;
    if (log_should("sweeper-send", 12, 60000))
        log_error("cannot re-send event id=%s: %s", id, strerror(errno));
    return 1;
}

/* The mail outbox gauges: counted by the leader, 0 elsewhere, so a sum
 * over workers is the whole outbox. A failed count keeps the last values. */
static void s_mail_gauges(sweeper_t *self)
{
    if (!self->leader) {
        for (int i = 0; OUTBOX_STATUSES[i]; i++)
            metric_set(self->m_mail[i], 0);
        metric_set(self->m_lag, 0);
        return;
    }
    int64_t now = mesh_now_ms();
    if (self->mail_at && now - self->mail_at < OUTBOX_COUNT_MS)
        return;
    self->mail_at = now;
    sbuf_t *err = sbuf_new(128);
    db_result_t *res = err ? db_query(self->db, s_mail_count, 0, NULL, err) : NULL;
    if (res && db_result_rows(res) == 1) {
        for (int i = 0; OUTBOX_STATUSES[i]; i++)
            metric_set(self->m_mail[i], strtod(db_result_get(res, 0, i), NULL));
        metric_set(self->m_lag, strtod(db_result_get(res, 0, 4), NULL));
    } else if (log_should("sweeper-count", 13, 60000)) {
        log_error("cannot count the mail outbox: %s", err ? sbuf_data(err) : "out of memory");
    }
    db_result_free(&res);
    sbuf_destroy(&err);
}

/* Tables that at least doubled since the planner last measured them.
 * PostgreSQL caches plans (the foreign-key checks' above all, for the life
 * of a connection) and believes a table's size from its last VACUUM or
 * ANALYZE: a table measured while small gets a sequential scan per check,
 * and a new installation's first big send grows its outbox far faster than
 * autovacuum (one look a minute) comes to measure it again. Measured: the
 * check of message_events' key against messages went from 0.15 to 0.94 ms
 * per row over three bulk steps, a 5,000-row step from 0.2 to 7 s. An
 * ANALYZE here renews the statistics and so drops those cached plans; the
 * doubling rule keeps it to a few per table over its whole growth. Growth
 * is read first from the file's size: a backend reports its row counts up
 * to 10 s late, and a big send's first steps would run on the old plans
 * meanwhile. The file also grows under a transaction not yet committed,
 * whose rows ANALYZE does not count, so the row counts are read too: once
 * they arrive they double-check what such an early ANALYZE measured. */
static const char s_grown[] =
    "SELECT format('ANALYZE %I.%I', s.schemaname, s.relname), s.relname, c.relpages, p.now,"
    " greatest(c.reltuples, 0)::bigint, s.n_live_tup"
    " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid,"
    " LATERAL (SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint AS now) p"
    " WHERE s.schemaname = current_schema()"
    " AND (p.now >= 2 * greatest(c.relpages, 0) + " GROWN_MIN_PAGES
    "  OR s.n_live_tup >= 2 * greatest(c.reltuples, 0) + " GROWN_MIN_ROWS ")"
    " ORDER BY p.now DESC LIMIT 8";
/* The lock ANALYZE needs is the one autovacuum holds while it works on the
 * table: waiting for it would stall the sweeper, and autovacuum's own
 * ANALYZE does the job anyway. */
static const char s_analyze_begin[] =
    "BEGIN; SET LOCAL lock_timeout = '200ms'; SET LOCAL statement_timeout = '60s'";

static void s_grown_round(sweeper_t *self)
{
    sbuf_t *err = sbuf_new(128);
    db_result_t *res = err ? db_query(self->db, s_grown, 0, NULL, err) : NULL;
    if (!res) {
        if (log_should("sweeper-grown", 13, 60000))
            log_error("cannot read table sizes: %s", err ? sbuf_data(err) : "out of memory");
        goto done;
    }
    for (int i = 0; i < db_result_rows(res); i++) {
        const char *table = db_result_get(res, i, 1);
        sbuf_reset(err);
        int ok = db_exec_script(self->db, s_analyze_begin, err) == 0 &&
                 db_exec(self->db, db_result_get(res, i, 0), 0, NULL, err) == 0 &&
                 db_exec(self->db, "COMMIT", 0, NULL, err) == 0;
        if (!ok) {
            db_exec(self->db, "ROLLBACK", 0, NULL, NULL);
            if (log_should("sweeper-analyze", 15, 60000))
                log_warn("cannot analyze %s (autovacuum will): %s", table, sbuf_data(err));
            continue;
        }
        metric_inc(self->m_analyzed);
        log_info("analyzed %s: %s pages and %s rows now, %s and %s when last measured", table,
                 db_result_get(res, i, 3), db_result_get(res, i, 5), db_result_get(res, i, 2),
                 db_result_get(res, i, 4));
    }
done:
    db_result_free(&res);
    sbuf_destroy(&err);
}

/* One round: when leading, re-send up to SWEEP_BATCH undispatched rows. */
static void s_round(sweeper_t *self)
{
    if (!s_lead(self)) {
        metric_set(self->m_pending, 0); /* the leader reports the backlog */
        return;
    }
    sbuf_t *err = sbuf_new(128), *target = sbuf_new(64), *body = sbuf_new(64);
    db_result_t *res = err && target && body ? db_query(self->db, s_select, 0, NULL, err) : NULL;
    if (!res) {
        if (log_should("sweeper-select", 14, 60000))
            log_error("cannot read the outbox: %s", err ? sbuf_data(err) : "out of memory");
        goto done;
    }
    int n = db_result_rows(res), sent = 0;
    const char *total = n > 0 ? db_result_get(res, 0, 3) : "0";
    for (int i = 0; i < n; i++) {
        const char *id = db_result_get(res, i, 0), *org = db_result_get(res, i, 1);
        const char *name = db_result_get(res, i, 2);
        int rc = s_resend(self, target, body, id, org, name);
        if (rc < 0) {
            if (log_should("sweeper-full", 12, 60000))
                log_warn("broker pipe full: %d of %d events re-sent this round", sent, n);
            break;
        }
        if (rc == 0)
            sent++;
    }
    metric_add(self->m_redriven, (double)sent);
    metric_set(self->m_pending, strtod(total ? total : "0", NULL));
    if (sent > 0)
        log_info("re-sent %d undispatched events (pending %s)", sent, total ? total : "0");
done:
    db_result_free(&res);
    sbuf_destroy(&err);
    sbuf_destroy(&target);
    sbuf_destroy(&body);
}

/* Messages: scheduled rows whose time came become queued, 'sending' rows
 * whose lease ran out (a worker died mid-send) become deferred (or failed,
 * with their event, once due longer than delivery_max_age_s: a message
 * whose sending kills its worker must not be re-driven forever), and the
 * mailers of those destinations are woken. */
static const char s_mail_update[] =
    "WITH promoted AS (UPDATE messages SET status = 'queued', updated_at = now()"
    " WHERE status = 'scheduled' AND send_at <= now() RETURNING recipient_domain),"
    " expired AS (UPDATE messages SET status = CASE WHEN greatest(created_at, send_at)"
    "   < now() - make_interval(secs => $1::int) THEN 'failed' ELSE 'deferred' END,"
    "   lease_until = NULL, updated_at = now()"
    "   WHERE status = 'sending' AND lease_until < now()"
    "   RETURNING id, organization_id, recipient_domain, status),"
    " ev AS (INSERT INTO message_events (organization_id, message_id, type, detail)"
    "   SELECT organization_id, id, 'failed', jsonb_build_object('reason',"
    "   'its lease ran out after it had been due longer than delivery_max_age_s')"
    "   FROM expired WHERE status = 'failed')"
    " SELECT DISTINCT d FROM (SELECT recipient_domain AS d FROM promoted"
    " UNION ALL SELECT recipient_domain FROM expired WHERE status = 'deferred') x LIMIT 1000";

/* Then every destination with due rows (queued or deferred, past a short
 * grace so the API's own wake-up goes first) gets a "wake" for its mailer
 * actors, which claim the rows themselves; a lost wake-up costs one round,
 * never a message. The destinations are found by skipping through the
 * queue index one recipient domain at a time (a loose index scan), each
 * asked for one due row: a query over due rows, however limited, would
 * see only the domain of a big send's 100,000 due rows and never the
 * deferred retries of the others. At most DUE_WALK domains per round,
 * from $1 on (where the last round stopped), so a queue of very many
 * domains is walked over several rounds. Returns the due domains and the
 * last one looked at, with its rank. */
#define DUE_WALK 5000
#define DUE_WAKE 1000 /* domains woken per round at most */
static const char s_due_select[] =
    "WITH RECURSIVE doms(d, n) AS ("
    "  (SELECT recipient_domain, 1 FROM messages WHERE status IN ('queued', 'deferred')"
    "   AND recipient_domain >= $1 ORDER BY recipient_domain LIMIT 1)"
    "  UNION ALL SELECT (SELECT recipient_domain FROM messages"
    "   WHERE status IN ('queued', 'deferred') AND recipient_domain > doms.d"
    "   ORDER BY recipient_domain LIMIT 1), n + 1 FROM doms"
    "   WHERE doms.d IS NOT NULL AND n < $2::int)"
    " SELECT d, due, n, last FROM (SELECT d, n, max(n) OVER () AS last,"
    "   EXISTS (SELECT 1 FROM messages WHERE status IN ('queued', 'deferred')"
    "   AND recipient_domain = doms.d AND next_attempt_at <= now() - interval '2 seconds') AS due"
    "   FROM doms WHERE d IS NOT NULL) x WHERE due OR n = last ORDER BY n";

/* Send "wake" to every mailer shard of domain; -1 when the pipe is full. */
static int s_wake(sweeper_t *self, const char *domain)
{
    for (int shard = 0; shard < MAILER_SHARDS; shard++) {
        char addr[300];
        mailer_address(addr, sizeof addr, domain, shard);
        if (mesh_client_send(self->client, addr, "wake", "{}", 2) != 0)
            return -1;
        metric_inc(self->m_woken);
    }
    return 0;
}

static void s_mail_round(sweeper_t *self)
{
    sbuf_t *err = sbuf_new(128), *target = sbuf_new(64);
    const char *up[] = {self->max_age};
    db_result_t *res = err && target ? db_query(self->db, s_mail_update, 1, up, err) : NULL;
    if (!res) {
        if (log_should("sweeper-mail", 12, 60000))
            log_error("cannot read the message outbox: %s", err ? sbuf_data(err) : "out of memory");
        goto done;
    }
    int full = 0;
    for (int i = 0; i < db_result_rows(res) && !full; i++)
        full = s_wake(self, db_result_get(res, i, 0)) != 0;
    db_result_free(&res);
    sbuf_reset(err);
    char walk[16];
    snprintf(walk, sizeof walk, "%d", DUE_WALK);
    const char *dp[] = {self->due_from, walk};
    res = full ? NULL : db_query(self->db, s_due_select, 2, dp, err);
    if (!res && !full && log_should("sweeper-due", 11, 60000))
        log_error("cannot read the due destinations: %s", sbuf_data(err));
    if (res) {
        int rows = db_result_rows(res), woken = 0;
        /* Where the next round starts: after the last domain looked at when
         * the walk stopped at its bound, else from the beginning. */
        char next[256] = "";
        for (int i = 0; i < rows; i++) {
            const char *d = db_result_get(res, i, 0);
            if (strcmp(db_result_get(res, i, 1), "t") == 0) {
                if (woken == DUE_WAKE || s_wake(self, d) != 0) {
                    snprintf(next, sizeof next, "%s", d); /* the rest next round, from here */
                    break;
                }
                woken++;
            }
            if (i == rows - 1 && atoi(db_result_get(res, i, 2)) >= DUE_WALK)
                snprintf(next, sizeof next, "%s", d);
        }
        snprintf(self->due_from, sizeof self->due_from, "%s", next);
    }
    db_result_free(&res);
    sbuf_reset(err);
    /* Bulk sends whose expansion stopped moving (an "expand" lost with its
     * worker): announced again. A step in progress holds its batch row
     * locked and is skipped; touching updated_at spaces the announcements. */
    res = db_query(self->db,
                   "UPDATE batches SET updated_at = now() WHERE id IN (SELECT id FROM batches"
                   " WHERE status = 'expanding' AND updated_at < now() - interval '5 seconds'"
                   " LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id, organization_id",
                   0, NULL, err);
    if (!res && log_should("sweeper-expand", 14, 60000))
        log_error("cannot read the bulk sends being expanded: %s", sbuf_data(err));
    for (int i = 0; res && i < db_result_rows(res); i++) {
        char addr[64], body[64];
        snprintf(addr, sizeof addr, "tenant/%s", db_result_get(res, i, 1));
        int n = snprintf(body, sizeof body, "{\"batch_id\":\"%s\"}", db_result_get(res, i, 0));
        if (mesh_client_send(self->client, addr, "expand", body, (size_t)n) != 0)
            break; /* a later round */
    }
done:
    db_result_free(&res);
    sbuf_destroy(&err);
    sbuf_destroy(&target);
}

/* Cut off from the broker, a leader still holds the lock (its PostgreSQL
 * session is alive) but can wake nothing: past LEADER_CUT_MS it lets the
 * lock go, so a worker that the broker can reach takes over the sweeping
 * (scheduled mail, ended leases, retries). It takes the lock again, when
 * free, once it is back. */
#define LEADER_CUT_MS 10000

static void s_cut_off(sweeper_t *self, int64_t now)
{
    if (!self->cut_since) {
        self->cut_since = now;
        return;
    }
    if (!self->leader || now - self->cut_since < LEADER_CUT_MS || !db_usable(self->db))
        return;
    const char *key[] = {SWEEP_LOCK_KEY};
    db_result_t *res = db_query(self->db, "SELECT pg_advisory_unlock($1::bigint)", 1, key, NULL);
    if (res) {
        self->leader = 0;
        log_warn("cut off from the broker for %d s: another worker may sweep now",
                 LEADER_CUT_MS / 1000);
    } else {
        db_destroy(&self->db); /* ending the session lets the lock go too */
        self->leader = 0;
    }
    db_result_free(&res);
}

static void *s_thread(void *arg)
{
    sweeper_t *self = arg;
    int64_t next = mesh_now_ms();
    while (!atomic_load(&self->stopping)) {
        int64_t now = mesh_now_ms();
        if (now >= next) {
            if (mesh_client_connected(self->client)) {
                s_round(self);
                if (self->leader) {
                    s_mail_round(self);
                    s_grown_round(self);
                }
                s_mail_gauges(self);
                next = mesh_now_ms() + SWEEPER_INTERVAL_MS;
            } else {
                s_cut_off(self, now);
                next = now + NOT_READY_MS;
            }
            now = mesh_now_ms();
        }
        int wait = next - now < STOP_POLL_MS ? (int)(next - now) : STOP_POLL_MS;
        /* Waiting here also keeps the client's heartbeats going and drains
         * errors the broker returns for our sends (no_route while no worker
         * is live): the next round re-sends anyway. */
        mesh_reply_t r;
        if (mesh_client_wait(self->client, wait < 0 ? 0 : wait, &r) < 0)
            usleep(STOP_POLL_MS * 1000);
    }
    return NULL;
}

static void s_free(sweeper_t *self)
{
    mesh_client_destroy(&self->client);
    db_destroy(&self->db); /* ends the session, which releases the lock */
    free(self->conninfo);
    free(self);
}

sweeper_t *sweeper_start(const config_t *cfg, const char *node_id, sbuf_t *err)
{
    sweeper_t *self = calloc(1, sizeof *self);
    if (!self) {
        sbuf_append_str(err, "out of memory");
        return NULL;
    }
    atomic_init(&self->stopping, 0);
    self->m_redriven =
        metrics_counter("postchi_worker_outbox_redriven_total",
                        "Outbox events re-sent to their tenant actor by the sweeper.");
    self->m_pending = metrics_gauge("postchi_worker_outbox_pending",
                                    "Undispatched outbox events older than 3 s at the last sweep "
                                    "(0 on workers that do not hold the sweeper lock).");
    self->m_woken = metrics_counter("postchi_worker_mailer_wakeups_total",
                                    "Mailer actors woken for due messages by the sweeper.");
    static const char *const status_only[] = {"status", NULL};
    metric_family_t *mail = metrics_family(
        METRIC_GAUGE, "postchi_delivery_outbox_messages",
        "Messages in the PostgreSQL outbox not yet finished, by status, counted every 10 s "
        "(0 on workers that do not hold the sweeper lock).",
        status_only, NULL, 0);
    for (int i = 0; OUTBOX_STATUSES[i]; i++) {
        const char *v[] = {OUTBOX_STATUSES[i], NULL};
        self->m_mail[i] = metrics_series(mail, v);
    }
    self->m_lag = metrics_gauge("postchi_delivery_outbox_lag_seconds",
                                "How long the oldest due queued or deferred message has waited "
                                "since it became due, counted every 10 s (0 on workers that do "
                                "not hold the sweeper lock).");
    self->m_analyzed =
        metrics_counter("postchi_worker_tables_analyzed_total",
                        "Tables the sweeper analyzed because they had at least doubled since "
                        "their statistics were taken.");
    self->conninfo = db_conninfo_from_config(cfg);
    snprintf(self->max_age, sizeof self->max_age, "%lld",
             (long long)config_int(cfg, "delivery_max_age_s"));
    char id[160];
    snprintf(id, sizeof id, "%s-sweeper", node_id);
    if (!self->conninfo) {
        sbuf_append_str(err, "out of memory");
        goto fail;
    }
    self->client = mesh_client_new(cfg, id, err);
    if (!self->client)
        goto fail;
    /* pthread_create is a full barrier: the client's socket moves to the
     * new thread, which is its only user from here on. */
    int rc = pthread_create(&self->thread, NULL, s_thread, self);
    if (rc != 0) {
        sbuf_appendf(err, "cannot start the sweeper thread: %s", strerror(rc));
        goto fail;
    }
    self->started = 1;
    return self;
fail:
    s_free(self);
    return NULL;
}

void sweeper_stop(sweeper_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sweeper_t *self = *self_p;
    atomic_store(&self->stopping, 1);
    if (self->started)
        pthread_join(self->thread, NULL);
    s_free(self);
    *self_p = NULL;
}
