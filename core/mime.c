/*
 * mime - RFC 5322 / MIME message builder (see mime.h for the contract).
 *
 * How: every leaf (text, html, each attachment) is rendered on its own into
 * a pair of buffers, its part headers and its encoded body. Multiparts are
 * then assembled bottom-up: related and alternative are materialized into
 * new buffers (small: text, html and inline images), the outermost level is
 * written straight into the caller's buffer after the message headers, so a
 * big attachment is encoded once and copied once. Each boundary is drawn at
 * random and searched for in everything it encloses before it is used.
 *
 * Headers go through a tiny writer (hw_t) that appends tokens, each with the
 * whitespace before it, and folds before that whitespace when the line would
 * pass 78 octets. Literal words and the blank runs before them are capped
 * (HDR_WORD_MAX, HDR_WSP_MAX: a fold keeps the run, so the pair is what a
 * folded line can hold) and anything else is turned into encoded words that
 * fit the room left on the line, so no header line can reach 998.
 *
 * What can go wrong: bad input (refused with a reason that never quotes the
 * input), out of memory, getrandom failing. On any failure the caller's
 * buffer is truncated back to where it was.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <assert.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "email_addr.h"
#include "mime.h"

#define LINE_SOFT 78            /* fold header lines before they pass this (RFC 5322 2.1.1) */
#define HDR_WORD_MAX 900        /* longest literal header word; longer ones are encoded */
#define HDR_WSP_MAX 64          /* longest literal blank run; with a word, under 998 */
#define EW_MAX 75               /* longest encoded word (RFC 2047 2) */
#define EW_OVERHEAD 12          /* "=?UTF-8?B?" + "?=" */
#define EW_MIN 24               /* narrower room than this: fold and start a fresh line */
#define PHRASE_MAX 200          /* longest display name written literally */
#define QP_COL_MAX 75           /* QP content per line; the soft-break '=' makes 76 */
#define TEXT_LINE_MAX 998       /* 7bit text lines must fit this (RFC 5322 2.1.1) */
#define B64_RAW_LINE 57         /* input bytes per 76-char base64 line */
#define FILENAME_MAX_LEN 255    /* bytes of an attachment name */
#define PARAM_SEG 60            /* chars of one RFC 2231 parameter segment */
#define MSGID_DOMAIN_MAX 200    /* so a generated Message-ID fits MIME_MESSAGE_ID_MAX */
#define MSGID_MAX 250           /* bytes of a caller-given Message-ID */
#define MSGID_DOMAIN_FALLBACK "postchi.invalid" /* From's domain has no ASCII form that fits */
#define CID_MAX 200             /* bytes of a Content-ID */
#define CONTENT_TYPE_MAX 255    /* bytes of an attachment's content type, parameters included */
#define CT_PARAMS_MAX 64        /* parameters that fit in CONTENT_TYPE_MAX (";a=b" each) */
#define UNSUB_MAX 900           /* bytes of a List-Unsubscribe mailto or URL */
#define BOUNDARY_PREFIX "=_pc_" /* '=' and '_' occur in neither base64 nor QP output */
#define BOUNDARY_RANDOM 12      /* random bytes (hex) in a boundary */
#define BOUNDARY_LEN (sizeof BOUNDARY_PREFIX - 1 + 2 * BOUNDARY_RANDOM)
#define BOUNDARY_TRIES 8 /* draws before giving up (a collision is ~2^-96) */
#define CHUNK 16384      /* local encode buffer, flushed with one append */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char HEX[] = "0123456789ABCDEF";
static const char *const DAYS[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const MONTHS[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Fields only this module writes (lower case). */
static const char *const OWNED[] = {
    "from",         "to",       "cc",     "bcc",         "subject",  "date",           "message-id",
    "mime-version", "reply-to", "sender", "return-path", "received", "dkim-signature", NULL};
/* Prefixes of field families only this module (or the MTA) writes. */
static const char *const OWNED_PREFIX[] = {"content-", "list-unsubscribe", "resent-", NULL};

/* One MIME entity as rendered: its header lines (each ending CRLF) and its
 * encoded body (no trailing CRLF: the delimiter that follows owns it). */
typedef struct {
    sbuf_t *hdrs; /* "Content-Type: ..." lines */
    sbuf_t *body; /* encoded body */
} ent_t;

/* Header line writer. */
typedef struct {
    sbuf_t *out; /* where the lines go */
    size_t col;  /* octets on the current line */
    int first;   /* no token written yet (never fold before the first) */
    int rc;      /* 0, or -1 once an append failed */
} hw_t;

/* One parameter of a content type, as spans of the text it was parsed from. */
typedef struct {
    size_t attr;      /* offset of the attribute */
    size_t attr_len;  /* its bytes */
    size_t value;     /* offset of the value as written (a quoted-string keeps its quotes) */
    size_t value_len; /* its bytes */
} ct_param_t;

typedef enum { CTE_7BIT, CTE_QP, CTE_B64 } cte_t;

static const char *const CTE_NAME[] = {"7bit", "quoted-printable", "base64"};

__attribute__((format(printf, 2, 3))) static int s_fail(sbuf_t *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        sbuf_vappendf(err, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int s_is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int s_is_wsp(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* Length of the well-formed UTF-8 sequence at s[0..len), 0 when there is
 * none (overlong forms, surrogates and code points past U+10FFFF refused). */
static size_t s_utf8_seq(const unsigned char *s, size_t len)
{
    unsigned c = s[0], cp, min;
    size_t n;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        n = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static int s_utf8_ok(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = s_utf8_seq(u + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

int mime_header_value_ok(const char *v)
{
    if (!v)
        return 0;
    size_t len = strnlen(v, MIME_HEADER_VALUE_MAX + 1);
    if (len > MIME_HEADER_VALUE_MAX || memchr(v, '\r', len) || memchr(v, '\n', len))
        return 0;
    return s_utf8_ok(v, len);
}

int mime_custom_header_ok(const char *name)
{
    if (!name)
        return 0;
    size_t len = strlen(name);
    if (len == 0 || len > 76)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 33 || c > 126 || c == ':')
            return 0;
    }
    for (size_t i = 0; OWNED[i]; i++)
        if (strcasecmp(name, OWNED[i]) == 0)
            return 0;
    for (size_t i = 0; OWNED_PREFIX[i]; i++)
        if (strncasecmp(name, OWNED_PREFIX[i], strlen(OWNED_PREFIX[i])) == 0)
            return 0;
    return 1;
}

/* ---- encoders ---------------------------------------------------------- */

/* mark followed by c as two upper-case hex digits (QP "=XX", RFC 2231
 * "%XX") at d; returns 3. */
static size_t s_hex_escape(char *d, char mark, unsigned char c)
{
    d[0] = mark;
    d[1] = HEX[c >> 4];
    d[2] = HEX[c & 15];
    return 3;
}

/* Base64 of s[0..n) without line breaks into dst (room for 4 * ceil(n / 3));
 * returns the chars written. */
static size_t s_b64_block(char *dst, const unsigned char *s, size_t n)
{
    char *d = dst;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        d[0] = B64[v >> 18];
        d[1] = B64[(v >> 12) & 63];
        d[2] = B64[(v >> 6) & 63];
        d[3] = B64[v & 63];
        d += 4;
    }
    if (i < n) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0);
        d[0] = B64[v >> 18];
        d[1] = B64[(v >> 12) & 63];
        d[2] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        d[3] = '=';
        d += 4;
    }
    return (size_t)(d - dst);
}

/* A local buffer in front of an sbuf: encoders write bytes here and they go
 * out CHUNK at a time, never one append per byte. */
typedef struct {
    sbuf_t *out;     /* destination */
    size_t p;        /* bytes waiting in buf */
    int rc;          /* 0, or -1 once an append failed */
    char buf[CHUNK]; /* the waiting bytes */
} chunk_t;

static void s_chunk_flush(chunk_t *c)
{
    if (c->p && sbuf_append(c->out, c->buf, c->p) < 0)
        c->rc = -1;
    c->p = 0;
}

/* Make sure need more bytes fit in buf (need <= CHUNK). */
static void s_chunk_room(chunk_t *c, size_t need)
{
    if (c->p + need > sizeof c->buf)
        s_chunk_flush(c);
}

static int s_chunk_end(chunk_t *c)
{
    s_chunk_flush(c);
    return c->rc;
}

/* Base64 of s[0..n) in 76-char lines joined by CRLF (none after the last),
 * appended to out. 0 or -1 (out of memory). */
static int s_b64_lines(sbuf_t *out, const unsigned char *s, size_t n)
{
    if (sbuf_reserve(out, (n / B64_RAW_LINE + 1) * 78) < 0)
        return -1;
    chunk_t c = {.out = out};
    for (size_t i = 0; i < n; i += B64_RAW_LINE) {
        size_t take = n - i < B64_RAW_LINE ? n - i : B64_RAW_LINE;
        s_chunk_room(&c, 80);
        if (i) {
            c.buf[c.p++] = '\r';
            c.buf[c.p++] = '\n';
        }
        c.p += s_b64_block(c.buf + c.p, s + i, take);
    }
    return s_chunk_end(&c);
}

/* text[0..len) with every CR, LF and CRLF turned into CRLF, appended to out. */
static int s_crlf(sbuf_t *out, const char *text, size_t len)
{
    chunk_t c = {.out = out};
    for (size_t i = 0; i < len; i++) {
        s_chunk_room(&c, 2);
        if (text[i] == '\r' || text[i] == '\n') {
            if (text[i] == '\r' && i + 1 < len && text[i + 1] == '\n')
                i++;
            c.buf[c.p++] = '\r';
            c.buf[c.p++] = '\n';
        } else {
            c.buf[c.p++] = text[i];
        }
    }
    return s_chunk_end(&c);
}

/* A byte QP may carry as itself (space and tab only inside a line). */
static int s_qp_literal(unsigned char c)
{
    return c >= 33 && c <= 126 && c != '=';
}

/* Pick the transfer encoding for CRLF-normalized text: 7bit when it already
 * is (ASCII, no controls, lines within 998), else QP unless base64 is
 * clearly shorter. QP triples every non-ASCII byte, so scripts other than
 * Latin go base64; mostly-ASCII text stays QP even when base64 would be a
 * little shorter, because it stays readable and spam filters distrust
 * base64 text that did not need it. */
static cte_t s_pick_cte(const unsigned char *s, size_t len)
{
    int ascii = 1;
    size_t line = 0, qp = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c == '\r' && i + 1 < len && s[i + 1] == '\n') {
            i++;
            line = 0;
            qp += 2;
            continue;
        }
        if (++line > TEXT_LINE_MAX)
            ascii = 0;
        if (c >= 0x7F || (c < 32 && c != '\t'))
            ascii = 0;
        qp += (s_qp_literal(c) || s_is_wsp(c)) ? 1 : 3;
    }
    if (ascii)
        return CTE_7BIT;
    qp += qp / QP_COL_MAX * 3;
    size_t b64 = (len + 2) / 3 * 4 + len / B64_RAW_LINE * 2;
    return qp <= b64 + b64 / 4 ? CTE_QP : CTE_B64;
}

/* Quoted-printable (RFC 2045 6.7) of CRLF-normalized s[0..len): CRLF stays a
 * hard line break, lines are soft-broken at 76, trailing space and tab are
 * encoded, and an escape is never split by a soft break. */
static int s_qp(sbuf_t *out, const unsigned char *s, size_t len)
{
    chunk_t c = {.out = out};
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        s_chunk_room(&c, 8);
        if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n') {
            c.buf[c.p++] = '\r';
            c.buf[c.p++] = '\n';
            col = 0;
            i++;
            continue;
        }
        int eol = i + 1 == len || (s[i + 1] == '\r' && i + 2 < len && s[i + 2] == '\n');
        int lit = s_qp_literal(s[i]) || (s_is_wsp(s[i]) && !eol);
        size_t n = lit ? 1 : 3;
        if (col + n > QP_COL_MAX) {
            memcpy(c.buf + c.p, "=\r\n", 3);
            c.p += 3;
            col = 0;
        }
        if (lit)
            c.buf[c.p++] = (char)s[i];
        else
            c.p += s_hex_escape(c.buf + c.p, '=', s[i]);
        col += n;
    }
    return s_chunk_end(&c);
}

