/*
 * audience - helpers shared by the lists, tags, segments and suppressions
 * resources (see audience.h).
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
#include "sbuf.h"

#if __has_include("email_addr.h")
#include "email_addr.h"
#define AUD_HAVE_EMAIL_ADDR 1
#endif

#include "audience.h"
#include "rest.h"

#define PAGE_DEFAULT 50
#define PAGE_MAX 500
#define CURSOR_US_MIN (-100000000000000000LL) /* about 1200 BC */
#define CURSOR_US_MAX 999999999999999999LL     /* about 33,700 AD */

int aud_page(api_req_t *req, int *limit, aud_pos_t *pos, int *has_pos)
{
    const char *cursor = NULL;
    *has_pos = 0;
    if (api_page(req, PAGE_DEFAULT, PAGE_MAX, limit, &cursor) != 0)
        return -1;
    if (!cursor)
        return 0;
    /* "<microseconds>|<uuid>": anything else is a forged or foreign cursor.
     * The range keeps epoch + interval inside PostgreSQL's timestamps. */
    const char *bar = strchr(cursor, '|');
    size_t ndig = bar ? (size_t)(bar - cursor) : 0;
    int ok = bar && ndig >= 1 && ndig < sizeof pos->us && api_is_uuid(bar + 1);
    for (size_t i = 0; ok && i < ndig; i++)
        ok = (cursor[i] >= '0' && cursor[i] <= '9') || (i == 0 && cursor[i] == '-' && ndig > 1);
    if (ok) {
        errno = 0;
        long long us = strtoll(cursor, NULL, 10);
        ok = errno == 0 && us >= CURSOR_US_MIN && us <= CURSOR_US_MAX;
    }
    if (!ok) {
        api_error_add(api_errors(req), "cursor", "is not a cursor this listing produced");
        return -1;
    }
    memcpy(pos->us, cursor, ndig);
    pos->us[ndig] = '\0';
    snprintf(pos->id, sizeof pos->id, "%s", bar + 1);
    *has_pos = 1;
    return 0;
}

char *aud_next_cursor(const db_result_t *res, int limit, int us_col, int id_col)
{
    if (db_result_rows(res) <= limit || limit < 1)
        return NULL;
    const char *us = db_result_get(res, limit - 1, us_col);
    const char *id = db_result_get(res, limit - 1, id_col);
    if (!us || !id)
        return NULL;
    sbuf_t *pos = sbuf_new(64);
    char *cursor = NULL;
    if (pos && sbuf_appendf(pos, "%s|%s", us, id) == 0)
        cursor = api_cursor_make(sbuf_data(pos));
    sbuf_destroy(&pos);
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
