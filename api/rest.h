/*
 * rest - the REST framework every resource module builds on: a route table,
 * authentication and scopes, tenancy, JSON bodies, problem responses,
 * field-level validation, pagination, audit, idempotency and triggers.
 *
 * A resource module exports a table of api_route_t ended by a zero row, and
 * routes.c lists the tables. Before a handler runs, the framework has:
 * matched the route (path params captured), authenticated the caller and
 * checked the route's scope (401/403/404 otherwise), read and bounded the
 * body, parsed it as JSON (400 on malformed JSON or invalid UTF-8; 415 when
 * the Content-Type is not JSON), applied the rate limit (429), and replayed
 * an Idempotency-Key hit. The handler validates fields, does its SQL
 * (always filtered by api_org, always parameterized) and returns one of the
 * api_* response calls, whose result is the HTTP status.
 *
 * Handlers run on civetweb's threads. api_db and api_kv return this
 * thread's own connections, so a handler never shares one. Everything a
 * handler gets from the request is valid until it returns.
 *
 * Tenancy rule: a resource that exists in another organization is a 404,
 * exactly like one that does not exist at all (never 403, never data).
 */
#ifndef POSTCHI_REST_H
#define POSTCHI_REST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "db.h"
#include "kv.h"
#include "sbuf.h"

typedef enum {
    API_SCOPE_PUBLIC = 0, /* no credentials (register, login, health) */
    API_SCOPE_READ,       /* any API key or a logged-in user */
    API_SCOPE_SEND,       /* send or full API key, or a user */
    API_SCOPE_FULL,       /* full API key, or a user */
    API_SCOPE_USER        /* a logged-in user (JWT) only: managing API keys */
} api_scope_t;

#define API_IDEMPOTENT 0x1u /* POST honours Idempotency-Key */
#define API_BATCH 0x2u      /* large body allowed (api_batch_body_max) */
#define API_RAW_BODY 0x4u   /* body is not JSON: api_raw_body only */

typedef struct api_req api_req_t;
typedef int (*api_handler_fn)(api_req_t *req);

typedef struct {
    const char *method;     /* "GET", "POST", "PUT", "PATCH", "DELETE" */
    const char *path;       /* under /api/v1, e.g. "/contacts/{id}"; a {name}
                               segment matches one path segment */
    api_handler_fn handler; /* returns the status it answered with */
    api_scope_t scope;      /* least privilege the caller needs */
    const char *name;       /* stable label for metrics and OpenAPI, e.g. "contacts.get" */
    unsigned flags;         /* API_* */
} api_route_t;

/* ---- the request ---- */
/* Path parameter by name (already percent-decoded), never NULL for a name
 * in the route's path. */
const char *api_param(const api_req_t *req, const char *name);
/* Query string parameter (decoded), or NULL when absent. */
const char *api_query(const api_req_t *req, const char *name);
/* Request header, or NULL. */
const char *api_header(const api_req_t *req, const char *name);
/* The parsed JSON body (borrowed), or NULL when there was none. */
json_t *api_body(const api_req_t *req);
/* The raw body and its length (API_RAW_BODY routes, and for hashing). */
const char *api_raw_body(const api_req_t *req, size_t *len);
/* The caller's organization id (uuid text), NULL on public routes. */
const char *api_org(const api_req_t *req);
/* "user" or "api_key", and that user's or key's id; NULL on public routes. */
const char *api_actor_type(const api_req_t *req);
const char *api_actor_id(const api_req_t *req);
/* The caller's effective scope. */
api_scope_t api_scope(const api_req_t *req);
/* Client address (for rate limits and audit). */
const char *api_remote_addr(const api_req_t *req);

/* This thread's PostgreSQL connection (connected on first use); never NULL
 * inside a handler: the framework answers 503 itself when it cannot connect. */
db_t *api_db(api_req_t *req);
/* This thread's Redis connection, or NULL when Redis is unreachable: every
 * caller must have an answer for that (Redis holds only rebuildable state). */
kv_t *api_kv(api_req_t *req);

/* ---- responses: each returns the status, for `return api_json(...)` ---- */
/* Send body (the reference is stolen) as application/json. */
int api_json(api_req_t *req, int status, json_t *body);
/* Send body (copied) as content_type, e.g. "text/html; charset=utf-8": for
 * the few routes people open in a browser (unsubscribe pages). */
int api_text(api_req_t *req, int status, const char *content_type, const char *body);
/* 204, no body. */
int api_no_content(api_req_t *req);
/* application/problem+json (RFC 9457): type "about:blank"-style
 * https://postchi.dev/problems/<slug>, title, status, detail. */
