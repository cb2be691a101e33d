/*
 * inbound_report - classify a message from the return path as a DSN, an ARF
 * complaint or neither, and pull out the fields delivery acts on (see
 * inbound_report.h for what is understood and the output rules).
 *
 * How: the raw bytes are first checked by a cheap linear scan (size, longest
 * line, number of Content-Type headers, boundary-like and header-like lines)
 * so that GMime never sees input that could make its recursive parser go
 * deep, its tree huge or its boundary matching slow (see
 * inbound_report_check). GMime then builds the MIME tree from an in-memory
 * stream; we walk it with a depth limit and a part budget, never descending into an attached
 * original message except to read its headers. The machine-readable parts
 * (message/delivery-status, message/feedback-report, text/rfc822-headers) are
 * decoded by GMime (so base64 or quoted-printable ones work) and read by
 * s_fields_each, a small bounded parser for "Name: value" blocks with folding.
 *
 * What can go wrong: all input is hostile. Every output string goes through
 * s_clean (no control characters, valid UTF-8, bounded), every copy is
 * truncated to its field, and each read of a part stops at
 * INBOUND_REPORT_MAX_FIELDS. glib aborts the process when memory runs out
 * (g_malloc); the 10 MB input cap keeps GMime's own allocations to a small
 * multiple of that.
 */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <gmime/gmime.h>

#include "mime.h"
#include "inbound_report.h"

#define S_TOKEN_MAX 64        /* VERP token, characters */
#define S_LEGACY_SCAN 65536u  /* bytes of a legacy bounce's text read */
#define S_ADDR_MAX 320        /* an address candidate before VERP parsing */
#define S_NAME_MAX 76          /* longest field name a header-like line is checked for */

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static bool s_inited;   /* g_mime_init ran (guarded by s_lock) */
static bool s_shutdown; /* g_mime_shutdown ran (guarded by s_lock) */

/* One per-recipient block of a DSN. */
typedef struct {
    char recipient[320]; /* Original-Recipient, else Final-Recipient */
    bool has_original;   /* recipient came from Original-Recipient */
    char action[16];     /* lower case, one of the RFC 3464 words */
    char status[16];     /* d.d.d */
    char diagnostic[512];/* sanitized, type removed */
} s_rcpt_t;

/* State of one parse. */
typedef struct {
    inbound_report_t *out;      /* where the result goes */
    int parts;                  /* MIME objects visited so far */
    s_rcpt_t cur;               /* the DSN block being read */
    bool cur_used;              /* cur holds a recipient field */
    int cur_block;              /* block number cur belongs to */
    int chosen_rank;            /* rank of the block copied to out (0: none) */
    char return_path[S_ADDR_MAX]; /* the original's Return-Path (VERP candidate) */
    char mail_from[S_ADDR_MAX];   /* ARF Original-Mail-From (VERP candidate) */
} s_ctx_t;

static void s_init(void)
{
    pthread_mutex_lock(&s_lock);
    g_mime_init();
    s_inited = true;
    pthread_mutex_unlock(&s_lock);
}

void inbound_report_shutdown(void)
{
    pthread_mutex_lock(&s_lock);
    if (s_inited && !s_shutdown) {
        g_mime_shutdown();
        s_shutdown = true;
    }
    pthread_mutex_unlock(&s_lock);
}

static int s_fail(sbuf_t *err, const char *why)
{
    if (err)
        sbuf_append_str(err, why);
    return -1;
}

static int s_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static bool s_ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (s_lower((unsigned char)a[i]) != s_lower((unsigned char)b[i]))
            return false;
    return true;
}

/* Does s[0..len) contain needle (ASCII, case-insensitive)? */
static bool s_icontains(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; n <= len && i <= len - n; i++)
        if (s_ieq(s + i, n, needle))
            return true;
    return false;
}

