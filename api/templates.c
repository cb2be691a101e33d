/*
 * templates - REST resource for email templates and their immutable versions.
 *
 *   POST  /templates               create (version 1)               full
 *   GET   /templates               list, current version, no bodies read
 *   GET   /templates/{id}          one template (?version=N: older)  read
 *   PATCH /templates/{id}          rename / strict / new version     full
 *   POST  /templates/{id}/preview  render against a contact or data  read
 *
 * How: a template row holds the name, the strict flag and the number of its
 * current version; template_versions rows hold subject, html and text and are
 * never updated: a change to any part inserts the next version and moves
 * current_version, so a message that was rendered from version N can always
 * be traced back to the exact text. Every part is compiled with core/tmpl
 * before it is stored (subject and text as plain text, html with escaping),
 * so what is saved always parses. Responses are built by PostgreSQL
 * (json_build_object) in the same statement that reads or writes the rows:
 * one round trip, and one spelling of each field.
 *
 * What can go wrong: a part that does not parse is a 422 with a field error
 * "line L, column C: why"; a duplicate name is a 409; a strict template (or a
 * `| required` filter) with a missing variable fails a preview with a 422 on
 * field "data" naming the part, position and path. Writes run in one
 * transaction with their audit row, so a refused request leaves nothing.
 *
 * Security: every query is parameterized and filtered by the caller's
 * organization; another organization's template or contact is a 404. The
 * preview escapes values in html (tmpl's default) and never in subject or
 * text, which the caller must not treat as HTML.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "db.h"
#include "log.h"
#include "sbuf.h"
#include "tmpl.h"

#include "audience.h"
#include "rest.h"

#define NAME_MAX_BYTES 200
#define SUBJECT_MAX_BYTES 2000

/* A template at a version: t is the templates row, v the version row. */
/* clang-format off */
#define TEMPLATE_JSON                                                                              \
    "json_build_object('id', t.id, 'name', t.name, 'strict', t.strict, 'version', v.version, "     \
    "'current_version', t.current_version, 'subject', v.subject, 'html', v.html, "                 \
    "'text', v.text, 'created_at', " AUD_TS("t.created_at") ", "                                   \
    "'updated_at', " AUD_TS("t.updated_at") ", "                                                   \
    "'version_created_at', " AUD_TS("v.created_at") ")::text"
/* clang-format on */

/* The three template parts, in the order they are stored and rendered. */
static const char *const s_parts[] = {"subject", "html", "text"};
#define PARTS 3

/* ------------------------------------------------------------- helpers -- */

/* "user:<id>" or "api_key:<id>" for template_versions.created_by; caller
 * frees. NULL when out of memory. */
static char *s_created_by(api_req_t *req)
{
    const char *type = api_actor_type(req);
    const char *id = api_actor_id(req);
    size_t n = strlen(type ? type : "") + strlen(id ? id : "") + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s:%s", type ? type : "", id ? id : "");
    return s;
}

/* Names: 1..NAME_MAX_BYTES bytes, no control characters (they end up in
 * lists, logs and exports). */
static void s_check_name(api_req_t *req, const char *name)
{
    if (!*name) {
        api_error_add(api_errors(req), "name", "must not be empty");
        return;
    }
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f) {
            api_error_add(api_errors(req), "name", "must not contain control characters");
            return;
        }
}

/* Compile one part so only templates that parse are stored; adds a field
 * error "line L, column C: why" otherwise. The subject must also stay on
 * one line: it becomes a header. */
static void s_check_part(api_req_t *req, const char *field, const char *src)
{
    if (strcmp(field, "subject") == 0 && strpbrk(src, "\r\n")) {
        api_error_add(api_errors(req), field, "must be a single line (no CR or LF)");
        return;
    }
    tmpl_error_t err;
    tmpl_t *t = tmpl_parse(src, strlen(src), &err);
    if (!t) {
        api_error_add(api_errors(req), field, "line %d, column %d: %s", err.line, err.column,
                      err.message);
        return;
    }
    tmpl_destroy(&t);
}

/* Read the optional ?version= of GET: 0 when absent, the number when
 * valid, -1 after adding a field error. */
static int64_t s_query_version(api_req_t *req)
{
    const char *s = api_query(req, "version");
    if (!s)
        return 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || s[0] == '-' || s[0] == '+' || v < 1 || v > INT32_MAX) {
        api_error_add(api_errors(req), "version", "must be a whole number from 1 to %d", INT32_MAX);
        return -1;
    }
    return v;
}

/* A template change's audit detail: the version the row is at (column 2)
 * and whether the change made it (column 3). */
