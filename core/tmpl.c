/*
 * tmpl - the email template language (see tmpl.h for the syntax).
 *
 * How: tmpl_parse validates the source as UTF-8, then scans it once, turning
 * text runs and tags into a flat array of nodes. A block ({{#if}}, {{#unless}},
 * {{#each}}) is a node followed by its body, an optional N_ELSE node, the else
 * body and an N_END node; the block node records where its else and end are,
 * so rendering walks index ranges and recursion is bounded by the nesting
 * limit. Paths are split into NUL-terminated segments at parse time so
 * rendering is only jansson lookups and appends.
 *
 * What can go wrong: every parse error carries the line and column of the tag
 * that caused it. Rendering stops (and rolls the output back) on a strict
 * warning, a `required` variable that is missing, out of memory, more than
 * TMPL_MAX_OUTPUT bytes or more than TMPL_MAX_STEPS steps: nested loops over
 * large arrays could otherwise spin for a very long time producing nothing.
 *
 * Security: all template bytes are checked UTF-8 with no NULs; messages
 * quote only identifiers or a single described character, never raw tag
 * text, so they are safe to put in JSON problem documents. Values are
 * HTML-escaped unless the template asks for raw output or the caller renders
 * plain text. NUL characters in data (JSON allows "\u0000") are dropped.
 */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sbuf.h"
#include "tmpl.h"

/* ---------------------------------------------------------------- types -- */

typedef enum {
    N_TEXT,   /* literal bytes of the source */
    N_OUTPUT, /* {{ path | filters }} or {{{ path }}} */
    N_IF,     /* {{#if path}} */
    N_UNLESS, /* {{#unless path}} */
    N_EACH,   /* {{#each path}} */
    N_ELSE,   /* {{else}} inside a block */
    N_END,    /* {{/name}} closing a block */
} s_kind_t;

typedef enum {
    R_DATA,  /* lookup starts at the data root */
    R_THIS,  /* lookup starts at the innermost loop item */
    R_INDEX, /* @index of the innermost loop */
    R_FIRST, /* @first of the innermost loop */
    R_LAST,  /* @last of the innermost loop */
} s_root_t;

typedef enum { F_DEFAULT, F_UPPER, F_LOWER, F_RAW, F_REQUIRED } s_filter_kind_t;

typedef struct {
    s_filter_kind_t kind; /* which filter */
    char *arg;            /* default's literal, unescaped; NULL for others */
    size_t arg_len;       /* bytes in arg */
} s_filter_t;

typedef struct {
    s_root_t root; /* where lookup starts */
    char *segs;    /* segments after the root, each NUL-terminated, back to back */
    int nsegs;     /* number of segments in segs */
    char *text;    /* the path as written, for messages */
} s_path_t;

typedef struct {
    s_kind_t kind;       /* what this node does */
    int line;            /* 1-based line of the tag or text */
    int column;          /* 1-based column, in characters */
    size_t off;          /* N_TEXT: first byte in tmpl->src */
    size_t len;          /* N_TEXT: number of bytes */
    s_path_t path;       /* N_OUTPUT and block nodes: the value used */
    s_filter_t *filters; /* N_OUTPUT: filters, applied in order */
    int nfilters;        /* N_OUTPUT: entries in filters */
    bool raw;            /* N_OUTPUT: written with triple braces */
    size_t else_at;      /* block nodes: index of N_ELSE, or end_at when none */
    size_t end_at;       /* block nodes: index of the matching N_END */
} s_node_t;

struct tmpl {
    char *src;       /* copy of the source; N_TEXT nodes point into it */
    s_node_t *nodes; /* the compiled program */
    size_t nnodes;   /* nodes in use */
    size_t cap;      /* nodes allocated */
};

typedef struct {
    char *message; /* what is wrong, owned */
    int line;      /* position of the tag that warned */
    int column;    /* ditto */
} s_warning_t;

struct tmpl_warnings {
    s_warning_t items[TMPL_MAX_WARNINGS]; /* distinct warnings, in order */
    size_t count;                         /* entries of items in use */
    size_t dropped;                       /* warnings that did not fit */
};

#define NONE SIZE_MAX

static const char *const s_block_names[] = {
    [N_IF] = "if",
    [N_UNLESS] = "unless",
    [N_EACH] = "each",
};

static const struct {
    const char *name;     /* as written after '|' */
    s_filter_kind_t kind; /* what it does */
    bool takes_arg;       /* needs ': "literal"' */
} s_filters[] = {
    {"default", F_DEFAULT, true}, {"upper", F_UPPER, false},       {"lower", F_LOWER, false},
    {"raw", F_RAW, false},        {"required", F_REQUIRED, false},
};

/* --------------------------------------------------------------- errors -- */

