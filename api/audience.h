/*
 * audience - small helpers the audience resource modules (lists, tags,
 * segments, suppressions) share: RFC 3339 timestamps in SQL, keyset
 * pagination positions, name and email validation, and turning a failed
 * statement into the right problem response.
 *
 * Pagination: every audience listing is ordered by (created_at, id). The
 * cursor position is "<microseconds since the epoch>|<uuid>"; it comes back
 * from the client, so aud_cursor_parse checks it fully before any of it
 * reaches SQL (as bound parameters only).
 */
#ifndef POSTCHI_API_AUDIENCE_H
#define POSTCHI_API_AUDIENCE_H

#include <stddef.h>

#include <jansson.h>

#include "db.h"
#include "sbuf.h"

#include "rest.h"

/* SQL for a timestamptz expression as RFC 3339 UTC text with microseconds. */
#define AUD_TS(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* SQL for a timestamptz expression as integer microseconds since the epoch. */
#define AUD_US(col) "((extract(epoch FROM (" col ")) * 1000000)::bigint)::text"
/* SQL turning a bound bigint text parameter (microseconds) into a timestamptz. */
#define AUD_FROM_US(param) "('epoch'::timestamptz + (" param ")::bigint * interval '1 microsecond')"

/* A checked cursor position. */
typedef struct {
    char us[24]; /* microseconds since the epoch, decimal */
    char id[40]; /* canonical uuid */
} aud_pos_t;

/* Read ?limit= and ?cursor= (api_page, default 50, max 500). 0 with *limit
 * and *pos set (*has_pos 0 when there is no cursor), or -1 after adding a
 * field error ("limit" or "cursor"): the caller answers api_invalid. */
int aud_page(api_req_t *req, int *limit, aud_pos_t *pos, int *has_pos);
/* The next cursor for a result fetched with LIMIT limit + 1: NULL when
 * there are no more rows (or out of memory), else an api_cursor_make string
 * (caller owns it) for row limit - 1, whose microseconds are in column
 * us_col and id in id_col. */
char *aud_next_cursor(const db_result_t *res, int limit, int us_col, int id_col);

/* A display name: a string of 1..max_len bytes without control characters
 * (C0, DEL, C1) and not only spaces. Same return as api_field_string. */
int aud_field_name(api_req_t *req, json_t *obj, const char *field, int required,
                   size_t max_len, const char **out);
/* 1 when s (len bytes of UTF-8) holds no control character. */
int aud_no_controls(const char *s, size_t len);

/* Normalize an email address (trimmed, domain lower-cased). Returns the
 * normalized address (caller frees) or NULL with *why set to a static
 * reason ("missing @", ...), also NULL with "out of memory". */
char *aud_email_normalize(const char *in, size_t len, const char **why);

/* Run sql with params on this thread's connection. The result (caller
 * frees), or NULL after answering the failure (aud_db_fail) with the
 * status in *rc. */
db_result_t *aud_query(api_req_t *req, int in_tx, const char *sql, int n,
                       const char *const *params, int *rc);
/* Commit the open transaction and answer status with body (stolen), or 204
 * when body is NULL; a failed commit answers 500 (and frees body). */
int aud_commit(api_req_t *req, int status, json_t *body);

/* Answer a failed statement: roll back when in_tx, then api_db_error with
 * the statement's SQLSTATE and err's text (a statement that ran out of
 * time, SQLSTATE 57014, is a 503 there). */
int aud_db_fail(api_req_t *req, int in_tx, sbuf_t *err);

/* The request body when it is a JSON object; otherwise NULL after adding
 * the field error "body" (the caller answers api_invalid). */
json_t *aud_body_object(api_req_t *req);

/* JSON of a text column that holds JSON (jsonb::text), or json null. */
json_t *aud_json_col(const char *text);

#endif
