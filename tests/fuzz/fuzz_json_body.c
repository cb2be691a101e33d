/*
 * fuzz_json_body - libFuzzer target for the JSON request body path.
 *
 * Parses arbitrary bytes exactly as the REST framework parses a body
 * (json_loadb with JSON_REJECT_DUPLICATES), then runs json_guard_check over
 * the result with the default limits and with tight ones, so refusals deep
 * inside large documents are exercised too. Crashes, leaks, sanitizer
 * reports and broken invariants (checked with abort) are findings:
 *  - a refusal always names a JSON Pointer ("/...: reason");
 *  - a value that passes the tight limits passes the default ones;
 *  - a value that passes dumps and re-parses to an equal value.
 * Seeds: corpus/json_body/.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json_guard.h"
#include "sbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const json_guard_limits_t s_tight = {
    .max_depth = 4, .max_string = 16, .max_array = 8, .max_object = 4, .max_nodes = 64};

static int s_check(const json_t *v, const json_guard_limits_t *lim, sbuf_t *err)
{
    int rc = json_guard_check(v, lim, err);
    if (rc != 0 && rc != -1)
        abort();
    if (rc == -1 && (sbuf_data(err)[0] != '/' || !strstr(sbuf_data(err), ": ")))
        abort();
    if (rc == 0 && sbuf_len(err) != 0)
        abort();
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *v = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!v)
        return 0;
    sbuf_t *err = sbuf_new(64);
    if (!err) {
        json_decref(v);
        return 0;
    }
    int tight = s_check(v, &s_tight, err);
    int dflt = s_check(v, json_guard_defaults(), err);
    if (tight == 0 && dflt != 0)
        abort();
    if (dflt == 0) {
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text) {
            json_t *again = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
            if (!again || !json_equal(v, again))
                abort();
            json_decref(again);
            free(text);
        }
    }
    sbuf_destroy(&err);
    json_decref(v);
    return 0;
}