static void s_verror(tmpl_error_t *err, int line, int column, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void s_verror(tmpl_error_t *err, int line, int column, const char *fmt, va_list ap)
{
    if (!err)
        return;
    err->line = line;
    err->column = column;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
}

static void s_error(tmpl_error_t *err, int line, int column, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_error(tmpl_error_t *err, int line, int column, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_verror(err, line, column, fmt, ap);
    va_end(ap);
}

/* Describe the character at s (valid UTF-8, n bytes left) for a message
 * without copying anything unprintable into it. */
static const char *s_char_desc(const char *s, size_t n, char buf[24])
{
    unsigned char c = (unsigned char)s[0];
    if (n == 0)
        snprintf(buf, 24, "end of tag");
    else if (c >= 0x21 && c < 0x7f)
        snprintf(buf, 24, "'%c'", c);
    else if (c < 0x80)
        snprintf(buf, 24, "character 0x%02x", c);
    else {
        /* Quote the whole multi-byte character; the source is valid UTF-8. */
        size_t k = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        snprintf(buf, 24, "'%.*s'", (int)(k <= n ? k : n), s);
    }
    return buf;
}

/* ----------------------------------------------------------------- UTF-8 -- */

/* Offset of the first byte that is not part of valid UTF-8 (or is NUL), or
 * len when all is well. Rejects overlongs, surrogates and > U+10FFFF. */
static size_t s_utf8_check(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the 2nd byte */
        if (c == 0)
            return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            need = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;
            if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            if (c == 0xf4)
                hi = 0x8f;
        } else
            return i;
        if (len - i <= need)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        i += need + 1;
    }
    return len;
}

/* ---------------------------------------------------------------- parser -- */

typedef struct {
    const char *src;             /* the source being parsed */
    size_t len;                  /* its length */
    size_t lc_pos;               /* offset that line/column describe */
    int line;                    /* line at lc_pos */
    int column;                  /* column at lc_pos */
    int tag_line;                /* position of the tag being parsed */
    int tag_column;              /* ditto */
    tmpl_t *tmpl;                /* what we build */
    tmpl_error_t *err;           /* where failures go */
    size_t open[TMPL_MAX_DEPTH]; /* node indices of the open blocks */
    int depth;                   /* entries of open in use */
} s_parser_t;

/* The content of one tag, between its braces. */
typedef struct {
    const char *s; /* the source */
    size_t pos;    /* next byte to read */
    size_t end;    /* one past the last byte of the content */
} s_lex_t;

/* Move the line/column cursor forward to off (never backwards). */
static void s_locate(s_parser_t *p, size_t off)
{
    assert(off >= p->lc_pos);
    for (size_t i = p->lc_pos; i < off; i++) {
        unsigned char c = (unsigned char)p->src[i];
        if (c == '\n') {
            p->line++;
            p->column = 1;
        } else if ((c & 0xc0) != 0x80)
            p->column++;
    }
    p->lc_pos = off;
}