/* ---- header writer ----------------------------------------------------- */

static void s_put(hw_t *hw, const char *s, size_t len)
{
    if (sbuf_append(hw->out, s, len) < 0)
        hw->rc = -1;
    hw->col += len;
}

static void s_put_str(hw_t *hw, const char *s)
{
    s_put(hw, s, strlen(s));
}

static void s_hw_begin(hw_t *hw, sbuf_t *out, const char *name)
{
    hw->out = out;
    hw->col = 0;
    hw->first = 1;
    s_put(hw, name, strlen(name));
    s_put(hw, ":", 1);
}

/* Append sep (folding whitespace, non-empty) then tok. Folds before sep when
 * the line would pass LINE_SOFT, except before the first token, so a line is
 * never just the field name or just whitespace. */
static void s_hw_token(hw_t *hw, const char *sep, size_t seplen, const char *tok, size_t len)
{
    if (!hw->first && hw->col + seplen + len > LINE_SOFT) {
        s_put(hw, "\r\n", 2);
        hw->col = 0;
    }
    hw->first = 0;
    s_put(hw, sep, seplen);
    s_put(hw, tok, len);
}

static int s_hw_end(hw_t *hw)
{
    s_put(hw, "\r\n", 2);
    return hw->rc;
}

/* Q-encoding may carry these as themselves in any header, phrases included
 * (RFC 2047 5(3)); space becomes '_'. */
static int s_q_safe(unsigned char c)
{
    return s_is_alnum(c) || c == '!' || c == '*' || c == '+' || c == '-' || c == '/';
}

static size_t s_q_len(unsigned char c)
{
    return s_q_safe(c) || c == ' ' ? 1 : 3;
}

/* text[0..len) (valid UTF-8) as UTF-8 encoded words: Q when that is no
 * longer than B. Each word fills the room left on the line (at most EW_MAX)
 * and ends on a character boundary, so every word decodes on its own. */
static void s_hw_encoded(hw_t *hw, const char *text, size_t len)
{
    const unsigned char *u = (const unsigned char *)text;
    size_t qlen = 0;
    for (size_t i = 0; i < len; i++)
        qlen += s_q_len(u[i]);
    int q = qlen <= (len + 2) / 3 * 4;
    char word[EW_MAX + 1];
    for (size_t i = 0; i < len;) {
        size_t cap = hw->col + 1 < LINE_SOFT ? LINE_SOFT - hw->col - 1 : 0;
        if (cap < EW_MIN || cap > EW_MAX)
            cap = EW_MAX;
        size_t room = cap - EW_OVERHEAD, w = 0, j = i;
        memcpy(word, q ? "=?UTF-8?Q?" : "=?UTF-8?B?", 10);
        w = 10;
        if (q) {
            while (j < len) {
                size_t n = s_utf8_seq(u + j, len - j), need = 0;
                n = n ? n : 1;
                for (size_t k = 0; k < n; k++)
                    need += s_q_len(u[j + k]);
                if (w - 10 + need > room)
                    break;
                for (size_t k = 0; k < n; k++) {
                    unsigned char c = u[j + k];
                    if (c == ' ')
                        word[w++] = '_';
                    else if (s_q_safe(c))
                        word[w++] = (char)c;
                    else
                        w += s_hex_escape(word + w, '=', c);
                }
                j += n;
            }
        } else {
            size_t raw = room / 4 * 3;
            while (j < len) {
                size_t n = s_utf8_seq(u + j, len - j);
                n = n ? n : 1;
                if (j + n - i > raw)
                    break;
                j += n;
            }
            w += s_b64_block(word + w, u + i, j - i);
        }
        if (j == i) { /* cannot happen: room always holds one character */
            hw->rc = -1;
            return;
        }
        word[w++] = '?';
        word[w++] = '=';
        s_hw_token(hw, " ", 1, word, w);
        i = j;
    }
}

