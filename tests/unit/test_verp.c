/*
 * test_verp - VERP tokens: a known answer computed independently (Python's
 * hmac, from the derivation verp.h documents), round trips, upper or mixed
 * case accepted, and refusal of every flipped character, a wrong key, the
 * old unsigned format (the bare row id), wrong lengths and garbage; bad
 * uuids and small buffers refused by make.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <ctype.h>

#include "mime.h"
#include "verp.h"

static const char *UUID = "0f8e2a3c-1b4d-4e5f-8a9b-0c1d2e3f4a5b";
/* python3: sub = HMAC(bytes(range(32)), b"postchi verp v1");
 * uuid hex + HMAC(sub, uuid bytes)[:10].hex() */
static const char *KAT = "0f8e2a3c1b4d4e5f8a9b0c1d2e3f4a5be4a024c2ee3285018574";

static void s_key(unsigned char key[VERP_KEY_LEN], unsigned char first)
{
    for (int i = 0; i < VERP_KEY_LEN; i++)
        key[i] = (unsigned char)(first + i);
}

static void test_known_answer(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 0);
    char tok[VERP_TOKEN_LEN + 1], uuid[VERP_UUID_SIZE];
    assert_int_equal(verp_token_make(key, UUID, tok, sizeof tok), 0);
    assert_string_equal(tok, KAT);
    assert_int_equal(strlen(tok), VERP_TOKEN_LEN);
    assert_int_equal(verp_token_check(key, KAT, uuid), 0);
    assert_string_equal(uuid, UUID);
}

static void test_round_trip(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 7);
    static const char *uuids[] = {
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "6BA7B810-9DAD-11D1-80B4-00C04FD430C8", /* upper case in, lower case out */
    };
    for (size_t i = 0; i < sizeof uuids / sizeof uuids[0]; i++) {
        char tok[64], uuid[VERP_UUID_SIZE], lower[VERP_UUID_SIZE];
        assert_int_equal(verp_token_make(key, uuids[i], tok, sizeof tok), 0);
        for (size_t k = 0; k < strlen(tok); k++)
            assert_true(isdigit((unsigned char)tok[k]) || (tok[k] >= 'a' && tok[k] <= 'f'));
        assert_int_equal(verp_token_check(key, tok, uuid), 0);
        for (size_t k = 0; k < VERP_UUID_SIZE; k++)
            lower[k] = (char)tolower((unsigned char)uuids[i][k]);
        assert_string_equal(uuid, lower);
    }
    /* Tokens of different rows differ in their MAC too. */
    char a[64], b[64];
    assert_int_equal(verp_token_make(key, uuids[0], a, sizeof a), 0);
    assert_int_equal(verp_token_make(key, uuids[1], b, sizeof b), 0);
    assert_memory_not_equal(a + 32, b + 32, 2 * VERP_MAC_LEN);
}

/* The token fits the VERP address rule both ways (mime_verp/_parse). */
static void test_fits_verp_address(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 0);
    char tok[64], back[128];
    assert_int_equal(verp_token_make(key, UUID, tok, sizeof tok), 0);
    char *addr = mime_verp("bounces", tok, "bounces.send.example");
    assert_non_null(addr);
    assert_int_equal(mime_verp_parse(addr, "bounces", "bounces.send.example", back, sizeof back), 0);
    assert_string_equal(back, tok);
    free(addr);
}

static void test_case_insensitive(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 0);
    char up[VERP_TOKEN_LEN + 1], mixed[VERP_TOKEN_LEN + 1], uuid[VERP_UUID_SIZE];
    for (size_t i = 0; i <= VERP_TOKEN_LEN; i++) {
        up[i] = (char)toupper((unsigned char)KAT[i]);
        mixed[i] = (char)(i % 2 ? toupper((unsigned char)KAT[i]) : KAT[i]);
    }
    assert_int_equal(verp_token_check(key, up, uuid), 0);
    assert_string_equal(uuid, UUID);
    assert_int_equal(verp_token_check(key, mixed, uuid), 0);
    assert_string_equal(uuid, UUID);
}