static int s_fail(s_parser_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_fail(s_parser_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_verror(p->err, p->tag_line, p->tag_column, fmt, ap);
    va_end(ap);
    return -1;
}

/* Append a zeroed node; its index, or -1 when out of memory. */
static long s_node_add(s_parser_t *p, s_kind_t kind)
{
    tmpl_t *t = p->tmpl;
    if (t->nnodes == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        s_node_t *nodes = realloc(t->nodes, cap * sizeof *nodes);
        if (!nodes)
            return s_fail(p, "out of memory");
        t->nodes = nodes;
        t->cap = cap;
    }
    s_node_t *n = &t->nodes[t->nnodes];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->line = p->tag_line;
    n->column = p->tag_column;
    n->else_at = NONE;
    n->end_at = NONE;
    return (long)t->nnodes++;
}

static int s_text_add(s_parser_t *p, size_t from, size_t to)
{
    if (from == to)
        return 0;
    s_locate(p, from);
    p->tag_line = p->line;
    p->tag_column = p->column;
    long i = s_node_add(p, N_TEXT);
    if (i < 0)
        return -1;
    p->tmpl->nodes[i].off = from;
    p->tmpl->nodes[i].len = to - from;
    return 0;
}

static void s_lex_ws(s_lex_t *lx)
{
    while (lx->pos < lx->end && strchr(" \t\r\n", lx->s[lx->pos]) && lx->s[lx->pos])
        lx->pos++;
}

static bool s_ident_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool s_ident_char(char c)
{
    return s_ident_start(c) || (c >= '0' && c <= '9');
}

/* Read an identifier; false (nothing consumed) when none starts here. */
static bool s_lex_ident(s_lex_t *lx, const char **start, size_t *len)
{
    if (lx->pos >= lx->end || !s_ident_start(lx->s[lx->pos]))
        return false;
    *start = lx->s + lx->pos;
    while (lx->pos < lx->end && s_ident_char(lx->s[lx->pos]))
        lx->pos++;
    *len = (size_t)(lx->s + lx->pos - *start);
    return true;
}

static bool s_is_word(const char *s, size_t len, const char *word)
{
    return strlen(word) == len && memcmp(s, word, len) == 0;
}

static int s_unexpected(s_parser_t *p, s_lex_t *lx, const char *where)
{
    char buf[24];
    return s_fail(p, "unexpected %s %s", s_char_desc(lx->s + lx->pos, lx->end - lx->pos, buf),
                  where);
}

/* Is there an {{#each}} whose loop body we are in (so `this` has a value)? */
static bool s_in_loop(const s_parser_t *p)
{
    for (int d = 0; d < p->depth; d++) {
        const s_node_t *n = &p->tmpl->nodes[p->open[d]];
        if (n->kind == N_EACH && n->else_at == NONE)
            return true;
    }
    return false;
}

/* Parse a path at lx into *path (which the node owns from then on, even on
 * failure, so the caller only has to free the node). */
static int s_parse_path(s_parser_t *p, s_lex_t *lx, s_path_t *path)
{
    size_t start = lx->pos;
    const char *id;
    size_t idlen;
    char buf[24];

    if (lx->pos >= lx->end)
        return s_fail(p, "empty expression");
    if (lx->s[lx->pos] == '@') {
        lx->pos++;
        if (!s_lex_ident(lx, &id, &idlen))
            return s_fail(p, "bad path: expected a name after '@'");
        if (s_is_word(id, idlen, "index"))
            path->root = R_INDEX;
        else if (s_is_word(id, idlen, "first"))
            path->root = R_FIRST;
        else if (s_is_word(id, idlen, "last"))
            path->root = R_LAST;
        else
            return s_fail(p, "unknown variable '@%.*s'", (int)(idlen > 40 ? 40 : idlen), id);
        if (!s_in_loop(p))
            return s_fail(p, "'@%.*s' is only valid inside {{#each}}", (int)idlen, id);
        if (lx->pos < lx->end && lx->s[lx->pos] == '.')
            return s_fail(p, "bad path: '@%.*s' has no fields", (int)idlen, id);
    } else {
        sbuf_t *segs = sbuf_new(32);
        if (!segs)
            return s_fail(p, "out of memory");
        bool first = true;
        for (;;) {
            if (!s_lex_ident(lx, &id, &idlen)) {
                sbuf_destroy(&segs);
                if (first)
                    return s_fail(p, "bad path: expected a name, found %s",
                                  s_char_desc(lx->s + lx->pos, lx->end - lx->pos, buf));
                return s_fail(p, "bad path: expected a name after '.'");
            }
            if (first && s_is_word(id, idlen, "this")) {
                if (!s_in_loop(p)) {
                    sbuf_destroy(&segs);
                    return s_fail(p, "'this' is only valid inside {{#each}}");
                }
                path->root = R_THIS;
            } else {
                if (sbuf_append(segs, id, idlen) || sbuf_append(segs, "", 1)) {
                    sbuf_destroy(&segs);
                    return s_fail(p, "out of memory");
                }
                path->nsegs++;
            }
            first = false;
            if (lx->pos < lx->end && lx->s[lx->pos] == '.')
                lx->pos++;
            else
                break;
        }
        path->segs = sbuf_detach(segs, NULL);
        sbuf_destroy(&segs);
        if (!path->segs)
            return s_fail(p, "out of memory");
    }
    path->text = strndup(lx->s + start, lx->pos - start);
    if (!path->text)
        return s_fail(p, "out of memory");
    return 0;
}

/* Parse a "..." literal with \" and \\ escapes into a new string. */
static int s_parse_string(s_parser_t *p, s_lex_t *lx, char **out, size_t *out_len)
{
    if (lx->pos >= lx->end || lx->s[lx->pos] != '"')
        return s_unexpected(p, lx, "(default needs a \"string\")");
    lx->pos++;
    sbuf_t *b = sbuf_new(16);
    if (!b)
        return s_fail(p, "out of memory");
    for (;;) {
        if (lx->pos >= lx->end) {
            sbuf_destroy(&b);
            return s_fail(p, "unterminated string");
        }
        char c = lx->s[lx->pos++];
        if (c == '"')
            break;
        if (c == '\\') {
            if (lx->pos >= lx->end || (lx->s[lx->pos] != '"' && lx->s[lx->pos] != '\\')) {
                sbuf_destroy(&b);
                return s_fail(p, "bad escape in string (only \\\" and \\\\)");
            }
            c = lx->s[lx->pos++];
        }
        if (sbuf_append(b, &c, 1)) {
            sbuf_destroy(&b);
            return s_fail(p, "out of memory");
        }
    }
    *out = sbuf_detach(b, out_len);
    sbuf_destroy(&b);
    return *out ? 0 : s_fail(p, "out of memory");
}

static int s_parse_filters(s_parser_t *p, s_lex_t *lx, s_node_t *n)
{
    for (;;) {
        s_lex_ws(lx);
        if (lx->pos >= lx->end)
            return 0;
        if (lx->s[lx->pos] != '|')
            return s_unexpected(p, lx, "after the path");
        lx->pos++;
        s_lex_ws(lx);
        const char *id;
        size_t idlen;
        if (!s_lex_ident(lx, &id, &idlen))
            return s_unexpected(p, lx, "(expected a filter name after '|')");
        size_t f;
        for (f = 0; f < sizeof s_filters / sizeof s_filters[0]; f++)
            if (s_is_word(id, idlen, s_filters[f].name))
                break;
        if (f == sizeof s_filters / sizeof s_filters[0])
            return s_fail(p, "unknown filter '%.*s'", (int)(idlen > 40 ? 40 : idlen), id);
        s_filter_t *fs = realloc(n->filters, (size_t)(n->nfilters + 1) * sizeof *fs);
        if (!fs)
            return s_fail(p, "out of memory");
        n->filters = fs;
        s_filter_t *flt = &fs[n->nfilters++];
        memset(flt, 0, sizeof *flt);
        flt->kind = s_filters[f].kind;
        s_lex_ws(lx);
        bool colon = lx->pos < lx->end && lx->s[lx->pos] == ':';
        if (s_filters[f].takes_arg) {
            if (!colon)
                return s_fail(p, "filter '%s' needs a value, as in %s: \"text\"", s_filters[f].name,
                              s_filters[f].name);
            lx->pos++;
            s_lex_ws(lx);
            if (s_parse_string(p, lx, &flt->arg, &flt->arg_len))
                return -1;
        } else if (colon)
            return s_fail(p, "filter '%s' takes no value", s_filters[f].name);
    }
}

/* {{#name path}} */
/* Read the block name after '#' or '/' (sigil) into *kind. */
static int s_parse_block_name(s_parser_t *p, s_lex_t *lx, char sigil, s_kind_t *kind)
{
    const char *id;
    size_t idlen;
    s_lex_ws(lx);
    if (!s_lex_ident(lx, &id, &idlen))
        return s_unexpected(p, lx,
                            sigil == '#' ? "(expected a block name after '#')"
                                         : "(expected a block name after '/')");
    for (s_kind_t k = N_IF; k <= N_EACH; k++)
        if (s_is_word(id, idlen, s_block_names[k])) {
            *kind = k;
            return 0;
        }
    return s_fail(p, "unknown block %s'%.*s'", sigil == '#' ? "helper " : "",
                  (int)(idlen > 40 ? 40 : idlen), id);
}

static int s_parse_open(s_parser_t *p, s_lex_t *lx)
{
    s_kind_t kind;
    if (s_parse_block_name(p, lx, '#', &kind))
        return -1;
    if (p->depth >= TMPL_MAX_DEPTH)
        return s_fail(p, "blocks nested deeper than %d", TMPL_MAX_DEPTH);
    if (lx->pos < lx->end && !strchr(" \t\r\n", lx->s[lx->pos]))
        return s_unexpected(p, lx, "after the block name");
    s_lex_ws(lx);
    if (lx->pos >= lx->end)
        return s_fail(p, "{{#%s}} needs a path", s_block_names[kind]);
    long i = s_node_add(p, kind);
    if (i < 0)
        return -1;
    if (s_parse_path(p, lx, &p->tmpl->nodes[i].path))
        return -1;
    s_lex_ws(lx);
    if (lx->pos < lx->end)
        return s_unexpected(p, lx, "after the path (blocks take no filters)");
    p->open[p->depth++] = (size_t)i;
    return 0;
}

/* {{/name}} */
static int s_parse_close(s_parser_t *p, s_lex_t *lx)
{
    s_kind_t kind;
    if (s_parse_block_name(p, lx, '/', &kind))
        return -1;
    s_lex_ws(lx);
    if (lx->pos < lx->end)
        return s_unexpected(p, lx, "in a closing tag");
    if (p->depth == 0)
        return s_fail(p, "{{/%s}} without a matching {{#%s}}", s_block_names[kind],
                      s_block_names[kind]);
    s_node_t *open = &p->tmpl->nodes[p->open[p->depth - 1]];
    if (open->kind != kind)
        return s_fail(p, "{{/%s}} closes {{#%s}} opened at line %d, column %d", s_block_names[kind],
                      s_block_names[open->kind], open->line, open->column);
    long i = s_node_add(p, N_END);
    if (i < 0)
        return -1;
    open = &p->tmpl->nodes[p->open[--p->depth]]; /* s_node_add may have moved it */
    open->end_at = (size_t)i;
    if (open->else_at == NONE)
        open->else_at = (size_t)i;
    return 0;
}

static int s_parse_else(s_parser_t *p)
{
    if (p->depth == 0)
        return s_fail(p, "{{else}} outside a block");
    size_t at = p->open[p->depth - 1];
    if (p->tmpl->nodes[at].else_at != NONE)
        return s_fail(p, "second {{else}} in one {{#%s}}", s_block_names[p->tmpl->nodes[at].kind]);
    long i = s_node_add(p, N_ELSE);
    if (i < 0)
        return -1;
    p->tmpl->nodes[at].else_at = (size_t)i;
    return 0;
}

/* {{ path | filters }}, or with raw set the content of {{{ ... }}}. */
static int s_parse_output(s_parser_t *p, s_lex_t *lx, bool raw)
{
    long i = s_node_add(p, N_OUTPUT);
    if (i < 0)
        return -1;
    p->tmpl->nodes[i].raw = raw;
    if (s_parse_path(p, lx, &p->tmpl->nodes[i].path))
        return -1;
    return s_parse_filters(p, lx, &p->tmpl->nodes[i]);
}

/* Find the end of the tag whose content starts at from: the offset of its
 * closing braces, or NONE after reporting why there is none. Skips string
 * literals, so `default: "}}"` works. */
static size_t s_tag_end(s_parser_t *p, size_t from)
{
    const char *s = p->src;
    size_t i = from;
    while (i < p->len) {
        if (s[i] == '"') {
            for (i++; i < p->len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            if (i >= p->len) {
                s_fail(p, "unterminated string");
                return NONE;
            }
            i++;
        } else if (s[i] == '}' && i + 1 < p->len && s[i + 1] == '}')
            return i;
        else if (s[i] == '{' && i + 1 < p->len && s[i + 1] == '{')
            break; /* another tag starts: this one was never closed */
        else
            i++;
    }
    s_fail(p, "unclosed tag (no '}}')");
    return NONE;
}

/* Parse the tag starting at offset at ("{{"); on success *next is the first
 * offset after it. */
static int s_parse_tag(s_parser_t *p, size_t at, size_t *next)
{
    const char *s = p->src;
    s_locate(p, at);
    p->tag_line = p->line;
    p->tag_column = p->column;

    if (at + 2 < p->len && s[at + 2] == '!') {
        /* {{!-- ... --}} may contain "}}"; {{! ... }} may not. */
        bool dashes = at + 4 < p->len && s[at + 3] == '-' && s[at + 4] == '-';
        const char *end = dashes ? memmem(s + at + 5, p->len - at - 5, "--}}", 4)
                                 : memmem(s + at + 3, p->len - at - 3, "}}", 2);
        if (!end)
            return s_fail(p, "unclosed comment");
        *next = (size_t)(end - s) + (dashes ? 4 : 2);
        return 0;
    }
    bool triple = at + 2 < p->len && s[at + 2] == '{';
    size_t from = at + (triple ? 3 : 2);
    size_t end = s_tag_end(p, from);
    if (end == NONE)
        return -1;
    *next = end + 2;
    if (triple) {
        if (end + 2 >= p->len || s[end + 2] != '}')
            return s_fail(p, "'{{{' closed by '}}' instead of '}}}'");
        *next = end + 3;
    }
    s_lex_t lx = {.s = s, .pos = from, .end = end};
    s_lex_ws(&lx);
    if (lx.pos == lx.end)
        return s_fail(p, "empty expression");
    if (triple)
        return s_parse_output(p, &lx, true);
    if (s[lx.pos] == '#') {
        lx.pos++;
        return s_parse_open(p, &lx);
    }
    if (s[lx.pos] == '/') {
        lx.pos++;
        return s_parse_close(p, &lx);
    }
    const char *id;
    size_t idlen;
    s_lex_t probe = lx;
    if (s_lex_ident(&probe, &id, &idlen) && s_is_word(id, idlen, "else")) {
        s_lex_ws(&probe);
        if (probe.pos == probe.end)
            return s_parse_else(p);
    }
    return s_parse_output(p, &lx, false);
}

static int s_parse_all(s_parser_t *p)
{
    size_t pos = 0;
    while (pos < p->len) {
        const char *open = memmem(p->src + pos, p->len - pos, "{{", 2);
        if (!open) {
            if (s_text_add(p, pos, p->len))
                return -1;
            break;
        }
        size_t at = (size_t)(open - p->src);
        if (at > pos && p->src[at - 1] == '\\') {
            /* \{{ is a literal "{{": drop the backslash, keep the braces. */
            if (s_text_add(p, pos, at - 1) || s_text_add(p, at, at + 2))
                return -1;
            pos = at + 2;
            continue;
        }
        if (s_text_add(p, pos, at))
            return -1;
        if (s_parse_tag(p, at, &pos))
            return -1;
    }
    if (p->depth > 0) {
        const s_node_t *n = &p->tmpl->nodes[p->open[p->depth - 1]];
        p->tag_line = n->line;
        p->tag_column = n->column;
        return s_fail(p, "{{#%s}} is never closed", s_block_names[n->kind]);
    }
    return 0;
}

tmpl_t *tmpl_parse(const char *src, size_t len, tmpl_error_t *err)
{
    assert(src || len == 0);
    if (len > TMPL_MAX_SOURCE) {
        s_error(err, 1, 1, "template is larger than %d bytes", TMPL_MAX_SOURCE);
        return NULL;
    }
    tmpl_t *self = calloc(1, sizeof *self);
    if (self)
        self->src = malloc(len + 1);
    if (!self || !self->src) {
        free(self);
        s_error(err, 1, 1, "out of memory");
        return NULL;
    }
    if (len)
        memcpy(self->src, src, len);
    self->src[len] = '\0';

    s_parser_t p = {.src = self->src, .len = len, .line = 1, .column = 1, .tmpl = self, .err = err};
    size_t bad = s_utf8_check((const unsigned char *)self->src, len);
    if (bad < len) {
        s_locate(&p, bad);
        p.tag_line = p.line;
        p.tag_column = p.column;
        if (self->src[bad] == '\0')
            s_fail(&p, "NUL character is not allowed");
        else
            s_fail(&p, "invalid UTF-8");
        tmpl_destroy(&self);
        return NULL;
    }
    if (s_parse_all(&p))
        tmpl_destroy(&self);
    return self;
}

void tmpl_destroy(tmpl_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tmpl_t *self = *self_p;
    for (size_t i = 0; i < self->nnodes; i++) {
        s_node_t *n = &self->nodes[i];
        free(n->path.segs);
        free(n->path.text);
        for (int f = 0; f < n->nfilters; f++)
            free(n->filters[f].arg);
        free(n->filters);
    }
    free(self->nodes);
    free(self->src);
    free(self);
    *self_p = NULL;
}

/* -------------------------------------------------------------- warnings -- */

tmpl_warnings_t *tmpl_warnings_new(void)
{
    return calloc(1, sizeof(tmpl_warnings_t));
}

void tmpl_warnings_reset(tmpl_warnings_t *self)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++)
        free(self->items[i].message);
    self->count = 0;
    self->dropped = 0;
}

