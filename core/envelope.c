/*
 * envelope - encode and decode the 7-item msgpack frame (see envelope.h).
 *
 * How: the encoder writes the few msgpack forms it needs by hand (smallest
 * form for every int and length, as msgpack-c does), so a frame costs a
 * handful of sbuf appends and no packer state. The decoder is a hand-written
 * cursor over the frame: it accepts every valid msgpack spelling of each item
 * (any int width, any str/bin width, array16/32 holding 7) and points into
 * the frame instead of copying, because the broker decodes every frame it
 * routes.
 *
 * What can go wrong: frames come from any peer on the mesh, so the decoder
 * assumes hostile bytes. Every length is compared with the bytes left before
 * it is used (never by adding to a pointer first, which could wrap), and the
 * frame is refused whole on the first problem with a static reason. The body
 * helpers parse maps that may hold anything; unknown values are skipped by a
 * loop with a counter, not by recursion, so deep nesting cannot blow the
 * stack, and the counter is bounded by the bytes left so it cannot overflow.
 */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "envelope.h"

/* Reasons handed back through *why; static so callers can keep them. */
static const char S_TRUNCATED[] = "truncated";
static const char S_TOO_LARGE[] = "too large";
static const char S_NOT_ENVELOPE[] = "not an envelope";
static const char S_BAD_FIELD[] = "bad field type";
static const char S_BAD_VERSION[] = "bad version";
static const char S_BAD_TYPE[] = "bad type";
static const char S_TOO_LONG[] = "address too long";
static const char S_EMPTY_TARGET[] = "empty target";
static const char S_TRAILING[] = "trailing bytes";

/* Largest header any item needs: marker plus an 8-byte int or 4-byte length. */
#define S_HDR_MAX 9

typedef struct {
    const uint8_t *p;   /* next unread byte */
    const uint8_t *end; /* one past the last byte */
} reader_t;

static inline size_t s_left(const reader_t *r)
{
    return (size_t)(r->end - r->p);
}

/* Big-endian unsigned of width 1, 2, 4 or 8 bytes. */
static inline uint64_t s_load_be(const uint8_t *p, size_t width)
{
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++)
        v = (v << 8) | p[i];
    return v;
}

/* ---------------------------------------------------------------- writing */

/* Write v in its smallest msgpack unsigned form; returns the bytes used. */
static size_t s_put_uint(uint8_t *p, uint64_t v)
{
    size_t width;
    if (v <= 0x7f) {
        p[0] = (uint8_t)v;
        return 1;
    }
    if (v <= UINT8_MAX) {
        p[0] = 0xcc;
        width = 1;
    } else if (v <= UINT16_MAX) {
        p[0] = 0xcd;
        width = 2;
    } else if (v <= UINT32_MAX) {
        p[0] = 0xce;
        width = 4;
    } else {
        p[0] = 0xcf;
        width = 8;
    }
    for (size_t i = 0; i < width; i++)
        p[1 + i] = (uint8_t)(v >> (8 * (width - 1 - i)));
    return 1 + width;
}

/* Write a str (is_str) or bin header for n bytes; returns the bytes used.
 * The caller has checked n <= UINT32_MAX. */
static size_t s_put_len(uint8_t *p, size_t n, int is_str)
{
    size_t width;
    uint8_t base = is_str ? 0xd9 : 0xc4; /* str8/bin8; 16 and 32 follow */
    if (is_str && n <= 31) {
        p[0] = (uint8_t)(0xa0 | n);
        return 1;
    }
    if (n <= UINT8_MAX) {
        p[0] = base;
        width = 1;
    } else if (n <= UINT16_MAX) {
        p[0] = (uint8_t)(base + 1);
        width = 2;
    } else {
        p[0] = (uint8_t)(base + 2);
        width = 4;
    }
    for (size_t i = 0; i < width; i++)
        p[1 + i] = (uint8_t)(n >> (8 * (width - 1 - i)));
    return 1 + width;
}