/* Length of the valid UTF-8 sequence at s[0..len), or 0 when it is not one
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t s_utf8_len(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    size_t n;
    unsigned cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Copy src[0..len) to dst (size > 0) as printable text: control characters
 * and white space become one space, runs of spaces fold, leading and
 * trailing spaces go, invalid UTF-8 and C1 controls become '?'. Stops at the
 * last whole character that fits, so the result is always valid UTF-8. */
static void s_clean(char *dst, size_t size, const char *src, size_t len)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0;
    bool space = false;
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_len(s + i, len - i);
        if (n == 1 && (s[i] < 0x20 || s[i] == 0x7F || s[i] == ' ')) {
            space = o > 0;
            i++;
            continue;
        }
        const unsigned char *c = s + i;
        size_t clen = n;
        if (n == 0 || (n == 2 && s[i] == 0xC2 && s[i + 1] < 0xA0)) {
            c = (const unsigned char *)"?";
            clen = 1;
            n = n ? n : 1;
        }
        if (o + (space ? 1 : 0) + clen >= size)
            break;
        if (space)
            dst[o++] = ' ';
        space = false;
        memcpy(dst + o, c, clen);
        o += clen;
        i += n;
    }
    dst[o] = '\0';
}

/* Does the line at s[0..len) start like a header field, "Name:" (GMime
 * takes white space before the colon too) with a name of at most
 * S_NAME_MAX printable characters? Looks at 2 * S_NAME_MAX bytes at most,
 * so the scan stays linear. */
static bool s_field_line(const char *s, size_t len)
{
    size_t k = 0;
    while (k < len && k <= S_NAME_MAX && s[k] > ' ' && s[k] < 0x7F && s[k] != ':')
        k++;
    if (k == 0 || k > S_NAME_MAX)
        return false;
    for (size_t w = 0; k < len && w < S_NAME_MAX && (s[k] == ' ' || s[k] == '\t'); w++)
        k++;
    return k < len && s[k] == ':';
}

/* The cheap scan before GMime: refuse what would make it slow, big or
 * deep. GMime builds one object per part and per header, and compares
 * every line that starts with "--" with every boundary open at that point
 * (boundaries nest no deeper than there are Content-Type headers), so
 * absolute caps on each keep both the tree and that work small whatever
 * else the input holds. */
int inbound_report_check(const char *raw, size_t len, sbuf_t *err)
{
    static const char CT[] = "content-type";
    size_t headers = 0, dashes = 0, fields = 0, line = 0;
    if (!raw && len)
        return s_fail(err, "no input");
    if (len > INBOUND_REPORT_MAX_BYTES)
        return s_fail(err, "message too large");
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == '\n') {
            line = 0;
            continue;
        }
        if (++line > INBOUND_REPORT_MAX_LINE)
            return s_fail(err, "line too long");
        if (line != 1)
            continue;
        if (raw[i] == '-' && i + 1 < len && raw[i + 1] == '-' && ++dashes > INBOUND_REPORT_MAX_DASH_LINES)
            return s_fail(err, "too many MIME parts");
        if (s_field_line(raw + i, len - i) && ++fields > INBOUND_REPORT_MAX_FIELD_LINES)
            return s_fail(err, "too many header lines");
        if ((raw[i] != 'c' && raw[i] != 'C') || len - i < sizeof CT || !s_ieq(raw + i, sizeof CT - 1, CT))
            continue;
        size_t j = i + sizeof CT - 1;
        while (j < len && (raw[j] == ' ' || raw[j] == '\t'))
            j++;
        if (j < len && raw[j] == ':' && ++headers > INBOUND_REPORT_MAX_HEADERS)
            return s_fail(err, "too many MIME parts");
    }
    return 0;
}

/* The VERP token of addr by the one VERP address rule, mime_verp_parse
 * (core/mime.h), cut at S_TOKEN_MAX characters. A NULL verp_local or
 * verp_domain matches any: it is read from addr itself (the local part up to
 * the first '+', the domain after the last '@') and then the rule applies as
 * usual. Returns 0 with the token in out, or -1. */
