/*
 * test_envelope - the frame codec, its body helpers and address split.
 *
 * Round trips of every message type, interop with msgpack-c both ways, every
 * refusal reason on hand-written frames, every truncation of valid frames,
 * and a few thousand deterministic random mutations (run this under the
 * sanitizer build to turn a stray read into a failure). Hostile bytes are
 * always given in an exact-size heap block so ASan sees any over-read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "envelope.h"
#include "sbuf.h"

#define MAX_FRAME (1u << 20)

/* Deterministic xorshift64*, so every run mutates the same way. */
static uint64_t s_rng_state = 0x2545f4914f6cdd1dULL;
static uint64_t s_rand(void)
{
    s_rng_state ^= s_rng_state >> 12;
    s_rng_state ^= s_rng_state << 25;
    s_rng_state ^= s_rng_state >> 27;
    return s_rng_state * 0x2545f4914f6cdd1dULL;
}

/* Bytes from a hex string with optional spaces: "97 01 04". Caller frees. */
static uint8_t *s_hex(const char *hex, size_t *len)
{
    uint8_t *out = malloc(strlen(hex) / 2 + 1);
    assert_non_null(out);
    size_t n = 0;
    for (const char *p = hex; *p;) {
        if (*p == ' ') {
            p++;
            continue;
        }
        unsigned v;
        assert_int_equal(sscanf(p, "%2x", &v), 1);
        out[n++] = (uint8_t)v;
        p += 2;
    }
    *len = n;
    return out;
}

/* Copy into an exact-size heap block so reads past the end are caught. */
static uint8_t *s_exact(const void *data, size_t len)
{
    uint8_t *p = malloc(len ? len : 1);
    assert_non_null(p);
    if (len)
        memcpy(p, data, len);
    return p;
}

/* Decode a copy of data. The decoded fields point into the copy, so the
 * caller frees *copy_p after using them; with copy_p NULL it is freed here. */
static int s_decode_copy(const void *data, size_t len, envelope_t *env, const char **why,
                         uint8_t **copy_p)
{
    uint8_t *copy = s_exact(data, len);
    int rc = envelope_decode(copy, len, MAX_FRAME, env, why);
    if (copy_p)
        *copy_p = copy;
    else
        free(copy);
    return rc;
}

static envelope_t s_env(uint32_t type, const char *target, const char *sender, const char *name,
                        uint64_t corr, const void *body, size_t body_len)
{
    envelope_t e = {
        .version = ENVELOPE_VERSION,
        .type = type,
        .target = target,
        .target_len = strlen(target),
        .sender = sender,
        .sender_len = strlen(sender),
        .name = name,
        .name_len = strlen(name),
        .corr = corr,
        .body = body,
        .body_len = body_len,
    };
    return e;
}

static void s_assert_same(const envelope_t *a, const envelope_t *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->target_len, b->target_len);
    assert_memory_equal(a->target, b->target, a->target_len);
    assert_int_equal(a->sender_len, b->sender_len);
    if (a->sender_len)
        assert_memory_equal(a->sender, b->sender, a->sender_len);
    assert_int_equal(a->name_len, b->name_len);
    if (a->name_len)
        assert_memory_equal(a->name, b->name, a->name_len);
    assert_true(a->corr == b->corr);
    assert_int_equal(a->body_len, b->body_len);
    if (a->body_len)
        assert_memory_equal(a->body, b->body, a->body_len);
}

/* Encode, decode, compare; then check that every cut of the frame fails. */
static void s_round_trip(const envelope_t *in)
{
    sbuf_t *buf = sbuf_new(64);
    assert_non_null(buf);
    assert_int_equal(envelope_encode(in, buf), 0);
    const uint8_t *frame = (const uint8_t *)sbuf_data(buf);
    size_t len = sbuf_len(buf);

    envelope_t out;
    const char *why = NULL;
    uint8_t *copy = s_exact(frame, len);
    assert_int_equal(envelope_decode(copy, len, MAX_FRAME, &out, &why), 0);
    s_assert_same(in, &out);
    /* Zero-copy: the fields point into the frame. */
    assert_true((const uint8_t *)out.target > copy && (const uint8_t *)out.target < copy + len);
    free(copy);

    for (size_t cut = 0; cut < len; cut++) {
        why = NULL;
        assert_int_equal(s_decode_copy(frame, cut, &out, &why, NULL), -1);
        assert_non_null(why);
    }
    sbuf_destroy(&buf);
}