/* Append a str/bin header and its bytes. */
static int s_append_sized(sbuf_t *out, const void *data, size_t n, int is_str)
{
    uint8_t hdr[S_HDR_MAX];
    if (n > UINT32_MAX)
        return -1;
    if (sbuf_append(out, hdr, s_put_len(hdr, n, is_str)) != 0)
        return -1;
    return sbuf_append(out, data ? data : "", n); /* memcpy wants non-NULL */
}

/*
 * A version of 0 is written as ENVELOPE_VERSION so that a zero-initialised
 * envelope_t makes a valid frame; any other version is written as given,
 * which lets tests build frames the decoder must refuse. Only what cannot be
 * represented is refused here: validity of type and target is the decoder's
 * job, on the receiving side, where it matters.
 */
int envelope_encode(const envelope_t *env, sbuf_t *out)
{
    assert(env && out);
    assert(env->target || env->target_len == 0);
    assert(env->sender || env->sender_len == 0);
    assert(env->name || env->name_len == 0);
    assert(env->body || env->body_len == 0);
    if (env->target_len > ENVELOPE_ADDR_MAX || env->sender_len > ENVELOPE_ADDR_MAX ||
        env->name_len > ENVELOPE_ADDR_MAX || env->body_len > UINT32_MAX)
        return -1;

    uint8_t hdr[1 + 2 * S_HDR_MAX + 2];
    size_t n = 0;
    hdr[n++] = 0x97; /* fixarray of 7 */
    n += s_put_uint(hdr + n, env->version ? env->version : ENVELOPE_VERSION);
    n += s_put_uint(hdr + n, env->type);
    n += s_put_len(hdr + n, env->target_len, 1);
    uint8_t tail[2 * S_HDR_MAX];
    size_t m = s_put_uint(tail, env->corr);
    m += s_put_len(tail + m, env->body_len, 0);

    /* Reserve the whole frame (2 bytes bound the sender and name headers)
     * so the appends below do not grow the buffer piecemeal. */
    size_t total =
        n + env->target_len + 2 + env->sender_len + 2 + env->name_len + m + env->body_len;
    size_t start = sbuf_len(out);
    if (sbuf_reserve(out, total) != 0 || sbuf_append(out, hdr, n) != 0 ||
        sbuf_append(out, env->target ? env->target : "", env->target_len) != 0 ||
        s_append_sized(out, env->sender, env->sender_len, 1) != 0 ||
        s_append_sized(out, env->name, env->name_len, 1) != 0 || sbuf_append(out, tail, m) != 0 ||
        sbuf_append(out, env->body ? env->body : "", env->body_len) != 0) {
        sbuf_truncate(out, start);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- reading */

/* Read an unsigned int in any width. Signed forms holding a value >= 0 are
 * accepted too: some encoders (Go, Java) write every int as signed. */
static inline const char *s_read_uint(reader_t *r, uint64_t *v)
{
    if (r->p == r->end)
        return S_TRUNCATED;
    uint8_t b = *r->p;
    if (b <= 0x7f) {
        *v = b;
        r->p++;
        return NULL;
    }
    size_t width;
    switch (b) {
    case 0xcc:
    case 0xd0:
        width = 1;
        break;
    case 0xcd:
    case 0xd1:
        width = 2;
        break;
    case 0xce:
    case 0xd2:
        width = 4;
        break;
    case 0xcf:
    case 0xd3:
        width = 8;
        break;
    default:
        return S_BAD_FIELD;
    }
    if (s_left(r) - 1 < width)
        return S_TRUNCATED;
    uint64_t x = s_load_be(r->p + 1, width);
    if (b >= 0xd0 && (x >> (8 * width - 1)) != 0)
        return S_BAD_FIELD; /* negative */
    *v = x;
    r->p += 1 + width;
    return NULL;
}

/* Read a str (is_str) or bin of at most max bytes; *data points into the
 * frame. */
static inline const char *s_read_sized(reader_t *r, int is_str, size_t max, const uint8_t **data,
                                       size_t *len)
{
    if (r->p == r->end)
        return S_TRUNCATED;
    uint8_t b = *r->p;
    size_t hdr, n;
    if (is_str && (b & 0xe0) == 0xa0) {
        n = b & 0x1f;
        hdr = 1;
    } else {
        uint8_t base = is_str ? 0xd9 : 0xc4; /* 8-, 16-, 32-bit lengths */
        if (b < base || b > base + 2)
            return S_BAD_FIELD;
        size_t width = (size_t)1 << (b - base);
        if (s_left(r) - 1 < width)
            return S_TRUNCATED;
        n = (size_t)s_load_be(r->p + 1, width);
        hdr = 1 + width;
    }
    if (n > max)
        return S_TOO_LONG;
    if (s_left(r) - hdr < n)
        return S_TRUNCATED;
    *data = r->p + hdr;
    *len = n;
    r->p += hdr + n;
    return NULL;
}

/* Read an array (is_map 0) or map header; *count is its item or pair count. */
static const char *s_read_container(reader_t *r, int is_map, uint64_t *count)
{
    if (r->p == r->end)
        return S_TRUNCATED;
    uint8_t b = *r->p;
    uint8_t fix = is_map ? 0x80 : 0x90;
    uint8_t base = is_map ? 0xde : 0xdc; /* 16-bit, then 32-bit count */
    if ((b & 0xf0) == fix) {
        *count = b & 0x0f;
        r->p++;
        return NULL;
    }
    if (b != base && b != base + 1)
        return S_NOT_ENVELOPE;
    size_t width = b == base ? 2 : 4;
    if (s_left(r) - 1 < width)
        return S_TRUNCATED;
    *count = s_load_be(r->p + 1, width);
    r->p += 1 + width;
    return NULL;
}

/* The decode proper; on success fills *e, which the caller copies out. */
static const char *s_decode(reader_t *r, envelope_t *e)
{
    const char *why;
    uint64_t v;
    const uint8_t *s;

    if ((why = s_read_container(r, 0, &v)) != NULL)
        return why;
    if (v != 7)
        return S_NOT_ENVELOPE;
    if ((why = s_read_uint(r, &v)) != NULL)
        return why;
    if (v != ENVELOPE_VERSION)
        return S_BAD_VERSION;
    e->version = (uint32_t)v;
    if ((why = s_read_uint(r, &v)) != NULL)
        return why;
    if (v == 0 || v > MSG_TYPE_MAX)
        return S_BAD_TYPE;
    e->type = (uint32_t)v;
    if ((why = s_read_sized(r, 1, ENVELOPE_ADDR_MAX, &s, &e->target_len)) != NULL)
        return why;
    if (e->target_len == 0)
        return S_EMPTY_TARGET;
    e->target = (const char *)s;
    if ((why = s_read_sized(r, 1, ENVELOPE_ADDR_MAX, &s, &e->sender_len)) != NULL)
        return why;
    e->sender = (const char *)s;
    if ((why = s_read_sized(r, 1, ENVELOPE_ADDR_MAX, &s, &e->name_len)) != NULL)
        return why;
    e->name = (const char *)s;
    if ((why = s_read_uint(r, &e->corr)) != NULL)
        return why;
    if ((why = s_read_sized(r, 0, SIZE_MAX, &s, &e->body_len)) != NULL)
        return why;
    e->body = s;
    if (r->p != r->end)
        return S_TRAILING;
    return NULL;
}

int envelope_decode(const void *frame, size_t len, size_t max_bytes, envelope_t *env,
                    const char **why)
{
    assert(env);
    assert(frame || len == 0);
    const char *reason = S_TOO_LARGE;
    if (len <= max_bytes) {
        reader_t r = {frame, (const uint8_t *)frame + len};
        envelope_t e;
        /* Decode into a local so *env is only written for a good frame. */
        reason = len == 0 ? S_TRUNCATED : s_decode(&r, &e);
        if (!reason) {
            *env = e;
            return 0;
        }
    }
    if (why)
        *why = reason;
    return -1;
}

/* ------------------------------------------------------------ body maps */

/*
 * Skip one msgpack value of any kind. Containers add their items to a
 * pending count instead of recursing. Every pending item needs at least one
 * byte, so a count larger than the bytes left is refused at once, which also
 * keeps the count far from overflow.
 */
static const char *s_skip(reader_t *r)
{
    uint64_t pending = 1;
    while (pending > 0) {
        pending--;
        if (r->p == r->end)
            return S_TRUNCATED;
        uint8_t b = *r->p++;
        uint64_t payload = 0; /* bytes of data after the header */
        uint64_t items = 0;   /* values nested inside */
        size_t width = 0;     /* bytes of length field after the marker */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            continue; /* fixint, nil, bool */
        if ((b & 0xf0) == 0x80) {
            items = 2u * (b & 0x0f);
        } else if ((b & 0xf0) == 0x90) {
            items = b & 0x0f;
        } else if ((b & 0xe0) == 0xa0) {
            payload = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: /* bin8 */
            case 0xd9: /* str8 */
            case 0xc7: /* ext8 */
                width = 1;
                break;
            case 0xc5:
            case 0xda:
            case 0xc8:
            case 0xdc: /* array16 */
            case 0xde: /* map16 */
                width = 2;
                break;
            case 0xc6:
            case 0xdb:
            case 0xc9:
            case 0xdd: /* array32 */
            case 0xdf: /* map32 */
                width = 4;
                break;
            case 0xcc:
            case 0xd0:
                payload = 1;
                break;
            case 0xcd:
            case 0xd1:
                payload = 2;
                break;
            case 0xca:
            case 0xce:
            case 0xd2:
                payload = 4;
                break;
            case 0xcb:
            case 0xcf:
            case 0xd3:
                payload = 8;
                break;
            case 0xd4:
            case 0xd5:
            case 0xd6:
            case 0xd7:
            case 0xd8: /* fixext 1..16, plus the type byte */
                payload = 1 + ((uint64_t)1 << (b - 0xd4));
                break;
            default: /* 0xc1, never used */
                return S_BAD_FIELD;
            }
            if (width) {
                if (s_left(r) < width)
                    return S_TRUNCATED;
                uint64_t n = s_load_be(r->p, width);
                r->p += width;
                if (b == 0xdc || b == 0xdd)
                    items = n;
                else if (b == 0xde || b == 0xdf)
                    items = 2 * n;
                else
                    payload = n + (b >= 0xc7 && b <= 0xc9); /* ext: type byte */
            }
        }
        if (payload > s_left(r))
            return S_TRUNCATED;
        r->p += payload;
        pending += items;
        if (pending > s_left(r))
            return S_TRUNCATED;
    }
    return NULL;
}

/* One expected key of a body map and, once read, its value. */
typedef struct {
    const char *key;    /* map key, NUL-terminated */
    int is_str;         /* value kind: str (1) or uint (0) */
    const uint8_t *str; /* str value, pointing into the body */
    size_t str_len;     /* its length */
    uint64_t num;       /* uint value */
    int seen;           /* key met already: a second one is refused */
} field_t;

/*
 * Parse body as one map with string keys. Each key in fields must appear
 * exactly once with a value of its kind; other keys are skipped so that
 * newer peers may add some. String values may not hold NUL, since callers
 * get them as C strings. 0 or -1.
 */
static int s_map_decode(const void *body, size_t len, field_t *fields, size_t nfields)
{
    assert(body || len == 0);
    reader_t r = {body, (const uint8_t *)body + len};
    uint64_t pairs;
    if (s_read_container(&r, 1, &pairs) != NULL || pairs > s_left(&r))
        return -1;
    for (uint64_t i = 0; i < pairs; i++) {
        const uint8_t *key;
        size_t key_len;
        if (s_read_sized(&r, 1, SIZE_MAX, &key, &key_len) != NULL)
            return -1;
        field_t *f = NULL;
        for (size_t j = 0; j < nfields && !f; j++)
            if (strlen(fields[j].key) == key_len && memcmp(fields[j].key, key, key_len) == 0)
                f = &fields[j];
        if (!f) {
            if (s_skip(&r) != NULL)
                return -1;
            continue;
        }
        if (f->seen)
            return -1;
        f->seen = 1;
        if (f->is_str) {
            if (s_read_sized(&r, 1, SIZE_MAX, &f->str, &f->str_len) != NULL ||
                memchr(f->str, 0, f->str_len) != NULL)
                return -1;
        } else if (s_read_uint(&r, &f->num) != NULL) {
            return -1;
        }
    }
    if (r.p != r.end)
        return -1;
    for (size_t j = 0; j < nfields; j++)
        if (!fields[j].seen)
            return -1;
    return 0;
}

/* Copy a str value into a caller's buffer, cut to fit and NUL-terminated.
 * A NULL buf means the caller does not want this value. */
static void s_copy_cut(char *buf, size_t size, const uint8_t *s, size_t len)
{
    if (!buf)
        return;
    assert(size > 0);
    if (len > size - 1)
        len = size - 1;
    memcpy(buf, s, len);
    buf[len] = '\0';
}

/* Append a map header for pairs (< 16) pairs, then the strs in kv. */
static int s_append_map(sbuf_t *out, size_t pairs, const char *const *kv, size_t nstr)
{
    assert(pairs < 16);
    uint8_t hdr = (uint8_t)(0x80 | pairs);
    if (sbuf_append(out, &hdr, 1) != 0)
        return -1;
    for (size_t i = 0; i < nstr; i++) {
        assert(kv[i]);
        if (s_append_sized(out, kv[i], strlen(kv[i]), 1) != 0)
            return -1;
    }
    return 0;
}

int envelope_hello_encode(sbuf_t *out, const char *role, uint32_t capacity)
{
    const char *kv[] = {"role", role, "capacity"};
    uint8_t num[S_HDR_MAX];
    size_t start = sbuf_len(out);
    if (s_append_map(out, 2, kv, 3) != 0 || sbuf_append(out, num, s_put_uint(num, capacity)) != 0) {
        sbuf_truncate(out, start);
        return -1;
    }
    return 0;
}

int envelope_hello_decode(const void *body, size_t len, char *role_buf, size_t role_size,
                          uint32_t *capacity)
{
    field_t f[] = {{.key = "role", .is_str = 1}, {.key = "capacity", .is_str = 0}};
    if (s_map_decode(body, len, f, 2) != 0 || f[1].num > UINT32_MAX)
        return -1;
    s_copy_cut(role_buf, role_size, f[0].str, f[0].str_len);
    if (capacity)
        *capacity = (uint32_t)f[1].num;
    return 0;
}

int envelope_error_encode(sbuf_t *out, const char *code, const char *reason)
{
    const char *kv[] = {"code", code, "reason", reason};
    size_t start = sbuf_len(out);
    if (s_append_map(out, 2, kv, 4) != 0) {
        sbuf_truncate(out, start);
        return -1;
    }
    return 0;
}

int envelope_error_decode(const void *body, size_t len, char *code_buf, size_t code_size,
                          char *reason_buf, size_t reason_size)
{
    field_t f[] = {{.key = "code", .is_str = 1}, {.key = "reason", .is_str = 1}};
    if (s_map_decode(body, len, f, 2) != 0)
        return -1;
    s_copy_cut(code_buf, code_size, f[0].str, f[0].str_len);
    s_copy_cut(reason_buf, reason_size, f[1].str, f[1].str_len);
    return 0;
}

/* ------------------------------------------------------------ addresses */

int envelope_addr_split(const char *addr, size_t len, const char **kind, size_t *kind_len,
                        const char **key, size_t *key_len)
{
    assert(addr || len == 0);
    if (len == 0 || len > ENVELOPE_ADDR_MAX)
        return -1;
    const char *slash = memchr(addr, '/', len);
    if (!slash || slash == addr || slash == addr + len - 1)
        return -1;
    if (kind)
        *kind = addr;
    if (kind_len)
        *kind_len = (size_t)(slash - addr);
    if (key)
        *key = slash + 1;
    if (key_len)
        *key_len = len - (size_t)(slash - addr) - 1;
    return 0;
}