void tmpl_warnings_destroy(tmpl_warnings_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tmpl_warnings_reset(*self_p);
    free(*self_p);
    *self_p = NULL;
}

size_t tmpl_warnings_count(const tmpl_warnings_t *self)
{
    return self ? self->count : 0;
}

size_t tmpl_warnings_dropped(const tmpl_warnings_t *self)
{
    return self ? self->dropped : 0;
}

const char *tmpl_warnings_get(const tmpl_warnings_t *self, size_t i, int *line_p, int *column_p)
{
    if (!self || i >= self->count)
        return NULL;
    if (line_p)
        *line_p = self->items[i].line;
    if (column_p)
        *column_p = self->items[i].column;
    return self->items[i].message;
}

/* Record a warning unless the same one (same tag, same message) is already
 * there: a tag inside a loop would otherwise fill the list with repeats. */
static void s_warnings_add(tmpl_warnings_t *self, int line, int column, const char *message)
{
    if (!self)
        return;
    for (size_t i = 0; i < self->count; i++)
        if (self->items[i].line == line && self->items[i].column == column &&
            strcmp(self->items[i].message, message) == 0)
            return;
    char *copy = self->count < TMPL_MAX_WARNINGS ? strdup(message) : NULL;
    if (!copy) {
        self->dropped++;
        return;
    }
    self->items[self->count++] = (s_warning_t){.message = copy, .line = line, .column = column};
}

