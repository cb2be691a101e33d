/*
 * actor_tenant - one actor per organization ("tenant/<organization id>")
 * that takes trigger messages for the organization's event outbox and
 * dispatches the events they name.
 *
 * How it is used: an API handler commits an events row together with the
 * change it records, then sends a one-way message to tenant/<org> whose name
 * is the trigger ("list_added", "tag_added", "subscribed", "unsubscribed",
 * "event") and whose body is JSON naming the row(s):
 *   {"event_id": 42, ...}                                    one row
 *   {"first_event_id": 40, "last_event_id": 49, "count": 8}  a bulk change
 * The actor marks the rows dispatched (UPDATE ... RETURNING) and hands each
 * to s_match_flows. The sweeper (sweeper.c) re-sends rows whose message was
 * lost; "AND dispatched_at IS NULL" makes a second delivery a no-op, so each
 * row is dispatched once however often it is announced.
 *
 * "expand" {"batch_id"} writes the next step of a bulk send
 * (messages_expand, its own transaction), wakes the mailers (domain and
 * shard) it queued rows for, and sends itself "expand" again until the batch is
 * whole, so other triggers of the organization interleave with a long
 * expansion. A lost "expand" is re-sent by the sweeper; a repeated one
 * writes nothing twice (the step locks the batch and moves its cursor).
 *
 * A request named "stats" answers with this activation's counters:
 *   {"received": {"list_added": n, ...}, "last_event_id": id|null,
 *    "dispatched_total": n}
 * A trigger sent as a request (corr != 0) is answered {"dispatched": n}.
 *
 * What can go wrong: a malformed body or an unknown trigger name returns -1
 * (a request gets an ERROR reply "handler_failed"; nothing is marked).
 * PostgreSQL unreachable or a failed UPDATE also returns -1 with nothing
 * marked, so the sweeper redelivers later.
 *
 * Security: tenancy comes from the actor's key alone. The body only names
 * ids; every statement is filtered by organization_id = key, so a body that
 * names another organization's event marks nothing.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "actor.h"
#include "log.h"
#include "metrics.h"
#include "messages.h"

/* Trigger names this actor accepts; received[] is indexed the same way. */
static const char *const s_triggers[] = {"list_added", "tag_added", "subscribed", "event",
                                         "unsubscribed"};
#define TRIGGER_COUNT (sizeof s_triggers / sizeof s_triggers[0])

typedef struct {
    uint64_t received[TRIGGER_COUNT]; /* triggers handled, by name */
    int64_t last_event_id;            /* highest id this activation marked, 0 for none */
    uint64_t dispatched_total;        /* rows this activation marked */
} tenant_state_t;

/* The rows one trigger names: ids first..last (equal for one event). */
typedef struct {
    int64_t first; /* lowest id, >= 1 */
    int64_t last;  /* highest id, >= first */
} event_range_t;

/* 1 when s is a canonical textual uuid (8-4-4-4-12 hex digits). Checked
 * before any SQL so a bad key is refused here, not by a cast error. */
static int s_is_uuid(const char *s)
{
    static const int dash[] = {8, 13, 18, 23};
    if (strlen(s) != 36)
        return 0;
    for (int i = 0, d = 0; i < 36; i++) {
        if (d < 4 && i == dash[d]) {
            if (s[i] != '-')
                return 0;
            d++;
        } else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
                     (s[i] >= 'A' && s[i] <= 'F'))) {
            return 0;
        }
    }
    return 1;
}

/* Index of the trigger named name[0..len) in s_triggers, or -1. */
static int s_trigger_index(const char *name, size_t len)
{
    for (size_t i = 0; i < TRIGGER_COUNT; i++)
        if (strlen(s_triggers[i]) == len && memcmp(s_triggers[i], name, len) == 0)
            return (int)i;
    return -1;
}

/* A positive JSON integer field, or -1 when absent, not an integer, or < 1. */
static int64_t s_positive(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return -1;
    return (int64_t)json_integer_value(v);
}

/* Parse a trigger body into *r. Either "event_id", or the bulk triple
 * "first_event_id" <= "last_event_id" with 1 <= "count" <= the span (an
 * organization's rows in a range are at most the range). Other fields are
 * allowed (the API may add context) and ignored. 0, or -1 with *why set. */