static void s_version_detail(const db_result_t *res, json_t *detail)
{
    json_object_set_new(detail, "version",
                        json_integer((json_int_t)strtoll(db_result_get(res, 0, 2), NULL, 10)));
    json_object_set_new(detail, "new_version",
                        json_boolean(strcmp(db_result_get(res, 0, 3), "t") == 0));
}

/* The detail a change starts from: the name when it sets one. */
static json_t *s_name_detail(const char *name)
{
    return name ? json_pack("{s:s}", "name", name) : NULL;
}

/* First lock the template (orders concurrent PATCHes; a statement that
 * waited for a row lock would still read the versions with its older
 * snapshot). No row is a 404. */
#define TEMPLATE_LOCK "SELECT 1 FROM templates WHERE id = $1 AND organization_id = $2 FOR UPDATE"

/* Writes return (template JSON, id, version, whether that version is new). */
static const aud_write_t s_created =
    AUD_WRITE_JSON("template", "template.created", 201, s_version_detail, NULL);
static const aud_write_t s_updated =
    AUD_WRITE_JSON("template", "template.updated", 200, s_version_detail, TEMPLATE_LOCK);

/* ---------------------------------------------------------------- create -- */

static int s_create(api_req_t *req)
{
    static const char *const allowed[] = {"name", "subject", "html", "text", "strict", NULL};
    json_t *body = aud_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, allowed);

    const char *name = NULL;
    const char *src[PARTS] = {NULL, "", ""};
    int strict = 0;
    if (api_field_string(req, body, "name", 1, NAME_MAX_BYTES, &name) == 0)
        s_check_name(req, name);
    if (api_field_string(req, body, "subject", 1, SUBJECT_MAX_BYTES, &src[0]) == 0)
        s_check_part(req, "subject", src[0]);
    for (int i = 1; i < PARTS; i++)
        if (api_field_string(req, body, s_parts[i], 0, TMPL_MAX_SOURCE, &src[i]) == 0)
            s_check_part(req, s_parts[i], src[i]);
    api_field_bool(req, body, "strict", 0, &strict);
    if (api_errors_count(api_errors(req)))
        return api_invalid(req);

    char *by = s_created_by(req);
    if (!by)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    /* Both rows in one statement (the version's foreign key is checked at
     * its end); the transaction adds the audit row to it. */
    const char *sql = "WITH t AS (INSERT INTO templates (organization_id, name, strict) "
                      "VALUES ($1, $2, $3::boolean) RETURNING *), "
                      "v AS (INSERT INTO template_versions (organization_id, template_id, "
                      "version, subject, html, text, created_by) "
                      "SELECT t.organization_id, t.id, 1, $4, $5, $6, $7 FROM t RETURNING *) "
                      "SELECT " TEMPLATE_JSON ", t.id, 1, true FROM t JOIN v ON true";
    const char *params[] = {api_org(req), name, strict ? "true" : "false", src[0], src[1],
                            src[2],       by};
    int status = aud_write(req, &s_created, sql, 7, params, s_name_detail(name), NULL);
    free(by);
    return status;
}

/* ------------------------------------------------------------------ list -- */

static int s_list(api_req_t *req)
{
    /* clang-format off */
    return aud_page_rows(req, AUD_ROWS(
        "json_build_object('id', t.id, 'name', t.name, 'strict', t.strict, "
        "'version', t.current_version, 'subject', v.subject, "
        "'created_at', " AUD_TS("t.created_at") ", 'updated_at', " AUD_TS("t.updated_at") ")::text",
        "templates t JOIN template_versions v "
        "ON v.template_id = t.id AND v.version = t.current_version", "t"));
    /* clang-format on */
}

/* ------------------------------------------------------------------- get -- */

static int s_get(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "template");
    int64_t version = s_query_version(req);
    if (version < 0)
        return api_invalid(req);
    char vbuf[24];
    snprintf(vbuf, sizeof vbuf, "%lld", (long long)version);
    const char *sql = "SELECT " TEMPLATE_JSON " FROM templates t JOIN template_versions v "
                      "ON v.template_id = t.id "
                      "AND v.version = coalesce($3::int, t.current_version) "
                      "WHERE t.id = $1 AND t.organization_id = $2";
    const char *params[] = {id, api_org(req), version ? vbuf : NULL};
    return aud_get(req, sql, 3, params, version ? "template version" : "template", aud_row_item);
}

/* ----------------------------------------------------------------- patch -- */