static void test_round_trip_every_type(void **state)
{
    (void)state;
    const char body[] = "\x82\xa1x\x01\xa1y\xc0";
    for (uint32_t type = MSG_HELLO; type <= MSG_TYPE_MAX; type++) {
        envelope_t e = s_env(type, "list/42", "node/client-1", "list_added", type * 1000003ULL,
                             body, sizeof body - 1);
        s_round_trip(&e);
    }
}

static void test_round_trip_edges(void **state)
{
    (void)state;
    /* Empty name and body, corr 0, one-byte target. */
    envelope_t e = s_env(MSG_SEND, "a", "", "", 0, NULL, 0);
    s_round_trip(&e);

    /* Longest addresses and name, largest corr. */
    char max[ENVELOPE_ADDR_MAX + 1];
    memset(max, 'k', ENVELOPE_ADDR_MAX);
    max[ENVELOPE_ADDR_MAX] = '\0';
    max[4] = '/';
    e = s_env(MSG_REPLY, max, max, max, UINT64_MAX, "", 0);
    s_round_trip(&e);

    /* Every header width: fixstr/str8 boundaries, bin8/bin16/bin32 bodies,
     * every uint width for corr. */
    static const size_t lens[] = {0, 31, 32, 255, 256, 65535, 65536, 100000};
    static const uint64_t corrs[] = {127,   128,   255,           256,
                                     65535, 65536, 4294967295ULL, 4294967296ULL};
    uint8_t *body = malloc(100000);
    assert_non_null(body);
    for (size_t i = 0; i < 100000; i++)
        body[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        char name[40];
        memset(name, 'n', sizeof name);
        name[i < 2 ? lens[i] : 32] = '\0';
        envelope_t big = s_env(MSG_ERROR, "actor/x", "node/1", name, corrs[i], body, lens[i]);
        if (lens[i] <= 256)
            s_round_trip(&big); /* every truncation too; skip for the slow big ones */
        sbuf_t *buf = sbuf_new(0);
        assert_int_equal(envelope_encode(&big, buf), 0);
        envelope_t out;
        const char *why;
        uint8_t *copy;
        assert_int_equal(s_decode_copy(sbuf_data(buf), sbuf_len(buf), &out, &why, &copy), 0);
        s_assert_same(&big, &out);
        free(copy);
        sbuf_destroy(&buf);
    }
    free(body);
}

static void test_encode_refuses_and_appends(void **state)
{
    (void)state;
    char longer[ENVELOPE_ADDR_MAX + 2];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    sbuf_t *buf = sbuf_new(0);
    assert_int_equal(sbuf_append_str(buf, "prefix"), 0);

    envelope_t e = s_env(MSG_SEND, longer, "node/1", "n", 1, NULL, 0);
    assert_int_equal(envelope_encode(&e, buf), -1);
    e = s_env(MSG_SEND, "a/b", longer, "n", 1, NULL, 0);
    assert_int_equal(envelope_encode(&e, buf), -1);
    e = s_env(MSG_SEND, "a/b", "node/1", longer, 1, NULL, 0);
    assert_int_equal(envelope_encode(&e, buf), -1);
    assert_int_equal(sbuf_len(buf), 6); /* left as it was */

    /* Appends after what is there; version 0 is written as the current one. */
    e = s_env(MSG_SEND, "a/b", "node/1", "n", 1, NULL, 0);
    e.version = 0;
    assert_int_equal(envelope_encode(&e, buf), 0);
    assert_memory_equal(sbuf_data(buf), "prefix", 6);
    envelope_t out;
    const char *why;
    assert_int_equal(s_decode_copy(sbuf_data(buf) + 6, sbuf_len(buf) - 6, &out, &why, NULL), 0);
    assert_int_equal(out.version, ENVELOPE_VERSION);
    sbuf_destroy(&buf);
}