int api_problem(api_req_t *req, int status, const char *title, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* 404 "Not Found" for a resource of this kind (same answer whether it is
 * missing or another organization's). */
int api_not_found(api_req_t *req, const char *what);
/* A database failure: 409 for a unique violation (with detail naming the
 * conflict), 422 for a check or foreign-key violation or text that is not
 * UTF-8, else 500 (logged, the server message never sent to the client). */
int api_db_error(api_req_t *req, const char *sqlstate, const char *message);
/* Add a response header (before the api_json/api_problem call). */
void api_set_header(api_req_t *req, const char *name, const char *value);

/* ---- validation: collect field errors, then answer them all at once ---- */
typedef struct api_errors api_errors_t;
/* This request's collector (owned by the request). */
api_errors_t *api_errors(api_req_t *req);
void api_error_add(api_errors_t *errs, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int api_errors_count(const api_errors_t *errs);
/* 422 problem with "errors": [{"field", "message"}, ...]. */
int api_invalid(api_req_t *req);

/* Field getters over a JSON object. Each checks presence (when required),
 * type and bounds, adds a field error naming `field` (prefix + name for
 * nested objects) on failure, and returns 0 when the value is usable, 1
 * when it is absent and optional, -1 on error. Strings are valid UTF-8 by
 * construction (jansson); max_len is in bytes. */
int api_field_string(api_req_t *req, json_t *obj, const char *field, int required,
                     size_t max_len, const char **out);
int api_field_int(api_req_t *req, json_t *obj, const char *field, int required, int64_t min,
                  int64_t max, int64_t *out);
int api_field_bool(api_req_t *req, json_t *obj, const char *field, int required, int *out);
/* One of a NULL-terminated list of words. */
int api_field_enum(api_req_t *req, json_t *obj, const char *field, int required,
                   const char *const *words, const char **out);
/* Refuse keys not in the NULL-terminated allowed list (one error each). */
void api_field_only(api_req_t *req, json_t *obj, const char *const *allowed);
/* 1 when s is a canonical lower-case uuid text (for ids in paths). */
int api_is_uuid(const char *s);
/* 1 when s is valid UTF-8 that PostgreSQL will take. Query and path
 * values are percent-decoded bytes, not JSON strings: any of them that
 * reaches SQL as text must pass this first, or a stray %FF is a 500. */
int api_utf8_ok(const char *s);

/* ---- pagination: ?limit=&cursor= ---- */
/* Reads limit (1..max, default def) and cursor (opaque, produced by
 * api_cursor_make; NULL when absent). A bad limit or cursor adds a field
 * error and returns -1. The decoded cursor text is what the resource put in. */
int api_page(api_req_t *req, int def, int max, int *limit, const char **cursor);
/* Opaque cursor for the resource's own position text (e.g. "<created_at>|<id>").
 * Caller owns the result. */
char *api_cursor_make(const char *position);
/* {"data": data, "next_cursor": cursor or null} (data and the cursor
 * string are stolen / freed). */
int api_page_json(api_req_t *req, json_t *data, char *next_cursor);

/* ---- side effects ---- */
/* Record who changed what: audit_log row in the request's organization, with
 * actor type/id from the request. detail is stolen (may be NULL). Call it
 * inside the transaction of the change: a failed write is logged and makes
 * that transaction's api_tx_commit roll back and return -1, so the caller
 * answers an error and never a success for a change that was discarded. */
void api_audit(api_req_t *req, const char *action, const char *resource_type,
               const char *resource_id, json_t *detail);
/* Announce a trigger to the organization's tenant actor (tenant/<org>)
 * through the broker: name ("list_added", "tag_added", "subscribed", ...),
 * body a JSON object (stolen). The event row must be committed first
 * (outbox): this is the fast path. 0, or -1 (logged; the sweeper re-drives). */
int api_trigger(api_req_t *req, const char *name, json_t *body);

/* A one-way mesh message to any actor ("mailer/<domain>", ...): name and
 * a JSON body (stolen). Like api_trigger, only after the rows it announces
 * are committed; a lost message is re-driven from the rows. 0 or -1. */
int api_mesh_send(api_req_t *req, const char *target, const char *name, json_t *body);

/* Begin / commit / roll back on this thread's connection. 0 or -1; commit
 * is -1 (after rolling back) when an api_audit in the transaction failed. */
int api_tx_begin(api_req_t *req);
int api_tx_commit(api_req_t *req);
void api_tx_rollback(api_req_t *req);

#endif
