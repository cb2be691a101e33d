/*
 * audience - helpers shared by the resource modules (see audience.h).
 *
 * What can go wrong: cursors and names are peer data; each is checked here
 * byte by byte before use and a bad one becomes a field error, never a SQL
 * error. Email normalization uses core/email_addr.h when it is built in and
 * otherwise a conservative local check (see s_email_fallback).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "db.h"
#include "log.h"
#include "sbuf.h"

#if __has_include("email_addr.h")
#include "email_addr.h"
#define AUD_HAVE_EMAIL_ADDR 1
#endif

#include "audience.h"
#include "rest.h"

#define PAGE_DEFAULT 50
#define PAGE_MAX 500
#define ROWS_PAGE_MAX 200                     /* the AUD_ROWS listings' ?limit= maximum */
#define CURSOR_US_MIN (-100000000000000000LL) /* about 1200 BC */
#define CURSOR_US_MAX 999999999999999999LL     /* about 33,700 AD */

int aud_pos_us(const char *pos, size_t len)
{
    /* The range keeps epoch + interval inside PostgreSQL's timestamps. */
    char digits[24];
    if (len >= sizeof digits)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((pos[i] >= '0' && pos[i] <= '9') || (i == 0 && pos[i] == '-' && len > 1)))
            return 0;
    memcpy(digits, pos, len);
    digits[len] = '\0';
    errno = 0;
    long long us = strtoll(digits, NULL, 10);
    return errno == 0 && us >= CURSOR_US_MIN && us <= CURSOR_US_MAX;
}

int aud_pos_digits(const char *pos, size_t len)
{
    if (len > 18)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (pos[i] < '0' || pos[i] > '9')
            return 0;
    return 1;
}

const aud_paging_t aud_paging = {PAGE_DEFAULT, PAGE_MAX, aud_pos_us,
                                 "is not a cursor this listing produced"};

int aud_page_open(api_req_t *req, const aud_paging_t *how, aud_page_t *page)
{
    const char *cursor = NULL;
    memset(page, 0, sizeof *page);
    if (api_page(req, how->def, how->max, &page->limit, &cursor) != 0)
        return -1;
    snprintf(page->lim, sizeof page->lim, "%d", page->limit + 1);
    if (!cursor)
        return 0;
    /* "<pos>|<uuid>": anything else is a forged or foreign cursor. The
     * uuid is 36 bytes, so the whole text fits buf once pos does. */
    const char *bar = strchr(cursor, '|');
    size_t n = bar ? (size_t)(bar - cursor) : 0;
    if (!bar || n == 0 || n + 38 > sizeof page->buf || !api_is_uuid(bar + 1) ||
        !how->pos_ok(cursor, n)) {
        api_error_add(api_errors(req), "cursor", "%s", how->bad_cursor);
        return -1;
    }
    memcpy(page->buf, cursor, n + 38);
    page->buf[n] = '\0';
    page->pos = page->buf;
    page->id = page->buf + n + 1;
    return 0;
}

int aud_page_reply(api_req_t *req, const aud_page_t *page, db_result_t **res,
                   aud_item_fn item, int pos_col, int id_col)
{
    int rows = db_result_rows(*res), shown = rows > page->limit ? page->limit : rows;
    json_t *data = json_array();
    for (int i = 0; data && i < shown; i++) {
        json_t *one = item(*res, i);
        if (!one || json_array_append_new(data, one) != 0) {
            json_decref(data);
            data = NULL;
        }
    }
    char *next = NULL;
    /* A page without its next cursor would end the listing early: fail. */
    if (data && rows > page->limit && !(next = aud_next_cursor(*res, page->limit, pos_col,
                                                                 id_col))) {
        json_decref(data);
        data = NULL;
    }
    db_result_free(res);
    if (!data)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    return api_page_json(req, data, next);
}