/* Our frame read by msgpack-c, field by field. */
static void test_interop_msgpack_c_reads_ours(void **state)
{
    (void)state;
    envelope_t e = s_env(MSG_SEND, "contact/99", "node/w1", "ping", 300000, "\x00\x01\x02", 3);
    sbuf_t *buf = sbuf_new(0);
    assert_int_equal(envelope_encode(&e, buf), 0);

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, sbuf_data(buf), sbuf_len(buf), &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, sbuf_len(buf));
    msgpack_object o = u.data;
    assert_int_equal(o.type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(o.via.array.size, 7);
    msgpack_object *it = o.via.array.ptr;
    assert_int_equal(it[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(it[0].via.u64, ENVELOPE_VERSION);
    assert_int_equal(it[1].via.u64, MSG_SEND);
    assert_int_equal(it[2].type, MSGPACK_OBJECT_STR);
    assert_int_equal(it[2].via.str.size, 10);
    assert_memory_equal(it[2].via.str.ptr, "contact/99", 10);
    assert_int_equal(it[3].type, MSGPACK_OBJECT_STR);
    assert_memory_equal(it[3].via.str.ptr, "node/w1", 7);
    assert_int_equal(it[4].type, MSGPACK_OBJECT_STR);
    assert_memory_equal(it[4].via.str.ptr, "ping", 4);
    assert_int_equal(it[5].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(it[5].via.u64, 300000);
    assert_int_equal(it[6].type, MSGPACK_OBJECT_BIN);
    assert_int_equal(it[6].via.bin.size, 3);
    assert_memory_equal(it[6].via.bin.ptr, "\x00\x01\x02", 3);
    msgpack_unpacked_destroy(&u);
    sbuf_destroy(&buf);
}

/* A frame packed by msgpack-c, with forced wide int forms, read by us. */
static void test_interop_we_read_msgpack_c(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 7);
    msgpack_pack_fix_uint64(&pk, 1);
    msgpack_pack_fix_int32(&pk, MSG_REPLY); /* signed form, value >= 0 */
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "a/bcd", 5);
    msgpack_pack_str(&pk, 6);
    msgpack_pack_str_body(&pk, "node/1", 6);
    msgpack_pack_str(&pk, 0);
    msgpack_pack_fix_uint16(&pk, 7);
    msgpack_pack_bin(&pk, 2);
    msgpack_pack_bin_body(&pk, "hi", 2);

    envelope_t out;
    const char *why = NULL;
    uint8_t *copy;
    assert_int_equal(s_decode_copy(sb.data, sb.size, &out, &why, &copy), 0);
    assert_int_equal(out.type, MSG_REPLY);
    assert_int_equal(out.target_len, 5);
    assert_memory_equal(out.target, "a/bcd", 5);
    assert_int_equal(out.name_len, 0);
    assert_true(out.corr == 7);
    assert_int_equal(out.body_len, 2);
    free(copy);
    msgpack_sbuffer_destroy(&sb);
}

typedef struct {
    const char *hex; /* the frame */
    int ok;          /* 0 accepted, -1 refused */
    const char *why; /* the reason when refused */
} frame_case_t;

/* Frames written by hand; "a3 612f62" is the target "a/b". */
static const frame_case_t s_frames[] = {
    {"97 01 04 a3612f62 a0 a0 00 c400", 0, NULL},
    /* other spellings of the same items */
    {"dc0007 cc01 cd0004 d903612f62 da0000 db00000000 cf0000000000000000 c600000000", 0, NULL},
    {"dd00000007 d001 d30000000000000004 a3612f62 a0 a0 d100ff c50001ff", 0, NULL},
    /* not an envelope */
    {"", -1, "truncated"},
    {"80", -1, "not an envelope"},
    {"c0", -1, "not an envelope"},
    {"96 01 04 a3612f62 a0 a0 00", -1, "not an envelope"},
    {"98 01 04 a3612f62 a0 a0 00 c400 00", -1, "not an envelope"},
    {"dc0008 01 04 a3612f62 a0 a0 00 c400 00", -1, "not an envelope"},
    {"dc00", -1, "truncated"},
    {"dd000000", -1, "truncated"},
    /* version */
    {"97 02 04 a3612f62 a0 a0 00 c400", -1, "bad version"},
    {"97 00 04 a3612f62 a0 a0 00 c400", -1, "bad version"},
    {"97 cf0000000100000001 04 a3612f62 a0 a0 00 c400", -1, "bad version"},
    {"97 a131 04 a3612f62 a0 a0 00 c400", -1, "bad field type"},
    {"97 ff 04 a3612f62 a0 a0 00 c400", -1, "bad field type"},
    {"97 d0ff 04 a3612f62 a0 a0 00 c400", -1, "bad field type"},
    {"97 cb3ff0000000000000 04 a3612f62 a0 a0 00 c400", -1, "bad field type"},
    /* type */
    {"97 01 00 a3612f62 a0 a0 00 c400", -1, "bad type"},
    {"97 01 07 a3612f62 a0 a0 00 c400", -1, "bad type"},
    {"97 01 ce00000004 a3612f62 a0 a0 00 c400", 0, NULL},
    {"97 01 cf0000000100000004 a3612f62 a0 a0 00 c400", -1, "bad type"},
    {"97 01 c3 a3612f62 a0 a0 00 c400", -1, "bad field type"},
    /* target, sender, name */
    {"97 01 04 a0 a0 a0 00 c400", -1, "empty target"},
    {"97 01 04 c403612f62 a0 a0 00 c400", -1, "bad field type"},
    {"97 01 04 c0 a0 a0 00 c400", -1, "bad field type"},
    {"97 01 04 da0100", -1, "address too long"},
    {"97 01 04 a3612f62 db00000100", -1, "address too long"},
    {"97 01 04 a3612f62 a0 dbffffffff", -1, "address too long"},
    {"97 01 04 a3612f62 01 a0 00 c400", -1, "bad field type"},
    {"97 01 04 a3612f62 a0 91a0 00 c400", -1, "bad field type"},
    {"97 01 04 a4612f62", -1, "truncated"},
    {"97 01 04 d9ff612f62", -1, "truncated"},
    /* corr */
    {"97 01 04 a3612f62 a0 a0 e0 c400", -1, "bad field type"},
    {"97 01 04 a3612f62 a0 a0 d3ffffffffffffffff c400", -1, "bad field type"},
    {"97 01 04 a3612f62 a0 a0 cf00000000 c400", -1, "truncated"},
    /* body */
    {"97 01 04 a3612f62 a0 a0 00 a0", -1, "bad field type"},
    {"97 01 04 a3612f62 a0 a0 00 c0", -1, "bad field type"},
    {"97 01 04 a3612f62 a0 a0 00 c7000000", -1, "bad field type"},
    {"97 01 04 a3612f62 a0 a0 00 c402ff", -1, "truncated"},
    {"97 01 04 a3612f62 a0 a0 00 c6ffffffff00", -1, "truncated"},
    {"97 01 04 a3612f62 a0 a0 00 c6", -1, "truncated"},
    /* trailing */
    {"97 01 04 a3612f62 a0 a0 00 c400 00", -1, "trailing bytes"},
    {"97 01 04 a3612f62 a0 a0 00 c400 97", -1, "trailing bytes"},
};

static void test_hand_written_frames(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof s_frames / sizeof s_frames[0]; i++) {
        size_t len;
        uint8_t *frame = s_hex(s_frames[i].hex, &len);
        envelope_t out;
        memset(&out, 0xab, sizeof out);
        envelope_t before = out;
        const char *why = NULL;
        int rc = envelope_decode(frame, len, MAX_FRAME, &out, &why);
        if (rc != s_frames[i].ok || (s_frames[i].why && (!why || strcmp(why, s_frames[i].why))))
            fail_msg("case %zu (%s): rc %d why %s", i, s_frames[i].hex, rc, why ? why : "-");
        if (rc != 0)
            assert_memory_equal(&out, &before, sizeof out); /* untouched */
        free(frame);
    }
}

