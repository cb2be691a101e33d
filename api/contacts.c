/*
 * contacts - the /contacts resource: upsert by email, read, list with
 * filters and cursor pagination, patch, delete, batch upsert of up to
 * 10,000 rows, and tagging.
 *
 * Every statement is filtered by the caller's organization and takes its
 * values as parameters; the contact JSON is built by PostgreSQL
 * (json_build_object) so a read is one round trip. Changes run in a
 * transaction with their audit row (the single upsert, the hot write path,
 * writes contact, outbox and audit rows in one statement instead); the
 * trigger outbox rows ('subscribed', 'tag_added') are written by the same
 * statement as the change, and the broker is told after the commit (the
 * sweeper re-drives a lost message).
 *
 * Semantics worth knowing: an upsert merges fields shallowly (stored keys
 * not in the request stay, a JSON null is stored as null); PATCH merges the
 * same way except that a null removes the key. The merged result is held
 * to the caps of one request (100 keys, 16384 bytes), or else to no
 * growth. A batch is an import: it writes no 'subscribed' events (an
 * import of 1,000,000 addresses must not fire 1,000,000 welcome flows) and
 * is audited as one row with its counts.
 * Emails are normalized by core/email_addr (quoted local parts refused).
 *
 * What can go wrong: a PATCH to an email another contact has is a 409 from
 * the unique index; a database failure rolls back and answers 500 without
 * the server's message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "db.h"
#include "email_addr.h"
#include "rest.h"
#include "sbuf.h"

#include "audience.h"

#define FIELDS_MAX_KEYS 100      /* custom fields per request */
#define FIELDS_MAX_BYTES 16384   /* compact JSON of the fields object */
#define FIELD_KEY_MAX 64         /* bytes of one field name */
#define BATCH_MAX 10000          /* rows in one POST /contacts/batch */
#define TAGS_MAX 100             /* tags in one tag/untag call */
#define TAG_NAME_MAX 64          /* bytes of one tag name */
#define PREFIX_MAX EMAIL_ADDR_MAX
#define PAGE_DEFAULT 100
#define PAGE_MAX 1000

static const char *const STATUSES[] = {"subscribed", "unsubscribed", "bounced", "complained",
                                       NULL};
static const char *const CONTACT_KEYS[] = {"email", "status", "fields", NULL};

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
#define CONTACT_JSON(t)                                                                         \
    "json_build_object('id', " t ".id, 'email', " t ".email, 'status', " t ".status, "        \
    "'fields', " t ".fields, 'created_at', " TS(t ".created_at") ", 'updated_at', "           \
    TS(t ".updated_at") ")::text"

/* ---- validation ---- */

/* Where field errors go: the request's collector (single calls) or a batch
 * error list with the row index. */
typedef struct {
    api_req_t *req; /* single request, or NULL */
    json_t *list;   /* batch errors array (borrowed), or NULL */
    size_t index;   /* batch row being checked */
    int count;      /* errors reported through this sink */
} s_sink_t;

static void s_fail(s_sink_t *sink, const char *field, const char *msg)
{
    sink->count++;
    if (sink->list)
        json_array_append_new(sink->list, json_pack("{s:I,s:s,s:s}", "index",
                                                     (json_int_t)sink->index, "field", field,
                                                     "message", msg));
    else
        api_error_add(api_errors(sink->req), field, "%s", msg);
}

/* One contact as a request gives it. */
typedef struct {
    char email[EMAIL_ADDR_MAX + 1]; /* normalized, valid when has_email */
    int has_email;                  /* email was given */
    const char *status;             /* one of STATUSES, or NULL when absent */
    json_t *fields;                 /* borrowed object, or NULL when absent */
} s_contact_in_t;

static int s_key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > FIELD_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

/* Check a "fields" value: object, at most FIELDS_MAX_KEYS well-formed keys,
 * at most FIELDS_MAX_BYTES of compact JSON. */
