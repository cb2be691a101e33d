/*
 * audience - small helpers the resource modules share (first the audience
 * ones: lists, tags, segments, suppressions; also templates, webhooks,
 * domains, messages): RFC 3339 timestamps in SQL, keyset pagination, name
 * and email validation, turning a failed statement into the right problem
 * response, and the one-row GET and audited one-row write (aud_get,
 * aud_write) so each handler keeps only its SQL, row JSON and audit detail.
 *
 * Pagination: every listing is ordered by (created_at, id) and its cursor
 * position is "<created_at>|<uuid>" (the audience ones: microseconds since
 * the epoch). It comes back from the client, so aud_page_open checks it
 * fully before any of it reaches SQL (as bound parameters only).
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

/* A checked cursor position (aud_page). */
typedef struct {
    char us[24]; /* microseconds since the epoch, decimal */
    char id[40]; /* canonical uuid */
} aud_pos_t;

/* How a keyset listing pages. Its cursor position is "<pos>|<uuid>"; what
 * <pos> may be is the listing's own (pos_ok), checked before any of it
 * reaches SQL. */
typedef struct {
    int def;                                    /* ?limit= default */
    int max;                                    /* ?limit= maximum */
    int (*pos_ok)(const char *pos, size_t len); /* 1 when pos (len bytes, len >= 1,
                                                   not terminated) is one this
                                                   listing makes */
    const char *bad_cursor;                     /* the "cursor" field error's message */
} aud_paging_t;

/* The audience listings' paging: 50 by default, at most 500, positions in
 * signed microseconds (aud_pos_us). */
extern const aud_paging_t aud_paging;

/* One page request, filled by aud_page_open. */
typedef struct {
    int limit;     /* rows the page shows */
    char lim[16];  /* limit + 1 as text: the SQL LIMIT (the extra row says
                      there is a next page) */
    const char *pos; /* the cursor's position half, NULL on the first page */
    const char *id;  /* the cursor's uuid half, NULL on the first page */
    char buf[80];    /* holds pos and id */
} aud_page_t;

/* Read ?limit= and ?cursor= as how says. 0 with *page filled, or -1 after
 * adding a field error ("limit" or "cursor"): the caller answers
 * api_invalid (or collects more errors first). */
int aud_page_open(api_req_t *req, const aud_paging_t *how, aud_page_t *page);
/* Position checks for aud_paging_t.pos_ok: signed decimal microseconds
 * within PostgreSQL's timestamps (the audience cursors), and 1..18
 * unsigned digits (the templates and webhooks cursors). */
int aud_pos_us(const char *pos, size_t len);
int aud_pos_digits(const char *pos, size_t len);

/* A page item: the JSON of row row of res, or NULL when out of memory. */
typedef json_t *(*aud_item_fn)(const db_result_t *res, int row);
/* Answer a page fetched with LIMIT page->lim: "data" is the first
 * page->limit rows through item, "next_cursor" (when res has more rows)
 * the position of the last one shown (aud_next_cursor's pos_col, id_col).
 * Frees *res. 500 when out of memory. */
int aud_page_reply(api_req_t *req, const aud_page_t *page, db_result_t **res,
                   aud_item_fn item, int pos_col, int id_col);
/* aud_query (outside a transaction) and then aud_page_reply. */
int aud_page_query(api_req_t *req, const aud_page_t *page, const char *sql, int n,
                   const char *const *params, aud_item_fn item, int pos_col, int id_col);

/* The two statements of a plain audience listing: select (SQL text with
 * the organization as $1 and a WHERE clause) ordered by alias's
 * (created_at, id), first without and then with a cursor position ($3
 * microseconds, $4 id); LIMIT $2. For aud_page_index. */
#define AUD_INDEX(select, alias)                                                           \
    select " ORDER BY " alias ".created_at, " alias ".id LIMIT $2",                        \
        select " AND (" alias ".created_at, " alias ".id) > (" AUD_FROM_US("$3")           \
               ", $4::uuid) ORDER BY " alias ".created_at, " alias ".id LIMIT $2"
/* A whole plain audience listing: aud_page_open with aud_paging (422 on a
 * bad limit or cursor), then aud_page_query with first_sql or next_sql (see
 * AUD_INDEX) and positions in columns pos_col (microseconds) and id_col. */
int aud_page_index(api_req_t *req, const char *first_sql, const char *next_sql,
                   aud_item_fn item, int pos_col, int id_col);

/* A listing of rows PostgreSQL builds as JSON (templates, webhooks), for
 * aud_page_rows: json (a row JSON text expression) FROM from (whose main
 * table is aliased alias) for the organization $1, after the cursor
 * position when there is one ($2 whole microseconds, $3 id: exact in bigint
 * both ways, and the id breaks ties, so pages never skip or repeat a row),
 * ordered by (created_at, id), LIMIT $4. Column 1 is the row's position. */
/* clang-format off */
#define AUD_ROWS(json, from, alias)                                                                \
    "SELECT " json ", (extract(epoch FROM " alias ".created_at) * 1000000)::bigint"              \
    " || '|' || " alias ".id FROM " from                                                           \
    " WHERE " alias ".organization_id = $1 AND ($2::bigint IS NULL"                                \
    " OR (" alias ".created_at, " alias ".id) > (timestamptz 'epoch'"                              \
    " + ($2::bigint / 1000000) * interval '1 second'"                                              \
    " + ($2::bigint % 1000000) * interval '1 microsecond', $3::uuid))"                             \
    " ORDER BY " alias ".created_at, " alias ".id LIMIT $4::int"