int aud_page_query(api_req_t *req, const aud_page_t *page, const char *sql, int n,
                   const char *const *params, aud_item_fn item, int pos_col, int id_col)
{
    int rc = 0;
    db_result_t *res = aud_query(req, 0, sql, n, params, &rc);
    if (!res)
        return rc;
    return aud_page_reply(req, page, &res, item, pos_col, id_col);
}

int aud_page_index(api_req_t *req, const char *first_sql, const char *next_sql,
                   aud_item_fn item, int pos_col, int id_col)
{
    aud_page_t page;
    if (aud_page_open(req, &aud_paging, &page) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), page.lim, page.pos, page.id};
    return aud_page_query(req, &page, page.pos ? next_sql : first_sql, page.pos ? 4 : 2, params,
                          item, pos_col, id_col);
}

/* The AUD_ROWS listings' paging: their cursors hold unsigned microseconds. */
static const aud_paging_t s_paging_rows = {PAGE_DEFAULT, ROWS_PAGE_MAX, aud_pos_digits,
                                           "is not a cursor this list produced"};

int aud_page_rows(api_req_t *req, const char *sql)
{
    aud_page_t page;
    if (aud_page_open(req, &s_paging_rows, &page) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), page.pos, page.id, page.lim};
    return aud_page_query(req, &page, sql, 4, params, aud_row_item, 1, -1);
}

int aud_page(api_req_t *req, int *limit, aud_pos_t *pos, int *has_pos)
{
    aud_page_t page;
    *has_pos = 0;
    if (aud_page_open(req, &aud_paging, &page) != 0)
        return -1;
    *limit = page.limit;
    if (page.pos) {
        /* aud_pos_us allows at most 23 bytes: it fits pos->us. (A copy
         * with an explicit bound: the compiler cannot see that limit.) */
        size_t n = strnlen(page.pos, sizeof pos->us - 1);
        memcpy(pos->us, page.pos, n);
        pos->us[n] = '\0';
        snprintf(pos->id, sizeof pos->id, "%s", page.id);
        *has_pos = 1;
    }
    return 0;
}

char *aud_next_cursor(const db_result_t *res, int limit, int pos_col, int id_col)
{
    if (db_result_rows(res) <= limit || limit < 1)
        return NULL;
    const char *pos = db_result_get(res, limit - 1, pos_col);
    const char *id = id_col < 0 ? "" : db_result_get(res, limit - 1, id_col);
    if (!pos || !id)
        return NULL;
    if (id_col < 0)
        return api_cursor_make(pos);
    sbuf_t *text = sbuf_new(64);
    char *cursor = NULL;
    if (text && sbuf_appendf(text, "%s|%s", pos, id) == 0)
        cursor = api_cursor_make(sbuf_data(text));
    sbuf_destroy(&text);
    return cursor;
}

int aud_no_controls(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++) {
        if (u[i] < 0x20 || u[i] == 0x7f)
            return 0;
        /* U+0080..U+009F are encoded C2 80 .. C2 9F. */
        if (u[i] == 0xc2 && i + 1 < len && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f)
            return 0;
    }
    return 1;
}

int aud_field_name(api_req_t *req, json_t *obj, const char *field, int required,
                   size_t max_len, const char **out)
{
    int rc = api_field_string(req, obj, field, required, max_len, out);
    if (rc != 0)
        return rc;
    size_t len = strlen(*out);
    size_t spaces = strspn(*out, " ");
    if (len == 0 || spaces == len) {
        api_error_add(api_errors(req), field, "must not be empty");
        return -1;
    }
    if (!aud_no_controls(*out, len)) {
        api_error_add(api_errors(req), field, "must not contain control characters");
        return -1;
    }
    return 0;
}

#ifndef AUD_HAVE_EMAIL_ADDR
/* 1 for the characters RFC 5322 allows unquoted in a local part (atext),
 * plus UTF-8 bytes (RFC 6531). */
static int s_atext(unsigned char ch)
{
    if (ch >= 0x80)
        return 1;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    return strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL && ch != '\0';
}

