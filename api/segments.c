/*
 * segments - the /segments resource: saved rules (core/rule.h) over an
 * organization's contacts, with a live count and the matching contacts.
 *
 * A rule is validated on save (rule_parse and rule_compile_sql) and a bad
 * one is a 422 on field "rule" whose message is the rule module's path
 * message ("rule.and[2].op: unknown operator 'like'"). Counting and listing
 * compile the stored rule to a parameterized SQL expression over contacts
 * aliased c, always under c.organization_id = $1, so a rule cannot reach
 * another organization (its in_list / has_tag subqueries are tied to the
 * contact's organization too).
 *
 * What can go wrong: a rule can be expensive (a thousand ORed custom field
 * tests over millions of contacts). Each segment query runs in a
 * transaction with SET LOCAL statement_timeout, so it cannot hold an API
 * thread for long; a timeout is a 503 telling the caller to simplify.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "db.h"
#include "rule.h"
#include "sbuf.h"

#include "audience.h"
#include "rest.h"

#define SEGMENT_NAME_MAX 200
#define SEGMENT_TIMEOUT "SET LOCAL statement_timeout = '10s'"

/* Columns of a segment row, in s_segment_json order; the table is aliased s. */
#define SEGMENT_COLS                                                                       \
    "s.id, s.name, s.rule::text, " AUD_TS("s.created_at") ", " AUD_TS("s.updated_at") ", " \
    AUD_US("s.created_at")

/* Columns of a contact row, as contacts.c answers it; aliased c. */
#define CONTACT_COLS                                                                       \
    "c.id, c.email, c.status, c.fields::text, " AUD_TS("c.created_at") ", "                \
    AUD_TS("c.updated_at") ", " AUD_US("c.created_at")

static json_t *s_segment_json(const db_result_t *res, int row)
{
    return json_pack("{s:s, s:s, s:o, s:s, s:s}", "id", db_result_get(res, row, 0), "name",
                     db_result_get(res, row, 1), "rule",
                     aud_json_col(db_result_get(res, row, 2)), "created_at",
                     db_result_get(res, row, 3), "updated_at", db_result_get(res, row, 4));
}

static json_t *s_contact_json(const db_result_t *res, int row)
{
    return json_pack("{s:s, s:s, s:s, s:o, s:s, s:s}", "id", db_result_get(res, row, 0),
                     "email", db_result_get(res, row, 1), "status", db_result_get(res, row, 2),
                     "fields", aud_json_col(db_result_get(res, row, 3)), "created_at",
                     db_result_get(res, row, 4), "updated_at", db_result_get(res, row, 5));
}

/* Validate body's "rule" (required or not) and return its JSON text for
 * storage (caller frees), or NULL: absent (and optional) or a field error
 * added. */
static char *s_rule_text(api_req_t *req, json_t *body, int required)
{
    json_t *json = json_object_get(body, "rule");
    if (!json) {
        if (required)
            api_error_add(api_errors(req), "rule", "is required");
        return NULL;
    }
    sbuf_t *err = sbuf_new(128);
    rule_sql_t sql = {0};
    rule_t *rule = err ? rule_parse(json, err) : NULL;
    char *text = NULL;
    /* Compiling too proves the rule can run (parameter count). */
    if (rule && rule_compile_sql(rule, 2, &sql, err) == 0)
        text = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        api_error_add(api_errors(req), "rule", "%s",
                      err && sbuf_len(err) ? sbuf_data(err) : "could not be stored");
    rule_sql_clear(&sql);
    rule_destroy(&rule);
    sbuf_destroy(&err);
    return text;
}

/* A segment's audit detail: its name and rule (the row is SEGMENT_COLS). */
static void s_segment_detail(const db_result_t *res, json_t *detail)
{
    aud_detail_name(res, detail);
    json_object_set_new(detail, "rule", aud_json_col(db_result_get(res, 0, 2)));
}

/* A segment's row is SEGMENT_COLS (deleted: id and name). */
static const aud_write_t s_created =
    AUD_WRITE("segment", "segment.create", 201, s_segment_json, s_segment_detail);
static const aud_write_t s_updated =
    AUD_WRITE("segment", "segment.update", 200, s_segment_json, s_segment_detail);
static const aud_write_t s_deleted =
    AUD_WRITE("segment", "segment.delete", 204, NULL, aud_detail_name);

