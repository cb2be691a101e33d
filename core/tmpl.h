/*
 * tmpl - the email template language: parse once, render many.
 *
 * A template is UTF-8 text with tags in double braces:
 *
 *   {{ contact.email }}                       value, HTML-escaped
 *   {{{ contact.fields.bio }}}                value, raw (not escaped)
 *   {{ contact.fields.first_name | default: "there" | upper }}
 *   {{#if path}} ... {{else}} ... {{/if}}     also {{#unless path}} ... {{/unless}}
 *   {{#each path}} ... {{else}} ... {{/each}} arrays only; inside: this, this.x,
 *                                             @index (0-based), @first, @last
 *   {{! comment }}  {{!-- comment that may contain }} --}}
 *   \{{                                       a literal "{{"
 *
 * Paths are dotted identifiers ([A-Za-z_][A-Za-z0-9_]* segments). A path that
 * does not start with `this` or `@` is always looked up from the root of the
 * data, also inside {{#each}} (unlike Handlebars: the loop item is reached
 * only through `this`). Filters, applied left to right: `default: "text"`
 * (when the value is missing, null or ""; the literal takes \" and \\),
 * `upper`, `lower` (ASCII letters only), `raw` (do not escape), `required`
 * (a missing or null value fails the render even when not strict: this is how
 * a template itself says a variable must be there).
 *
 * Truthiness for #if/#unless: missing, null, false, "", 0 and [] are false,
 * everything else (including {}) is true. #if, #unless and #each never warn
 * about a missing path: testing for it is their point.
 *
 * Values render as: strings as they are, numbers like JSON (3, not 3.0;
 * shortest form that reads back to the same double), true/false as text,
 * null as nothing. Objects and arrays render as nothing with a warning.
 *
 * What can go wrong: tmpl_parse refuses bad templates with a 1-based line and
 * column (counted in characters) pointing at the start of the offending tag
 * (or at the bad byte for invalid UTF-8). tmpl_render fails on a missing
 * variable in TMPL_STRICT mode or with `| required`, when the output would
 * exceed TMPL_MAX_OUTPUT, or when loops would do more than TMPL_MAX_STEPS
 * steps; the output buffer is then left as it was.
 *
 * Security: escaping is on by default (& < > " ' ` =) so contact data cannot
 * inject markup into HTML parts; TMPL_TEXT turns it off for text/plain parts
 * and subjects, where the caller must not treat the result as HTML. Every
 * size is bounded, so a hostile template or contact cannot exhaust memory.
 */
#ifndef POSTCHI_TMPL_H
#define POSTCHI_TMPL_H

#include <stddef.h>

#include <jansson.h>

#include "sbuf.h"

/* Largest template source accepted by tmpl_parse. */
#define TMPL_MAX_SOURCE (1024 * 1024)
/* Deepest nesting of {{#if}}/{{#unless}}/{{#each}} blocks. */
#define TMPL_MAX_DEPTH 32
/* Largest output one tmpl_render call may produce. */
#define TMPL_MAX_OUTPUT (10 * 1024 * 1024)
/* Most tags and loop iterations one tmpl_render call may visit. */
#define TMPL_MAX_STEPS (4 * 1000 * 1000)
/* Most distinct warnings a tmpl_warnings_t keeps; later ones are counted. */
#define TMPL_MAX_WARNINGS 32

/* Render flags. */
enum {
    TMPL_STRICT = 1 << 0, /* every warning (e.g. a missing variable) is an error */
    TMPL_TEXT = 1 << 1,   /* plain text: no HTML escaping at all */
};

typedef struct tmpl tmpl_t;
typedef struct tmpl_warnings tmpl_warnings_t;

/* Where and why parsing or rendering failed. line and column are 1-based;
 * message never repeats the position, so callers format "%d:%d: %s". */
typedef struct {
    int line;          /* 1-based line of the offending tag or byte */
    int column;        /* 1-based column, in characters */
    char message[200]; /* what is wrong, NUL-terminated */
} tmpl_error_t;

/* Compile len bytes of src (need not be NUL-terminated). Returns the template
 * (caller owns it, tmpl_destroy it) or NULL with *err filled in; err may be
 * NULL. Out of memory is reported as an error at 1:1. */
tmpl_t *tmpl_parse(const char *src, size_t len, tmpl_error_t *err);

/* NULL-safe and idempotent; sets *self_p to NULL. */
void tmpl_destroy(tmpl_t **self_p);

/* Render self against data (any JSON value, usually an object such as
 * {"contact": {...}}; NULL means "no data") and append the result to out.
 * flags is a mix of TMPL_STRICT and TMPL_TEXT. Lenient problems are added to
 * warn (may be NULL to ignore them). Returns 0, or -1 with *err filled in (err
 * may be NULL) and out truncated back to its length on entry. The template is
 * not changed, so one template may be rendered from several threads. */
int tmpl_render(const tmpl_t *self, const json_t *data, int flags, sbuf_t *out,
                tmpl_warnings_t *warn, tmpl_error_t *err);

/* A bounded list of render warnings; NULL when out of memory. */
tmpl_warnings_t *tmpl_warnings_new(void);
/* NULL-safe and idempotent; sets *self_p to NULL. */
void tmpl_warnings_destroy(tmpl_warnings_t **self_p);
/* Forget all warnings so the list can be reused for another render. */
void tmpl_warnings_reset(tmpl_warnings_t *self);
/* Number of warnings kept (at most TMPL_MAX_WARNINGS). */
size_t tmpl_warnings_count(const tmpl_warnings_t *self);
/* Number of further distinct warnings that did not fit. */
size_t tmpl_warnings_dropped(const tmpl_warnings_t *self);
/* Warning i (< count): returns its message ("missing variable contact.x")
 * and stores its position in *line_p and *column_p (either may be NULL).
 * The string lives as long as the list is not reset or destroyed. */
const char *tmpl_warnings_get(const tmpl_warnings_t *self, size_t i, int *line_p, int *column_p);

#endif