/* The fallback check until core/email_addr.h is built in: dot-atom local
 * part of 1..64 bytes, an ASCII host name of at least two labels; the
 * domain is lower-cased, the local part kept as given. */
static char *s_email_fallback(const char *in, size_t len, const char **why)
{
    while (len > 0 && strchr(" \t\r\n", in[0]) && in[0] != '\0')
        in++, len--;
    while (len > 0 && strchr(" \t\r\n", in[len - 1]) && in[len - 1] != '\0')
        len--;
    if (len == 0) {
        *why = "is empty";
        return NULL;
    }
    if (len > 254) {
        *why = "is longer than 254 bytes";
        return NULL;
    }
    const char *at = NULL;
    for (size_t i = len; i > 0 && !at; i--)
        if (in[i - 1] == '@')
            at = in + i - 1;
    if (!at) {
        *why = "has no @";
        return NULL;
    }
    size_t local = (size_t)(at - in), dom = len - local - 1;
    if (local == 0 || local > 64) {
        *why = "local part must be 1 to 64 bytes";
        return NULL;
    }
    for (size_t i = 0; i < local; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch == '.' ? (i == 0 || i + 1 == local || in[i + 1] == '.') : !s_atext(ch)) {
            *why = "local part has a character that is not allowed";
            return NULL;
        }
    }
    int labels = 0;
    size_t label_len = 0;
    for (size_t i = 0; i <= dom; i++) {
        char ch = i < dom ? at[1 + i] : '.';
        if (ch == '.') {
            if (label_len == 0 || label_len > 63 || at[i] == '-') {
                *why = "domain is not a valid host name";
                return NULL;
            }
            labels++;
            label_len = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                   (ch >= '0' && ch <= '9') || (ch == '-' && label_len > 0)) {
            label_len++;
        } else {
            *why = "domain is not a valid host name";
            return NULL;
        }
    }
    if (labels < 2) {
        *why = "domain needs a dot";
        return NULL;
    }
    char *out = malloc(len + 1);
    if (!out) {
        *why = "out of memory";
        return NULL;
    }
    memcpy(out, in, len);
    out[len] = '\0';
    for (size_t i = local + 1; i < len; i++)
        if (out[i] >= 'A' && out[i] <= 'Z')
            out[i] = (char)(out[i] - 'A' + 'a');
    return out;
}
#endif

char *aud_email_normalize(const char *in, size_t len, const char **why)
{
    *why = NULL;
#ifdef AUD_HAVE_EMAIL_ADDR
    char *out = malloc(EMAIL_ADDR_MAX + 1);
    if (!out) {
        *why = "out of memory";
        return NULL;
    }
    if (email_normalize(in, len, out, EMAIL_ADDR_MAX + 1, why) != 0) {
        if (!*why)
            *why = "is not a valid email address";
        free(out);
        return NULL;
    }
    return out;
#else
    return s_email_fallback(in, len, why);
#endif
}

int aud_db_fail(api_req_t *req, int in_tx, sbuf_t *err)
{
    /* Copy the SQLSTATE first: the rollback is a statement of its own. */
    char state[8];
    snprintf(state, sizeof state, "%s", db_sqlstate(api_db(req)));
    if (in_tx)
        api_tx_rollback(req);
    return api_db_error(req, state, err ? sbuf_data(err) : "");
}

json_t *aud_json_col(const char *text)
{
    json_t *j = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    return j ? j : json_null();
}

json_t *aud_row_json(const char *text)
{
    json_error_t jerr;
    json_t *j = text ? json_loads(text, JSON_DECODE_ANY, &jerr) : NULL;
    if (!j)
        log_error("cannot parse row JSON: %s", text ? jerr.text : "NULL");
    return j;
}

json_t *aud_row_item(const db_result_t *res, int row)
{
    return aud_row_json(db_result_get(res, row, 0));
}