static void s_check_fields(json_t *f, s_sink_t *sink)
{
    if (!json_is_object(f)) {
        s_fail(sink, "fields", "must be an object");
        return;
    }
    if (json_object_size(f) > FIELDS_MAX_KEYS) {
        s_fail(sink, "fields", "must have at most 100 keys");
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach(f, k, v) {
        if (!s_key_ok(k)) {
            s_fail(sink, "fields", "keys must match [A-Za-z0-9_]{1,64}");
            return;
        }
    }
    if (json_dumpb(f, NULL, 0, JSON_COMPACT) > FIELDS_MAX_BYTES)
        s_fail(sink, "fields", "must be at most 16384 bytes of JSON");
}

#define S_MERGED_TOO_BIG                                                                          \
    "merged into the stored fields this would make more than 100 keys or 16384 bytes of JSON"

/* Keys and compact JSON bytes of a fields object PostgreSQL printed; -1
 * and 0 when it cannot be parsed (out of memory). */
static void s_fields_size(const char *text, long *keys, size_t *bytes)
{
    json_t *f = text ? json_loads(text, 0, NULL) : NULL;
    *keys = f ? (long)json_object_size(f) : -1;
    *bytes = f ? json_dumpb(f, NULL, 0, JSON_COMPACT) : 0;
    json_decref(f);
}

/* An upsert or PATCH merges into the stored fields, so the per-request caps
 * alone let a contact grow without bound. 1 when merged (what the write
 * leaves) is within the caps of one request, or no larger than old (what
 * was stored, NULL for a new contact) in keys and bytes, so a contact
 * stored over the caps before they applied to merges can still be
 * trimmed. Else 0 after a "fields" error: the caller rolls back. */
static int s_merged_ok(api_req_t *req, const char *merged, const char *old)
{
    long keys, old_keys = 0;
    size_t bytes, old_bytes = 0;
    s_fields_size(merged, &keys, &bytes);
    if (old)
        s_fields_size(old, &old_keys, &old_bytes);
    if (keys >= 0 && keys <= FIELDS_MAX_KEYS && bytes <= FIELDS_MAX_BYTES)
        return 1;
    if (keys >= 0 && old && keys <= old_keys && bytes <= old_bytes)
        return 1;
    api_error_add(api_errors(req), "fields", S_MERGED_TOO_BIG);
    return 0;
}

/* Read email/status/fields from obj into in; errors go to sink. Returns the
 * number of errors found. */
static int s_read_contact(json_t *obj, int email_required, s_contact_in_t *in, s_sink_t *sink)
{
    int before = sink->count;
    memset(in, 0, sizeof *in);
    json_t *v = json_object_get(obj, "email");
    if (!v) {
        if (email_required)
            s_fail(sink, "email", "is required");
    } else if (!json_is_string(v)) {
        s_fail(sink, "email", "must be a string");
    } else {
        const char *why = NULL;
        if (email_normalize(json_string_value(v), json_string_length(v), in->email,
                            sizeof in->email, &why) != 0)
            s_fail(sink, "email", why);
        else
            in->has_email = 1;
    }
    v = json_object_get(obj, "status");
    if (v) {
        const char *s = json_string_value(v);
        for (int i = 0; s && STATUSES[i]; i++)
            if (strcmp(s, STATUSES[i]) == 0)
                in->status = STATUSES[i];
        if (!in->status)
            s_fail(sink, "status", "must be one of subscribed, unsubscribed, bounced, complained");
    }
    v = json_object_get(obj, "fields");
    if (v) {
        s_check_fields(v, sink);
        in->fields = v;
    }
    return sink->count - before;
}

/* The JSON body as an object, or NULL after adding a "body" error. */
static json_t *s_body_object(api_req_t *req)
{
    json_t *body = api_body(req);
    if (!json_is_object(body)) {
        api_error_add(api_errors(req), "body", "must be a JSON object");
        return NULL;
    }
    return body;
}

static int s_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

/* 1 when s is an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM)),
 * with every part in range, so PostgreSQL never sees one it refuses. */
static int s_rfc3339_ok(const char *s)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, se, oh, om;
    if (strlen(s) < 20 || !s_digits(s, 4, &y) || s[4] != '-' || !s_digits(s + 5, 2, &mo) ||
        s[7] != '-' || !s_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        !s_digits(s + 11, 2, &h) || s[13] != ':' || !s_digits(s + 14, 2, &mi) || s[16] != ':' ||
        !s_digits(s + 17, 2, &se))
        return 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 59)
        return 0;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 0;
    const char *p = s + 19;
    if (*p == '.') {
        int n = 0;
        while (p[1 + n] >= '0' && p[1 + n] <= '9')
            n++;
        if (n < 1 || n > 9)
            return 0;
        p += 1 + n;
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == '\0';
    if ((*p != '+' && *p != '-') || !s_digits(p + 1, 2, &oh) || p[3] != ':' ||
        !s_digits(p + 4, 2, &om) || oh > 23 || om > 59)
        return 0;
    return p[6] == '\0';
}

/* ---- database helpers ---- */

/* Run sql; on failure roll back (when in_tx), answer the error and store
 * the status in *status. NULL then. Prepared per session: every statement
 * here is fixed text (the list query varies only by which filters are
 * present, a bounded set), and the upsert and lookup are the hot paths. */
static db_result_t *s_query(api_req_t *req, int in_tx, const char *sql, int n,
                            const char *const *params, int *status)
{
    sbuf_t *err = sbuf_new(0);
    db_result_t *res = db_query_prepared(api_db(req), sql, n, params, err);
    if (!res) {
        char state[6];
        snprintf(state, sizeof state, "%s", db_sqlstate(api_db(req)));
        if (in_tx)
            api_tx_rollback(req);
        *status = api_db_error(req, state, err ? sbuf_data(err) : "out of memory");
    }
    sbuf_destroy(&err);
    return res;
}

static int s_begin(api_req_t *req)
{
    if (api_tx_begin(req) == 0)
        return 0;
    return api_db_error(req, db_sqlstate(api_db(req)), "cannot begin a transaction");
}

/* Commit; 0, or the status answered after a failure. */
static int s_commit(api_req_t *req)
{
    if (api_tx_commit(req) == 0)
        return 0;
    char state[6];
    snprintf(state, sizeof state, "%s", db_sqlstate(api_db(req)));
    api_tx_rollback(req);
    return api_db_error(req, state, "commit failed");
}

