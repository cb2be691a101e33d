/*
 * suppressions - the /suppressions resource: addresses an organization
 * must not send to, with a reason (bounce, complaint, unsubscribe, manual)
 * and an optional expiry.
 *
 * One suppression per address and organization, whatever the letter case:
 * POST is an upsert on (organization, lower(email)) answering 201 when it
 * created the row and 200 when it replaced the reason and expiry of an
 * existing one. Expired rows stay (they are history) but listings leave
 * them out unless ?include_expired=true. DELETE takes the address as the
 * path segment (percent-decoded by the router).
 *
 * What can go wrong: expires_at must be RFC 3339 and in the future; it is
 * parsed here (core/rule.h's parser) and reaches SQL as microseconds, so
 * PostgreSQL's own, laxer, date parser never sees peer text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "db.h"
#include "rule.h"
#include "sbuf.h"

#include "audience.h"
#include "rest.h"

static const char *const s_reasons[] = {"bounce", "complaint", "unsubscribe", "manual", NULL};

/* Columns of a suppression row, in s_supp_json order; aliased s. */
#define SUPP_COLS                                                                          \
    "s.id, s.email, s.reason, " AUD_TS("s.expires_at") ", " AUD_TS("s.created_at") ", "    \
    AUD_US("s.created_at")

static json_t *s_supp_json(const db_result_t *res, int row)
{
    const char *expires = db_result_get(res, row, 3);
    return json_pack("{s:s, s:s, s:s, s:o, s:s}", "id", db_result_get(res, row, 0), "email",
                     db_result_get(res, row, 1), "reason", db_result_get(res, row, 2),
                     "expires_at", expires ? json_string(expires) : json_null(), "created_at",
                     db_result_get(res, row, 4));
}

/* Read an email field (required) into a normalized copy (caller frees), or
 * NULL after a field error. */
static char *s_email_field(api_req_t *req, json_t *body, const char *field)
{
    const char *raw = NULL;
    if (api_field_string(req, body, field, 1, 1024, &raw) != 0)
        return NULL;
    const char *why = NULL;
    char *email = aud_email_normalize(raw, strlen(raw), &why);
    if (!email)
        api_error_add(api_errors(req), field, "is not a valid email address: %s", why);
    return email;
}

/* Read the optional expires_at into microseconds text (in a caller buffer
 * of 24 bytes): 1 absent (or null), 0 set, -1 field error. */
