/*
 * audience_util - helpers for the audience API tests (see audience_util.h).
 * Test code: failures print a line and return NULL / -1 so the calling
 * assertion fails where the test can say what it expected.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sbuf.h"

#include "api_util.h"
#include "audience_util.h"

#define ROTATE 8

/* A slot of rotating storage holding a copy of b's bytes. */
static const char *s_rotate(sbuf_t *b)
{
    static char *slots[ROTATE];
    static int next;
    int i = next++ % ROTATE;
    free(slots[i]);
    slots[i] = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return slots[i] ? slots[i] : "";
}

const char *aud_test_q(const char *s)
{
    sbuf_t *b = sbuf_new(strlen(s) + 8);
    for (; *s; s++)
        sbuf_append(b, *s == '\'' ? "''" : s, *s == '\'' ? 2 : 1);
    return s_rotate(b);
}

const char *aud_test_pct(const char *s)
{
    sbuf_t *b = sbuf_new(strlen(s) * 3 + 1);
    for (const unsigned char *u = (const unsigned char *)s; *u; u++) {
        if ((*u >= 'a' && *u <= 'z') || (*u >= 'A' && *u <= 'Z') || (*u >= '0' && *u <= '9') ||
            strchr("-._~", *u))
            sbuf_append(b, u, 1);
        else
            sbuf_appendf(b, "%%%02X", *u);
    }
    return s_rotate(b);
}

int aud_test_has_error(const api_resp_t *r, const char *field)
{
    if (api_field_error(r, field))
        return 1;
    fprintf(stderr, "no error for field '%s' in: %s\n", field, r->raw ? sbuf_data(r->raw) : "");
    return 0;
}

const char *aud_test_error_message(const api_resp_t *r, const char *field)
{
    const char *m = json_string_value(json_object_get(api_field_error(r, field), "message"));
    return m ? m : "";
}

const char *aud_test_str(const api_resp_t *r, const char *key)
{
    const char *s = r->json ? json_string_value(json_object_get(r->json, key)) : NULL;
    return s ? s : "";
}

char *aud_test_contact(const api_env_t *e, const char *org, const char *email,
                       const char *status, const char *fields, const char *created_at)
{
    sbuf_t *b = sbuf_new(256);
    sbuf_appendf(b,
                 "INSERT INTO contacts (organization_id, email, status, fields, created_at)"
                 " VALUES ('%s', '%s', '%s', '%s'::jsonb, ",
                 org, aud_test_q(email), status ? status : "subscribed",
                 aud_test_q(fields ? fields : "{}"));
    if (created_at)
        sbuf_appendf(b, "'%s'::timestamptz) RETURNING id", created_at);
    else
        sbuf_append_str(b, "now()) RETURNING id");
    char *id = api_sql(e, sbuf_data(b));
    if (!id)
        fprintf(stderr, "aud_test_contact: insert failed: %s\n", sbuf_data(b));
    sbuf_destroy(&b);
    return id;
}

int aud_test_walk(const api_env_t *e, const char *path, const char *token, int limit,
                  const char *key, json_t *out)
{
    char *cursor = NULL;
    int pages = 0;
    for (;;) {
        sbuf_t *url = sbuf_new(256);
        sbuf_appendf(url, "%s%slimit=%d", path, strchr(path, '?') ? "&" : "?", limit);
        if (cursor)
            sbuf_appendf(url, "&cursor=%s", aud_test_pct(cursor));
        free(cursor);
        cursor = NULL;
        api_resp_t r = {0};
        int status = api_call(e, "GET", sbuf_data(url), token, NULL, NULL, &r);
        sbuf_destroy(&url);
        json_t *data = r.json ? json_object_get(r.json, "data") : NULL;
        if (status != 200 || !json_is_array(data) || json_array_size(data) > (size_t)limit) {
            fprintf(stderr, "aud_test_walk: page %d: %d %s\n", pages, status,
                    r.raw ? sbuf_data(r.raw) : "");
            api_resp_free(&r);
            return -1;
        }
        pages++;
        size_t i;
        json_t *row;
        json_array_foreach(data, i, row)
        {
            const char *v = json_string_value(json_object_get(row, key));
            size_t j;
            json_t *seen;
            json_array_foreach(out, j, seen) if (v && strcmp(json_string_value(seen), v) == 0)
            {
                fprintf(stderr, "aud_test_walk: %s repeats\n", v);
                api_resp_free(&r);
                return -1;
            }
            json_array_append_new(out, json_string(v ? v : ""));
        }
        const char *next = json_string_value(json_object_get(r.json, "next_cursor"));
        cursor = next ? strdup(next) : NULL;
        api_resp_free(&r);
        if (!cursor)
            return pages;
    }
}

int aud_test_callj(const api_env_t *e, const char *method, const char *path, const char *token,
                   json_t *body, api_resp_t *out)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    int status = api_call(e, method, path, token, text, NULL, out);
    free(text);
    return status;
}

char *aud_test_other_org_id(const api_env_t *e)
{
    return aud_test_sql(e,
                        "SELECT id FROM organizations WHERE id <> '%s'"
                        " ORDER BY created_at DESC LIMIT 1",
                        e->org_id);
}