/* Parse JSON text PostgreSQL built; NULL only when out of memory. */
static json_t *s_parse(const char *text)
{
    return text ? json_loads(text, 0, NULL) : NULL;
}

/* Tell the tenant actor about a committed outbox row. */
static void s_trigger(api_req_t *req, const char *name, const char *event_id, json_t *body)
{
    if (!body)
        return;
    json_object_set_new(body, "event_id", json_integer(strtoll(event_id, NULL, 10)));
    api_trigger(req, name, body);
}

/* ---- POST /contacts ---- */

/* The upsert, its outbox row and its audit row in one statement (atomic
 * without BEGIN/COMMIT): the hottest write path, one round trip. The merged
 * fields are held to the caps of one request by the conflict clause itself:
 * over them (and larger than what was stored, so fields stored over the
 * caps can still be trimmed) the update does not happen, no row comes back,
 * and nothing else is written. Bytes are counted on PostgreSQL's text form
 * less the space it writes after each key's colon and comma, which is
 * about the compact JSON the request cap counts. The audit row has exactly
 * the columns api_audit writes. */
#define S_STR2(x) #x
#define S_STR(x) S_STR2(x)
#define MERGED "(c.fields || EXCLUDED.fields)"
#define FIELDS_TEXT_BYTES(f)                                                                       \
    "(octet_length((" f ")::text) - 2 * (SELECT count(*) FROM jsonb_object_keys(" f ")))"
#define FIELDS_KEYS(f) "(SELECT count(*) FROM jsonb_object_keys(" f "))"
/* The first test is a shortcut for the usual small contact, which spares
 * each updated row of an import the key counts: PostgreSQL prints at least
 * 5 bytes per key ("": 1) and 2 between keys, so 101 keys take at least
 * 707 bytes of text, and 706 bytes is far under the bytes cap. */
#define MERGED_WITHIN_CAPS                                                                         \
    "(octet_length(" MERGED "::text) <= 706"                                                       \
    " OR (" FIELDS_KEYS(MERGED) " <= " S_STR(FIELDS_MAX_KEYS) " AND "                              \
    FIELDS_TEXT_BYTES(MERGED) " <= " S_STR(FIELDS_MAX_BYTES) ")"                                   \
    " OR (" FIELDS_KEYS(MERGED) " <= " FIELDS_KEYS("c.fields") " AND "                             \
    FIELDS_TEXT_BYTES(MERGED) " <= " FIELDS_TEXT_BYTES("c.fields") "))"
static const char SQL_UPSERT[] =
    "WITH old AS (SELECT status FROM contacts WHERE organization_id = $1 AND "
    "lower(email) = lower($2)),"
    " up AS (INSERT INTO contacts AS c (organization_id, email, status, fields)"
    "  VALUES ($1, $2, COALESCE($3, 'subscribed'), $4::jsonb)"
    "  ON CONFLICT (organization_id, lower(email)) DO UPDATE"
    "  SET email = EXCLUDED.email, status = COALESCE($3, c.status),"
    "      fields = c.fields || EXCLUDED.fields, updated_at = now()"
    "  WHERE " MERGED_WITHIN_CAPS
    "  RETURNING c.*, (c.xmax = 0) AS created),"
    " ev AS (INSERT INTO events (organization_id, name, contact_id, payload)"
    "  SELECT $1, 'subscribed', up.id, jsonb_build_object('contact_id', up.id, 'email', up.email)"
    "  FROM up WHERE up.status = 'subscribed'"
    "   AND (up.created OR (SELECT status FROM old) IS DISTINCT FROM 'subscribed')"
    "  RETURNING id),"
    " au AS (INSERT INTO audit_log (organization_id, actor_type, actor_id, action,"
    "   resource_type, resource_id, detail)"
    "  SELECT $1, $5, $6, CASE WHEN up.created THEN 'contact.created' ELSE 'contact.updated' END,"
    "   'contact', up.id::text, $7::jsonb FROM up)"
    " SELECT up.created, (SELECT id FROM ev), " CONTACT_JSON("up") ", up.id FROM up";