static int s_verp_parse(const char *addr, const char *verp_local, const char *verp_domain, char *out,
                        size_t size)
{
    char local[S_ADDR_MAX], domain[S_ADDR_MAX];
    size_t len = strlen(addr);
    if (len >= S_ADDR_MAX)
        return -1; /* longer than any address (EMAIL_ADDR_MAX) */
    /* The bare address, only to find what a NULL stands for. */
    const char *b = addr, *e = addr + len;
    while (b < e && (*b == ' ' || *b == '\t'))
        b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (e - b >= 2 && *b == '<' && e[-1] == '>')
        b++, e--;
    if (!verp_domain) {
        const char *dom = e; /* just after the last '@' */
        while (dom > b && dom[-1] != '@')
            dom--;
        if (dom == b)
            return -1;
        memcpy(domain, dom, (size_t)(e - dom));
        domain[e - dom] = '\0';
        verp_domain = domain;
    }
    if (!verp_local) {
        const char *plus = memchr(b, '+', (size_t)(e - b));
        if (!plus || memchr(b, '@', (size_t)(plus - b)))
            return -1;
        memcpy(local, b, (size_t)(plus - b));
        local[plus - b] = '\0';
        verp_local = local;
    }
    if (!verp_local[0] || !verp_domain[0])
        return -1;
    size_t cap = size < S_TOKEN_MAX + 1 ? size : S_TOKEN_MAX + 1;
    return mime_verp_parse(addr, verp_local, verp_domain, out, cap);
}

/* Decoded content of a leaf part, at most INBOUND_REPORT_MAX_FIELDS bytes
 * of it, in a GMime memory stream the caller unrefs (NULL when none). */
static GMimeStream *s_part_content(GMimeObject *obj, GByteArray **bytes_p)
{
    if (!GMIME_IS_PART(obj))
        return NULL;
    GMimeDataWrapper *content = g_mime_part_get_content(GMIME_PART(obj));
    if (!content)
        return NULL;
    GMimeStream *mem = g_mime_stream_mem_new();
    if (g_mime_data_wrapper_write_to_stream(content, mem) < 0) {
        g_object_unref(mem);
        return NULL;
    }
    GByteArray *bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    if (bytes->len > INBOUND_REPORT_MAX_FIELDS)
        g_byte_array_set_size(bytes, INBOUND_REPORT_MAX_FIELDS);
    *bytes_p = bytes;
    return mem;
}

typedef void (*s_field_fn)(s_ctx_t *ctx, int block, const char *name, size_t nlen, const char *value,
                           size_t vlen);

/* One line of text[*pos..len): its start and length without the line end;
 * advances *pos past it. */
static const char *s_next_line(const char *text, size_t len, size_t *pos, size_t *llen)
{
    const char *line = text + *pos;
    const char *nl = memchr(line, '\n', len - *pos);
    size_t n = nl ? (size_t)(nl - line) : len - *pos;
    *pos += n + (nl ? 1 : 0);
    if (n && line[n - 1] == '\r')
        n--;
    *llen = n;
    return line;
}

static bool s_blank(const char *line, size_t len)
{
    for (size_t k = 0; k < len; k++)
        if (line[k] != ' ' && line[k] != '\t')
            return false;
    return true;
}

/* Call fn for every "Name: value" field of text[0..len), folded lines
 * joined with a space into scratch (a field longer than scratch_size is cut
 * there), blocks numbered from 0 and separated by blank lines. Lines without
 * a colon are skipped. Linear in len. */
