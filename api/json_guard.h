/*
 * json_guard - structural limits on a parsed JSON request body, checked
 * before any handler looks at it.
 *
 * The framework parses every body with jansson (JSON_REJECT_DUPLICATES),
 * which already refuses malformed JSON, invalid UTF-8, "\u0000" in strings,
 * integers outside int64 and reals that overflow. What it accepts can still
 * be hostile in shape: nesting deep enough to blow a handler's recursion,
 * one enormous string, arrays or objects with millions of members. This
 * walks the value once (recursion bounded by max_depth) and refuses the
 * first thing over a limit, naming where it is as a JSON Pointer
 * (RFC 6901, e.g. "/contacts/3/email") so the 4xx can say which field.
 */
#ifndef POSTCHI_JSON_GUARD_H
#define POSTCHI_JSON_GUARD_H

#include <stddef.h>

#include <jansson.h>

#include "sbuf.h"

typedef struct {
    int max_depth;     /* nesting: a scalar or empty body is depth 1; [[1]] is 2 */
    size_t max_string; /* bytes in one string, object keys included */
    size_t max_array;  /* elements in one array */
    size_t max_object; /* members in one object */
    size_t max_nodes;  /* values in the whole document (0: no limit) */
} json_guard_limits_t;

/* Limits for ordinary API bodies: depth 32, strings 1 MiB, arrays of
 * 10,000 (the contacts batch size), objects of 1,000 members, 2,000,000
 * values in all. */
const json_guard_limits_t *json_guard_defaults(void);

/* 0 when v keeps to lim; -1 with err set to "<pointer>: <reason>" for the
 * first value over a limit (or a non-finite real, or a string with a NUL
 * in it, which the parser never produces but a built value might). err is
 * reset first; v is only read. */
int json_guard_check(const json_t *v, const json_guard_limits_t *lim, sbuf_t *err);

#endif