static void test_tampered(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 0);
    char uuid[VERP_UUID_SIZE];
    /* Every position, changed to another hex digit: refused. */
    for (size_t i = 0; i < VERP_TOKEN_LEN; i++) {
        char t[VERP_TOKEN_LEN + 1];
        memcpy(t, KAT, sizeof t);
        t[i] = t[i] == '0' ? '1' : '0';
        strcpy(uuid, "untouched");
        assert_int_equal(verp_token_check(key, t, uuid), -1);
        assert_string_equal(uuid, "");
    }
}

static void test_wrong_key(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN], other[VERP_KEY_LEN];
    s_key(key, 0);
    s_key(other, 0);
    other[31] ^= 1;
    char tok[64], uuid[VERP_UUID_SIZE];
    assert_int_equal(verp_token_make(other, UUID, tok, sizeof tok), 0);
    assert_string_not_equal(tok, KAT);
    assert_int_equal(verp_token_check(key, tok, uuid), -1);
    assert_int_equal(verp_token_check(other, KAT, uuid), -1);
}

static void test_garbage_refused(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 0);
    char uuid[VERP_UUID_SIZE];
    char longer[VERP_TOKEN_LEN + 3], shorter[VERP_TOKEN_LEN];
    snprintf(longer, sizeof longer, "%s00", KAT);
    memcpy(shorter, KAT, VERP_TOKEN_LEN - 1);
    shorter[VERP_TOKEN_LEN - 1] = '\0';
    char notbin[VERP_TOKEN_LEN + 1];
    memcpy(notbin, KAT, sizeof notbin);
    notbin[40] = 'g';
    const char *bad[] = {
        "",
        "0f8e2a3c1b4d4e5f8a9b0c1d2e3f4a5b",     /* the old format: the bare row id */
        "0f8e2a3c-1b4d-4e5f-8a9b-0c1d2e3f4a5b", /* a uuid */
        longer,
        shorter,
        notbin,
        "0f8e2a3c1b4d4e5f8a9b0c1d2e3f4a5be4a024c2ee328501857 ", /* trailing space */
        " 0f8e2a3c1b4d4e5f8a9b0c1d2e3f4a5be4a024c2ee328501857",
        "0f8e2a3c1b4d4e5f8a9b0c1d2e3f4a5b-4a024c2ee3285018574",
        "m8f3k2q-9x",
        "0000000000000000000000000000000000000000000000000000",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("%s\n", bad[i]);
        assert_int_equal(verp_token_check(key, bad[i], uuid), -1);
        assert_string_equal(uuid, "");
    }
    assert_int_equal(verp_token_check(key, NULL, uuid), -1);
    assert_int_equal(verp_token_check(NULL, KAT, uuid), -1);
    assert_int_equal(verp_token_check(key, KAT, NULL), -1);
}

static void test_make_refuses(void **state)
{
    (void)state;
    unsigned char key[VERP_KEY_LEN];
    s_key(key, 0);
    char tok[64];
    const char *bad[] = {
        "",
        "0f8e2a3c1b4d4e5f8a9b0c1d2e3f4a5b", /* no dashes */
        "0f8e2a3c-1b4d-4e5f-8a9b-0c1d2e3f4a5",
        "0f8e2a3c-1b4d-4e5f-8a9b-0c1d2e3f4a5b0",
        "0f8e2a3c-1b4d-4e5f-8a9b0c1d-2e3f4a5b",
        "0f8e2a3c-1b4d-4e5f-8a9b-0c1d2e3f4a5g",
        "{0f8e2a3c-1b4d-4e5f-8a9b-0c1d2e3f4a5b}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strcpy(tok, "x");
        assert_int_equal(verp_token_make(key, bad[i], tok, sizeof tok), -1);
        assert_string_equal(tok, "");
    }
    assert_int_equal(verp_token_make(key, NULL, tok, sizeof tok), -1);
    assert_int_equal(verp_token_make(NULL, UUID, tok, sizeof tok), -1);
    assert_int_equal(verp_token_make(key, UUID, NULL, 64), -1);
    assert_int_equal(verp_token_make(key, UUID, tok, 0), -1);
    assert_int_equal(verp_token_make(key, UUID, tok, VERP_TOKEN_LEN), -1); /* no room for NUL */
    assert_string_equal(tok, "");
    assert_int_equal(verp_token_make(key, UUID, tok, VERP_TOKEN_LEN + 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),   cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_fits_verp_address), cmocka_unit_test(test_case_insensitive),
        cmocka_unit_test(test_tampered),       cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_garbage_refused), cmocka_unit_test(test_make_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
