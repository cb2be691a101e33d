/*
 * libFuzzer target for core/mime: build a message from fuzz-derived fields
 * and check the module's promises on every input.
 *
 * Input: byte 0 is a set of flags, the rest is split at NUL bytes into
 * fields (from name, from address, two To, one Cc, Reply-To, Subject, text,
 * html, a custom header name and value, an attachment's filename, content
 * type, data and Content-ID, List-Unsubscribe mailto and URL, Message-ID).
 * Flags pick, per group, the fuzzed field or a fixed valid one, so inputs
 * get past the address checks often enough to exercise the body.
 *
 * Promises checked: a refusal leaves out exactly as it was and says why;
 * an accepted message has a 7-bit body (8-bit only in the headers, from
 * UTF-8 addresses, which are written as given), no NUL, CRLF line ends only, no line
 * over 998 octets, a header section of field lines and non-blank
 * continuation lines, a Message-ID line holding message_id_out, and every
 * boundary appearing only in its parameter and its own delimiter lines,
 * with exactly one close delimiter.
 *
 * Build (registered by tests/fuzz/CMakeLists.txt), by hand:
 *   clang -g -fsanitize=fuzzer,address,undefined -Icore core/mime.c core/sbuf.c \
 *         core/email_addr.c tests/fuzz/fuzz_mime.c
 *   ./a.out tests/fuzz/corpus/mime
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mime.h"
#include "sbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    F_FROM_NAME,
    F_FROM_ADDR,
    F_TO0,
    F_TO1,
    F_CC,
    F_REPLY_TO,
    F_SUBJECT,
    F_TEXT,
    F_HTML,
    F_HDR_NAME,
    F_HDR_VALUE,
    F_FILENAME,
    F_CTYPE,
    F_DATA,
    F_CID,
    F_MAILTO,
    F_URL,
    F_MSGID,
    F_COUNT
};

/* Occurrences of needle[0..n) in s[0..len). */
static size_t s_count(const char *s, size_t len, const char *needle, size_t n)
{
    size_t c = 0;
    for (const char *p = s; (p = memmem(p, len - (size_t)(p - s), needle, n)) != NULL; p += n)
        c++;
    return c;
}

/* Walk one entity s[0..len) the way a MIME reader would: its header section
 * up to the blank line; when its Content-Type (the one we write) is
 * multipart, the boundary must open the body, occur nowhere but in its
 * parameter and its delimiters, and the body must end with the one close
 * delimiter; each part is then walked in turn. */
static void s_entity(const char *s, size_t len, int depth)
{
    static const char CT[] = "\r\nContent-Type: multipart/";
    static const char P[] = "boundary=\"";
    if (depth > 4)
        abort();
    const char *end = memmem(s, len, "\r\n\r\n", 4);
    if (!end)
        abort();
    size_t hlen = (size_t)(end - s) + 2;
    const char *body = end + 4;
    size_t blen = len - (size_t)(body - s);
    const char *ct = NULL;
    if (memcmp(s, CT + 2, sizeof CT - 3) == 0)
        ct = s;
    else if ((ct = memmem(s, hlen, CT, sizeof CT - 1)) != NULL)
        ct += 2;
    if (!ct)
        return;
    const char *bp = memmem(ct, hlen - (size_t)(ct - s), P, sizeof P - 1);
    if (!bp)
        abort();
    bp += sizeof P - 1;
    const char *q = memchr(bp, '"', hlen - (size_t)(bp - s));
    if (!q || q == bp || q - bp > 70)
        abort();
    size_t bl = (size_t)(q - bp);
    if (s_count(s, hlen, bp, bl) != 1)
        abort();
    char d[80] = "\r\n--";
    memcpy(d + 4, bp, bl);
    size_t dl = bl + 4;
    /* no preamble: the body opens with the delimiter minus its CRLF */
    if (blen < dl - 2 || memcmp(body, d + 2, dl - 2) != 0)
        abort();
    size_t parts = 0;
    for (const char *p = body + dl - 2;;) {
        size_t rest = blen - (size_t)(p - body);
        if (rest >= 4 && memcmp(p, "--\r\n", 4) == 0) {
            if (rest != 4)
                abort(); /* something after the close delimiter */
            break;
        }
        if (rest < 2 || memcmp(p, "\r\n", 2) != 0)
            abort();
        const char *start = p + 2;
        const char *next = memmem(start, blen - (size_t)(start - body), d, dl);
        if (!next)
            abort();
        s_entity(start, (size_t)(next - start), depth + 1);
        parts++;
        p = next + dl;
    }
    if (parts == 0 || s_count(body, blen, bp, bl) != parts + 1)
        abort();
}

/* A header line: "name:..." with an ftext name, or a continuation that
 * starts with a blank and is not all blanks. */
