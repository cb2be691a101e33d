/*
 * api_keys - a logged-in user's management of the organization's API keys:
 * POST /api-keys (create; the key is shown once), GET /api-keys (list,
 * newest first, cursor pagination), DELETE /api-keys/{id} (revoke).
 *
 * How it is used: routes.c lists api_routes_api_keys; every route needs
 * API_SCOPE_USER, so a key can never mint, list or revoke keys.
 *
 * Security: only SHA-256 of a key is stored (authn.h says why that is
 * enough); neither the key nor its hash is ever returned after creation or
 * written to the audit log. Creation is deliberately not API_IDEMPOTENT:
 * replaying it would mean storing the key's secret in the idempotency
 * table. Revoking is idempotent (204 again, no second audit row) and
 * another organization's key is a 404.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "db.h"
#include "log.h"
#include "rest.h"
#include "sbuf.h"

#include "authn.h"

#define NAME_MAX_CHARS 200
/* Prefix collisions (60 random bits) are retried this many times. */
#define CREATE_TRIES 3

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

static size_t s_utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static int s_has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return 1;
    return 0;
}

/* ---- POST /api-keys ---- */

static const char s_insert_sql[] =
    "INSERT INTO api_keys (organization_id, name, prefix, secret_hash, scope, created_by) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (prefix) DO NOTHING "
    "RETURNING id, " TS("created_at");

static int s_create(api_req_t *req)
{
    static const char *const allowed[] = {"name", "scope", NULL};
    static const char *const scopes[] = {"full", "send", "read", NULL};
    json_t *body = api_body(req);
    if (!json_is_object(body)) {
        api_error_add(api_errors(req), "body", "must be a JSON object");
        return api_invalid(req);
    }
    api_field_only(req, body, allowed);
    const char *name = NULL, *scope = NULL;
    if (api_field_string(req, body, "name", 1, NAME_MAX_CHARS * 4, &name) == 0) {
        size_t n = s_utf8_chars(name);
        if (n < 1 || n > NAME_MAX_CHARS)
            api_error_add(api_errors(req), "name", "must be 1 to %d characters", NAME_MAX_CHARS);
        else if (s_has_control(name))
            api_error_add(api_errors(req), "name", "must not contain control characters");
    }
    api_field_enum(req, body, "scope", 1, scopes, &scope);
    if (api_errors_count(api_errors(req)) > 0)
        return api_invalid(req);

    db_t *db = api_db(req);
    sbuf_t *err = sbuf_new(128);
    char *key = NULL;
    char prefix[AUTHN_PREFIX_LEN + 1], hash[AUTHN_HASH_HEX];
    db_result_t *res = NULL;
    int status = 0;
    if (api_tx_begin(req) != 0) {
        sbuf_destroy(&err);
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    }
    for (int i = 0; i < CREATE_TRIES && !status; i++) {
        if (key) {
            OPENSSL_cleanse(key, strlen(key));
            free(key);
            key = NULL;
        }
        if (authn_key_generate(&key, prefix, hash) != 0) {
            status = api_problem(req, 500, "Internal Server Error", "cannot generate a key");
            break;
        }
        const char *params[] = {api_org(req), name, prefix, hash, scope, api_actor_id(req)};
        res = db_query(db, s_insert_sql, 6, params, err);
        OPENSSL_cleanse(hash, sizeof hash);
        if (!res)
            status = api_db_error(req, db_sqlstate(db), err ? sbuf_data(err) : "");
        else if (db_result_rows(res) == 1)
            break;
        else
            db_result_free(&res);
    }
    if (!status && !res)
        status = api_problem(req, 500, "Internal Server Error", "cannot generate a unique key");
    if (status) {
        api_tx_rollback(req);
        if (key) {
            OPENSSL_cleanse(key, strlen(key));
            free(key);
        }
        sbuf_destroy(&err);
        return status;
    }
    sbuf_destroy(&err);
    const char *id = db_result_get(res, 0, 0);
    api_audit(req, "api_key.create", "api_key", id,
              json_pack("{s:s, s:s, s:s}", "name", name, "scope", scope, "prefix", prefix));
    if (api_tx_commit(req) != 0) {
        OPENSSL_cleanse(key, strlen(key));
        free(key);
        db_result_free(&res);
        return api_problem(req, 500, "Internal Server Error", "cannot save the key");
    }
    json_t *out = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "id", id, "name", name, "scope",
                            scope, "prefix", prefix, "key", key, "created_at",
                            db_result_get(res, 0, 1));
    OPENSSL_cleanse(key, strlen(key));
    free(key);
    db_result_free(&res);
    if (!out)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    return api_json(req, 201, out);
}

/* ---- GET /api-keys ---- */

/* A cursor is "<created_at as TS()>|<id>": check its shape here so a
 * forged one is a 422, not a database error. */
static int s_cursor_split(const char *cursor, char *ts, size_t ts_size, char *id, size_t id_size)
{
    const char *bar = strchr(cursor, '|');
    if (!bar || (size_t)(bar - cursor) != 27 || ts_size < 28)
        return -1;
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    for (int i = 0; i < 27; i++) {
        char c = cursor[i];
        if (shape[i] == 'd' ? (c < '0' || c > '9') : c != shape[i])
            return -1;
    }
    if (!api_is_uuid(bar + 1) || strlen(bar + 1) >= id_size)
        return -1;
    memcpy(ts, cursor, 27);
    ts[27] = '\0';
    strcpy(id, bar + 1);
    return 0;
}