static int s_create(api_req_t *req)
{
    json_t *body = s_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, CONTACT_KEYS);
    s_contact_in_t in;
    s_sink_t sink = {.req = req};
    s_read_contact(body, 1, &in, &sink);
    if (api_errors_count(api_errors(req)) > 0)
        return api_invalid(req);

    char *fields = in.fields ? json_dumps(in.fields, JSON_COMPACT) : NULL;
    json_t *audit = json_pack("{s:s,s:s*,s:s}", "email", in.email, "status", in.status, "ip",
                              api_remote_addr(req));
    char *audit_txt = audit ? json_dumps(audit, JSON_COMPACT) : NULL;
    json_decref(audit);
    const char *actor_type = api_actor_type(req), *actor_id = api_actor_id(req);
    const char *p[] = {api_org(req),
                       in.email,
                       in.status,
                       fields ? fields : "{}",
                       actor_type && *actor_type ? actor_type : "system",
                       actor_id && *actor_id ? actor_id : NULL,
                       audit_txt ? audit_txt : "{}"};
    int status = 0;
    db_result_t *res = s_query(req, 0, SQL_UPSERT, 7, p, &status);
    free(fields);
    free(audit_txt);
    if (!res)
        return status;
    if (db_result_rows(res) == 0) {
        /* the conflict clause refused the merge (the only way no row comes
         * back): nothing was written */
        db_result_free(&res);
        api_error_add(api_errors(req), "fields", S_MERGED_TOO_BIG);
        return api_invalid(req);
    }
    int created = strcmp(db_result_get(res, 0, 0), "t") == 0;
    const char *event_id = db_result_get(res, 0, 1);
    json_t *contact = s_parse(db_result_get(res, 0, 2));
    const char *id = db_result_get(res, 0, 3);
    if (event_id)
        s_trigger(req, "subscribed", event_id,
                  json_pack("{s:s,s:s}", "contact_id", id, "email", in.email));
    db_result_free(&res);
    return api_json(req, created ? 201 : 200, contact);
}

/* ---- GET /contacts/{id} ---- */

static int s_get(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "contact");
    const char *p[] = {api_org(req), id};
    int status = 0;
    db_result_t *res =
        s_query(req, 0, "SELECT " CONTACT_JSON("c") " FROM contacts c"
                        " WHERE c.organization_id = $1 AND c.id = $2",
                2, p, &status);
    if (!res)
        return status;
    if (db_result_rows(res) == 0) {
        db_result_free(&res);
        return api_not_found(req, "contact");
    }
    json_t *contact = s_parse(db_result_get(res, 0, 0));
    db_result_free(&res);
    return api_json(req, 200, contact);
}

/* ---- GET /contacts ---- */

/* Append " AND <head>$<n><tail>" where n is the next parameter number; the
 * value goes to params. */
static void s_filter(sbuf_t *sql, const char **params, int *n, const char *head,
                     const char *value, const char *tail)
{
    params[*n] = value;
    (*n)++;
    sbuf_appendf(sql, " AND %s$%d%s", head, *n, tail);
}

/* The LIKE pattern for a prefix: \, % and _ escaped, then %. Caller frees. */
static char *s_like_prefix(const char *prefix)
{
    sbuf_t *b = sbuf_new(strlen(prefix) + 2);
    for (const char *c = prefix; b && *c; c++) {
        if (*c == '\\' || *c == '%' || *c == '_')
            sbuf_append(b, "\\", 1);
        sbuf_append(b, c, 1);
    }
    char *out = NULL;
    if (b && sbuf_append(b, "%", 1) == 0)
        out = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return out;
}