/* True when v[0..len) can be written as is in an unstructured field:
 * printable ASCII and blanks, nothing that looks like an encoded word, and no
 * word or blank run too long to fold. A blank run is written whole as the
 * folding whitespace before the next word, so it is bounded too: 1,500
 * spaces in a Subject made a 1,501-octet line. */
static int s_plain_ok(const char *v, size_t len)
{
    size_t word = 0, blanks = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (s_is_wsp(c)) {
            word = 0;
            if (++blanks > HDR_WSP_MAX)
                return 0;
            continue;
        }
        blanks = 0;
        if (c < 33 || c > 126 || ++word > HDR_WORD_MAX)
            return 0;
        if (c == '=' && i + 1 < len && v[i + 1] == '?')
            return 0;
    }
    return 1;
}

/* Bounds of v without leading and trailing blanks. */
static void s_trim(const char *v, size_t len, size_t *b, size_t *e)
{
    *b = 0;
    *e = len;
    while (*b < *e && s_is_wsp((unsigned char)v[*b]))
        (*b)++;
    while (*e > *b && s_is_wsp((unsigned char)v[*e - 1]))
        (*e)--;
}

/* An unstructured value (Subject, custom headers): as is, folded at its own
 * blanks, when plain; else encoded words. */
static void s_hw_unstructured(hw_t *hw, const char *v)
{
    size_t b, e;
    s_trim(v, strlen(v), &b, &e);
    if (b == e)
        return;
    if (!s_plain_ok(v + b, e - b)) {
        s_hw_encoded(hw, v + b, e - b);
        return;
    }
    for (size_t i = b; i < e;) {
        size_t ws = i;
        while (s_is_wsp((unsigned char)v[i]))
            i++;
        size_t w = i;
        while (i < e && !s_is_wsp((unsigned char)v[i]))
            i++;
        if (ws == b)
            s_hw_token(hw, " ", 1, v + w, i - w);
        else
            s_hw_token(hw, v + ws, w - ws, v + w, i - w);
    }
}

static int s_atext(unsigned char c)
{
    return s_is_alnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* A display name: atoms when it is made of them, a quoted string when it is
 * printable ASCII, else encoded words. */
static void s_hw_phrase(hw_t *hw, const char *name, size_t len)
{
    size_t b, e;
    s_trim(name, len, &b, &e);
    if (b == e)
        return;
    name += b;
    len = e - b;
    int atoms = 1, printable = len <= PHRASE_MAX;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c != ' ' && !s_atext(c))
            atoms = 0;
        if (c < 32 || c > 126)
            printable = 0;
        if (c == '=' && i + 1 < len && name[i + 1] == '?')
            atoms = printable = 0;
    }
    if (atoms && printable) {
        for (size_t i = 0; i < len;) {
            while (name[i] == ' ')
                i++;
            size_t w = i;
            while (i < len && name[i] != ' ')
                i++;
            s_hw_token(hw, " ", 1, name + w, i - w);
        }
    } else if (printable) {
        char q[2 * PHRASE_MAX + 3];
        size_t n = 0;
        q[n++] = '"';
        for (size_t i = 0; i < len; i++) {
            if (name[i] == '"' || name[i] == '\\')
                q[n++] = '\\';
            q[n++] = name[i];
        }
        q[n++] = '"';
        s_hw_token(hw, " ", 1, q, n);
    } else {
        s_hw_encoded(hw, name, len);
    }
}

/* ---- addresses --------------------------------------------------------- */

/* Split entry ("addr", "<addr>", "Name <addr>" or "\"Name\" <addr>") and
 * check the address. The name, unquoted, goes to name. 0 or -1 with *why. */
static int s_addr_parse(const char *entry, sbuf_t *name, const char **addr, size_t *alen,
                        const char **why)
{
    size_t b, e;
    s_trim(entry, strlen(entry), &b, &e);
    sbuf_reset(name);
    *addr = entry + b;
    *alen = e - b;
    if (e > b && entry[e - 1] == '>') {
        const char *lt = NULL;
        for (size_t i = e - 1; i-- > b;)
            if (entry[i] == '<') {
                lt = entry + i;
                break;
            }
        if (!lt) {
            *why = "unbalanced angle brackets";
            return -1;
        }
        *addr = lt + 1;
        *alen = (size_t)(entry + e - 1 - *addr);
        size_t nb, ne;
        s_trim(entry + b, (size_t)(lt - entry) - b, &nb, &ne);
        const char *n = entry + b + nb;
        size_t nlen = ne - nb;
        if (nlen >= 2 && n[0] == '"' && n[nlen - 1] == '"') {
            for (size_t i = 1; i + 1 < nlen; i++) {
                if (n[i] == '\\' && i + 2 < nlen)
                    i++;
                if (sbuf_append(name, n + i, 1) < 0) {
                    *why = "out of memory";
                    return -1;
                }
            }
        } else if (sbuf_append(name, n, nlen) < 0) {
            *why = "out of memory";
            return -1;
        }
    }
    char norm[EMAIL_ADDR_MAX + 1];
    if (*alen > EMAIL_ADDR_MAX) {
        *why = "address too long";
        return -1;
    }
    return email_normalize(*addr, *alen, norm, sizeof norm, why);
}