static void s_check_header_line(const char *l, size_t n, int first)
{
    if (l[0] == ' ' || l[0] == '\t') {
        size_t i = 0;
        while (i < n && (l[i] == ' ' || l[i] == '\t'))
            i++;
        if (first || i == n)
            abort();
        return;
    }
    const char *colon = memchr(l, ':', n);
    if (!colon || colon == l)
        abort();
    for (const char *p = l; p < colon; p++)
        if (*p < 33 || *p > 126)
            abort();
}

static void s_check(const char *s, size_t len, const char *mid)
{
    if (len < 2 || s[len - 2] != '\r' || s[len - 1] != '\n')
        abort();
    int hdrs = 1;
    for (size_t i = 0; i < len;) {
        size_t n = 0;
        while (i + n < len && s[i + n] != '\r') {
            unsigned char c = (unsigned char)s[i + n];
            /* addresses are written as given (UTF-8 ones need SMTPUTF8):
             * only the header section may carry 8-bit bytes */
            if (c == 0 || (c > 127 && !hdrs) || c == '\n')
                abort();
            n++;
        }
        if (i + n + 1 >= len || s[i + n + 1] != '\n' || n > 998)
            abort();
        if (hdrs && n == 0)
            hdrs = 0;
        else if (hdrs)
            s_check_header_line(s + i, n, i == 0);
        i += n + 2;
    }
    if (hdrs)
        abort(); /* no end of the header section */
    char want[MIME_MESSAGE_ID_MAX + 20];
    size_t n = (size_t)snprintf(want, sizeof want, "\r\nMessage-ID: %s\r\n", mid);
    if (mid[0] != '<' || !memmem(s, len, want, n))
        abort();
    s_entity(s, len, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    /* fields as NUL-terminated copies of the pieces between NULs */
    char *buf = malloc(size + F_COUNT);
    if (!buf)
        return 0;
    const char *f[F_COUNT] = {0};
    size_t len[F_COUNT] = {0};
    size_t at = 0, nf = 0;
    for (size_t i = 1; i < size && nf < F_COUNT; nf++) {
        size_t s0 = i;
        while (i < size && data[i] != 0)
            i++;
        len[nf] = i - s0;
        memcpy(buf + at, data + s0, len[nf]);
        buf[at + len[nf]] = '\0';
        f[nf] = buf + at;
        at += len[nf] + 1;
        i++;
    }
    for (; nf < F_COUNT; nf++) {
        buf[at] = '\0';
        f[nf] = buf + at;
        len[nf] = 0;
        at++;
    }

    const char *to[2], *cc[1];
    mime_header_t hdr;
    mime_part_t part;
    mime_msg_t m = {0};
    int fuzz_addrs = flags & 1;
    m.from_name = f[F_FROM_NAME];
    m.from_addr = fuzz_addrs ? f[F_FROM_ADDR] : "news@example.org";
    to[0] = fuzz_addrs ? f[F_TO0] : "Ada <ada@example.com>";
    to[1] = f[F_TO1];
    cc[0] = f[F_CC];
    m.to = to;
    m.nto = (flags & 2) ? 2 : 1;
    m.cc = cc;
    m.ncc = (flags & 4) ? 1 : 0;
    m.reply_to = (flags & 8) ? f[F_REPLY_TO] : NULL;
    m.subject = f[F_SUBJECT];
    m.text = f[F_TEXT];
    m.html = (flags & 16) ? f[F_HTML] : NULL;
    hdr.name = f[F_HDR_NAME];
    hdr.value = f[F_HDR_VALUE];
    m.headers = &hdr;
    m.nheaders = len[F_HDR_NAME] ? 1 : 0;
    part.filename = len[F_FILENAME] ? f[F_FILENAME] : NULL;
    part.content_type = len[F_CTYPE] ? f[F_CTYPE] : NULL;
    part.data = f[F_DATA];
    part.len = len[F_DATA];
    part.content_id = (flags & 32) ? f[F_CID] : NULL;
    m.attachments = &part;
    m.nattachments = (flags & 64) ? 1 : 0;
    m.list_unsubscribe_mailto = len[F_MAILTO] ? f[F_MAILTO] : NULL;
    m.list_unsubscribe_url = len[F_URL] ? f[F_URL] : NULL;
    m.message_id = (flags & 128) ? f[F_MSGID] : NULL;
    m.message_id_domain = "example.org";
    m.date = 1700000000 + (int64_t)len[F_TEXT] * 86400;

    sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
    if (!out || !err)
        abort();
    sbuf_append_str(out, "PRE");
    char mid[MIME_MESSAGE_ID_MAX];
    if (mime_build(&m, out, mid, err) != 0) {
        if (sbuf_len(out) != 3 || memcmp(sbuf_data(out), "PRE", 3) != 0 || sbuf_len(err) == 0 ||
            mid[0] != '\0')
            abort();
    } else {
        s_check(sbuf_data(out) + 3, sbuf_len(out) - 3, mid);
    }
    sbuf_destroy(&out);
    sbuf_destroy(&err);
    free(buf);
    return 0;
}