static int s_list(api_req_t *req)
{
    api_errors_t *errs = api_errors(req);
    int limit = 0;
    const char *cursor = NULL;
    api_page(req, PAGE_DEFAULT, PAGE_MAX, &limit, &cursor);

    char cur_ts[64] = "", cur_id[64] = "";
    if (cursor) {
        const char *bar = strchr(cursor, '|');
        size_t tl = bar ? (size_t)(bar - cursor) : 0;
        if (!bar || tl >= sizeof cur_ts || strlen(bar + 1) >= sizeof cur_id) {
            api_error_add(errs, "cursor", "is not a cursor this endpoint made");
        } else {
            memcpy(cur_ts, cursor, tl);
            cur_ts[tl] = '\0';
            snprintf(cur_id, sizeof cur_id, "%s", bar + 1);
            if (!s_rfc3339_ok(cur_ts) || !api_is_uuid(cur_id))
                api_error_add(errs, "cursor", "is not a cursor this endpoint made");
        }
    }
    const char *prefix = api_query(req, "email_prefix");
    if (prefix && (strlen(prefix) > PREFIX_MAX || !api_utf8_ok(prefix)))
        api_error_add(errs, "email_prefix", "must be UTF-8 text of at most 254 bytes");
    const char *st = api_query(req, "status");
    if (st) {
        int ok = 0;
        for (int i = 0; STATUSES[i]; i++)
            ok |= strcmp(st, STATUSES[i]) == 0;
        if (!ok)
            api_error_add(errs, "status",
                          "must be one of subscribed, unsubscribed, bounced, complained");
    }
    const char *list_id = api_query(req, "list_id");
    if (list_id && !api_is_uuid(list_id))
        api_error_add(errs, "list_id", "must be a uuid");
    const char *tag = api_query(req, "tag");
    if (tag && (!*tag || strlen(tag) > TAG_NAME_MAX || !api_utf8_ok(tag)))
        api_error_add(errs, "tag", "must be a tag name of 1 to 64 bytes");
    const char *after = api_query(req, "created_after");
    if (after && !s_rfc3339_ok(after))
        api_error_add(errs, "created_after", "must be an RFC 3339 date-time");
    const char *before = api_query(req, "created_before");
    if (before && !s_rfc3339_ok(before))
        api_error_add(errs, "created_before", "must be an RFC 3339 date-time");
    if (api_errors_count(errs) > 0)
        return api_invalid(req);

    char *like = prefix ? s_like_prefix(prefix) : NULL;
    char limit_txt[16];
    snprintf(limit_txt, sizeof limit_txt, "%d", limit + 1);
    const char *params[10];
    int n = 1;
    params[0] = api_org(req);
    sbuf_t *sql = sbuf_new(1024);
    sbuf_append_str(sql, "SELECT " CONTACT_JSON("c") ", " TS("c.created_at") ", c.id"
                         " FROM contacts c WHERE c.organization_id = $1");
    if (like)
        s_filter(sql, params, &n, "lower(c.email) LIKE lower(", like, ")");
    if (st)
        s_filter(sql, params, &n, "c.status = ", st, "");
    if (list_id)
        s_filter(sql, params, &n,
                 "EXISTS (SELECT 1 FROM list_members m WHERE m.organization_id = $1"
                 " AND m.list_id = ",
                 list_id, "::uuid AND m.contact_id = c.id)");
    if (tag)
        s_filter(sql, params, &n,
                 "EXISTS (SELECT 1 FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id"
                 " WHERE ct.organization_id = $1 AND t.organization_id = $1"
                 " AND t.name = ",
                 tag, " AND ct.contact_id = c.id)");
    if (after)
        s_filter(sql, params, &n, "c.created_at > ", after, "::timestamptz");
    if (before)
        s_filter(sql, params, &n, "c.created_at < ", before, "::timestamptz");
    if (cursor) {
        s_filter(sql, params, &n, "(c.created_at, c.id) > (", cur_ts, "::timestamptz,");
        params[n++] = cur_id;
        sbuf_appendf(sql, " $%d::uuid)", n);
    }
    params[n++] = limit_txt;
    sbuf_appendf(sql, " ORDER BY c.created_at, c.id LIMIT $%d", n);

    int status = 0;
    db_result_t *res = s_query(req, 0, sbuf_data(sql), n, params, &status);
    sbuf_destroy(&sql);
    free(like);
    if (!res)
        return status;
    int rows = db_result_rows(res);
    int shown = rows > limit ? limit : rows;
    json_t *data = json_array();
    for (int i = 0; i < shown; i++)
        json_array_append_new(data, s_parse(db_result_get(res, i, 0)));
    char *next = NULL;
    if (rows > limit) {
        char pos[160];
        snprintf(pos, sizeof pos, "%s|%s", db_result_get(res, shown - 1, 1),
                 db_result_get(res, shown - 1, 2));
        next = api_cursor_make(pos);
    }
    db_result_free(&res);
    return api_page_json(req, data, next);
}

/* ---- PATCH /contacts/{id} ---- */

static const char SQL_PATCH[] =
    "WITH o AS (SELECT id, status, fields FROM contacts WHERE organization_id = $1 AND id = $2"
    "  FOR UPDATE),"
    " up AS (UPDATE contacts c SET email = COALESCE($3, c.email), status = COALESCE($4, c.status),"
    "  fields = (c.fields || $5::jsonb) - ARRAY(SELECT jsonb_array_elements_text($6::jsonb)),"
    "  updated_at = now()"
    "  FROM o WHERE c.id = o.id AND c.organization_id = $1"
    "  RETURNING c.*, o.status AS old_status, o.fields::text AS old_fields),"
    " ev AS (INSERT INTO events (organization_id, name, contact_id, payload)"
    "  SELECT $1, 'subscribed', up.id, jsonb_build_object('contact_id', up.id, 'email', up.email)"
    "  FROM up WHERE up.status = 'subscribed' AND up.old_status <> 'subscribed'"
    "  RETURNING id)"
    " SELECT " CONTACT_JSON("up") ", (SELECT id FROM ev), up.email, up.fields::text,"
    " up.old_fields FROM up";

static int s_patch(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "contact");
    json_t *body = s_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, CONTACT_KEYS);
    s_contact_in_t in;
    s_sink_t sink = {.req = req};
    s_read_contact(body, 0, &in, &sink);
    if (api_errors_count(api_errors(req)) > 0)
        return api_invalid(req);

    /* Split fields into what to set and what to remove (null values). */
    json_t *set = json_object(), *rm = json_array();
    if (in.fields) {
        const char *k;
        json_t *v;
        json_object_foreach(in.fields, k, v) {
            if (json_is_null(v))
                json_array_append_new(rm, json_string(k));
            else
                json_object_set(set, k, v);
        }
    }
    char *set_txt = json_dumps(set, JSON_COMPACT), *rm_txt = json_dumps(rm, JSON_COMPACT);
    json_decref(set);
    json_decref(rm);
    const char *p[] = {api_org(req), id, in.has_email ? in.email : NULL, in.status, set_txt,
                       rm_txt};
    int status = s_begin(req);
    db_result_t *res = status ? NULL : s_query(req, 1, SQL_PATCH, 6, p, &status);
    free(set_txt);
    free(rm_txt);
    if (!res)
        return status;
    if (db_result_rows(res) == 0) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_not_found(req, "contact");
    }
    if (!s_merged_ok(req, db_result_get(res, 0, 3), db_result_get(res, 0, 4))) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_invalid(req);
    }
    json_t *contact = s_parse(db_result_get(res, 0, 0));
    const char *event_id = db_result_get(res, 0, 1);
    json_t *detail = json_object();
    json_t *keys = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) json_array_append_new(keys, json_string(k));
    json_object_set_new(detail, "changed", keys);
    api_audit(req, "contact.updated", "contact", id, detail);
    status = s_commit(req);
    if (status) {
        json_decref(contact);
        db_result_free(&res);
        return status;
    }
    if (event_id)
        s_trigger(req, "subscribed", event_id,
                  json_pack("{s:s,s:s}", "contact_id", id, "email", db_result_get(res, 0, 2)));
    db_result_free(&res);
    return api_json(req, 200, contact);
}