/* One address field (From excepted) with entries joined by ", ". */
static int s_hdr_addresses(sbuf_t *out, const char *field, const char *const *list, size_t n,
                           sbuf_t *name, sbuf_t *err)
{
    if (n && !list)
        return s_fail(err, "%s: missing list", field);
    hw_t hw = {0};
    s_hw_begin(&hw, out, field);
    for (size_t i = 0; i < n; i++) {
        const char *addr, *why = NULL;
        size_t alen;
        if (!mime_header_value_ok(list[i]))
            return s_fail(err, "%s[%zu]: not a valid header value (CR, LF, bad UTF-8 or too long)",
                          field, i);
        if (s_addr_parse(list[i], name, &addr, &alen, &why) < 0)
            return s_fail(err, "%s[%zu]: invalid address (%s)", field, i, why ? why : "?");
        char tok[EMAIL_ADDR_MAX + 4];
        size_t t = 0;
        int named = sbuf_len(name) > 0;
        s_hw_phrase(&hw, sbuf_data(name), sbuf_len(name));
        if (named)
            tok[t++] = '<';
        memcpy(tok + t, addr, alen);
        t += alen;
        if (named)
            tok[t++] = '>';
        if (i + 1 < n)
            tok[t++] = ',';
        s_hw_token(&hw, " ", 1, tok, t);
    }
    if (s_hw_end(&hw) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

/* ---- small validators -------------------------------------------------- */

/* RFC 2045 token character. */
static int s_token_char(unsigned char c)
{
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

/* Index just past the run of token characters in s from i. */
static size_t s_span_token(const char *s, size_t i)
{
    while (s_token_char((unsigned char)s[i]))
        i++;
    return i;
}

static size_t s_skip_wsp(const char *s, size_t i)
{
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    return i;
}

/* Index just past the RFC 822 quoted-string opening at s[i], or 0 when it
 * is not closed or holds a control or non-ASCII byte (a quoted-pair
 * escapes printable ASCII, blank or tab only). */
static size_t s_span_quoted(const char *s, size_t i)
{
    for (i++;; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            return i + 1;
        if (c == '\\')
            c = (unsigned char)s[++i];
        if ((c < 32 && c != '\t') || c > 126)
            return 0;
    }
}

/* Parse ct as RFC 2045 type "/" subtype *(";" attribute "=" value), value
 * a token or a quoted-string, blanks allowed around ";" and "=" and at the
 * end, at most CONTENT_TYPE_MAX bytes, no attribute twice (ignoring
 * case). 0 with *type_len (bytes of type/subtype) and the parameters as
 * spans of ct in p (CT_PARAMS_MAX of them, more cannot fit), else -1.
 * Comments, which RFC 2045 allows, are refused: nobody sends them in an
 * API field, and we would have to carry them through. */
static int s_ct_parse(const char *ct, size_t *type_len, ct_param_t *p, size_t *np)
{
    if (strlen(ct) > CONTENT_TYPE_MAX)
        return -1;
    size_t i = s_span_token(ct, 0), n = 0;
    if (i == 0 || ct[i] != '/' || s_span_token(ct, i + 1) == i + 1)
        return -1;
    i = s_span_token(ct, i + 1);
    *type_len = i;
    for (i = s_skip_wsp(ct, i); ct[i]; i = s_skip_wsp(ct, i)) {
        if (ct[i] != ';' || n == CT_PARAMS_MAX)
            return -1;
        size_t a = s_skip_wsp(ct, i + 1), e = s_span_token(ct, a);
        i = s_skip_wsp(ct, e);
        if (e == a || ct[i] != '=')
            return -1;
        size_t v = s_skip_wsp(ct, i + 1);
        i = ct[v] == '"' ? s_span_quoted(ct, v) : s_span_token(ct, v);
        if (i <= v)
            return -1;
        for (size_t k = 0; k < n; k++)
            if (p[k].attr_len == e - a && strncasecmp(ct + p[k].attr, ct + a, e - a) == 0)
                return -1;
        p[n++] = (ct_param_t){a, e - a, v, i - v};
    }
    *np = n;
    return 0;
}

/* 1 when the parameter is a "name" (RFC 2231 forms, name* and name*0...,
 * included): the user's then stands, and the builder adds none. */
static int s_ct_param_is_name(const char *ct, const ct_param_t *p)
{
    return p->attr_len >= 4 && strncasecmp(ct + p->attr, "name", 4) == 0 &&
           (p->attr_len == 4 || ct[p->attr + 4] == '*');
}

/* Characters allowed inside a msg-id or Content-ID (dot-atom-ish, no
 * brackets, quotes, blanks or controls). */
static int s_id_char(unsigned char c)
{
    return c > 32 && c < 127 && !strchr("<>\"\\(),;:[]", c);
}

static int s_cid_ok(const char *cid)
{
    size_t len = strlen(cid);
    if (len == 0 || len > CID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!s_id_char((unsigned char)cid[i]))
            return 0;
    return 1;
}

int mime_attachment_type_ok(const char *ct)
{
    ct_param_t p[CT_PARAMS_MAX];
    size_t type_len, np;
    return ct && mime_header_value_ok(ct) && s_ct_parse(ct, &type_len, p, &np) == 0 &&
           strncasecmp(ct, "multipart/", 10) != 0 && strncasecmp(ct, "message/", 8) != 0;
}

int mime_content_id_ok(const char *cid)
{
    return cid && mime_header_value_ok(cid) && s_cid_ok(cid);
}

/* "<left@right>" with one '@' and id characters only. */
static int s_msgid_ok(const char *id)
{
    size_t len = strlen(id), at = 0, n = 0;
    if (len < 5 || len > MSGID_MAX || id[0] != '<' || id[len - 1] != '>')
        return 0;
    for (size_t i = 1; i + 1 < len; i++) {
        if (!s_id_char((unsigned char)id[i]))
            return 0;
        if (id[i] == '@')
            at = i, n++;
    }
    return n == 1 && at > 1 && at + 2 < len;
}

/* An ASCII host name: letters, digits, '-' and '.', no empty label. */
static int s_domain_ok(const char *d)
{
    size_t len = strlen(d);
    if (len == 0 || len > MSGID_DOMAIN_MAX || d[0] == '.' || d[len - 1] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)d[i];
        if (!s_is_alnum(c) && c != '-' && c != '.')
            return 0;
        if (c == '.' && d[i + 1] == '.')
            return 0;
    }
    return 1;
}

/* Punycode (RFC 3492) digit d, 0..35. */
static char s_puny_digit(uint32_t d)
{
    return (char)(d < 26 ? 'a' + d : '0' + d - 26);
}

static uint32_t s_puny_adapt(uint32_t delta, uint32_t npoints, int first)
{
    uint32_t k = 0;
    delta = first ? delta / 700 : delta / 2;
    delta += delta / npoints;
    while (delta > (36 - 1) * 26 / 2) {
        delta /= 36 - 1;
        k += 36;
    }
    return k + (36 - 1 + 1) * delta / (delta + 38);
}

/* The ASCII form of a UTF-8 domain: each label with 8-bit bytes becomes
 * "xn--" and its punycode (RFC 3492), other labels are kept (lower-cased).
 * No IDNA mapping or normalization: the result names the domain only as a
 * Message-ID's right side, where it needs to be ASCII and stable, not
 * resolvable. 0, or -1 when d is not UTF-8 or the result does not fit size. */
static int s_domain_ascii(const char *d, size_t len, char *out, size_t size)
{
    const unsigned char *u = (const unsigned char *)d;
    size_t o = 0;
    for (size_t b = 0; b <= len;) {
        size_t e = b;
        while (e < len && u[e] != '.')
            e++;
        uint32_t cp[64];
        size_t n = 0, basic = 0;
        for (size_t i = b; i < e; n++) {
            size_t k = s_utf8_seq(u + i, e - i);
            if (k == 0 || n == sizeof cp / sizeof cp[0])
                return -1;
            uint32_t c = k == 1 ? u[i] : (uint32_t)(u[i] & (0xFF >> (k + 1)));
            for (size_t j = 1; j < k; j++)
                c = c << 6 | (u[i + j] & 0x3F);
            cp[n] = c;
            basic += c < 0x80;
            i += k;
        }
#define PUT(ch)                                                                                    \
    do {                                                                                           \
        if (o + 1 >= size)                                                                         \
            return -1;                                                                             \
        out[o++] = (ch);                                                                           \
    } while (0)
        if (b > 0)
            PUT('.');
        for (const char *x = "xn--"; basic < n && *x; x++)
            PUT(*x);
        for (size_t i = 0; i < n; i++)
            if (cp[i] < 0x80)
                PUT((char)(cp[i] >= 'A' && cp[i] <= 'Z' ? cp[i] + 32 : cp[i]));
        if (basic < n) {
            if (basic)
                PUT('-');
            uint32_t next = 0x80, delta = 0, bias = 72, h = (uint32_t)basic;
            while (h < n) {
                uint32_t m = UINT32_MAX;
                for (size_t i = 0; i < n; i++)
                    if (cp[i] >= next && cp[i] < m)
                        m = cp[i];
                delta += (m - next) * (h + 1); /* < 64 * 0x110000: no overflow */
                next = m;
                for (size_t i = 0; i < n; i++) {
                    if (cp[i] < next)
                        delta++;
                    if (cp[i] != next)
                        continue;
                    uint32_t q = delta;
                    for (uint32_t k = 36;; k += 36) {
                        uint32_t t = k <= bias ? 1 : k >= bias + 26 ? 26 : k - bias;
                        if (q < t)
                            break;
                        PUT(s_puny_digit(t + (q - t) % (36 - t)));
                        q = (q - t) / (36 - t);
                    }
                    PUT(s_puny_digit(q));
                    bias = s_puny_adapt(delta, h + 1, h == basic);
                    delta = 0;
                    h++;
                }
                delta++;
                next++;
            }
        }
#undef PUT
        b = e + 1;
    }
    out[o] = '\0';
    return 0;
}

/* A URI fit for <...> in List-Unsubscribe (RFC 2369: no blanks, brackets,
 * quotes or literal commas). */
static int s_uri_ok(const char *u)
{
    size_t len = strlen(u);
    if (len == 0 || len > UNSUB_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)u[i];
        if (c < 33 || c > 126 || strchr("<>\",\\", c))
            return 0;
    }
    return 1;
}

static int s_random_hex(char *dst, size_t nbytes)
{
    unsigned char r[32];
    assert(nbytes <= sizeof r);
    if (getrandom(r, nbytes, 0) != (ssize_t)nbytes)
        return -1;
    for (size_t i = 0; i < nbytes; i++) {
        dst[2 * i] = "0123456789abcdef"[r[i] >> 4];
        dst[2 * i + 1] = "0123456789abcdef"[r[i] & 15];
    }
    dst[2 * nbytes] = '\0';
    return 0;
}

/* ---- parts ------------------------------------------------------------- */

static void s_ent_free(ent_t *e)
{
    sbuf_destroy(&e->hdrs);
    sbuf_destroy(&e->body);
}

static int s_ent_init(ent_t *e)
{
    e->hdrs = sbuf_new(128);
    e->body = sbuf_new(0);
    return e->hdrs && e->body ? 0 : -1;
}

/* A text part (subtype "plain" or "html") from UTF-8 text. */
static int s_leaf_text(ent_t *e, const char *subtype, const char *text, sbuf_t *err)
{
    size_t len = strlen(text);
    if (!s_utf8_ok(text, len))
        return s_fail(err, "%s body is not valid UTF-8", subtype);
    if (s_ent_init(e) < 0)
        return s_fail(err, "out of memory");
    sbuf_t *norm = sbuf_new(len + len / 32 + 16);
    if (!norm || s_crlf(norm, text, len) < 0) {
        sbuf_destroy(&norm);
        return s_fail(err, "out of memory");
    }
    const unsigned char *s = (const unsigned char *)sbuf_data(norm);
    cte_t cte = s_pick_cte(s, sbuf_len(norm));
    int rc = 0;
    if (cte == CTE_7BIT) {
        sbuf_destroy(&e->body);
        e->body = norm;
        norm = NULL;
    } else if (cte == CTE_QP) {
        rc = s_qp(e->body, s, sbuf_len(norm));
    } else {
        rc = s_b64_lines(e->body, s, sbuf_len(norm));
    }
    sbuf_destroy(&norm);
    if (rc < 0 || sbuf_appendf(e->hdrs,
                               "Content-Type: text/%s; charset=utf-8\r\n"
                               "Content-Transfer-Encoding: %s\r\n",
                               subtype, CTE_NAME[cte]) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

static int s_attr_char(unsigned char c)
{
    return s_is_alnum(c) || (c && strchr("!#$&+-.^_`{|}~", c));
}

/* One parameter, attr=value, as tokens: quoted when short plain ASCII, else
 * RFC 2231 UTF-8 percent-encoding, split into numbered segments of at most
 * PARAM_SEG chars on character boundaries when long. */
static void s_hw_param(hw_t *hw, const char *attr, const char *v)
{
    size_t len = strlen(v), enc = 0;
    int plain = len + strlen(attr) + 3 <= PARAM_SEG;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 32 || c > 126 || c == '"' || c == '\\')
            plain = 0;
        enc += s_attr_char(c) ? 1 : 3;
    }
    char tok[PARAM_SEG + 100];
    if (plain) {
        int n = snprintf(tok, sizeof tok, "%s=\"%s\"", attr, v);
        s_hw_token(hw, " ", 1, tok, (size_t)n);
        return;
    }
    int single = enc + 7 <= PARAM_SEG;
    const unsigned char *u = (const unsigned char *)v;
    for (size_t i = 0, seg = 0; i < len; seg++) {
        size_t t = single ? (size_t)snprintf(tok, sizeof tok, "%s*=", attr)
                          : (size_t)snprintf(tok, sizeof tok, "%s*%zu*=", attr, seg);
        if (seg == 0) {
            memcpy(tok + t, "utf-8''", 7);
            t += 7;
        }
        size_t used = 0;
        while (i < len) {
            size_t n = s_utf8_seq(u + i, len - i), need = 0;
            n = n ? n : 1;
            for (size_t k = 0; k < n; k++)
                need += s_attr_char(u[i + k]) ? 1 : 3;
            if (used && used + need > PARAM_SEG)
                break;
            for (size_t k = 0; k < n; k++) {
                unsigned char c = u[i + k];
                if (s_attr_char(c))
                    tok[t++] = (char)c;
                else
                    t += s_hex_escape(tok + t, '%', c);
            }
            used += need;
            i += n;
        }
        if (i < len)
            tok[t++] = ';';
        s_hw_token(hw, " ", 1, tok, t);
    }
}

/* Begin a Content-Type field with ct's type/subtype and its parameters as
 * the user wrote them (value quoted or not, as given): each its own token,
 * so the line folds between them; ";" after the last when more follows. */
static void s_ct_header(hw_t *hw, sbuf_t *hdrs, const char *ct, size_t type_len,
                        const ct_param_t *params, size_t nparams, int more)
{
    char tok[CONTENT_TYPE_MAX + 2];
    s_hw_begin(hw, hdrs, "Content-Type");
    int n = snprintf(tok, sizeof tok, "%.*s%s", (int)type_len, ct, nparams || more ? ";" : "");
    s_hw_token(hw, " ", 1, tok, (size_t)n);
    for (size_t i = 0; i < nparams; i++) {
        const ct_param_t *q = &params[i];
        n = snprintf(tok, sizeof tok, "%.*s=%.*s%s", (int)q->attr_len, ct + q->attr,
                     (int)q->value_len, ct + q->value, i + 1 < nparams || more ? ";" : "");
        s_hw_token(hw, " ", 1, tok, (size_t)n);
    }
}

/* An attachment or inline image: base64 body, type, disposition, id. The
 * content type's parameters are the user's; the builder adds only a name
 * from the filename, and none when the user gave one. */
static int s_leaf_part(ent_t *e, const mime_part_t *p, size_t idx, sbuf_t *err)
{
    const char *ct = p->content_type ? p->content_type : "application/octet-stream";
    ct_param_t params[CT_PARAMS_MAX];
    size_t type_len = 0, nparams = 0;
    if (!mime_header_value_ok(ct) || s_ct_parse(ct, &type_len, params, &nparams) < 0)
        return s_fail(err,
                      "attachments[%zu]: content type must be type/subtype with optional "
                      "; attribute=value parameters",
                      idx);
    if (strncasecmp(ct, "multipart/", 10) == 0 || strncasecmp(ct, "message/", 8) == 0)
        return s_fail(
            err, "attachments[%zu]: multipart/* and message/* cannot be base64 attachments", idx);
    if (p->filename &&
        (!mime_header_value_ok(p->filename) || strlen(p->filename) > FILENAME_MAX_LEN))
        return s_fail(err,
                      "attachments[%zu]: filename must be UTF-8 without CR or LF, at most %d bytes",
                      idx, FILENAME_MAX_LEN);
    if (p->content_id && (!mime_header_value_ok(p->content_id) || !s_cid_ok(p->content_id)))
        return s_fail(err,
                      "attachments[%zu]: content_id must be 1..%d printable characters without "
                      "blanks or brackets",
                      idx, CID_MAX);
    if (!p->data && p->len)
        return s_fail(err, "attachments[%zu]: no data", idx);
    if (s_ent_init(e) < 0)
        return s_fail(err, "out of memory");
    hw_t hw = {0};
    int add_name = p->filename != NULL;
    for (size_t i = 0; i < nparams; i++)
        add_name &= !s_ct_param_is_name(ct, &params[i]);
    s_ct_header(&hw, e->hdrs, ct, type_len, params, nparams, add_name);
    if (add_name)
        s_hw_param(&hw, "name", p->filename);
    s_hw_end(&hw);
    /* fits "<" CID_MAX ">" and "attachment;" */
    char tok[CID_MAX + 8];
    int n;
    s_put_str(&hw, "Content-Transfer-Encoding: base64\r\n");
    s_hw_begin(&hw, e->hdrs, "Content-Disposition");
    const char *disp = p->content_id ? "inline" : "attachment";
    n = snprintf(tok, sizeof tok, "%s%s", disp, p->filename ? ";" : "");
    s_hw_token(&hw, " ", 1, tok, (size_t)n);
    if (p->filename)
        s_hw_param(&hw, "filename", p->filename);
    s_hw_end(&hw);
    if (p->content_id) {
        s_hw_begin(&hw, e->hdrs, "Content-ID");
        n = snprintf(tok, sizeof tok, "<%s>", p->content_id);
        s_hw_token(&hw, " ", 1, tok, (size_t)n);
        s_hw_end(&hw);
    }
    if (hw.rc < 0 || s_b64_lines(e->body, p->data, p->len) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

static int s_contains(const sbuf_t *b, const char *needle, size_t n)
{
    return b && memmem(sbuf_data(b), sbuf_len(b), needle, n) != NULL;
}

/* A boundary found nowhere in kids. 0 or -1 (no randomness, or bad luck
 * BOUNDARY_TRIES times running). */
static int s_pick_boundary(char b[BOUNDARY_LEN + 1], const ent_t *kids, size_t n)
{
    for (int t = 0; t < BOUNDARY_TRIES; t++) {
        memcpy(b, BOUNDARY_PREFIX, sizeof BOUNDARY_PREFIX - 1);
        if (s_random_hex(b + sizeof BOUNDARY_PREFIX - 1, BOUNDARY_RANDOM) < 0)
            return -1;
        int clash = 0;
        for (size_t i = 0; i < n && !clash; i++)
            clash = s_contains(kids[i].hdrs, b, BOUNDARY_LEN) ||
                    s_contains(kids[i].body, b, BOUNDARY_LEN);
        if (!clash)
            return 0;
    }
    return -1;
}

static int s_ct_multipart(sbuf_t *hdrs, const char *subtype, const char *b)
{
    return sbuf_appendf(hdrs, "Content-Type: multipart/%s;\r\n boundary=\"%s\"\r\n", subtype, b);
}

/* The body of a multipart: each kid after a delimiter line, then the close
 * delimiter and CRLF. */
static int s_multipart_body(sbuf_t *out, const char *b, const ent_t *kids, size_t n)
{
    size_t need = 64;
    for (size_t i = 0; i < n; i++)
        need += sbuf_len(kids[i].hdrs) + sbuf_len(kids[i].body) + BOUNDARY_LEN + 8;
    if (sbuf_reserve(out, need) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (sbuf_appendf(out, "%s--%s\r\n", i ? "\r\n" : "", b) < 0 ||
            sbuf_append(out, sbuf_data(kids[i].hdrs), sbuf_len(kids[i].hdrs)) < 0 ||
            sbuf_append(out, "\r\n", 2) < 0 ||
            sbuf_append(out, sbuf_data(kids[i].body), sbuf_len(kids[i].body)) < 0)
            return -1;
    }
    return sbuf_appendf(out, "\r\n--%s--\r\n", b);
}

/* A multipart entity built from kids into dst (new buffers). */
static int s_multipart_ent(ent_t *dst, const char *subtype, const ent_t *kids, size_t n,
                           sbuf_t *err)
{
    char b[BOUNDARY_LEN + 1];
    if (s_pick_boundary(b, kids, n) < 0)
        return s_fail(err, "no boundary (randomness unavailable)");
    if (s_ent_init(dst) < 0 || s_ct_multipart(dst->hdrs, subtype, b) < 0 ||
        s_multipart_body(dst->body, b, kids, n) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

/* ---- the message ------------------------------------------------------- */

/* Work state of one build, freed as a whole. */
typedef struct {
    ent_t text, html;   /* the text parts (empty when absent) */
    ent_t related, alt; /* materialized multiparts (empty when unused) */
    ent_t *parts;       /* one per attachment */
    size_t nparts;      /* entries in parts */
    ent_t *kids;        /* scratch array of entity copies (not owned) */
    sbuf_t *name;       /* scratch for display names */
} build_t;

static void s_build_free(build_t *b)
{
    s_ent_free(&b->text);
    s_ent_free(&b->html);
    s_ent_free(&b->related);
    s_ent_free(&b->alt);
    for (size_t i = 0; i < b->nparts; i++)
        s_ent_free(&b->parts[i]);
    free(b->parts);
    free(b->kids);
    sbuf_destroy(&b->name);
}

static int s_hdr_date(sbuf_t *out, int64_t date, sbuf_t *err)
{
    /* 9999-12-31T23:59:59Z: a four-digit year */
    if (date < 0 || date > 253402300799LL)
        return s_fail(err, "date out of range");
    time_t t = (time_t)date;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return s_fail(err, "date out of range");
    if (sbuf_appendf(out, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", DAYS[tm.tm_wday],
                     tm.tm_mday, MONTHS[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                     tm.tm_sec) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

static int s_hdr_from(sbuf_t *out, const mime_msg_t *m, sbuf_t *err)
{
    char norm[EMAIL_ADDR_MAX + 1];
    const char *why = NULL;
    if (!m->from_addr || !mime_header_value_ok(m->from_addr))
        return s_fail(err, "from: not a valid header value (CR, LF, bad UTF-8 or too long)");
    if (m->from_name && !mime_header_value_ok(m->from_name))
        return s_fail(err, "from name: not a valid header value (CR, LF, bad UTF-8 or too long)");
    size_t b, e;
    s_trim(m->from_addr, strlen(m->from_addr), &b, &e);
    if (e - b > EMAIL_ADDR_MAX ||
        email_normalize(m->from_addr + b, e - b, norm, sizeof norm, &why) < 0)
        return s_fail(err, "from: invalid address (%s)", why ? why : "too long");
    hw_t hw = {0};
    s_hw_begin(&hw, out, "From");
    int named = 0;
    if (m->from_name) {
        size_t nb, ne;
        s_trim(m->from_name, strlen(m->from_name), &nb, &ne);
        named = ne > nb;
        s_hw_phrase(&hw, m->from_name, strlen(m->from_name));
    }
    char tok[EMAIL_ADDR_MAX + 3];
    int n = snprintf(tok, sizeof tok, named ? "<%.*s>" : "%.*s", (int)(e - b), m->from_addr + b);
    s_hw_token(&hw, " ", 1, tok, (size_t)n);
    if (s_hw_end(&hw) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

/* Message-ID: the caller's (checked) or "<32 hex@domain>". */
static int s_hdr_msgid(sbuf_t *out, const mime_msg_t *m, char *mid_out, sbuf_t *err)
{
    char mid[MIME_MESSAGE_ID_MAX];
    if (m->message_id) {
        if (!mime_header_value_ok(m->message_id) || !s_msgid_ok(m->message_id))
            return s_fail(err,
                          "message_id must be <left@right> in printable ASCII, at most %d bytes",
                          MSGID_MAX);
        snprintf(mid, sizeof mid, "%s", m->message_id);
    } else {
        const char *domain = m->message_id_domain;
        char dom[MSGID_DOMAIN_MAX + 1];
        size_t b, e;
        if (!domain) {
            /* From's domain may be UTF-8 (email_addr takes IDNs): its
             * punycode form is the same domain in the ASCII a msg-id needs,
             * and when even that does not fit, any ASCII name will do, since
             * the random left part is what makes the id unique. */
            const char *at = strrchr(m->from_addr, '@');
            domain = at ? at + 1 : "";
            s_trim(domain, strlen(domain), &b, &e);
            if (s_domain_ascii(domain + b, e - b, dom, sizeof dom) != 0 || !s_domain_ok(dom))
                snprintf(dom, sizeof dom, "%s", MSGID_DOMAIN_FALLBACK);
        } else {
            s_trim(domain, strlen(domain), &b, &e);
            if (e - b > MSGID_DOMAIN_MAX)
                return s_fail(err, "message_id_domain must be an ASCII host name");
            snprintf(dom, sizeof dom, "%.*s", (int)(e - b), domain + b);
            if (!s_domain_ok(dom))
                return s_fail(err, "message_id_domain must be an ASCII host name");
        }
        char hex[33];
        if (s_random_hex(hex, 16) < 0)
            return s_fail(err, "no Message-ID (randomness unavailable)");
        snprintf(mid, sizeof mid, "<%s@%s>", hex, dom);
    }
    if (mid_out)
        memcpy(mid_out, mid, strlen(mid) + 1);
    if (sbuf_appendf(out, "Message-ID: %s\r\n", mid) < 0)
        return s_fail(err, "out of memory");
    return 0;
}

static int s_hdr_unsubscribe(sbuf_t *out, const mime_msg_t *m, sbuf_t *err)
{
    const char *mailto = m->list_unsubscribe_mailto, *url = m->list_unsubscribe_url;
    if (!mailto && !url)
        return 0;
    if (mailto) {
        if (strncasecmp(mailto, "mailto:", 7) == 0)
            mailto += 7;
        if (!mime_header_value_ok(mailto) || !s_uri_ok(mailto) || !strchr(mailto, '@'))
            return s_fail(err, "list_unsubscribe_mailto must be an address without blanks, "
                               "brackets, quotes or commas");
    }
    if (url && (!mime_header_value_ok(url) || !s_uri_ok(url) ||
                strncasecmp(url, "https://", 8) != 0 || !url[8]))
        return s_fail(err,
                      "list_unsubscribe_url must be an https URL without blanks, brackets, "
                      "quotes or commas, at most %d bytes",
                      UNSUB_MAX);
    hw_t hw = {0};
    s_hw_begin(&hw, out, "List-Unsubscribe");
    sbuf_t *tok = sbuf_new(64);
    if (!tok)
        return s_fail(err, "out of memory");
    if (mailto) {
        sbuf_appendf(tok, "<mailto:%s>%s", mailto, url ? "," : "");
        s_hw_token(&hw, " ", 1, sbuf_data(tok), sbuf_len(tok));
    }
    if (url) {
        sbuf_reset(tok);
        sbuf_appendf(tok, "<%s>", url);
        s_hw_token(&hw, " ", 1, sbuf_data(tok), sbuf_len(tok));
    }
    sbuf_destroy(&tok);
    s_hw_end(&hw);
    if (url)
        s_put_str(&hw, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    if (hw.rc < 0)
        return s_fail(err, "out of memory");
    return 0;
}

static int s_headers(sbuf_t *out, const mime_msg_t *m, build_t *b, char *mid_out, sbuf_t *err)
{
    if (m->nto + m->ncc > MIME_RECIPIENTS_MAX || m->nto > MIME_RECIPIENTS_MAX)
        return s_fail(err, "too many recipients (at most %d in To and Cc)", MIME_RECIPIENTS_MAX);
    if (m->nheaders > MIME_HEADERS_MAX || (m->nheaders && !m->headers))
        return s_fail(err, "too many custom headers (at most %d)", MIME_HEADERS_MAX);
    if (s_hdr_date(out, m->date, err) < 0 || s_hdr_from(out, m, err) < 0)
        return -1;
    if (m->reply_to && m->nreply_to)
        return s_fail(err, "reply_to: give reply_to or reply_to_list, not both");
    if (m->nreply_to > MIME_RECIPIENTS_MAX)
        return s_fail(err, "too many reply_to addresses (at most %d)", MIME_RECIPIENTS_MAX);
    if (m->reply_to && s_hdr_addresses(out, "Reply-To", &m->reply_to, 1, b->name, err) < 0)
        return -1;
    if (m->nreply_to &&
        s_hdr_addresses(out, "Reply-To", m->reply_to_list, m->nreply_to, b->name, err) < 0)
        return -1;
    if (m->nto && s_hdr_addresses(out, "To", m->to, m->nto, b->name, err) < 0)
        return -1;
    if (m->ncc && s_hdr_addresses(out, "Cc", m->cc, m->ncc, b->name, err) < 0)
        return -1;
    hw_t hw = {0};
    if (m->subject && *m->subject) {
        if (!mime_header_value_ok(m->subject))
            return s_fail(err, "subject: not a valid header value (CR, LF, bad UTF-8 or too long)");
        s_hw_begin(&hw, out, "Subject");
        s_hw_unstructured(&hw, m->subject);
        if (s_hw_end(&hw) < 0)
            return s_fail(err, "out of memory");
    }
    if (s_hdr_msgid(out, m, mid_out, err) < 0 || s_hdr_unsubscribe(out, m, err) < 0)
        return -1;
    for (size_t i = 0; i < m->nheaders; i++) {
        const mime_header_t *h = &m->headers[i];
        if (!mime_custom_header_ok(h->name))
            return s_fail(err, "headers[%zu]: name is not a field name a sender may set", i);
        if (!mime_header_value_ok(h->value))
            return s_fail(
                err, "headers[%zu]: not a valid header value (CR, LF, bad UTF-8 or too long)", i);
        s_hw_begin(&hw, out, h->name);
        s_hw_unstructured(&hw, h->value);
        if (s_hw_end(&hw) < 0)
            return s_fail(err, "out of memory");
    }
    if (sbuf_append_str(out, "MIME-Version: 1.0\r\n") < 0)
        return s_fail(err, "out of memory");
    return 0;
}

/* The entity tree under the headers: render leaves, materialize related and
 * alternative, and leave in kids[0..*nkids) what the top level holds, with
 * *mixed set when that top level is multipart/mixed. */
static int s_body_tree(const mime_msg_t *m, build_t *b, size_t *nkids, int *mixed, sbuf_t *err)
{
    const char *html = m->html && *m->html ? m->html : NULL;
    const char *text = m->text && *m->text ? m->text : NULL;
    size_t ninline = 0, natt = 0;
    if (m->nattachments && !m->attachments)
        return s_fail(err, "attachments: missing list");
    for (size_t i = 0; i < m->nattachments; i++)
        m->attachments[i].content_id ? ninline++ : natt++;
    if (!html && !text && !natt)
        return s_fail(err, "no body: give html, text or an attachment");
    if (ninline && !html)
        return s_fail(err, "inline images (content_id) need an html body");
    b->parts = calloc(m->nattachments + 1, sizeof *b->parts);
    b->kids = calloc(m->nattachments + 2, sizeof *b->kids);
    if (!b->parts || !b->kids)
        return s_fail(err, "out of memory");
    b->nparts = m->nattachments; /* zeroed entries free fine */
    for (size_t i = 0; i < m->nattachments; i++)
        if (s_leaf_part(&b->parts[i], &m->attachments[i], i, err) < 0)
            return -1;
    if (text && s_leaf_text(&b->text, "plain", text, err) < 0)
        return -1;
    if (html && s_leaf_text(&b->html, "html", html, err) < 0)
        return -1;
    ent_t main = {0};
    if (html) {
        main = b->html;
        if (ninline) {
            size_t n = 0;
            b->kids[n++] = b->html;
            for (size_t i = 0; i < m->nattachments; i++)
                if (m->attachments[i].content_id)
                    b->kids[n++] = b->parts[i];
            if (s_multipart_ent(&b->related, "related", b->kids, n, err) < 0)
                return -1;
            main = b->related;
        }
        if (text) {
            ent_t pair[2] = {b->text, main};
            if (s_multipart_ent(&b->alt, "alternative", pair, 2, err) < 0)
                return -1;
            main = b->alt;
        }
    } else if (text) {
        main = b->text;
    }
    size_t n = 0;
    if (main.hdrs)
        b->kids[n++] = main;
    for (size_t i = 0; i < m->nattachments; i++)
        if (!m->attachments[i].content_id)
            b->kids[n++] = b->parts[i];
    *nkids = n;
    *mixed = natt > 0;
    return 0;
}

struct mime_body {
    sbuf_t *top;  /* the top-level Content-* fields, each ending CRLF */
    sbuf_t *body; /* what follows the header section's blank line, ending CRLF */
};

/* The body half of b's tree (s_body_tree done) into self. 0 or -1. */
static int s_body_half(mime_body_t *self, build_t *b, size_t nkids, int mixed, sbuf_t *err)
{
    if (mixed) {
        char bd[BOUNDARY_LEN + 1];
        if (s_pick_boundary(bd, b->kids, nkids) < 0)
            return s_fail(err, "no boundary (randomness unavailable)");
        if (s_ct_multipart(self->top, "mixed", bd) < 0 ||
            s_multipart_body(self->body, bd, b->kids, nkids) < 0)
            return s_fail(err, "out of memory");
        return 0;
    }
    const ent_t *top = &b->kids[0];
    const sbuf_t *body = top->body;
    size_t blen = sbuf_len(body);
    int crlf = blen >= 2 && memcmp(sbuf_data(body) + blen - 2, "\r\n", 2) == 0;
    if (sbuf_append(self->top, sbuf_data(top->hdrs), sbuf_len(top->hdrs)) < 0 ||
        sbuf_reserve(self->body, blen + 2) < 0 ||
        sbuf_append(self->body, sbuf_data(body), blen) < 0 ||
        (!crlf && sbuf_append(self->body, "\r\n", 2) < 0))
        return s_fail(err, "out of memory");
    return 0;
}

mime_body_t *mime_body_new(const mime_msg_t *m, sbuf_t *err)
{
    assert(m);
    build_t b = {0};
    mime_body_t *self = calloc(1, sizeof *self);
    size_t nkids = 0;
    int mixed = 0, rc = -1;
    if (!self || !(self->top = sbuf_new(256)) || !(self->body = sbuf_new(1024)))
        s_fail(err, "out of memory");
    else if (s_body_tree(m, &b, &nkids, &mixed, err) == 0)
        rc = s_body_half(self, &b, nkids, mixed, err);
    s_build_free(&b);
    if (rc < 0)
        mime_body_destroy(&self);
    return self;
}

void mime_body_destroy(mime_body_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sbuf_destroy(&(*self_p)->top);
    sbuf_destroy(&(*self_p)->body);
    free(*self_p);
    *self_p = NULL;
}

size_t mime_body_size(const mime_body_t *self)
{
    return self ? sbuf_len(self->top) + sbuf_len(self->body) : 0;
}

const char *mime_body_data(const mime_body_t *self, size_t *len)
{
    *len = sbuf_len(self->body);
    return sbuf_data(self->body);
}

int mime_build_with_body(const mime_msg_t *m, const mime_body_t *body, sbuf_t *out,
                         char *message_id_out, sbuf_t *err)
{
    assert(m && body && out);
    size_t start = sbuf_len(out);
    build_t b = {0};
    int rc = -1;
    if (!(b.name = sbuf_new(64)) || sbuf_reserve(out, 4096 + mime_body_size(body)) < 0)
        s_fail(err, "out of memory");
    else if (s_headers(out, m, &b, message_id_out, err) == 0) {
        if (sbuf_append(out, sbuf_data(body->top), sbuf_len(body->top)) < 0 ||
            sbuf_append(out, "\r\n", 2) < 0 ||
            sbuf_append(out, sbuf_data(body->body), sbuf_len(body->body)) < 0)
            s_fail(err, "out of memory");
        else
            rc = 0;
    }
    s_build_free(&b);
    if (rc < 0) {
        sbuf_truncate(out, start);
        if (message_id_out)
            message_id_out[0] = '\0';
    }
    return rc;
}

int mime_build(const mime_msg_t *m, sbuf_t *out, char *message_id_out, sbuf_t *err)
{
    assert(m && out);
    /* The body first: a bad attachment fails before any header is written. */
    mime_body_t *body = mime_body_new(m, err);
    if (!body) {
        if (message_id_out)
            message_id_out[0] = '\0';
        return -1;
    }
    int rc = mime_build_with_body(m, body, out, message_id_out, err);
    mime_body_destroy(&body);
    return rc;
}

/* ---- VERP -------------------------------------------------------------- */

static int s_verp_token_ok(const char *t, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!s_is_alnum(c) && c != '-' && c != '_')
            return 0;
    }
    return 1;
}

char *mime_verp(const char *local, const char *token, const char *domain)
{
    if (!local || !token || !domain || !*local || strchr(local, '@') ||
        !s_verp_token_ok(token, strlen(token)))
        return NULL;
    size_t n = strlen(local) + 1 + strlen(token) + 1 + strlen(domain);
    if (n > EMAIL_ADDR_MAX || strlen(local) + 1 + strlen(token) > EMAIL_ADDR_LOCAL_MAX)
        return NULL;
    char *addr = malloc(n + 1);
    if (!addr)
        return NULL;
    snprintf(addr, n + 1, "%s+%s@%s", local, token, domain);
    char norm[EMAIL_ADDR_MAX + 1];
    if (email_normalize(addr, n, norm, sizeof norm, NULL) < 0) {
        free(addr);
        return NULL;
    }
    return addr;
}

int mime_verp_parse(const char *addr, const char *local, const char *domain, char *token,
                    size_t size)
{
    if (!addr || !local || !domain || !token || size == 0)
        return -1;
    token[0] = '\0';
    size_t b, e;
    s_trim(addr, strlen(addr), &b, &e);
    if (e - b >= 2 && addr[b] == '<' && addr[e - 1] == '>')
        b++, e--;
    const char *a = addr + b;
    size_t len = e - b, llen = strlen(local), dlen = strlen(domain);
    if (len < llen + 1 + 1 + 1 + dlen)
        return -1;
    if (strncasecmp(a, local, llen) != 0 || a[llen] != '+' || a[len - dlen - 1] != '@' ||
        strncasecmp(a + len - dlen, domain, dlen) != 0)
        return -1;
    const char *t = a + llen + 1;
    size_t tlen = (size_t)(a + len - dlen - 1 - t);
    if (!s_verp_token_ok(t, tlen) || tlen + 1 > size)
        return -1;
    memcpy(token, t, tlen);
    token[tlen] = '\0';
    return 0;
}