/* Read create's (create) or update's name and rule; absent ones stay NULL.
 * 0 with *rule the rule's JSON text or NULL (caller frees), or -1 after
 * adding field errors (nothing to free). */
static int s_fields(api_req_t *req, int create, const char **name, char **rule)
{
    static const char *const allowed[] = {"name", "rule", NULL};
    json_t *body = aud_body_object(req);
    if (body) {
        api_field_only(req, body, allowed);
        aud_field_name(req, body, "name", create, SEGMENT_NAME_MAX, name);
        *rule = s_rule_text(req, body, create);
    }
    if (api_errors_count(api_errors(req))) {
        free(*rule);
        *rule = NULL;
        return -1;
    }
    return 0;
}

static int s_create(api_req_t *req)
{
    const char *name = NULL;
    char *rule = NULL;
    if (s_fields(req, 1, &name, &rule) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), name, rule};
    int rc = aud_write(req, &s_created,
                       "INSERT INTO segments AS s (organization_id, name, rule)"
                       " VALUES ($1, $2, $3::jsonb) RETURNING " SEGMENT_COLS,
                       3, params, NULL, NULL);
    free(rule);
    return rc;
}

static int s_update(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "segment");
    const char *name = NULL;
    char *rule = NULL;
    if (s_fields(req, 0, &name, &rule) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), id, name, rule};
    int rc = aud_write(req, &s_updated,
                       "UPDATE segments AS s SET name = coalesce($3, s.name),"
                       " rule = coalesce($4::jsonb, s.rule), updated_at = now()"
                       " WHERE s.organization_id = $1 AND s.id = $2 RETURNING " SEGMENT_COLS,
                       4, params, NULL, NULL);
    free(rule);
    return rc;
}

static int s_delete(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "segment");
    const char *params[] = {api_org(req), id};
    return aud_write(
        req, &s_deleted,
        "DELETE FROM segments WHERE organization_id = $1 AND id = $2 RETURNING id, name", 2, params,
        NULL, NULL);
}

static int s_index(api_req_t *req)
{
    return aud_page_index(
        req, AUD_INDEX("SELECT " SEGMENT_COLS " FROM segments s WHERE s.organization_id = $1", "s"),
        s_segment_json, 5, 0);
}

/* Open a transaction with the segment time limit, load segment id and
 * compile its rule with parameters from first_param. 0 with *sql filled
 * (and *seg the segment JSON when seg is not NULL), or -1 after answering
 * (404, database error) with the transaction closed and the status in *rc. */
static int s_open(api_req_t *req, const char *id, int first_param, rule_sql_t *sql,
                  json_t **seg, int *rc)
{
    if (!api_is_uuid(id)) {
        *rc = api_not_found(req, "segment");
        return -1;
    }
    if (api_tx_begin(req) != 0) {
        *rc = api_problem(req, 503, "Service Unavailable", "database unavailable");
        return -1;
    }
    sbuf_t *err = sbuf_new(128);
    if (db_exec(api_db(req), SEGMENT_TIMEOUT, 0, NULL, err) != 0) {
        *rc = aud_db_fail(req, 1, err);
        sbuf_destroy(&err);
        return -1;
    }
    const char *params[] = {api_org(req), id};
    db_result_t *res = aud_query_row(req, 1,
                                     "SELECT " SEGMENT_COLS " FROM segments s"
                                     " WHERE s.organization_id = $1 AND s.id = $2",
                                     2, params, "segment", rc);
    if (!res) {
        sbuf_destroy(&err);
        return -1;
    }
    const char *text = db_result_get(res, 0, 2);
    sbuf_reset(err);
    rule_t *rule = rule_parse_text(text, strlen(text), err);
    int ok = rule && rule_compile_sql(rule, first_param, sql, err) == 0;
    rule_destroy(&rule);
    if (!ok) {
        /* Rules are checked on save: this is a rule language change or a
         * hand-edited row. Say which, without the server's details. */
        db_result_free(&res);
        api_tx_rollback(req);
        *rc = api_problem(req, 500, "Stored Rule Invalid",
                          "the segment's stored rule no longer compiles: %s", sbuf_data(err));
        sbuf_destroy(&err);
        return -1;
    }
    if (seg)
        *seg = s_segment_json(res, 0);
    db_result_free(&res);
    sbuf_destroy(&err);
    return 0;
}