/* ---- DELETE /contacts/{id} ---- */

static int s_delete(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "contact");
    const char *p[] = {api_org(req), id};
    int status = s_begin(req);
    if (status)
        return status;
    db_result_t *res = s_query(
        req, 1, "DELETE FROM contacts WHERE organization_id = $1 AND id = $2 RETURNING email", 2,
        p, &status);
    if (!res)
        return status;
    if (db_result_rows(res) == 0) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_not_found(req, "contact");
    }
    api_audit(req, "contact.deleted", "contact", id,
              json_pack("{s:s}", "email", db_result_get(res, 0, 0)));
    db_result_free(&res);
    status = s_commit(req);
    return status ? status : api_no_content(req);
}

/* ---- POST /contacts/batch ---- */

/* Duplicates inside one batch are collapsed first (last row wins): ON
 * CONFLICT DO UPDATE may not touch a row twice in one statement. Rows with
 * and without a status go through two inserts so "status when given" holds
 * on update; their emails are disjoint after the collapse. The merged
 * fields are capped as for the single upsert, by the same conflict clause,
 * so the import stays one statement: a row it refuses is neither inserted
 * nor updated nor returned, and the last column lists the indexes of the
 * rows left unwritten (an anti-join run only when fewer rows came back
 * than went in: an InitPlan under CASE is evaluated on first use). */
static const char SQL_BATCH[] =
    "WITH r AS (SELECT DISTINCT ON (lower(x.email)) x.i, x.email, x.status,"
    "   COALESCE(x.fields, '{}'::jsonb) AS fields"
    "  FROM jsonb_to_recordset($2::jsonb) AS x(i int, email text, status text, fields jsonb)"
    "  ORDER BY lower(x.email), x.i DESC),"
    " a AS (INSERT INTO contacts AS c (organization_id, email, status, fields)"
    "  SELECT $1, email, status, fields FROM r WHERE status IS NOT NULL"
    "  ON CONFLICT (organization_id, lower(email)) DO UPDATE"
    "  SET email = EXCLUDED.email, status = EXCLUDED.status,"
    "      fields = c.fields || EXCLUDED.fields, updated_at = now()"
    "  WHERE " MERGED_WITHIN_CAPS
    "  RETURNING lower(c.email) AS e, (c.xmax = 0) AS created),"
    " b AS (INSERT INTO contacts AS c (organization_id, email, fields)"
    "  SELECT $1, email, fields FROM r WHERE status IS NULL"
    "  ON CONFLICT (organization_id, lower(email)) DO UPDATE"
    "  SET email = EXCLUDED.email, fields = c.fields || EXCLUDED.fields, updated_at = now()"
    "  WHERE " MERGED_WITHIN_CAPS
    "  RETURNING lower(c.email) AS e, (c.xmax = 0) AS created),"
    " w AS (SELECT e, created FROM a UNION ALL SELECT e, created FROM b)"
    " SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created),"
    "  CASE WHEN count(*) < (SELECT count(*) FROM r) THEN"
    "   (SELECT string_agg(r.i::text, ',' ORDER BY r.i) FROM r"
    "    WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.e = lower(r.email))) END"
    " FROM w";

/* The batch's errors with a "fields" error added for each row index in
 * refused (ascending, comma-separated, from SQL_BATCH; NULL when none),
 * kept in index order. Takes errors and returns the list to use. */
static json_t *s_add_refused(json_t *errors, const char *refused)
{
    if (!refused || !*refused)
        return errors;
    json_t *out = json_array();
    if (!out)
        return errors;
    size_t k = 0, n = json_array_size(errors);
    const char *p = refused;
    while (*p) {
        char *end;
        long i = strtol(p, &end, 10);
        if (end == p)
            break;
        p = *end == ',' ? end + 1 : end;
        while (k < n && json_integer_value(json_object_get(json_array_get(errors, k), "index")) <
                            (json_int_t)i)
            json_array_append(out, json_array_get(errors, k++));
        json_array_append_new(out, json_pack("{s:I,s:s,s:s}", "index", (json_int_t)i, "field",
                                             "fields", "message", S_MERGED_TOO_BIG));
    }
    while (k < n)
        json_array_append(out, json_array_get(errors, k++));
    json_decref(errors);
    return out;
}

static const char *const BATCH_KEYS[] = {"contacts", NULL};