static void test_refuses_too_large(void **state)
{
    (void)state;
    sbuf_t *buf = sbuf_new(0);
    envelope_t e = s_env(MSG_SEND, "a/b", "node/1", "x", 1, "12345678", 8);
    assert_int_equal(envelope_encode(&e, buf), 0);
    envelope_t out;
    const char *why = NULL;
    size_t len = sbuf_len(buf);
    assert_int_equal(envelope_decode(sbuf_data(buf), len, len, &out, &why), 0);
    assert_int_equal(envelope_decode(sbuf_data(buf), len, len - 1, &out, &why), -1);
    assert_string_equal(why, "too large");
    /* why may be NULL. */
    assert_int_equal(envelope_decode(sbuf_data(buf), len, 0, &out, NULL), -1);
    sbuf_destroy(&buf);
}

/* Flip, insert, delete and overwrite bytes of valid frames; the decoder must
 * never crash, and whatever it accepts must survive a round trip. */
static void test_random_mutations(void **state)
{
    (void)state;
    sbuf_t *seeds[4];
    const envelope_t seed_env[4] = {
        s_env(MSG_SEND, "list/1", "node/c", "list_added", 5, "\x81\xa1k\x01", 4),
        s_env(MSG_HELLO, "node/broker", "node/w", "", 0, NULL, 0),
        s_env(MSG_ERROR, "node/c", "list/1", "nope", 1ULL << 40, "abc", 3),
        s_env(MSG_REPLY, "k/v", "", "x", 300, NULL, 0),
    };
    for (int i = 0; i < 4; i++) {
        seeds[i] = sbuf_new(0);
        assert_int_equal(envelope_encode(&seed_env[i], seeds[i]), 0);
    }
    size_t accepted = 0;
    sbuf_t *again = sbuf_new(0);
    for (int iter = 0; iter < 20000; iter++) {
        const sbuf_t *seed = seeds[s_rand() % 4];
        size_t len = sbuf_len(seed);
        uint8_t *m = malloc(len + 8);
        assert_non_null(m);
        memcpy(m, sbuf_data(seed), len);
        int edits = 1 + (int)(s_rand() % 4);
        for (int k = 0; k < edits; k++) {
            size_t at = len ? s_rand() % len : 0;
            switch (s_rand() % 4) {
            case 0: /* flip a bit */
                if (len)
                    m[at] ^= (uint8_t)(1u << (s_rand() % 8));
                break;
            case 1: /* random byte */
                if (len)
                    m[at] = (uint8_t)s_rand();
                break;
            case 2: /* delete */
                if (len) {
                    memmove(m + at, m + at + 1, len - at - 1);
                    len--;
                }
                break;
            default: /* insert, bounded by the 8 spare bytes */
                if (len < sbuf_len(seed) + 8) {
                    memmove(m + at + 1, m + at, len - at);
                    m[at] = (uint8_t)s_rand();
                    len++;
                }
            }
        }
        envelope_t out;
        const char *why = NULL;
        uint8_t *exact = s_exact(m, len);
        free(m);
        if (envelope_decode(exact, len, MAX_FRAME, &out, &why) == 0) {
            accepted++;
            assert_int_equal(out.version, ENVELOPE_VERSION);
            assert_true(out.type >= 1 && out.type <= MSG_TYPE_MAX);
            assert_true(out.target_len >= 1 && out.target_len <= ENVELOPE_ADDR_MAX);
            assert_true((const uint8_t *)out.body + out.body_len <= exact + len);
            sbuf_reset(again);
            assert_int_equal(envelope_encode(&out, again), 0);
            envelope_t back;
            uint8_t *copy;
            assert_int_equal(s_decode_copy(sbuf_data(again), sbuf_len(again), &back, &why, &copy),
                             0);
            s_assert_same(&out, &back);
            free(copy);
        } else {
            assert_non_null(why);
        }
        free(exact);
    }
    /* Some mutations (a changed letter) keep the frame valid; make sure the
     * accepting path was exercised at all. */
    assert_true(accepted > 0);
    sbuf_destroy(&again);
    for (int i = 0; i < 4; i++)
        sbuf_destroy(&seeds[i]);
}

