/*
 * audience_util - what the audience API tests (lists, tags, segments,
 * suppressions) share on top of api_util: SQL with printf formatting,
 * problem-response checks, contacts made straight in the database (so these
 * tests do not depend on the contacts resource), and a pagination walker.
 */
#ifndef POSTCHI_TEST_AUDIENCE_UTIL_H
#define POSTCHI_TEST_AUDIENCE_UTIL_H

#include <jansson.h>

#include "api_util.h"

/* Older names of api_sqlf and api_sql_long (api_util.h), kept for their
 * callers. */
#define aud_test_sql api_sqlf
#define aud_test_sql_long api_sql_long
/* s with single quotes doubled, for a SQL literal in a test statement
 * (static rotating storage: valid for the next few calls). */
const char *aud_test_q(const char *s);
/* Percent-encode s for a path segment or query value (same storage rules). */
const char *aud_test_pct(const char *s);

/* api_call with a JSON body (stolen; NULL for none). Returns out->status. */
int aud_test_callj(const api_env_t *e, const char *method, const char *path, const char *token,
                   json_t *body, api_resp_t *out);
/* The id of the most recently created organization other than org (the
 * one api_env_other_org made), caller frees. */
char *aud_test_other_org_id(const api_env_t *e);

/* 1 when r is a problem response whose "errors" list names field. */
int aud_test_has_error(const api_resp_t *r, const char *field);
/* The message of field's error in r, or "" (borrowed from r). */
const char *aud_test_error_message(const api_resp_t *r, const char *field);
/* r.json[key] as a string, or "" (borrowed). */
const char *aud_test_str(const api_resp_t *r, const char *key);

/* Insert a contact of org with SQL (status NULL: subscribed, fields NULL:
 * {}, created_at NULL: now()); returns its id (caller frees) or NULL. */
char *aud_test_contact(const api_env_t *e, const char *org, const char *email,
                       const char *status, const char *fields, const char *created_at);

/* GET path (already holding '?' or not) page by page with limit, appending
 * every data[i][key] string to out; returns the number of pages or -1 when
 * a page is not 200 or repeats an id. */
int aud_test_walk(const api_env_t *e, const char *path, const char *token, int limit,
                  const char *key, json_t *out);

#endif