static int s_batch(api_req_t *req)
{
    json_t *body = s_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, BATCH_KEYS);
    json_t *rows = json_object_get(body, "contacts");
    if (!json_is_array(rows))
        api_error_add(api_errors(req), "contacts", "must be an array of contacts");
    else if (json_array_size(rows) == 0 || json_array_size(rows) > BATCH_MAX)
        api_error_add(api_errors(req), "contacts", "must hold 1 to 10000 contacts");
    if (api_errors_count(api_errors(req)) > 0)
        return api_invalid(req);

    json_t *errors = json_array();
    s_sink_t sink = {.list = errors};
    sbuf_t *good = sbuf_new(json_array_size(rows) * 64);
    size_t n_good = 0;
    sbuf_append(good, "[", 1);
    for (size_t i = 0; i < json_array_size(rows); i++) {
        json_t *row = json_array_get(rows, i);
        sink.index = i;
        if (!json_is_object(row)) {
            s_fail(&sink, "contact", "must be an object");
            continue;
        }
        int bad = 0;
        const char *k;
        json_t *v;
        json_object_foreach(row, k, v) {
            int known = 0;
            for (int j = 0; CONTACT_KEYS[j]; j++)
                known |= strcmp(k, CONTACT_KEYS[j]) == 0;
            if (!known) {
                s_fail(&sink, k, "unknown field");
                bad = 1;
            }
        }
        s_contact_in_t in;
        if (s_read_contact(row, 1, &in, &sink) > 0 || bad)
            continue;
        /* The email is safe to paste into JSON: email_normalize allows no
         * quote, backslash or control character, and it is valid UTF-8. */
        sbuf_appendf(good, "%s{\"i\":%zu,\"email\":\"%s\"", n_good ? "," : "", i, in.email);
        if (in.status)
            sbuf_appendf(good, ",\"status\":\"%s\"", in.status);
        if (in.fields) {
            char *f = json_dumps(in.fields, JSON_COMPACT);
            if (f)
                sbuf_appendf(good, ",\"fields\":%s", f);
            free(f);
        }
        sbuf_append(good, "}", 1);
        n_good++;
    }
    sbuf_append(good, "]", 1);

    long created = 0, updated = 0;
    int status = 0;
    if (n_good > 0) {
        status = s_begin(req);
        const char *p[] = {api_org(req), sbuf_data(good)};
        db_result_t *res = status ? NULL : s_query(req, 1, SQL_BATCH, 2, p, &status);
        sbuf_destroy(&good);
        if (!res) {
            json_decref(errors);
            return status;
        }
        created = strtol(db_result_get(res, 0, 0), NULL, 10);
        updated = strtol(db_result_get(res, 0, 1), NULL, 10);
        errors = s_add_refused(errors, db_result_get(res, 0, 2));
        db_result_free(&res);
        api_audit(req, "contact.batch_upserted", "contact", NULL,
                  json_pack("{s:i,s:i,s:i}", "created", (int)created, "updated", (int)updated,
                            "errors", (int)json_array_size(errors)));
        status = s_commit(req);
        if (status) {
            json_decref(errors);
            return status;
        }
    }
    sbuf_destroy(&good);
    return api_json(req, 200,
                    json_pack("{s:I,s:I,s:o}", "created", (json_int_t)created, "updated",
                              (json_int_t)updated, "errors", errors));
}

/* ---- POST/DELETE /contacts/{id}/tags ---- */

static const char *const TAG_KEYS[] = {"tags", NULL};

/* Validate {"tags": [names]}; the names as a JSON array text (caller
 * frees), or NULL after adding errors. */
static char *s_read_tags(api_req_t *req)
{
    json_t *body = s_body_object(req);
    if (!body)
        return NULL;
    api_field_only(req, body, TAG_KEYS);
    json_t *tags = json_object_get(body, "tags");
    if (!json_is_array(tags) || json_array_size(tags) == 0 || json_array_size(tags) > TAGS_MAX) {
        api_error_add(api_errors(req), "tags", "must be an array of 1 to 100 tag names");
        return NULL;
    }
    size_t i;
    json_t *t;
    json_array_foreach(tags, i, t) {
        /* The checks POST /tags makes (aud_field_name): a name this path
         * creates must be one /tags would have accepted. */
        const char *s = json_string_value(t);
        size_t n = s ? json_string_length(t) : 0;
        int ok = n > 0 && n <= TAG_NAME_MAX && strlen(s) == n && strspn(s, " ") < n &&
                 aud_no_controls(s, n);
        if (!ok) {
            api_error_add(api_errors(req), "tags",
                          "item %zu must be a name of 1 to 64 bytes, not only spaces, without "
                          "control characters",
                          i);
            return NULL;
        }
    }
    if (api_errors_count(api_errors(req)) > 0)
        return NULL;
    return json_dumps(tags, JSON_COMPACT);
}

static const char SQL_TAGS_CREATE[] =
    "INSERT INTO tags (organization_id, name)"
    " SELECT DISTINCT $1::uuid, n FROM jsonb_array_elements_text($3::jsonb) AS n"
    " WHERE EXISTS (SELECT 1 FROM contacts WHERE organization_id = $1 AND id = $2)"
    " ON CONFLICT (organization_id, name) DO NOTHING";