/* ---------------------------------------------------------------- bodies */

static void test_hello_round_trip(void **state)
{
    (void)state;
    static const uint32_t caps[] = {0, 1, 127, 128, 65536, UINT32_MAX};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        sbuf_t *buf = sbuf_new(0);
        assert_int_equal(envelope_hello_encode(buf, i % 2 ? "worker" : "client", caps[i]), 0);
        char role[16];
        uint32_t cap = 12345;
        uint8_t *body = s_exact(sbuf_data(buf), sbuf_len(buf));
        assert_int_equal(envelope_hello_decode(body, sbuf_len(buf), role, sizeof role, &cap), 0);
        assert_string_equal(role, i % 2 ? "worker" : "client");
        assert_int_equal(cap, caps[i]);
        /* cut to the buffer */
        char small[4];
        assert_int_equal(envelope_hello_decode(body, sbuf_len(buf), small, sizeof small, &cap), 0);
        assert_string_equal(small, i % 2 ? "wor" : "cli");
        /* every truncation fails */
        for (size_t cut = 0; cut < sbuf_len(buf); cut++) {
            uint8_t *c = s_exact(body, cut);
            assert_int_equal(envelope_hello_decode(c, cut, role, sizeof role, &cap), -1);
            free(c);
        }
        free(body);
        sbuf_destroy(&buf);
    }
}

