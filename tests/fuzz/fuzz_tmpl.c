/*
 * libFuzzer target for core/tmpl: parse arbitrary bytes as a template and,
 * when they parse, render them against a fixed contact in lenient HTML mode
 * and in strict text mode.
 *
 * Besides crashes, leaks and sanitizer reports it checks the module's
 * promises: errors carry a 1-based position and a message that is valid
 * UTF-8 (the API puts it in JSON as is), a failed render leaves the output
 * as it was, output never exceeds TMPL_MAX_OUTPUT, and warnings stay bounded.
 *
 * Build (registered by tests/fuzz/CMakeLists.txt), by hand:
 *   clang -g -fsanitize=fuzzer,address,undefined -Icore core/tmpl.c core/sbuf.c \
 *         tests/fuzz/fuzz_tmpl.c $(pkg-config --cflags --libs jansson)
 *   ./a.out -dict=tests/fuzz/tmpl.dict tests/fuzz/corpus/tmpl
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sbuf.h"
#include "tmpl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const DATA =
    "{\"contact\": {\"email\": \"ada@example.com\", \"fields\": {"
    "\"first_name\": \"Ada\", \"last_name\": \"<Love & \\\"lace\\\">\", \"age\": 36,"
    "\"score\": 1.5, \"tenth\": 0.1, \"vip\": true, \"churned\": false, \"nothing\": null,"
    "\"empty\": \"\", \"zero\": 0, \"city\": \"T\\u00e9h\\u00e9ran\","
    "\"tags\": [\"a\", \"b\", \"c\"], \"none\": [], \"obj\": {\"x\": 1, \"y\": [1, 2]},"
    "\"orders\": [{\"id\": 1, \"total\": 9.99, \"items\": [\"pen\", \"ink\"]},"
    "{\"id\": 2, \"total\": 20, \"items\": []}]}},"
    "\"this\": \"root-this\", \"a\": [[1, [2, 3]], {\"b\": \"c\"}, \"d\", null]}";

static json_t *s_data;

/* Abort (so libFuzzer reports it) when a promise in tmpl.h is broken. */
static void s_check_error(const tmpl_error_t *err)
{
    if (err->line < 1 || err->column < 1)
        abort();
    if (!memchr(err->message, '\0', sizeof err->message) || err->message[0] == '\0')
        abort();
    json_t *s = json_string(err->message); /* NULL when not valid UTF-8 */
    if (!s)
        abort();
    json_decref(s);
}

static void s_render(const tmpl_t *t, int flags, sbuf_t *out, tmpl_warnings_t *warn)
{
    tmpl_error_t err = {0};
    size_t before = sbuf_len(out);
    if (tmpl_render(t, s_data, flags, out, warn, &err) != 0) {
        s_check_error(&err);
        if (sbuf_len(out) != before)
            abort();
    } else if (sbuf_len(out) - before > TMPL_MAX_OUTPUT)
        abort();
    if (tmpl_warnings_count(warn) > TMPL_MAX_WARNINGS)
        abort();
    for (size_t i = 0; i < tmpl_warnings_count(warn); i++) {
        int line = 0, column = 0;
        const char *msg = tmpl_warnings_get(warn, i, &line, &column);
        json_t *s = msg ? json_string(msg) : NULL;
        if (!s || line < 1 || column < 1)
            abort();
        json_decref(s);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_data) {
        s_data = json_loads(DATA, 0, NULL);
        if (!s_data)
            abort();
    }
    tmpl_error_t err = {0};
    tmpl_t *t = tmpl_parse((const char *)data, size, &err);
    if (!t) {
        s_check_error(&err);
        return 0;
    }
    sbuf_t *out = sbuf_new(0);
    tmpl_warnings_t *warn = tmpl_warnings_new();
    if (out && warn) {
        s_render(t, 0, out, warn);
        tmpl_warnings_reset(warn);
        s_render(t, TMPL_STRICT | TMPL_TEXT, out, warn);
    }
    tmpl_warnings_destroy(&warn);
    sbuf_destroy(&out);
    tmpl_destroy(&t);
    return 0;
}
