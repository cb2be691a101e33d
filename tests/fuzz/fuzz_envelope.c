/*
 * fuzz_envelope - libFuzzer target for the frame decoder and body helpers.
 *
 * Every input is tried as a frame, as a hello body and as an error body.
 * A frame the decoder accepts must also satisfy what the broker relies on
 * (fields inside the input, lengths in bounds, version and type valid) and
 * must survive encode -> decode unchanged; a violation aborts, which the
 * fuzzer reports as a crash. Built with clang as a libFuzzer binary, or with
 * any compiler together with fuzz_replay.c, which feeds it a corpus so the
 * inputs found once are replayed by every test run.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "sbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_FRAME (1u << 20)

static void s_check(int ok)
{
    if (!ok)
        abort();
}

static int s_within(const void *p, size_t len, const uint8_t *data, size_t size)
{
    return len == 0 || ((const uint8_t *)p >= data && (const uint8_t *)p + len <= data + size);
}

static int s_same(const envelope_t *a, const envelope_t *b)
{
    return a->version == b->version && a->type == b->type && a->target_len == b->target_len &&
           memcmp(a->target, b->target, a->target_len) == 0 && a->sender_len == b->sender_len &&
           (a->sender_len == 0 || memcmp(a->sender, b->sender, a->sender_len) == 0) &&
           a->name_len == b->name_len &&
           (a->name_len == 0 || memcmp(a->name, b->name, a->name_len) == 0) && a->corr == b->corr &&
           a->body_len == b->body_len &&
           (a->body_len == 0 || memcmp(a->body, b->body, a->body_len) == 0);
}

static void s_bodies(const void *body, size_t len)
{
    char a[16], b[64];
    uint32_t capacity;
    if (envelope_hello_decode(body, len, a, sizeof a, &capacity) == 0)
        s_check(strlen(a) < sizeof a);
    if (envelope_error_decode(body, len, a, sizeof a, b, sizeof b) == 0)
        s_check(strlen(a) < sizeof a && strlen(b) < sizeof b);
}

static void s_frame(const uint8_t *data, size_t size)
{
    envelope_t env;
    const char *why = NULL;
    if (envelope_decode(data, size, FUZZ_MAX_FRAME, &env, &why) != 0) {
        s_check(why != NULL);
        return;
    }
    s_check(env.version == ENVELOPE_VERSION);
    s_check(env.type >= 1 && env.type <= MSG_TYPE_MAX);
    s_check(env.target_len >= 1 && env.target_len <= ENVELOPE_ADDR_MAX);
    s_check(env.sender_len <= ENVELOPE_ADDR_MAX && env.name_len <= ENVELOPE_ADDR_MAX);
    s_check(s_within(env.target, env.target_len, data, size));
    s_check(s_within(env.sender, env.sender_len, data, size));
    s_check(s_within(env.name, env.name_len, data, size));
    s_check(s_within(env.body, env.body_len, data, size));

    const char *kind, *key;
    size_t kind_len, key_len;
    if (envelope_addr_split(env.target, env.target_len, &kind, &kind_len, &key, &key_len) == 0)
        s_check(kind_len >= 1 && key_len >= 1 && kind_len + 1 + key_len == env.target_len &&
                kind[kind_len] == '/');
    s_bodies(env.body, env.body_len);

    sbuf_t *again = sbuf_new(size);
    s_check(again != NULL);
    s_check(envelope_encode(&env, again) == 0);
    /* The encoder writes the smallest form, so it is never longer. */
    s_check(sbuf_len(again) <= size);
    envelope_t back;
    s_check(envelope_decode(sbuf_data(again), sbuf_len(again), FUZZ_MAX_FRAME, &back, &why) == 0);
    s_check(s_same(&env, &back));
    sbuf_destroy(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_frame(data, size);
    s_bodies(data, size);
    return 0;
}