json_t *aud_body_object(api_req_t *req)
{
    json_t *body = api_body(req);
    if (json_is_object(body))
        return body;
    api_error_add(api_errors(req), "body", "must be a JSON object");
    return NULL;
}

db_result_t *aud_query(api_req_t *req, int in_tx, const char *sql, int n,
                       const char *const *params, int *rc)
{
    sbuf_t *err = sbuf_new(128);
    db_result_t *res = db_query(api_db(req), sql, n, params, err);
    if (!res)
        *rc = aud_db_fail(req, in_tx, err);
    sbuf_destroy(&err);
    return res;
}

int aud_commit(api_req_t *req, int status, json_t *body)
{
    if (api_tx_commit(req) != 0) {
        json_decref(body);
        return api_problem(req, 500, "Internal Server Error", "could not commit the change");
    }
    return body ? api_json(req, status, body) : api_no_content(req);
}

db_result_t *aud_query_row(api_req_t *req, int in_tx, const char *sql, int n,
                           const char *const *params, const char *noun, int *rc)
{
    db_result_t *res = aud_query(req, in_tx, sql, n, params, rc);
    if (res && db_result_rows(res) != 1) {
        db_result_free(&res);
        if (in_tx)
            api_tx_rollback(req);
        *rc = api_not_found(req, noun);
    }
    return res;
}

int aud_get(api_req_t *req, const char *sql, int n, const char *const *params, const char *noun,
            aud_item_fn item)
{
    int rc = 0;
    db_result_t *res = aud_query_row(req, 0, sql, n, params, noun, &rc);
    if (!res)
        return rc;
    json_t *one = item(res, 0);
    db_result_free(&res);
    if (!one)
        return api_problem(req, 500, "Internal Server Error", "cannot read the %s", noun);
    return api_json(req, 200, one);
}

int aud_get_id(api_req_t *req, const char *sql, const char *noun, aud_item_fn item)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, noun);
    const char *params[] = {api_org(req), id};
    return aud_get(req, sql, 2, params, noun, item);
}

int aud_write(api_req_t *req, const aud_write_t *how, const char *sql, int n,
              const char *const *params, json_t *detail, json_t *extra)
{
    db_result_t *res = NULL;
    json_t *body = NULL;
    int rc = 0;
    if (api_tx_begin(req) != 0) {
        rc = api_problem(req, 503, "Service Unavailable", "%s", how->unavailable);
        goto done;
    }
    if (how->lock_sql) {
        res = aud_query_row(req, 1, how->lock_sql, 2, params, how->kind, &rc);
        if (!res)
            goto done;
        db_result_free(&res);
    }
    res = aud_query_row(req, 1, sql, n, params, how->kind, &rc);
    if (!res)
        goto done;
    body = how->body ? how->body(res, 0) : NULL;
    if (how->detail && (detail || (detail = json_object()) != NULL))
        how->detail(res, detail);
    /* In the transaction of the change: both are kept or neither. */
    api_audit(req, how->action, how->kind, db_result_get(res, 0, how->id_col), detail);
    detail = NULL;
    if (how->body && !body) {
        api_tx_rollback(req);
        rc = api_problem(req, 500, "Internal Server Error", "%s", how->unsaved);
        goto done;
    }
    if (api_tx_commit(req) != 0) {
        rc = api_problem(req, 500, "Internal Server Error", "%s", how->unsaved);
        goto done;
    }
    if (body && extra)
        json_object_update(body, extra);
    if (how->status == 204) {
        rc = api_no_content(req);
    } else {
        rc = api_json(req, how->status, body);
        body = NULL;
    }
done:
    json_decref(body);
    json_decref(extra);
    json_decref(detail);
    db_result_free(&res);
    return rc;
}

void aud_detail_name(const db_result_t *res, json_t *detail)
{
    json_object_set_new(detail, "name", json_string(db_result_get(res, 0, 1)));
}