static int s_expires_field(api_req_t *req, json_t *body, char *us, size_t size)
{
    json_t *v = json_object_get(body, "expires_at");
    if (!v || json_is_null(v))
        return 1;
    long long when;
    if (!json_is_string(v) ||
        rule_parse_time(json_string_value(v), json_string_length(v), 0, &when) != 0) {
        api_error_add(api_errors(req), "expires_at",
                      "must be an RFC 3339 timestamp, e.g. 2030-01-31T12:00:00Z");
        return -1;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (when <= (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000) {
        api_error_add(api_errors(req), "expires_at", "must be in the future");
        return -1;
    }
    snprintf(us, size, "%lld", when);
    return 0;
}

static int s_create(api_req_t *req)
{
    static const char *const allowed[] = {"email", "reason", "expires_at", NULL};
    const char *reason = NULL;
    char *email = NULL, us[24];
    int has_expiry = 0;
    json_t *body = aud_body_object(req);
    if (body) {
        api_field_only(req, body, allowed);
        email = s_email_field(req, body, "email");
        api_field_enum(req, body, "reason", 1, s_reasons, &reason);
        has_expiry = s_expires_field(req, body, us, sizeof us) == 0;
    }
    if (api_errors_count(api_errors(req))) {
        free(email);
        return api_invalid(req);
    }
    if (api_tx_begin(req) != 0) {
        free(email);
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    }
    const char *params[] = {api_org(req), email, reason, has_expiry ? us : NULL};
    int rc = 0;
    db_result_t *res = aud_query(
        req, 1,
        "INSERT INTO suppressions AS s (organization_id, email, reason, expires_at)"
        " VALUES ($1, $2, $3, " AUD_FROM_US("$4") ")"
        " ON CONFLICT (organization_id, lower(email))"
        " DO UPDATE SET reason = EXCLUDED.reason, expires_at = EXCLUDED.expires_at"
        " RETURNING " SUPP_COLS ", (s.xmax = 0)",
        4, params, &rc);
    free(email);
    if (!res)
        return rc;
    int created = strcmp(db_result_get(res, 0, 6), "t") == 0;
    json_t *supp = s_supp_json(res, 0);
    db_result_free(&res);
    api_audit(req, created ? "suppression.create" : "suppression.update", "suppression",
              json_string_value(json_object_get(supp, "id")),
              json_pack("{s:O, s:O, s:O}", "email", json_object_get(supp, "email"), "reason",
                        json_object_get(supp, "reason"), "expires_at",
                        json_object_get(supp, "expires_at")));
    return aud_commit(req, created ? 201 : 200, supp);
}

static int s_index(api_req_t *req)
{
    aud_page_t page;
    char *email = NULL;
    const char *reason = api_query(req, "reason");
    const char *expired = api_query(req, "include_expired");
    const char *raw = api_query(req, "email");
    int bad = aud_page_open(req, &aud_paging, &page) != 0;
    if (raw) {
        const char *why = NULL;
        email = aud_email_normalize(raw, strlen(raw), &why);
        if (!email) {
            api_error_add(api_errors(req), "email", "is not a valid email address: %s", why);
            bad = 1;
        }
    }
    int known = 0;
    for (int i = 0; reason && s_reasons[i]; i++)
        known |= strcmp(reason, s_reasons[i]) == 0;
    if (reason && !known) {
        api_error_add(api_errors(req), "reason",
                      "must be one of bounce, complaint, unsubscribe, manual");
        bad = 1;
    }
    if (expired && strcmp(expired, "true") != 0 && strcmp(expired, "false") != 0) {
        api_error_add(api_errors(req), "include_expired", "must be true or false");
        bad = 1;
    }
    if (bad) {
        free(email);
        return api_invalid(req);
    }
    const char *params[] = {api_org(req),
                            page.lim,
                            email,
                            reason,
                            expired && strcmp(expired, "true") == 0 ? "true" : "false",
                            page.pos,
                            page.id};
    int rc = 0;
#define SUPP_WHERE                                                                         \
    "SELECT " SUPP_COLS " FROM suppressions s WHERE s.organization_id = $1"                \
    " AND ($3::text IS NULL OR lower(s.email) = lower($3))"                                \
    " AND ($4::text IS NULL OR s.reason = $4)"                                             \
    " AND ($5::boolean OR s.expires_at IS NULL OR s.expires_at > now())"
    db_result_t *res =
        aud_query(req, 0,
                  page.pos ? SUPP_WHERE " AND (s.created_at, s.id) > (" AUD_FROM_US("$6")
                                       ", $7::uuid) ORDER BY s.created_at, s.id LIMIT $2"
                          : SUPP_WHERE " ORDER BY s.created_at, s.id LIMIT $2",
                  page.pos ? 7 : 5, params, &rc);
#undef SUPP_WHERE
    free(email);
    if (!res)
        return rc;
    return aud_page_reply(req, &page, &res, s_supp_json, 5, 0);
}

static int s_delete(api_req_t *req)
{
    const char *raw = api_param(req, "email");
    const char *why = NULL;
    char *email = aud_email_normalize(raw, strlen(raw), &why);
    if (!email) /* no such address can have been stored */
        return api_not_found(req, "suppression");
    if (api_tx_begin(req) != 0) {
        free(email);
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    }
    const char *params[] = {api_org(req), email};
    int rc = 0;
    db_result_t *res = aud_query(req, 1,
                                 "DELETE FROM suppressions"
                                 " WHERE organization_id = $1 AND lower(email) = lower($2)"
                                 " RETURNING id, email, reason",
                                 2, params, &rc);
    free(email);
    if (!res)
        return rc;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_not_found(req, "suppression");
    }
    api_audit(req, "suppression.delete", "suppression", db_result_get(res, 0, 0),
              json_pack("{s:s, s:s}", "email", db_result_get(res, 0, 1), "reason",
                        db_result_get(res, 0, 2)));
    db_result_free(&res);
    return aud_commit(req, 204, NULL);
}

const api_route_t api_routes_suppressions[] = {
    {"POST", "/suppressions", s_create, API_SCOPE_FULL, "suppressions.upsert", API_IDEMPOTENT},
    {"GET", "/suppressions", s_index, API_SCOPE_READ, "suppressions.list", 0},
    {"DELETE", "/suppressions/{email}", s_delete, API_SCOPE_FULL, "suppressions.delete", 0},
    {0},
};