static void s_fields_each(s_ctx_t *ctx, const char *text, size_t len, s_field_fn fn, char *scratch,
                          size_t scratch_size)
{
    int block = 0;
    bool in_block = false;
    size_t i = 0;
    while (i < len) {
        size_t llen;
        const char *line = s_next_line(text, len, &i, &llen);
        if (s_blank(line, llen)) {
            if (in_block)
                block++;
            in_block = false;
            continue;
        }
        in_block = true;
        const char *colon = memchr(line, ':', llen);
        /* A stray continuation line, or a line that is no field: skipped. */
        if (line[0] == ' ' || line[0] == '\t' || !colon || colon == line)
            continue;
        size_t nlen = (size_t)(colon - line);
        while (nlen && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t'))
            nlen--;
        const char *seg = colon + 1;
        size_t slen = llen - (size_t)(seg - line);
        size_t v = 0;
        int field_block = block;
        for (;;) {
            size_t room = scratch_size - 1 - v;
            size_t take = slen < room ? slen : room;
            memcpy(scratch + v, seg, take);
            v += take;
            /* Folded continuation lines belong to this field. */
            if (i >= len || (text[i] != ' ' && text[i] != '\t'))
                break;
            size_t nll;
            const char *next = s_next_line(text, len, &i, &nll);
            if (s_blank(next, nll)) { /* a white-space-only line ends the block */
                block++;
                in_block = false;
                break;
            }
            if (v < scratch_size - 1)
                scratch[v++] = ' ';
            seg = next;
            slen = nll;
        }
        scratch[v] = '\0';
        fn(ctx, field_block, line, nlen, scratch, v);
    }
}

/* value after "type;" (RFC 3464 address-type / diagnostic-type: one token
 * before the semicolon), or all of it. */
static const char *s_after_type(const char *value, size_t *vlen)
{
    const char *semi = memchr(value, ';', *vlen);
    if (!semi)
        return value;
    const char *p = value;
    while (p < semi && (*p == ' ' || *p == '\t'))
        p++;
    const char *q = semi;
    while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
        q--;
    if (q == p)
        return value;
    for (const char *c = p; c < q; c++)
        if (*c == ' ' || *c == '\t' || *c == '<' || *c == '@')
            return value; /* "550 x; y" or an address: no type prefix */
    *vlen -= (size_t)(semi + 1 - value);
    return semi + 1;
}

/* An address from a field value: type prefix, spaces and <> removed. */
static void s_copy_addr(char *dst, size_t size, const char *value, size_t vlen)
{
    value = s_after_type(value, &vlen);
    while (vlen && (*value == ' ' || *value == '\t'))
        value++, vlen--;
    while (vlen && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        vlen--;
    if (vlen >= 2 && value[0] == '<' && value[vlen - 1] == '>')
        value++, vlen -= 2;
    s_clean(dst, size, value, vlen);
}

/* The first white-space-delimited token of value, lower-cased. */
static void s_copy_token(char *dst, size_t size, const char *value, size_t vlen)
{
    while (vlen && (*value == ' ' || *value == '\t'))
        value++, vlen--;
    size_t n = 0;
    while (n < vlen && value[n] != ' ' && value[n] != '\t' && value[n] != ';' && value[n] != '(')
        n++;
    s_clean(dst, size, value, n);
    for (char *p = dst; *p; p++)
        *p = (char)s_lower((unsigned char)*p);
}

/* Is s an enhanced status code class.subject.detail (RFC 3463)? */
static bool s_is_status(const char *s, size_t len)
{
    size_t i = 0;
    if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return false;
    i = 2;
    for (int part = 0; part < 2; part++) {
        size_t d = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && d < 4)
            i++, d++;
        if (d == 0 || d > 3)
            return false;
        if (part == 0) {
            if (i >= len || s[i] != '.')
                return false;
            i++;
        }
    }
    return i == len;
}

/* A Message-ID from a header value: what is inside the first <>, else the
 * first token. */
static void s_copy_msgid(char *dst, size_t size, const char *value, size_t vlen)
{
    const char *lt = memchr(value, '<', vlen);
    if (lt) {
        const char *gt = memchr(lt, '>', vlen - (size_t)(lt - value));
        if (gt) {
            s_clean(dst, size, lt + 1, (size_t)(gt - lt - 1));
            return;
        }
    }
    while (vlen && (*value == ' ' || *value == '\t'))
        value++, vlen--;
    size_t n = 0;
    while (n < vlen && value[n] != ' ' && value[n] != '\t')
        n++;
    s_clean(dst, size, value, n);
}

/* How good a DSN block is as the one to report: failed with 5.x.x beats
 * failed beats anything else; the first of a rank wins. */
static int s_rank(const s_rcpt_t *r)
{
    if (strcmp(r->action, "failed") == 0)
        return r->status[0] == '5' ? 3 : 2;
    return 1;
}

static void s_dsn_flush(s_ctx_t *ctx)
{
    if (!ctx->cur_used)
        return;
    inbound_report_t *out = ctx->out;
    out->n_recipients++;
    int rank = s_rank(&ctx->cur);
    if (rank > ctx->chosen_rank) {
        ctx->chosen_rank = rank;
        memcpy(out->recipient, ctx->cur.recipient, sizeof out->recipient);
        memcpy(out->action, ctx->cur.action, sizeof out->action);
        memcpy(out->status, ctx->cur.status, sizeof out->status);
        memcpy(out->diagnostic, ctx->cur.diagnostic, sizeof out->diagnostic);
    }
    memset(&ctx->cur, 0, sizeof ctx->cur);
    ctx->cur_used = false;
}

/* Field callback for message/delivery-status. Block 0 is per-message;
 * every field of a later block belongs to the recipient of that block. */
static void s_dsn_field(s_ctx_t *ctx, int block, const char *name, size_t nlen, const char *value, size_t vlen)
{
    /* Per-message fields (block 0) share no name with per-recipient ones,
     * so a report that forgot the per-message block still reads. */
    if (block != ctx->cur_block) {
        s_dsn_flush(ctx);
        ctx->cur_block = block;
    }
    s_rcpt_t *r = &ctx->cur;
    if (s_ieq(name, nlen, "Original-Recipient")) {
        s_copy_addr(r->recipient, sizeof r->recipient, value, vlen);
        r->has_original = r->recipient[0] != '\0';
    } else if (s_ieq(name, nlen, "Final-Recipient")) {
        if (!r->has_original)
            s_copy_addr(r->recipient, sizeof r->recipient, value, vlen);
    } else if (s_ieq(name, nlen, "Action")) {
        static const char *const ACTIONS[] = {"failed", "delayed", "delivered", "relayed", "expanded"};
        char tok[16];
        s_copy_token(tok, sizeof tok, value, vlen);
        for (size_t k = 0; k < sizeof ACTIONS / sizeof ACTIONS[0]; k++)
            if (strcmp(tok, ACTIONS[k]) == 0)
                memcpy(r->action, tok, sizeof r->action);
    } else if (s_ieq(name, nlen, "Status")) {
        char tok[16];
        s_copy_token(tok, sizeof tok, value, vlen);
        if (s_is_status(tok, strlen(tok)))
            memcpy(r->status, tok, sizeof r->status);
    } else if (s_ieq(name, nlen, "Diagnostic-Code")) {
        const char *v = s_after_type(value, &vlen);
        s_clean(r->diagnostic, sizeof r->diagnostic, v, vlen);
    } else {
        return;
    }
    ctx->cur_used = true;
}

/* Field callback for message/feedback-report: one block, first value wins. */
static void s_arf_field(s_ctx_t *ctx, int block, const char *name, size_t nlen, const char *value, size_t vlen)
{
    inbound_report_t *out = ctx->out;
    if (block != 0)
        return;
    if (s_ieq(name, nlen, "Feedback-Type") && !out->feedback_type[0])
        s_copy_token(out->feedback_type, sizeof out->feedback_type, value, vlen);
    else if (s_ieq(name, nlen, "Original-Rcpt-To") && !out->recipient[0])
        s_copy_addr(out->recipient, sizeof out->recipient, value, vlen);
    else if (s_ieq(name, nlen, "Original-Mail-From") && !ctx->mail_from[0])
        s_copy_addr(ctx->mail_from, sizeof ctx->mail_from, value, vlen);
}

/* Field callback for text/rfc822-headers: the original's header block. */
static void s_orig_field(s_ctx_t *ctx, int block, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (block != 0)
        return;
    if (s_ieq(name, nlen, "Message-ID") && !ctx->out->original_message_id[0])
        s_copy_msgid(ctx->out->original_message_id, sizeof ctx->out->original_message_id, value, vlen);
    else if (s_ieq(name, nlen, "Return-Path") && !ctx->return_path[0])
        s_copy_addr(ctx->return_path, sizeof ctx->return_path, value, vlen);
}

/* Run fn over the decoded content of a leaf part. */
static void s_read_fields(s_ctx_t *ctx, GMimeObject *part, s_field_fn fn)
{
    GByteArray *bytes = NULL;
    GMimeStream *mem = s_part_content(part, &bytes);
    if (!mem)
        return;
    char *scratch = g_malloc(1024);
    s_fields_each(ctx, (const char *)bytes->data, bytes->len, fn, scratch, 1024);
    if (fn == s_dsn_field)
        s_dsn_flush(ctx);
    g_free(scratch);
    g_object_unref(mem);
}

/* Headers of an attached original message (message/rfc822). */
static void s_read_original(s_ctx_t *ctx, GMimeObject *part)
{
    GMimeMessage *orig = g_mime_message_part_get_message(GMIME_MESSAGE_PART(part));
    if (!orig)
        return;
    const char *v = g_mime_object_get_header(GMIME_OBJECT(orig), "Message-ID");
    if (v && !ctx->out->original_message_id[0])
        s_copy_msgid(ctx->out->original_message_id, sizeof ctx->out->original_message_id, v, strlen(v));
    v = g_mime_object_get_header(GMIME_OBJECT(orig), "Return-Path");
    if (v && !ctx->return_path[0])
        s_copy_addr(ctx->return_path, sizeof ctx->return_path, v, strlen(v));
}

static bool s_is(GMimeObject *obj, const char *type, const char *subtype)
{
    GMimeContentType *ct = g_mime_object_get_content_type(obj);
    return ct && g_mime_content_type_is_type(ct, type, subtype);
}

static bool s_is_report(GMimeObject *obj)
{
    return GMIME_IS_MULTIPART(obj) && s_is(obj, "multipart", "report");
}

static bool s_is_text(GMimeObject *obj)
{
    return GMIME_IS_PART(obj) && s_is(obj, "text", "plain");
}

/* The first object in obj, pre-order, for which match is true, looking
 * inside multiparts only (never inside an attached message), within the
 * depth and part budgets; NULL when none. */
static GMimeObject *s_find(s_ctx_t *ctx, GMimeObject *obj, int depth, bool (*match)(GMimeObject *))
{
    if (!obj || ++ctx->parts > INBOUND_REPORT_MAX_PARTS || depth > INBOUND_REPORT_MAX_DEPTH)
        return NULL;
    if (match(obj))
        return obj;
    if (!GMIME_IS_MULTIPART(obj))
        return NULL;
    int n = g_mime_multipart_get_count(GMIME_MULTIPART(obj));
    for (int i = 0; i < n; i++) {
        GMimeObject *found = s_find(ctx, g_mime_multipart_get_part(GMIME_MULTIPART(obj), i), depth + 1, match);
        if (found)
            return found;
    }
    return NULL;
}

/* Read the children of a multipart/report. */
static void s_read_report(s_ctx_t *ctx, GMimeObject *report)
{
    inbound_report_t *out = ctx->out;
    GMimeContentType *ct = g_mime_object_get_content_type(report);
    const char *rtype = ct ? g_mime_content_type_get_parameter(ct, "report-type") : NULL;
    bool want_dsn = rtype && (s_ieq(rtype, strlen(rtype), "delivery-status") ||
                              s_ieq(rtype, strlen(rtype), "global-delivery-status"));
    bool want_arf = rtype && s_ieq(rtype, strlen(rtype), "feedback-report");
    int n = g_mime_multipart_get_count(GMIME_MULTIPART(report));
    for (int i = 0; i < n && ++ctx->parts <= INBOUND_REPORT_MAX_PARTS; i++) {
        GMimeObject *part = g_mime_multipart_get_part(GMIME_MULTIPART(report), i);
        if (!part)
            continue;
        if (out->kind == REPORT_NONE && !want_arf &&
            (s_is(part, "message", "delivery-status") || s_is(part, "message", "global-delivery-status"))) {
            out->kind = REPORT_DSN;
            s_read_fields(ctx, part, s_dsn_field);
        } else if (out->kind == REPORT_NONE && !want_dsn && s_is(part, "message", "feedback-report")) {
            out->kind = REPORT_ARF;
            s_read_fields(ctx, part, s_arf_field);
        } else if (GMIME_IS_MESSAGE_PART(part)) {
            s_read_original(ctx, part);
        } else if (s_is(part, "text", "rfc822-headers") || s_is(part, "message", "global-headers")) {
            s_read_fields(ctx, part, s_orig_field);
        }
    }
}

/* Where an enhanced status 5.d.d starts in line[0..len) as a word; NULL. */
static const char *s_find_status5(const char *line, size_t len, size_t *slen)
{
    for (size_t i = 0; i + 5 <= len; i++) {
        if (line[i] != '5' || line[i + 1] != '.' || (i > 0 && line[i - 1] != ' ' && line[i - 1] != '(' &&
                                                      line[i - 1] != '#' && line[i - 1] != '\t'))
            continue;
        size_t j = i;
        while (j < len && ((line[j] >= '0' && line[j] <= '9') || line[j] == '.'))
            j++;
        size_t n = j - i;
        if (n && line[i + n - 1] == '.')
            n--; /* a sentence's full stop */
        if (s_is_status(line + i, n)) {
            *slen = n;
            return line + i;
        }
    }
    return NULL;
}

/* The legacy heuristic (see inbound_report.h): a line holding <addr> and a
 * 5.x.x status in the first text/plain part of a mailer-daemon's message. */
static void s_read_legacy(s_ctx_t *ctx, GMimeMessage *msg)
{
    inbound_report_t *out = ctx->out;
    const char *from = g_mime_object_get_header(GMIME_OBJECT(msg), "From");
    if (!from || !(s_icontains(from, strlen(from), "mailer-daemon") || s_icontains(from, strlen(from), "postmaster")))
        return;
    ctx->parts = 0;
    GMimeObject *text = s_find(ctx, g_mime_message_get_mime_part(msg), 0, s_is_text);
    GByteArray *bytes = NULL;
    GMimeStream *mem = text ? s_part_content(text, &bytes) : NULL;
    if (!mem)
        return;
    const char *p = (const char *)bytes->data;
    size_t len = bytes->len < S_LEGACY_SCAN ? bytes->len : S_LEGACY_SCAN;
    for (size_t i = 0; i < len;) {
        const char *line = p + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t llen = nl ? (size_t)(nl - line) : len - i;
        i += llen + 1;
        size_t slen = 0;
        const char *st = s_find_status5(line, llen, &slen);
        const char *lt = memchr(line, '<', llen);
        const char *gt = lt ? memchr(lt, '>', llen - (size_t)(lt - line)) : NULL;
        const char *at = gt ? memchr(lt, '@', (size_t)(gt - lt)) : NULL;
        if (!st || !at || at == lt + 1 || at + 1 == gt)
            continue;
        out->kind = REPORT_DSN;
        out->legacy = 1;
        out->n_recipients = 1;
        memcpy(out->action, "failed", sizeof "failed");
        s_clean(out->status, sizeof out->status, st, slen);
        s_clean(out->recipient, sizeof out->recipient, lt + 1, (size_t)(gt - lt - 1));
        s_clean(out->diagnostic, sizeof out->diagnostic, line, llen);
        break;
    }
    g_object_unref(mem);
    /* The original, when attached, still gives its Message-ID. */
    GMimeObject *top = g_mime_message_get_mime_part(msg);
    if (out->kind == REPORT_DSN && top && GMIME_IS_MULTIPART(top)) {
        int n = g_mime_multipart_get_count(GMIME_MULTIPART(top));
        for (int k = 0; k < n && k < INBOUND_REPORT_MAX_PARTS; k++) {
            GMimeObject *part = g_mime_multipart_get_part(GMIME_MULTIPART(top), k);
            if (part && GMIME_IS_MESSAGE_PART(part))
                s_read_original(ctx, part);
            else if (part && s_is(part, "text", "rfc822-headers"))
                s_read_fields(ctx, part, s_orig_field);
        }
    }
}

/* Add addr's token, when it has our VERP shape, to the candidates. */
static void s_candidate(s_ctx_t *ctx, const char *addr, const char *verp_local, const char *verp_domain)
{
    inbound_report_t *out = ctx->out;
    if (out->n_candidates >= INBOUND_REPORT_MAX_CANDIDATES)
        return;
    char *tok = out->verp_candidates[out->n_candidates];
    if (s_verp_parse(addr, verp_local, verp_domain, tok, sizeof out->verp_candidates[0]) == 0)
        out->n_candidates++;
    else
        tok[0] = '\0';
}

/* Every VERP candidate, in the order inbound_report.h gives; the first is
 * verp_token. */
static void s_find_token(s_ctx_t *ctx, GMimeMessage *msg, const char *envelope_rcpt, const char *verp_local,
                         const char *verp_domain)
{
    inbound_report_t *out = ctx->out;
    if (envelope_rcpt)
        s_candidate(ctx, envelope_rcpt, verp_local, verp_domain);
    if (ctx->mail_from[0])
        s_candidate(ctx, ctx->mail_from, verp_local, verp_domain);
    if (ctx->return_path[0])
        s_candidate(ctx, ctx->return_path, verp_local, verp_domain);
    InternetAddressList *to = g_mime_message_get_to(msg);
    int n = to ? internet_address_list_length(to) : 0;
    int before = out->n_candidates;
    for (int i = 0; i < n && i < 16 && out->n_candidates == before; i++) {
        InternetAddress *a = internet_address_list_get_address(to, i);
        if (!INTERNET_ADDRESS_IS_MAILBOX(a))
            continue;
        const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
        if (addr && strlen(addr) < S_ADDR_MAX)
            s_candidate(ctx, addr, verp_local, verp_domain);
    }
    memcpy(out->verp_token, out->verp_candidates[0], sizeof out->verp_token);
}

int inbound_report_parse(const char *raw, size_t len, const char *envelope_rcpt, const char *verp_local,
                         const char *verp_domain, inbound_report_t *out, sbuf_t *err)
{
    memset(out, 0, sizeof *out);
    out->kind = REPORT_NONE;
    if (inbound_report_check(raw, len, err) != 0)
        return -1;
    pthread_once(&s_once, s_init);

    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(raw ? raw : "", len);
    GMimeParser *parser = g_mime_parser_new_with_stream(stream);
    g_object_unref(stream);
    g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
    GMimeMessage *msg = g_mime_parser_construct_message(parser, NULL);
    g_object_unref(parser);
    if (!msg)
        return s_fail(err, "not a message");

    s_ctx_t ctx = {.out = out};
    GMimeObject *report = s_find(&ctx, g_mime_message_get_mime_part(msg), 0, s_is_report);
    if (report)
        s_read_report(&ctx, report);
    else
        s_read_legacy(&ctx, msg);

    if (out->kind == REPORT_DSN)
        out->hard = strcmp(out->action, "failed") == 0 && out->status[0] == '5';
    else if (out->kind == REPORT_ARF)
        out->hard = strcmp(out->feedback_type, "abuse") == 0;
    if (out->kind == REPORT_NONE) {
        /* Nothing half-read leaks out of a message that is neither. */
        memset(out, 0, sizeof *out);
        out->kind = REPORT_NONE;
    }
    s_find_token(&ctx, msg, envelope_rcpt, verp_local, verp_domain);
    g_object_unref(msg);
    return 0;
}
