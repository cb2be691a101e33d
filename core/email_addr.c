/*
 * email_addr - check and normalize one email address (see email_addr.h).
 *
 * One pass per rule over a bounded input (at most EMAIL_ADDR_MAX bytes once
 * trimmed), no allocation. The reasons are static strings so callers can put
 * them in API answers as they are; they never quote the input back.
 */
#include <stddef.h>
#include <string.h>

#include "email_addr.h"

/* Length of the valid UTF-8 sequence starting at p (at most n bytes), or 0
 * when it is malformed (overlong forms, surrogates and values above
 * U+10FFFF included) or is a C1 control character (U+0080..U+009F). */
static size_t s_utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF)
        return 0;
    if (cp >= 0x80 && cp <= 0x9F)
        return 0;
    return len;
}

/* RFC 5322 atext, ASCII part. */
static int s_is_atext(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int s_is_ldh(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-';
}

/* Check the local part p[0..n); NULL when fine, else the reason. */
static const char *s_check_local(const unsigned char *p, size_t n)
{
    if (n == 0)
        return "empty local part";
    if (n > EMAIL_ADDR_LOCAL_MAX)
        return "local part longer than 64 bytes";
    if (p[0] == '.')
        return "local part starts with a dot";
    if (p[n - 1] == '.')
        return "local part ends with a dot";
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == '.') {
            if (p[i + 1] == '.')
                return "local part has consecutive dots";
            i++;
        } else if (c == ' ') {
            return "local part contains a space";
        } else if (c >= 0x80) {
            size_t l = s_utf8_len(p + i, n - i);
            if (l == 0)
                return "invalid UTF-8";
            i += l;
        } else if (s_is_atext(c)) {
            i++;
        } else {
            return "local part has an invalid character";
        }
    }
    return NULL;
}

/* Check the domain p[0..n); NULL when fine, else the reason. */
static const char *s_check_domain(const unsigned char *p, size_t n)
{
    if (n == 0)
        return "empty domain";
    if (p[0] == '[')
        return "address literals are not supported";
    if (!memchr(p, '.', n))
        return "domain has no dot";
    size_t start = 0;
    while (start <= n) {
        const unsigned char *dot = memchr(p + start, '.', n - start);
        size_t end = dot ? (size_t)(dot - p) : n;
        size_t len = end - start;
        if (len == 0)
            return "domain has an empty label";
        if (len > EMAIL_ADDR_LABEL_MAX)
            return "domain label longer than 63 bytes";
        if (p[start] == '-' || p[end - 1] == '-')
            return "domain label starts or ends with a hyphen";
        for (size_t i = start; i < end;) {
            if (p[i] >= 0x80) {
                size_t l = s_utf8_len(p + i, end - i);
                if (l == 0)
                    return "invalid UTF-8";
                i += l;
            } else if (s_is_ldh(p[i])) {
                i++;
            } else {
                return "domain has an invalid character";
            }
        }
        start = end + 1;
    }
    return NULL;
}

/* Find the reason in[0..len) is refused, or NULL; *b and *e get the
 * trimmed bounds and *at the position of the '@'. */
static const char *s_check(const unsigned char *in, size_t len, size_t *b, size_t *e,
                           size_t *at)
{
    /* CR and LF anywhere, surrounding whitespace included: an address
     * carrying them is an injection attempt, not a typo to trim away. */
    for (size_t i = 0; i < len; i++)
        if (in[i] == '\r' || in[i] == '\n')
            return "contains CR or LF";
    size_t s = 0, t = len;
    while (s < t && (in[s] == ' ' || in[s] == '\t'))
        s++;
    while (t > s && (in[t - 1] == ' ' || in[t - 1] == '\t'))
        t--;
    if (s == t)
        return "empty address";
    if (t - s > EMAIL_ADDR_MAX)
        return "address longer than 254 bytes";
    for (size_t i = s; i < t; i++)
        if (in[i] < 0x20 || in[i] == 0x7F)
            return "contains a control character";
    if (in[s] == '"')
        return "quoted local parts are not supported";
    const unsigned char *first = memchr(in + s, '@', t - s);
    if (!first)
        return "missing @";
    size_t a = (size_t)(first - in);
    if (memchr(in + a + 1, '@', t - a - 1))
        return "more than one @";
    const char *why = s_check_local(in + s, a - s);
    if (!why)
        why = s_check_domain(in + a + 1, t - a - 1);
    *b = s;
    *e = t;
    *at = a;
    return why;
}

int email_normalize(const char *in, size_t len, char *out, size_t out_size, const char **why)
{
    size_t b = 0, e = 0, at = 0;
    const char *reason = NULL;
    if (out_size > 0)
        out[0] = '\0';
    if (!in)
        reason = "empty address";
    else
        reason = s_check((const unsigned char *)in, len, &b, &e, &at);
    if (!reason && e - b + 1 > out_size)
        reason = "output buffer too small";
    if (reason) {
        if (why)
            *why = reason;
        return -1;
    }
    memcpy(out, in + b, e - b);
    out[e - b] = '\0';
    for (size_t i = at - b + 1; i < e - b; i++)
        if (out[i] >= 'A' && out[i] <= 'Z')
            out[i] = (char)(out[i] - 'A' + 'a');
    if (why)
        *why = NULL;
    return 0;
}