static int s_patch(api_req_t *req)
{
    static const char *const allowed[] = {"name", "subject", "html", "text", "strict", NULL};
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "template");
    json_t *body = aud_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, allowed);

    const char *name = NULL;
    const char *src[PARTS] = {NULL, NULL, NULL};
    size_t max[PARTS] = {SUBJECT_MAX_BYTES, TMPL_MAX_SOURCE, TMPL_MAX_SOURCE};
    int strict = -1;
    if (api_field_string(req, body, "name", 0, NAME_MAX_BYTES, &name) == 0)
        s_check_name(req, name);
    else
        name = NULL;
    for (int i = 0; i < PARTS; i++) {
        if (api_field_string(req, body, s_parts[i], 0, max[i], &src[i]) == 0)
            s_check_part(req, s_parts[i], src[i]);
        else
            src[i] = NULL;
    }
    if (api_field_bool(req, body, "strict", 0, &strict) != 0)
        strict = -1;
    if (api_errors_count(api_errors(req)))
        return api_invalid(req);

    char *by = s_created_by(req);
    if (!by)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    /* After the lock (TEMPLATE_LOCK), one statement merges the given parts
     * over the current version, inserts the next version only when a part
     * really changed (versions are immutable, never updated), and moves the
     * template to it. */
    /* clang-format off */
    const char *sql =
        "WITH cur AS (SELECT t.id, t.current_version, v.subject, v.html, v.text "
        "FROM templates t JOIN template_versions v "
        "ON v.template_id = t.id AND v.version = t.current_version "
        "WHERE t.id = $1 AND t.organization_id = $2), "
        "m AS (SELECT cur.*, coalesce($3, cur.subject) AS s, coalesce($4, cur.html) AS h, "
        "coalesce($5, cur.text) AS x FROM cur), "
        "ins AS (INSERT INTO template_versions (organization_id, template_id, version, "
        "subject, html, text, created_by) "
        "SELECT $2, m.id, m.current_version + 1, m.s, m.h, m.x, $8 FROM m "
        "WHERE (m.s, m.h, m.x) IS DISTINCT FROM (m.subject, m.html, m.text) "
        "RETURNING version, created_at), "
        "t AS (UPDATE templates u SET name = coalesce($6, u.name), "
        "strict = coalesce($7::boolean, u.strict), "
        "current_version = coalesce((SELECT version FROM ins), u.current_version), "
        "updated_at = now() FROM cur WHERE u.id = cur.id RETURNING u.*) "
        "SELECT json_build_object('id', t.id, 'name', t.name, 'strict', t.strict, "
        "'version', t.current_version, 'current_version', t.current_version, "
        "'subject', m.s, 'html', m.h, 'text', m.x, "
        "'created_at', " AUD_TS("t.created_at") ", 'updated_at', " AUD_TS("t.updated_at") ", "
        "'version_created_at', " AUD_TS("coalesce((SELECT created_at FROM ins), "
            "(SELECT created_at FROM template_versions "
            "WHERE template_id = t.id AND version = t.current_version))") ")::text, "
        "t.id, t.current_version, t.current_version <> m.current_version "
        "FROM t JOIN m ON true";
    /* clang-format on */
    const char *params[] = {id,
                            api_org(req),
                            src[0],
                            src[1],
                            src[2],
                            name,
                            strict < 0 ? NULL : strict ? "true" : "false",
                            by};
    int status = aud_write(req, &s_updated, sql, 8, params, s_name_detail(name), NULL);
    free(by);
    return status;
}

/* --------------------------------------------------------------- preview -- */

/* Render the three parts of one version into out (an object) and its
 * warnings array. 0, or -1 after adding a "data" field error (strict
 * missing variable, `| required`, output or step limit) or a problem
 * (*status set) for a stored part that no longer parses. */
static int s_render_parts(api_req_t *req, const char *const *src, int strict, const json_t *root,
                          json_t *out, json_t *warnings, int *status)
{
    tmpl_warnings_t *warn = tmpl_warnings_new();
    sbuf_t *buf = sbuf_new(0);
    int rc = 0, failed = 0;
    if (!warn || !buf) {
        *status = api_problem(req, 500, "Internal Server Error", "out of memory");
        rc = -1;
    }
    for (int i = 0; rc == 0 && i < PARTS; i++) {
        tmpl_error_t err;
        tmpl_t *t = tmpl_parse(src[i], strlen(src[i]), &err);
        if (!t) {
            /* Stored parts were parsed on save; this is a changed language. */
            log_error("stored %s does not parse: %d:%d: %s", s_parts[i], err.line, err.column,
                      err.message);
            *status = api_problem(req, 500, "Internal Server Error",
                                  "the stored %s no longer parses", s_parts[i]);
            rc = -1;
            break;
        }
        int flags = (strict ? TMPL_STRICT : 0) | (i == 1 ? 0 : TMPL_TEXT);
        sbuf_reset(buf);
        tmpl_warnings_reset(warn);
        if (tmpl_render(t, root, flags, buf, warn, &err) != 0) {
            api_error_add(api_errors(req), "data", "%s line %d, column %d: %s", s_parts[i],
                          err.line, err.column, err.message);
            failed = 1; /* go on: report every part that fails */
        } else {
            json_object_set_new(out, s_parts[i], json_stringn(sbuf_data(buf), sbuf_len(buf)));
            for (size_t w = 0; w < tmpl_warnings_count(warn); w++) {
                int line = 0, column = 0;
                const char *msg = tmpl_warnings_get(warn, w, &line, &column);
                json_array_append_new(warnings,
                                      json_pack("{s:s, s:i, s:i, s:s}", "part", s_parts[i], "line",
                                                line, "column", column, "message", msg));
            }
        }
        tmpl_destroy(&t);
    }
    tmpl_warnings_destroy(&warn);
    sbuf_destroy(&buf);
    return rc ? rc : failed ? -1 : 0;
}