/* Parameters for a segment query: fixed ones, then the rule's (caller frees
 * the array, not the strings). NULL when out of memory. */
static const char **s_params(const char *const *fixed, int n_fixed, const rule_sql_t *sql)
{
    const char **params = calloc((size_t)(n_fixed + sql->n_params) + 1, sizeof *params);
    if (!params)
        return NULL;
    for (int i = 0; i < n_fixed; i++)
        params[i] = fixed[i];
    for (int i = 0; i < sql->n_params; i++)
        params[n_fixed + i] = sql->params[i];
    return params;
}

/* Out of memory inside the segment transaction: roll back and say so. */
static int s_oom(api_req_t *req)
{
    api_tx_rollback(req);
    return api_problem(req, 500, "Internal Server Error", "out of memory");
}

static int s_get(api_req_t *req)
{
    rule_sql_t sql = {0};
    json_t *seg = NULL;
    int rc = 0;
    if (s_open(req, api_param(req, "id"), 2, &sql, &seg, &rc) != 0)
        return rc;
    sbuf_t *text = sbuf_new(256);
    const char *fixed[] = {api_org(req)};
    const char **params = s_params(fixed, 1, &sql);
    db_result_t *res = NULL;
    if (text && params &&
        sbuf_appendf(text, "SELECT count(*) FROM contacts c WHERE c.organization_id = $1 AND (%s)",
                     sql.sql) == 0)
        res = aud_query(req, 1, sbuf_data(text), 1 + sql.n_params, params, &rc);
    else
        rc = s_oom(req);
    free(params);
    sbuf_destroy(&text);
    rule_sql_clear(&sql);
    if (!res) {
        json_decref(seg);
        return rc;
    }
    json_object_set_new(seg, "count", json_integer(strtoll(db_result_get(res, 0, 0), NULL, 10)));
    db_result_free(&res);
    api_tx_rollback(req); /* read only */
    return api_json(req, 200, seg);
}

static int s_members(api_req_t *req)
{
    aud_page_t page;
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "segment");
    if (aud_page_open(req, &aud_paging, &page) != 0)
        return api_invalid(req);
    int has_pos = page.pos != NULL, n_fixed = has_pos ? 4 : 2;
    rule_sql_t sql = {0};
    int rc = 0;
    if (s_open(req, id, n_fixed + 1, &sql, NULL, &rc) != 0)
        return rc;
    const char *fixed[] = {api_org(req), page.lim, page.pos, page.id};
    const char **params = s_params(fixed, n_fixed, &sql);
    sbuf_t *text = sbuf_new(512);
    db_result_t *res = NULL;
    if (text && params &&
        sbuf_appendf(text,
                     "SELECT " CONTACT_COLS " FROM contacts c WHERE c.organization_id = $1"
                     "%s AND (%s) ORDER BY c.created_at, c.id LIMIT $2",
                     has_pos ? " AND (c.created_at, c.id) > (" AUD_FROM_US("$3") ", $4::uuid)"
                             : "",
                     sql.sql) == 0)
        res = aud_query(req, 1, sbuf_data(text), n_fixed + sql.n_params, params, &rc);
    else
        rc = s_oom(req);
    free(params);
    sbuf_destroy(&text);
    rule_sql_clear(&sql);
    if (!res)
        return rc;
    /* Read only: ending the transaction cannot lose anything (the result
     * is the client's own copy). */
    api_tx_rollback(req);
    return aud_page_reply(req, &page, &res, s_contact_json, 6, 0);
}

const api_route_t api_routes_segments[] = {
    {"POST", "/segments", s_create, API_SCOPE_FULL, "segments.create", API_IDEMPOTENT},
    {"GET", "/segments", s_index, API_SCOPE_READ, "segments.list", 0},
    {"GET", "/segments/{id}", s_get, API_SCOPE_READ, "segments.get", 0},
    {"PATCH", "/segments/{id}", s_update, API_SCOPE_FULL, "segments.update", 0},
    {"DELETE", "/segments/{id}", s_delete, API_SCOPE_FULL, "segments.delete", 0},
    {"GET", "/segments/{id}/contacts", s_members, API_SCOPE_READ, "segments.contacts", 0},
    {0},
};