static int s_parse_body(const void *body, size_t len, event_range_t *r, const char **why)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -1;
    *why = "not a JSON object";
    if (!json_is_object(root))
        goto done;
    int single = json_object_get(root, "event_id") != NULL;
    int bulk = json_object_get(root, "first_event_id") || json_object_get(root, "last_event_id") ||
               json_object_get(root, "count");
    if (single == bulk) {
        *why = "needs event_id, or first_event_id, last_event_id and count";
        goto done;
    }
    if (single) {
        r->first = r->last = s_positive(root, "event_id");
        *why = "event_id must be a positive integer";
        rc = r->first > 0 ? 0 : -1;
        goto done;
    }
    r->first = s_positive(root, "first_event_id");
    r->last = s_positive(root, "last_event_id");
    int64_t count = s_positive(root, "count");
    *why = "first_event_id, last_event_id and count must be positive integers";
    if (r->first < 0 || r->last < 0 || count < 0)
        goto done;
    *why = "first_event_id is after last_event_id";
    if (r->first > r->last)
        goto done;
    *why = "count is larger than the id range";
    if ((uint64_t)count - 1 > (uint64_t)(r->last - r->first))
        goto done;
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* Hook for flow matching (a later issue): called once for each event row
 * this activation marked dispatched, in id order, after the UPDATE
 * committed. It will find the organization's flows whose trigger matches
 * name (and the row's payload) and start runs for them. Until then it does
 * nothing: the row is recorded as dispatched, which is what the outbox
 * needs. Must not fail the message: the row is already marked. */
static void s_match_flows(actor_ctx_t *ctx, tenant_state_t *s, int64_t event_id, const char *name)
{
    (void)ctx;
    (void)s;
    (void)event_id;
    (void)name;
}

/* Mark the organization's undispatched rows in r dispatched and hand each
 * to s_match_flows. 0 with *marked set, or -1 (nothing marked). */
static int s_dispatch(actor_ctx_t *ctx, tenant_state_t *s, const event_range_t *r, long *marked)
{
    db_t *db = actor_db(ctx);
    if (!db)
        return -1;
    char first[24], last[24];
    snprintf(first, sizeof first, "%" PRId64, r->first);
    snprintf(last, sizeof last, "%" PRId64, r->last);
    const char *params[] = {actor_key(ctx), first, last};
    sbuf_t *err = sbuf_new(128);
    /* Ordered in a CTE so flows see events in the order they happened. */
    db_result_t *res =
        db_query(db,
                 "WITH marked AS (UPDATE events SET dispatched_at = now()"
                 " WHERE organization_id = $1 AND id BETWEEN $2::bigint AND $3::bigint"
                 " AND dispatched_at IS NULL RETURNING id, name)"
                 " SELECT id, name FROM marked ORDER BY id",
                 3, params, err);
    if (!res) {
        if (log_should("tenant-dispatch", 15, 10000))
            log_error("cannot mark events org=%s: %s", actor_key(ctx),
                      err ? sbuf_data(err) : "out of memory");
        sbuf_destroy(&err);
        return -1;
    }
    sbuf_destroy(&err);
    int n = db_result_rows(res);
    for (int i = 0; i < n; i++) {
        const char *id = db_result_get(res, i, 0);
        int64_t v = id ? strtoll(id, NULL, 10) : 0;
        if (v > s->last_event_id)
            s->last_event_id = v;
        s_match_flows(ctx, s, v, db_result_get(res, i, 1));
    }
    db_result_free(&res);
    s->dispatched_total += (uint64_t)n;
    *marked = n;
    return 0;
}

static metric_t *s_rows_written;  /* bulk expansion rows written on this worker */
static metric_t *s_steps_failed;  /* bulk expansion steps rolled back */

void actor_tenant_metrics(void)
{
    s_rows_written = metrics_counter("postchi_worker_bulk_rows_written_total",
                                     "Rows bulk sends' expansion steps wrote (suppressed included).");
    s_steps_failed = metrics_counter("postchi_worker_bulk_steps_failed_total",
                                     "Bulk expansion steps rolled back (retried by the sweeper).");
}

/* One step of a bulk send: see the header. 0, or -1 (nothing written; the
 * sweeper announces the batch again). */
static int s_expand(actor_ctx_t *ctx, const envelope_t *msg)
{
    json_t *root = json_loadb(msg->body, msg->body_len, JSON_REJECT_DUPLICATES, NULL);
    const char *batch = json_string_value(json_object_get(root, "batch_id"));
    if (!batch || !s_is_uuid(batch)) {
        if (log_should("tenant-bad-expand", 17, 10000))
            log_warn("refusing expand org=%s: the body needs a batch_id uuid", actor_key(ctx));
        json_decref(root);
        return -1;
    }
    db_t *db = actor_db(ctx);
    sbuf_t *err = sbuf_new(128);
    messages_step_t step = {0};
    int rc = db && err ? 0 : -1;
    if (rc == 0 && (db_exec(db, "BEGIN", 0, NULL, err) != 0 ||
                    db_exec(db, "SET LOCAL statement_timeout = '60s'", 0, NULL, err) != 0 ||
                    messages_expand(db, actor_key(ctx), batch, &step, err) != 0 ||
                    db_exec(db, "COMMIT", 0, NULL, err) != 0)) {
        db_exec(db, "ROLLBACK", 0, NULL, NULL);
        rc = -1;
    }
    if (rc != 0) {
        if (s_steps_failed)
            metric_inc(s_steps_failed);
        if (log_should("tenant-expand", 13, 10000))
            log_error("bulk send step not written org=%s batch=%s (the sweeper retries): %s",
                      actor_key(ctx), batch, err && sbuf_len(err) ? sbuf_data(err) : "no database");
    } else {
        if (s_rows_written)
            metric_add(s_rows_written, (double)step.written);
        char body[64], addr[320];
        int n = snprintf(body, sizeof body, "{\"batch_id\":\"%s\"}", batch);
        size_t i;
        json_t *d;
        json_array_foreach(step.mailers, i, d) {
            if (!json_is_string(d))
                continue;
            snprintf(addr, sizeof addr, "mailer/%s", json_string_value(d));
            actor_send(ctx, addr, "wake", body, (size_t)n);
        }
        if (!step.done) {
            snprintf(addr, sizeof addr, "tenant/%s", actor_key(ctx));
            actor_send(ctx, addr, "expand", body, (size_t)n);
        }
    }
    messages_step_clear(&step);
    sbuf_destroy(&err);
    json_decref(root);
    return rc;
}

/* Answer "stats". 0 or -1. */
static int s_stats(actor_ctx_t *ctx, const tenant_state_t *s)
{
    json_t *received = json_object();
    for (size_t i = 0; received && i < TRIGGER_COUNT; i++)
        json_object_set_new(received, s_triggers[i], json_integer((json_int_t)s->received[i]));
    json_t *root = json_pack("{s:o?, s:o, s:I}", "received", received, "last_event_id",
                             s->last_event_id ? json_integer(s->last_event_id) : json_null(),
                             "dispatched_total", (json_int_t)s->dispatched_total);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    int rc = text ? actor_reply(ctx, text, strlen(text)) : -1;
    free(text);
    json_decref(root);
    return rc;
}

static int s_activate(actor_ctx_t *ctx, void **state_p)
{
    if (!s_is_uuid(actor_key(ctx))) {
        if (log_should("tenant-key", 10, 10000)) {
            char key[80];
            const char *k = actor_key(ctx);
            log_warn("refusing tenant actor whose key is not a uuid key=%s",
                     log_printable(key, sizeof key, k, strlen(k)));
        }
        return -1;
    }
    *state_p = calloc(1, sizeof(tenant_state_t));
    return *state_p ? 0 : -1;
}

static int s_receive(actor_ctx_t *ctx, void *state, const envelope_t *msg)
{
    tenant_state_t *s = state;
    /* Only sends carry triggers; this actor makes no requests, so a reply
     * or error addressed to it is stray and ignored. */
    if (msg->type != MSG_SEND)
        return 0;
    if (msg->name_len == 5 && memcmp(msg->name, "stats", 5) == 0)
        return msg->corr ? s_stats(ctx, s) : 0;
    if (msg->name_len == 6 && memcmp(msg->name, "expand", 6) == 0)
        return s_expand(ctx, msg);
    int t = s_trigger_index(msg->name, msg->name_len);
    event_range_t r;
    const char *why = "unknown trigger name";
    if (t < 0 || s_parse_body(msg->body, msg->body_len, &r, &why) != 0) {
        if (log_should("tenant-bad-trigger", 18, 10000)) {
            char name[64];
            log_warn("refusing trigger org=%s name=%s: %s", actor_key(ctx),
                     log_printable(name, sizeof name, msg->name, msg->name_len), why);
        }
        return -1;
    }
    long marked = 0;
    if (s_dispatch(ctx, s, &r, &marked) != 0)
        return -1;
    s->received[t]++;
    if (msg->corr == 0)
        return 0;
    char body[48];
    int n = snprintf(body, sizeof body, "{\"dispatched\":%ld}", marked);
    return actor_reply(ctx, body, (size_t)n);
}

static void s_passivate(void *state)
{
    free(state);
}

const actor_kind_t actor_kind_tenant = {"tenant", s_activate, s_receive, s_passivate};