static int s_preview(api_req_t *req)
{
    static const char *const allowed[] = {"contact_id", "data", "version", NULL};
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "template");
    json_t *body = api_body(req);
    if (body && !json_is_object(body)) {
        api_error_add(api_errors(req), "body", "must be a JSON object");
        return api_invalid(req);
    }
    const char *contact_id = NULL;
    json_t *data = NULL;
    int64_t version = 0;
    if (body) {
        api_field_only(req, body, allowed);
        if (api_field_string(req, body, "contact_id", 0, 64, &contact_id) != 0)
            contact_id = NULL;
        else if (!api_is_uuid(contact_id))
            api_error_add(api_errors(req), "contact_id", "must be a uuid");
        data = json_object_get(body, "data");
        if (data && !json_is_object(data))
            api_error_add(api_errors(req), "data", "must be an object");
        if (api_field_int(req, body, "version", 0, 1, INT32_MAX, &version) != 0)
            version = 0;
    }
    if (api_errors_count(api_errors(req)))
        return api_invalid(req);

    char vbuf[24];
    snprintf(vbuf, sizeof vbuf, "%lld", (long long)version);
    /* Template version and contact in one round trip; the contact subquery
     * is NULL when none was asked for or it is not this organization's. */
    /* clang-format off */
    const char *sql =
        "SELECT t.strict, v.subject, v.html, v.text, "
        "(SELECT json_build_object('id', c.id, 'email', c.email, 'status', c.status, "
        "'fields', c.fields, 'created_at', " AUD_TS("c.created_at") ", "
        "'updated_at', " AUD_TS("c.updated_at") ")::text "
        "FROM contacts c WHERE c.id = $3::uuid AND c.organization_id = $2) "
        "FROM templates t JOIN template_versions v ON v.template_id = t.id "
        "AND v.version = coalesce($4::int, t.current_version) "
        "WHERE t.id = $1 AND t.organization_id = $2";
    /* clang-format on */
    const char *params[] = {id, api_org(req), contact_id, version ? vbuf : NULL};
    int status = 0;
    db_result_t *res = aud_query(req, 0, sql, 4, params, &status);
    if (!res)
        return status;
    json_t *root = NULL;
    if (db_result_rows(res) != 1) {
        status = api_not_found(req, version ? "template version" : "template");
        goto done;
    }
    root = data ? json_deep_copy(data) : json_object();
    if (contact_id) {
        const char *contact_text = db_result_get(res, 0, 4);
        if (!contact_text) {
            status = api_not_found(req, "contact");
            goto done;
        }
        json_t *contact = aud_row_json(contact_text);
        if (!contact) {
            status = api_problem(req, 500, "Internal Server Error", "cannot read the contact");
            goto done;
        }
        json_object_set_new(root, "contact", contact);
    }
    const char *src[PARTS] = {db_result_get(res, 0, 1), db_result_get(res, 0, 2),
                              db_result_get(res, 0, 3)};
    int strict = strcmp(db_result_get(res, 0, 0), "t") == 0;
    json_t *out = json_object();
    json_t *warnings = json_array();
    if (s_render_parts(req, src, strict, root, out, warnings, &status) != 0) {
        json_decref(out);
        json_decref(warnings);
        if (!status)
            status = api_invalid(req);
        goto done;
    }
    json_object_set_new(out, "warnings", warnings);
    status = api_json(req, 200, out);
done:
    json_decref(root);
    db_result_free(&res);
    return status;
}

const api_route_t api_routes_templates[] = {
    {"POST", "/templates", s_create, API_SCOPE_FULL, "templates.create", API_IDEMPOTENT},
    {"GET", "/templates", s_list, API_SCOPE_READ, "templates.list", 0},
    {"GET", "/templates/{id}", s_get, API_SCOPE_READ, "templates.get", 0},
    {"PATCH", "/templates/{id}", s_patch, API_SCOPE_FULL, "templates.update", 0},
    {"POST", "/templates/{id}/preview", s_preview, API_SCOPE_READ, "templates.preview", 0},
    {0},
};