/* -------------------------------------------------------------- renderer -- */

typedef struct {
    const json_t *array; /* the array being walked */
    size_t index;        /* current item */
    size_t size;         /* number of items */
} s_frame_t;

typedef struct {
    const tmpl_t *tmpl;               /* what we render */
    const json_t *data;               /* the root of the data, may be NULL */
    int flags;                        /* TMPL_STRICT, TMPL_TEXT */
    sbuf_t *out;                      /* where output goes */
    size_t out_start;                 /* length of out on entry */
    tmpl_warnings_t *warn;            /* lenient problems, may be NULL */
    tmpl_error_t *err;                /* failure details, may be NULL */
    sbuf_t *scratch;                  /* holds the current value's text */
    sbuf_t *spare;                    /* target of the next text transform */
    s_frame_t frames[TMPL_MAX_DEPTH]; /* open {{#each}} loops, innermost last */
    int nframes;                      /* entries of frames in use */
    size_t steps;                     /* nodes and iterations visited */
} s_render_t;

typedef enum {
    V_MISSING, /* the path leads nowhere */
    V_JSON,    /* a JSON value (borrowed from the data) */
    V_INT,     /* @index */
    V_TEXT,    /* bytes, after a filter */
} s_vkind_t;

typedef struct {
    s_vkind_t kind;     /* which of the fields below is meaningful */
    const json_t *json; /* V_JSON */
    long long num;      /* V_INT */
    const char *text;   /* V_TEXT: stable while the node renders */
    size_t len;         /* V_TEXT */
} s_value_t;