/* clang-format on */
/* A whole AUD_ROWS listing: ?limit= 1..200 (50 by default) and ?cursor=
 * checked (422 naming the field), then a page of the row JSONs. */
int aud_page_rows(api_req_t *req, const char *sql);

/* aud_page_open with aud_paging, the position copied into *pos (*has_pos
 * 0 when there is no cursor). */
int aud_page(api_req_t *req, int *limit, aud_pos_t *pos, int *has_pos);
/* The next cursor for a result fetched with LIMIT limit + 1: NULL when
 * there are no more rows (or out of memory), else an api_cursor_make string
 * (caller owns it) for row limit - 1: its pos_col text, "|" and its id_col
 * text, or pos_col's text alone when id_col < 0 (a column that already
 * holds the whole position). */
char *aud_next_cursor(const db_result_t *res, int limit, int pos_col, int id_col);

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

/* sql's one row (caller frees), or NULL after answering with the status in
 * *rc: the database error, or a 404 for noun when sql returned no row (or
 * more than one). in_tx as aud_query: the open transaction is rolled back
 * on either failure. */
db_result_t *aud_query_row(api_req_t *req, int in_tx, const char *sql, int n,
                           const char *const *params, const char *noun, int *rc);
/* GET of one row: aud_query_row outside a transaction, then 200 with
 * item's JSON of it (500 "cannot read the <noun>" when item fails). */
int aud_get(api_req_t *req, const char *sql, int n, const char *const *params, const char *noun,
            aud_item_fn item);
/* GET /<resource>/{id}: a path id that is not a uuid is a 404 for noun
 * (before any SQL); else aud_get of sql with the organization as $1 and the
 * id as $2. */
int aud_get_id(api_req_t *req, const char *sql, const char *noun, aud_item_fn item);

/* One kind of one-row change (aud_write). The messages are the module's
 * own: each resource keeps the problem details it has always answered. */
/* What an aud_write_t.detail does: add the written row's part of the audit
 * detail (an object) to detail. */
typedef void (*aud_detail_fn)(const db_result_t *res, json_t *detail);
typedef struct {
    const char *kind;        /* audit resource type and the 404's noun ("list") */
    const char *action;      /* audit action ("list.create") */
    int status;              /* the answer's status; 204 answers without a body */
    int id_col;              /* column of the written row's id (audited) */
    aud_item_fn body;        /* the answer from the row; NULL with 204 */
    aud_detail_fn detail;    /* NULL, or the row's part of the audit detail */
    const char *lock_sql;    /* NULL, or a statement run first with params[0]
                                and params[1] that must return one row (else
                                404): it orders concurrent changes of a row */
    const char *unavailable; /* 503 detail when no transaction can be opened */
    const char *unsaved;     /* 500 detail when the answer cannot be built or
                                the commit fails */
} aud_write_t;
/* The aud_write_t of an audience resource (lists, segments, tags): the
 * row's id in column 0, their problem details. */
#define AUD_WRITE(kind_, action_, status_, body_, detail_)                                         \
    {                                                                                              \
        .kind = kind_, .action = action_, .status = status_, .id_col = 0, .body = body_,           \
        .detail = detail_, .unavailable = "database unavailable",                                  \
        .unsaved = "could not commit the change"                                                   \
    }
/* The aud_write_t of a resource whose statements return the row as JSON
 * PostgreSQL built in column 0 and its id in column 1 (templates,
 * webhooks), with their problem details; kind_ is a string literal. */
#define AUD_WRITE_JSON(kind_, action_, status_, detail_, lock_)                                    \
    {                                                                                              \
        .kind = kind_, .action = action_, .status = status_, .id_col = 1,                          \
        .body = (status_) == 204 ? NULL : aud_row_item, .detail = detail_, .lock_sql = lock_,      \
        .unavailable = "the database is unavailable", .unsaved = "the " kind_ " was not saved"     \
    }
/* Open a transaction, run sql (params) which writes and returns one row (no
 * row is a 404), audit it with action and detail (stolen, may be NULL; the
 * row's part added by how->detail), commit, and answer how->status with
 * how->body's JSON of the row, extra's keys (stolen, may be NULL) merged in.
 * On any failure nothing is kept: the transaction is rolled back (a failed
 * commit ends it too) and the answer is the error. */
int aud_write(api_req_t *req, const aud_write_t *how, const char *sql, int n,
              const char *const *params, json_t *detail, json_t *extra);
/* An aud_write_t.detail: {"name": column 1}. */
void aud_detail_name(const db_result_t *res, json_t *detail);

/* Answer a failed statement: roll back when in_tx, then api_db_error with
 * the statement's SQLSTATE and err's text (a statement that ran out of
 * time, SQLSTATE 57014, is a 503 there). */
int aud_db_fail(api_req_t *req, int in_tx, sbuf_t *err);

/* The request body when it is a JSON object; otherwise NULL after adding
 * the field error "body" (the caller answers api_invalid). */
json_t *aud_body_object(api_req_t *req);

/* JSON of a text column that holds JSON (jsonb::text), or json null. */
json_t *aud_json_col(const char *text);
/* The same for a row PostgreSQL built as JSON, where anything but JSON is a
 * bug: NULL then (logged), so the handler answers 500. */
json_t *aud_row_json(const char *text);
/* A list item that is the row JSON in column 0 (an aud_item_fn). */
json_t *aud_row_item(const db_result_t *res, int row);

#endif