static void test_hello_interop(void **state)
{
    (void)state;
    sbuf_t *buf = sbuf_new(0);
    assert_int_equal(envelope_hello_encode(buf, "worker", 300), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, sbuf_data(buf), sbuf_len(buf), &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, sbuf_len(buf));
    assert_int_equal(u.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(u.data.via.map.size, 2);
    msgpack_object_kv *kv = u.data.via.map.ptr;
    assert_int_equal(kv[0].key.type, MSGPACK_OBJECT_STR);
    assert_memory_equal(kv[0].key.via.str.ptr, "role", 4);
    assert_memory_equal(kv[0].val.via.str.ptr, "worker", 6);
    assert_memory_equal(kv[1].key.via.str.ptr, "capacity", 8);
    assert_int_equal(kv[1].val.via.u64, 300);
    msgpack_unpacked_destroy(&u);
    sbuf_destroy(&buf);
}

static void test_error_round_trip(void **state)
{
    (void)state;
    /* A long reason needs str16. */
    char reason[1000];
    memset(reason, 'r', sizeof reason - 1);
    reason[sizeof reason - 1] = '\0';
    const char *reasons[] = {"", "no worker owns list/1", reason};
    for (size_t i = 0; i < 3; i++) {
        sbuf_t *buf = sbuf_new(0);
        assert_int_equal(envelope_error_encode(buf, "no_route", reasons[i]), 0);
        char code[32], got[sizeof reason];
        uint8_t *body = s_exact(sbuf_data(buf), sbuf_len(buf));
        assert_int_equal(
            envelope_error_decode(body, sbuf_len(buf), code, sizeof code, got, sizeof got), 0);
        assert_string_equal(code, "no_route");
        assert_string_equal(got, reasons[i]);
        /* NULL buffers: the caller does not want that part. */
        assert_int_equal(envelope_error_decode(body, sbuf_len(buf), code, sizeof code, NULL, 0), 0);
        for (size_t cut = 0; cut < sbuf_len(buf); cut++)
            assert_int_equal(envelope_error_decode(body, cut, code, sizeof code, got, sizeof got),
                             -1);
        free(body);
        sbuf_destroy(&buf);
    }
}

typedef struct {
    const char *hex; /* the body */
    int ok;          /* expected result of hello_decode */
} body_case_t;

static const body_case_t s_hellos[] = {
    /* {"role":"worker","capacity":3}, then a stray byte */
    {"82 a4726f6c65 a6776f726b6572 a8636170616369747901 03", -1},
    {"82 a4726f6c65 a6776f726b6572 a8636170616369747903", 0},
    {"de0002 a4726f6c65 d906776f726b6572 a863617061636974 79 cf0000000000000003", 0},
    /* unknown keys of any kind are skipped */
    {"83 a178 93c0c3cb3ff0000000000000 a4726f6c65 a6776f726b6572 a863617061636974 79 03", 0},
    {"83 a4726f6c65 a6776f726b6572 a178 d40100 a863617061636974 79 03", 0},
    {"83 a178 81a17991c7020001ff a4726f6c65 a6776f726b6572 a863617061636974 79 03", 0},
    /* missing, duplicate, wrongly typed */
    {"81 a4726f6c65 a6776f726b6572", -1},
    {"81 a863617061636974 79 03", -1},
    {"83 a4726f6c65 a6776f726b6572 a4726f6c65 a6776f726b6572 a863617061636974 79 03", -1},
    {"82 a4726f6c65 03 a863617061636974 79 03", -1},
    {"82 a4726f6c65 c406776f726b6572 a863617061636974 79 03", -1},
    {"82 a4726f6c65 a6776f726b6572 a863617061636974 79 ff", -1},
    {"82 a4726f6c65 a6776f726b6572 a863617061636974 79 cf0000000100000000", -1},
    {"82 a4726f6c65 a6776f72006b65 a863617061636974 79 03", -1},    /* NUL in role */
    {"82 01 a6776f726b6572 a863617061636974 79 03", -1},            /* int key */
    {"92 a4726f6c65 a6776f726b6572", -1},                           /* array */
    {"82 a4726f6c65 a6776f726b6572 a863617061636974 79 03 00", -1}, /* trailing */
    /* hostile counts and lengths */
    {"dfffffffff", -1},
    {"83 a178 ddffffffff a4726f6c65 a6776f726b6572 a863617061636974 79 03", -1},
    {"83 a178 dfffffffff", -1},
    {"83 a178 c6ffffffff", -1},
    {"83 a178 c9fffffffe01", -1},
    {"83 a178 c1 a4726f6c65 a6776f726b6572 a863617061636974 79 03", -1},
    {"", -1},
    {"c0", -1},
};

static void test_hello_hostile(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof s_hellos / sizeof s_hellos[0]; i++) {
        size_t len;
        uint8_t *body = s_hex(s_hellos[i].hex, &len);
        char role[16] = "untouched";
        uint32_t cap = 777;
        int rc = envelope_hello_decode(body, len, role, sizeof role, &cap);
        if (rc != s_hellos[i].ok)
            fail_msg("case %zu (%s): rc %d", i, s_hellos[i].hex, rc);
        if (rc == 0) {
            assert_string_equal(role, "worker");
            assert_int_equal(cap, 3);
        } else {
            assert_string_equal(role, "untouched");
            assert_int_equal(cap, 777);
        }
        free(body);
    }
}