/* SQL_TAGS_ATTACH and SQL_UNTAG answer alike for s_tags: no row when the
 * contact is not the organization's, else a row per tag attached or
 * removed (contact id, tag_added event id, its payload, the tag name), or
 * one row of contact id and NULLs when none was. */
static const char SQL_TAGS_ATTACH[] =
    "WITH c AS (SELECT id, email FROM contacts WHERE organization_id = $1 AND id = $2),"
    " att AS (INSERT INTO contact_tags (organization_id, contact_id, tag_id)"
    "  SELECT $1, c.id, t.id FROM c JOIN tags t ON t.organization_id = $1"
    "   AND t.name IN (SELECT jsonb_array_elements_text($3::jsonb))"
    "  ON CONFLICT DO NOTHING RETURNING tag_id),"
    " ev AS (INSERT INTO events (organization_id, name, contact_id, payload)"
    "  SELECT $1, 'tag_added', c.id, jsonb_build_object('contact_id', c.id, 'email', c.email,"
    "   'tag_id', t.id, 'tag', t.name)"
    "  FROM att JOIN tags t ON t.id = att.tag_id CROSS JOIN c RETURNING id, payload)"
    " SELECT c.id, ev.id, ev.payload::text, ev.payload->>'tag' FROM c LEFT JOIN ev ON true"
    " ORDER BY ev.id";

static const char SQL_UNTAG[] =
    "WITH c AS (SELECT id FROM contacts WHERE organization_id = $1 AND id = $2),"
    " d AS (DELETE FROM contact_tags ct USING tags t, c"
    "  WHERE ct.organization_id = $1 AND ct.contact_id = c.id AND t.id = ct.tag_id"
    "   AND t.organization_id = $1 AND t.name IN (SELECT jsonb_array_elements_text($3::jsonb))"
    "  RETURNING t.name)"
    " SELECT c.id, NULL, NULL, d.name FROM c LEFT JOIN d ON true ORDER BY d.name";

/* POST (add 1) or DELETE (add 0) /contacts/{id}/tags: attach the named
 * tags (creating the missing ones, one tag_added event each) or detach
 * them, with an audit row naming the tags that changed. */
static int s_tags(api_req_t *req, int add)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "contact");
    char *names = s_read_tags(req);
    if (!names)
        return api_invalid(req);
    const char *p[] = {api_org(req), id, names};
    int status = s_begin(req);
    db_result_t *res = NULL;
    if (!status && add) {
        res = s_query(req, 1, SQL_TAGS_CREATE, 3, p, &status);
        db_result_free(&res);
    }
    if (!status)
        res = s_query(req, 1, add ? SQL_TAGS_ATTACH : SQL_UNTAG, 3, p, &status);
    free(names);
    if (!res)
        return status;
    int rows = db_result_rows(res);
    if (rows == 0) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_not_found(req, "contact");
    }
    json_t *changed = json_array();
    for (int i = 0; i < rows; i++) {
        const char *name = db_result_get(res, i, 3);
        if (name)
            json_array_append_new(changed, json_string(name));
    }
    if (json_array_size(changed) > 0)
        api_audit(req, add ? "contact.tags_added" : "contact.tags_removed", "contact", id,
                  json_pack("{s:O}", "tags", changed));
    status = s_commit(req);
    if (status || !add) {
        json_decref(changed);
        db_result_free(&res);
        return status ? status : api_no_content(req);
    }
    for (int i = 0; i < rows; i++) {
        const char *event_id = db_result_get(res, i, 1);
        if (event_id)
            s_trigger(req, "tag_added", event_id, s_parse(db_result_get(res, i, 2)));
    }
    db_result_free(&res);
    return api_json(req, 200, json_pack("{s:s,s:o}", "contact_id", id, "added", changed));
}

static int s_tag(api_req_t *req)
{
    return s_tags(req, 1);
}

static int s_untag(api_req_t *req)
{
    return s_tags(req, 0);
}

const api_route_t api_routes_contacts[] = {
    {"POST", "/contacts", s_create, API_SCOPE_FULL, "contacts.upsert", API_IDEMPOTENT},
    {"GET", "/contacts", s_list, API_SCOPE_READ, "contacts.list", 0},
    {"POST", "/contacts/batch", s_batch, API_SCOPE_FULL, "contacts.batch",
     API_BATCH | API_IDEMPOTENT},
    {"GET", "/contacts/{id}", s_get, API_SCOPE_READ, "contacts.get", 0},
    {"PATCH", "/contacts/{id}", s_patch, API_SCOPE_FULL, "contacts.update", 0},
    {"DELETE", "/contacts/{id}", s_delete, API_SCOPE_FULL, "contacts.delete", 0},
    {"POST", "/contacts/{id}/tags", s_tag, API_SCOPE_FULL, "contacts.tag", 0},
    {"DELETE", "/contacts/{id}/tags", s_untag, API_SCOPE_FULL, "contacts.untag", 0},
    {0},
};
