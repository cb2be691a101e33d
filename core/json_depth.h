/*
 * json_depth - how deep a JSON text nests, read from its bytes before any
 * parser sees it.
 *
 * jansson parses recursively and allows 2,048 levels; civetweb's request
 * threads have stacks of about 100 KiB, so a 2 KB body of nested '['
 * overflows one and takes the whole API process down before any limit on
 * the parsed value could be checked. Text that nests deeper than the
 * caller allows is refused here, by a loop with no recursion. Brackets
 * inside strings (escapes included) do not count; anything else the
 * parser refuses anyway.
 */
#ifndef POSTCHI_JSON_DEPTH_H
#define POSTCHI_JSON_DEPTH_H

#include <stddef.h>

/* 1 when text[0..len) never nests deeper than max_depth arrays and
 * objects ([[1]] is 2), else 0. */
int json_depth_ok(const char *text, size_t len, int max_depth);

#endif