static int s_list(api_req_t *req)
{
    int limit = 0;
    const char *cursor = NULL;
    if (api_page(req, 50, 200, &limit, &cursor) != 0)
        return api_invalid(req);
    char ts[32] = "", id[AUTHN_ID_MAX] = "";
    if (cursor && s_cursor_split(cursor, ts, sizeof ts, id, sizeof id) != 0) {
        api_error_add(api_errors(req), "cursor", "is not a valid cursor");
        return api_invalid(req);
    }
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *params[] = {api_org(req), cursor ? ts : NULL, cursor ? id : NULL, lim};
    sbuf_t *err = sbuf_new(128);
    db_t *db = api_db(req);
    db_result_t *res = db_query(
        db,
        "SELECT id, name, scope, prefix, " TS("created_at") ", " TS("last_used_at") ", " TS(
            "revoked_at") ", created_by "
                          "FROM api_keys WHERE organization_id = $1 "
                          "AND ($2::timestamptz IS NULL OR (created_at, id) < ($2::timestamptz, "
                          "$3::uuid)) "
                          "ORDER BY created_at DESC, id DESC LIMIT $4::int",
        4, params, err);
    if (!res) {
        const char *state = db_sqlstate(db);
        int status;
        if (strncmp(state, "22", 2) == 0) { /* a well-shaped cursor with an impossible date */
            api_error_add(api_errors(req), "cursor", "is not a valid cursor");
            status = api_invalid(req);
        } else {
            status = api_db_error(req, state, err ? sbuf_data(err) : "");
        }
        sbuf_destroy(&err);
        return status;
    }
    sbuf_destroy(&err);
    int rows = db_result_rows(res);
    int shown = rows > limit ? limit : rows;
    json_t *data = json_array();
    for (int i = 0; data && i < shown; i++) {
        json_t *row = json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:s?, s:s?, s:s?}", "id", db_result_get(res, i, 0), "name",
            db_result_get(res, i, 1), "scope", db_result_get(res, i, 2), "prefix",
            db_result_get(res, i, 3), "created_at", db_result_get(res, i, 4), "last_used_at",
            db_result_get(res, i, 5), "revoked_at", db_result_get(res, i, 6), "created_by",
            db_result_get(res, i, 7));
        if (!row || json_array_append_new(data, row) != 0) {
            json_decref(data);
            data = NULL;
        }
    }
    char *next = NULL;
    if (data && rows > limit) {
        char pos[128];
        snprintf(pos, sizeof pos, "%s|%s", db_result_get(res, shown - 1, 4),
                 db_result_get(res, shown - 1, 0));
        next = api_cursor_make(pos);
        if (!next) {
            json_decref(data);
            data = NULL;
        }
    }
    db_result_free(&res);
    if (!data)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    return api_page_json(req, data, next);
}

/* ---- DELETE /api-keys/{id} ---- */

/* Finds the key in this organization (locking it) and revokes it unless
 * already revoked: (found, revoked now, prefix). */
static const char s_revoke_sql[] =
    "WITH k AS (SELECT id, prefix, revoked_at FROM api_keys "
    "           WHERE id = $1 AND organization_id = $2 FOR UPDATE), "
    "u AS (UPDATE api_keys a SET revoked_at = now() FROM k "
    "      WHERE a.id = k.id AND k.revoked_at IS NULL RETURNING a.id) "
    "SELECT (SELECT count(*) FROM k), (SELECT count(*) FROM u), (SELECT prefix FROM k)";

static int s_revoke(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "API key");
    if (api_tx_begin(req) != 0)
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    const char *params[] = {id, api_org(req)};
    sbuf_t *err = sbuf_new(128);
    db_t *db = api_db(req);
    db_result_t *res = db_query(db, s_revoke_sql, 2, params, err);
    if (!res) {
        int status = api_db_error(req, db_sqlstate(db), err ? sbuf_data(err) : "");
        api_tx_rollback(req);
        sbuf_destroy(&err);
        return status;
    }
    sbuf_destroy(&err);
    int found = strcmp(db_result_get(res, 0, 0), "0") != 0;
    int changed = strcmp(db_result_get(res, 0, 1), "0") != 0;
    if (changed)
        api_audit(req, "api_key.revoke", "api_key", id,
                  json_pack("{s:s?}", "prefix", db_result_get(res, 0, 2)));
    db_result_free(&res);
    if (!found) {
        api_tx_rollback(req);
        return api_not_found(req, "API key");
    }
    if (api_tx_commit(req) != 0)
        return api_problem(req, 500, "Internal Server Error", "cannot revoke the key");
    return api_no_content(req);
}

const api_route_t api_routes_api_keys[] = {
    {"POST", "/api-keys", s_create, API_SCOPE_USER, "api_keys.create", 0},
    {"GET", "/api-keys", s_list, API_SCOPE_USER, "api_keys.list", 0},
    {"DELETE", "/api-keys/{id}", s_revoke, API_SCOPE_USER, "api_keys.revoke", 0},
    {0},
};