/* An unknown value nested a million deep must not recurse. */
static void test_body_deep_nesting(void **state)
{
    (void)state;
    const size_t depth = 1000000;
    uint8_t *body = malloc(depth + 64);
    assert_non_null(body);
    size_t n = 0;
    body[n++] = 0x83;
    body[n++] = 0xa1;
    body[n++] = 'x';
    memset(body + n, 0x91, depth); /* [[[[...]]]] */
    n += depth;
    body[n++] = 0xc0;
    size_t len;
    uint8_t *rest = s_hex("a4726f6c65 a6776f726b6572 a863617061636974 79 03", &len);
    memcpy(body + n, rest, len);
    n += len;
    free(rest);
    char role[16];
    uint32_t cap;
    uint8_t *exact = s_exact(body, n);
    assert_int_equal(envelope_hello_decode(exact, n, role, sizeof role, &cap), 0);
    assert_int_equal(cap, 3);
    /* Cut inside the nesting. */
    assert_int_equal(envelope_hello_decode(exact, depth / 2, role, sizeof role, &cap), -1);
    free(exact);
    free(body);
}

static void test_body_random_mutations(void **state)
{
    (void)state;
    sbuf_t *hello = sbuf_new(0), *err = sbuf_new(0);
    assert_int_equal(envelope_hello_encode(hello, "worker", 70000), 0);
    assert_int_equal(envelope_error_encode(err, "timeout", "no reply in 5s"), 0);
    for (int iter = 0; iter < 20000; iter++) {
        const sbuf_t *seed = iter % 2 ? hello : err;
        size_t len = sbuf_len(seed);
        uint8_t *m = s_exact(sbuf_data(seed), len);
        for (int k = 1 + (int)(s_rand() % 3); k > 0; k--)
            m[s_rand() % len] = (uint8_t)(s_rand() % 3 ? s_rand() : m[s_rand() % len] ^ 0x10);
        size_t cut = s_rand() % 4 == 0 ? s_rand() % (len + 1) : len;
        char a[8], b[8];
        uint32_t cap;
        if (envelope_hello_decode(m, cut, a, sizeof a, &cap) == 0)
            assert_true(strlen(a) < sizeof a);
        if (envelope_error_decode(m, cut, a, sizeof a, b, sizeof b) == 0)
            assert_true(strlen(a) < sizeof a && strlen(b) < sizeof b);
        free(m);
    }
    sbuf_destroy(&hello);
    sbuf_destroy(&err);
}