static int s_rfail(s_render_t *r, const s_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_rfail(s_render_t *r, const s_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_verror(r->err, n->line, n->column, fmt, ap);
    va_end(ap);
    return -1;
}

/* A lenient problem: a warning, or the end of the render when strict. */
static int s_warn(s_render_t *r, const s_node_t *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_warn(s_render_t *r, const s_node_t *n, const char *fmt, ...)
{
    char msg[sizeof r->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->flags & TMPL_STRICT)
        return s_rfail(r, n, "%s", msg);
    s_warnings_add(r->warn, n->line, n->column, msg);
    return 0;
}

static s_value_t s_resolve(const s_render_t *r, const s_path_t *path)
{
    s_value_t v = {.kind = V_MISSING};
    const json_t *cur = r->data;
    if (path->root != R_DATA) {
        assert(r->nframes > 0); /* the parser only allows these inside a loop */
        const s_frame_t *f = &r->frames[r->nframes - 1];
        switch (path->root) {
        case R_INDEX:
            return (s_value_t){.kind = V_INT, .num = (long long)f->index};
        case R_FIRST:
            return (s_value_t){.kind = V_JSON, .json = json_boolean(f->index == 0)};
        case R_LAST:
            return (s_value_t){.kind = V_JSON, .json = json_boolean(f->index + 1 == f->size)};
        default:
            cur = json_array_get(f->array, f->index);
        }
    }
    const char *seg = path->segs;
    for (int i = 0; i < path->nsegs && cur; i++) {
        cur = json_is_object(cur) ? json_object_get(cur, seg) : NULL;
        seg += strlen(seg) + 1;
    }
    if (cur) {
        v.kind = V_JSON;
        v.json = cur;
    }
    return v;
}

static bool s_truthy(const s_value_t *v)
{
    switch (v->kind) {
    case V_MISSING:
        return false;
    case V_INT:
        return v->num != 0;
    case V_TEXT:
        return v->len > 0;
    case V_JSON:
        break;
    }
    const json_t *j = v->json;
    switch (json_typeof(j)) {
    case JSON_STRING:
        return json_string_length(j) > 0;
    case JSON_INTEGER:
        return json_integer_value(j) != 0;
    case JSON_REAL:
        return json_real_value(j) != 0.0;
    case JSON_ARRAY:
        return json_array_size(j) > 0;
    case JSON_OBJECT:
    case JSON_TRUE:
        return true;
    default:
        return false;
    }
}

/* Missing, null or "": what `default` replaces. */
static bool s_blank(const s_value_t *v)
{
    if (v->kind == V_MISSING)
        return true;
    if (v->kind == V_TEXT)
        return v->len == 0;
    if (v->kind == V_JSON)
        return json_is_null(v->json) ||
               (json_is_string(v->json) && json_string_length(v->json) == 0);
    return false;
}

/* Shortest decimal that reads back as d; integral values without ".0". */
static void s_format_real(double d, char buf[40])
{
    if (d == 0.0) {
        snprintf(buf, 40, "0");
        return;
    }
    if (d == floor(d) && fabs(d) < 1e15) {
        snprintf(buf, 40, "%.0f", d);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 40, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

static void s_set_text(s_value_t *v, const char *text, size_t len)
{
    *v = (s_value_t){.kind = V_TEXT, .text = text, .len = len};
}

/* Turn v into text, warning about what cannot be shown. */
static int s_stringify(s_render_t *r, const s_node_t *n, s_value_t *v)
{
    char num[40];
    if (v->kind == V_TEXT)
        return 0;
    if (v->kind == V_MISSING) {
        s_set_text(v, "", 0);
        return s_warn(r, n, "missing variable %s", n->path.text);
    }
    if (v->kind == V_INT) {
        snprintf(num, sizeof num, "%lld", v->num);
    } else {
        const json_t *j = v->json;
        switch (json_typeof(j)) {
        case JSON_STRING:
            s_set_text(v, json_string_value(j), json_string_length(j));
            return 0;
        case JSON_INTEGER:
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
            break;
        case JSON_REAL:
            s_format_real(json_real_value(j), num);
            break;
        case JSON_TRUE:
            s_set_text(v, "true", 4);
            return 0;
        case JSON_FALSE:
            s_set_text(v, "false", 5);
            return 0;
        case JSON_NULL:
            s_set_text(v, "", 0);
            return 0;
        default:
            s_set_text(v, "", 0);
            return s_warn(r, n, "%s is %s and renders as nothing", n->path.text,
                          json_is_object(j) ? "an object" : "an array");
        }
    }
    sbuf_reset(r->scratch);
    if (sbuf_append_str(r->scratch, num))
        return s_rfail(r, n, "out of memory");
    s_set_text(v, sbuf_data(r->scratch), sbuf_len(r->scratch));
    return 0;
}

/* upper/lower: write the mapped text into the spare buffer, then swap, so a
 * value that already lives in scratch is never read while it is written. */
static int s_change_case(s_render_t *r, const s_node_t *n, s_value_t *v, bool upper)
{
    if (s_stringify(r, n, v))
        return -1;
    sbuf_reset(r->spare);
    if (sbuf_reserve(r->spare, v->len))
        return s_rfail(r, n, "out of memory");
    for (size_t i = 0; i < v->len; i++) {
        char c = v->text[i];
        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        else if (!upper && c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        sbuf_append(r->spare, &c, 1); /* cannot fail: reserved above */
    }
    sbuf_t *tmp = r->scratch;
    r->scratch = r->spare;
    r->spare = tmp;
    s_set_text(v, sbuf_data(r->scratch), sbuf_len(r->scratch));
    return 0;
}

/* Append len bytes, holding to the output limit. */
static int s_put(s_render_t *r, const s_node_t *n, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    if (len > TMPL_MAX_OUTPUT - (sbuf_len(r->out) - r->out_start))
        return s_rfail(r, n, "output larger than %d bytes", TMPL_MAX_OUTPUT);
    if (sbuf_append(r->out, data, len))
        return s_rfail(r, n, "out of memory");
    return 0;
}

/* What each escaped byte becomes in HTML: the OWASP set, so values are safe
 * in element content and in quoted or unquoted attribute values. */
static const char *const s_entities[128] = {
    ['&'] = "&amp;",  ['<'] = "&lt;",  ['>'] = "&gt;",  ['"'] = "&quot;",
    ['\''] = "&#39;", ['`'] = "&#96;", ['='] = "&#61;",
};

/* Append text, HTML-escaped when escape is set; NULs are dropped. */
static int s_emit(s_render_t *r, const s_node_t *n, const char *text, size_t len, bool escape)
{
    size_t run = 0; /* start of the bytes not yet written */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        const char *rep = c == 0 ? "" : escape && c < 128 ? s_entities[c] : NULL;
        if (!rep)
            continue;
        if (s_put(r, n, text + run, i - run) || s_put(r, n, rep, strlen(rep)))
            return -1;
        run = i + 1;
    }
    return s_put(r, n, text + run, len - run);
}

static int s_output(s_render_t *r, const s_node_t *n)
{
    s_value_t v = s_resolve(r, &n->path);
    bool raw = n->raw || (r->flags & TMPL_TEXT);
    for (int f = 0; f < n->nfilters; f++) {
        const s_filter_t *flt = &n->filters[f];
        switch (flt->kind) {
        case F_DEFAULT:
            if (s_blank(&v))
                s_set_text(&v, flt->arg, flt->arg_len);
            break;
        case F_UPPER:
        case F_LOWER:
            if (s_change_case(r, n, &v, flt->kind == F_UPPER))
                return -1;
            break;
        case F_RAW:
            raw = true;
            break;
        case F_REQUIRED:
            if (v.kind == V_MISSING || (v.kind == V_JSON && json_is_null(v.json)))
                return s_rfail(r, n, "required variable %s is missing", n->path.text);
            break;
        }
    }
    if (s_stringify(r, n, &v))
        return -1;
    return s_emit(r, n, v.text, v.len, !raw);
}

static int s_step(s_render_t *r, const s_node_t *n)
{
    if (++r->steps > TMPL_MAX_STEPS)
        return s_rfail(r, n, "template does more than %d steps (loops too large)", TMPL_MAX_STEPS);
    return 0;
}

/* Render nodes [from, to). */
static int s_run(s_render_t *r, size_t from, size_t to)
{
    const s_node_t *nodes = r->tmpl->nodes;
    size_t i = from;
    while (i < to) {
        const s_node_t *n = &nodes[i];
        if (s_step(r, n))
            return -1;
        switch (n->kind) {
        case N_TEXT:
            if (s_put(r, n, r->tmpl->src + n->off, n->len))
                return -1;
            i++;
            continue;
        case N_OUTPUT:
            if (s_output(r, n))
                return -1;
            i++;
            continue;
        case N_IF:
        case N_UNLESS: {
            s_value_t v = s_resolve(r, &n->path);
            bool yes = s_truthy(&v) != (n->kind == N_UNLESS);
            if (yes ? s_run(r, i + 1, n->else_at) : s_run(r, n->else_at + 1, n->end_at))
                return -1;
            i = n->end_at + 1;
            continue;
        }
        case N_EACH: {
            s_value_t v = s_resolve(r, &n->path);
            size_t size = v.kind == V_JSON && json_is_array(v.json) ? json_array_size(v.json) : 0;
            if (size == 0) {
                if (v.kind == V_JSON && !json_is_array(v.json) && !json_is_null(v.json) &&
                    s_warn(r, n, "%s is not an array", n->path.text))
                    return -1;
                if (s_run(r, n->else_at + 1, n->end_at))
                    return -1;
            } else {
                assert(r->nframes < TMPL_MAX_DEPTH);
                s_frame_t *f = &r->frames[r->nframes++];
                *f = (s_frame_t){.array = v.json, .size = size};
                for (; f->index < size; f->index++)
                    if (s_step(r, n) || s_run(r, i + 1, n->else_at))
                        return -1;
                r->nframes--;
            }
            i = n->end_at + 1;
            continue;
        }
        case N_ELSE:
        case N_END:
            break;
        }
        assert(!"tmpl: else/end node reached outside its block");
        return -1;
    }
    return 0;
}

int tmpl_render(const tmpl_t *self, const json_t *data, int flags, sbuf_t *out,
                tmpl_warnings_t *warn, tmpl_error_t *err)
{
    assert(self && out);
    s_render_t r = {
        .tmpl = self,
        .data = data,
        .flags = flags,
        .out = out,
        .out_start = sbuf_len(out),
        .warn = warn,
        .err = err,
        .scratch = sbuf_new(64),
        .spare = sbuf_new(64),
    };
    int rc = -1;
    if (!r.scratch || !r.spare)
        s_error(err, 1, 1, "out of memory");
    else
        rc = s_run(&r, 0, self->nnodes);
    if (rc)
        sbuf_truncate(out, r.out_start);
    sbuf_destroy(&r.scratch);
    sbuf_destroy(&r.spare);
    return rc;
}
