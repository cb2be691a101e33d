/*
 * json_guard - one recursive walk over a parsed body, refusing the first
 * value over a limit. See json_guard.h for the contract.
 *
 * How: the walk carries the current JSON Pointer in an sbuf, appending a
 * segment on the way down and truncating it on the way up, so an error can
 * name its place without any allocation per node. Object keys are peer
 * data: a key segment is escaped as RFC 6901 says (~ as ~0, / as ~1) and
 * cut to KEY_SHOWN bytes (on a UTF-8 boundary) so one long key cannot make
 * the error message huge. Recursion depth is bounded by max_depth, checked
 * before descending.
 */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include <jansson.h>

#include "json_guard.h"
#include "sbuf.h"

#define KEY_SHOWN 64 /* bytes of a key quoted in an error pointer */

static const json_guard_limits_t s_defaults = {
    .max_depth = 32,
    .max_string = 1024 * 1024,
    .max_array = 10000,
    .max_object = 1000,
    .max_nodes = 2000000,
};

const json_guard_limits_t *json_guard_defaults(void)
{
    return &s_defaults;
}

typedef struct {
    const json_guard_limits_t *lim; /* the limits */
    sbuf_t *path;                   /* JSON Pointer of the value being checked */
    sbuf_t *err;                    /* where the refusal goes */
    size_t nodes;                   /* values seen so far */
} s_walk_t;

static int s_fail(s_walk_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_fail(s_walk_t *w, const char *fmt, ...)
{
    sbuf_reset(w->err);
    /* The whole document is "" in RFC 6901; say "/" so the message reads. */
    sbuf_append_str(w->err, sbuf_len(w->path) ? sbuf_data(w->path) : "/");
    sbuf_append_str(w->err, ": ");
    va_list ap;
    va_start(ap, fmt);
    sbuf_vappendf(w->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* Append "/<key>" escaped, cut to KEY_SHOWN bytes on a UTF-8 boundary. */
static void s_push_key(sbuf_t *path, const char *key, size_t len)
{
    size_t shown = len;
    if (shown > KEY_SHOWN) {
        shown = KEY_SHOWN;
        while (shown > 0 && ((unsigned char)key[shown] & 0xC0) == 0x80)
            shown--; /* do not split a multi-byte character */
    }
    sbuf_append(path, "/", 1);
    for (size_t i = 0; i < shown; i++) {
        if (key[i] == '~')
            sbuf_append(path, "~0", 2);
        else if (key[i] == '/')
            sbuf_append(path, "~1", 2);
        else
            sbuf_append(path, key + i, 1);
    }
    if (shown < len)
        sbuf_append_str(path, "...");
}

static int s_check(s_walk_t *w, const json_t *v, int depth);

static int s_check_string(s_walk_t *w, const char *s, size_t len, const char *what)
{
    if (len > w->lim->max_string)
        return s_fail(w, "%s is longer than %zu bytes", what, w->lim->max_string);
    if (memchr(s, '\0', len))
        return s_fail(w, "%s contains a NUL character", what);
    return 0;
}

static int s_check_children(s_walk_t *w, const json_t *v, int depth)
{
    size_t mark = sbuf_len(w->path);
    if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (n > w->lim->max_array)
            return s_fail(w, "array has more than %zu elements", w->lim->max_array);
        for (size_t i = 0; i < n; i++) {
            sbuf_appendf(w->path, "/%zu", i);
            if (s_check(w, json_array_get(v, i), depth + 1) != 0)
                return -1;
            sbuf_truncate(w->path, mark);
        }
        return 0;
    }
    size_t n = json_object_size(v);
    if (n > w->lim->max_object)
        return s_fail(w, "object has more than %zu members", w->lim->max_object);
    const char *key;
    json_t *child;
    /* json_object_foreach wants a non-const object; it only reads it. */
    json_object_foreach((json_t *)v, key, child)
    {
        /* Keys were checked for UTF-8 and NUL by the parser; their length
         * is still the peer's choice. */
        size_t klen = strlen(key);
        s_push_key(w->path, key, klen);
        if (klen > w->lim->max_string)
            return s_fail(w, "member name is longer than %zu bytes", w->lim->max_string);
        if (s_check(w, child, depth + 1) != 0)
            return -1;
        sbuf_truncate(w->path, mark);
    }
    return 0;
}

/* Check v, found at w->path, nested depth deep (the root is 1). */
static int s_check(s_walk_t *w, const json_t *v, int depth)
{
    if (!v)
        return s_fail(w, "missing value");
    if (w->lim->max_nodes && ++w->nodes > w->lim->max_nodes)
        return s_fail(w, "document has more than %zu values", w->lim->max_nodes);
    switch (json_typeof(v)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
        if (depth > w->lim->max_depth)
            return s_fail(w, "nested deeper than %d levels", w->lim->max_depth);
        return s_check_children(w, v, depth);
    case JSON_STRING:
        return s_check_string(w, json_string_value(v), json_string_length(v), "string");
    case JSON_REAL:
        if (!isfinite(json_real_value(v)))
            return s_fail(w, "number is not finite");
        return 0;
    case JSON_INTEGER: /* int64 by construction: json_int_t is long long and
                          the parser refuses "too big integer" */
    case JSON_TRUE:
    case JSON_FALSE:
    case JSON_NULL:
        return 0;
    }
    return s_fail(w, "unknown JSON type");
}

int json_guard_check(const json_t *v, const json_guard_limits_t *lim, sbuf_t *err)
{
    assert(lim && err && lim->max_depth >= 1);
    sbuf_reset(err);
    s_walk_t w = {.lim = lim, .path = sbuf_new(64), .err = err, .nodes = 0};
    if (!w.path) {
        sbuf_append_str(err, "/: out of memory");
        return -1;
    }
    int rc = s_check(&w, v, 1);
    sbuf_destroy(&w.path);
    return rc;
}