/* ------------------------------------------------------------ addresses */

typedef struct {
    const char *addr; /* input */
    int ok;           /* expected result */
    const char *kind; /* expected parts when ok */
    const char *key;
} split_case_t;

static const split_case_t s_splits[] = {
    {"list/42", 0, "list", "42"}, {"node/broker", 0, "node", "broker"},
    {"a/b/c", 0, "a", "b/c"},     {"k/v", 0, "k", "v"},
    {"noslash", -1, NULL, NULL},  {"/key", -1, NULL, NULL},
    {"kind/", -1, NULL, NULL},    {"/", -1, NULL, NULL},
    {"", -1, NULL, NULL},
};

static void test_addr_split(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof s_splits / sizeof s_splits[0]; i++) {
        const split_case_t *c = &s_splits[i];
        const char *kind = NULL, *key = NULL;
        size_t kind_len = 0, key_len = 0;
        int rc = envelope_addr_split(c->addr, strlen(c->addr), &kind, &kind_len, &key, &key_len);
        assert_int_equal(rc, c->ok);
        if (rc == 0) {
            assert_int_equal(kind_len, strlen(c->kind));
            assert_memory_equal(kind, c->kind, kind_len);
            assert_int_equal(key_len, strlen(c->key));
            assert_memory_equal(key, c->key, key_len);
        }
    }
    /* The length is what counts, not a NUL. */
    const char *kind, *key;
    size_t kind_len, key_len;
    assert_int_equal(envelope_addr_split("ab/cd/ef", 4, &kind, &kind_len, &key, &key_len), 0);
    assert_int_equal(key_len, 1);
    assert_int_equal(envelope_addr_split("ab/cd", 3, &kind, &kind_len, &key, &key_len), -1);
    /* Longest allowed, one longer. */
    char addr[ENVELOPE_ADDR_MAX + 1];
    memset(addr, 'z', sizeof addr);
    addr[1] = '/';
    assert_int_equal(envelope_addr_split(addr, ENVELOPE_ADDR_MAX, &kind, &kind_len, &key, &key_len),
                     0);
    assert_int_equal(key_len, ENVELOPE_ADDR_MAX - 2);
    assert_int_equal(
        envelope_addr_split(addr, ENVELOPE_ADDR_MAX + 1, &kind, &kind_len, &key, &key_len), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_round_trip_edges),
        cmocka_unit_test(test_encode_refuses_and_appends),
        cmocka_unit_test(test_interop_msgpack_c_reads_ours),
        cmocka_unit_test(test_interop_we_read_msgpack_c),
        cmocka_unit_test(test_hand_written_frames),
        cmocka_unit_test(test_refuses_too_large),
        cmocka_unit_test(test_random_mutations),
        cmocka_unit_test(test_hello_round_trip),
        cmocka_unit_test(test_hello_interop),
        cmocka_unit_test(test_error_round_trip),
        cmocka_unit_test(test_hello_hostile),
        cmocka_unit_test(test_body_deep_nesting),
        cmocka_unit_test(test_body_random_mutations),
        cmocka_unit_test(test_addr_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
