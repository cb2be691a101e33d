/*
 * test_secretbox - key parsing, seal/open round trips (empty, small, large,
 * binary), fresh nonces, and refusal of every kind of tampering: each
 * flipped byte, truncation, extension, wrong version, wrong key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sbuf.h"
#include "secretbox.h"

static const char *KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

static void s_key(unsigned char key[SECRETBOX_KEY_LEN])
{
    assert_int_equal(secretbox_key_parse(KEY_HEX, key), 0);
}

static void test_key_parse(void **state)
{
    (void)state;
    unsigned char key[SECRETBOX_KEY_LEN];
    s_key(key);
    for (int i = 0; i < SECRETBOX_KEY_LEN; i++)
        assert_int_equal(key[i], i);
    assert_int_equal(
        secretbox_key_parse("FFEEDDCCBBAA99887766554433221100ffeeddccbbaa99887766554433221100", key),
        0);
    assert_int_equal(key[0], 0xff);
    assert_int_equal(key[31], 0x00);

    unsigned char before[SECRETBOX_KEY_LEN];
    memcpy(before, key, sizeof key);
    const char *bad[] = {
        "",
        "00",
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1",   /* 63 */
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f0", /* 65 */
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g",  /* not hex */
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e 1",  /* space */
        "0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(secretbox_key_parse(bad[i], key), -1);
    assert_int_equal(secretbox_key_parse(NULL, key), -1);
    assert_memory_equal(key, before, sizeof key); /* untouched on failure */
}

static void s_roundtrip(size_t len)
{
    unsigned char key[SECRETBOX_KEY_LEN];
    s_key(key);
    unsigned char *plain = malloc(len + 1);
    assert_non_null(plain);
    for (size_t i = 0; i < len; i++)
        plain[i] = (unsigned char)(i * 7 + 3); /* includes NULs */
    sbuf_t *box = sbuf_new(0), *back = sbuf_new(0);
    assert_int_equal(secretbox_seal(key, plain, len, box), 0);
    assert_int_equal(sbuf_len(box), len + SECRETBOX_OVERHEAD);
    assert_int_equal((unsigned char)sbuf_data(box)[0], SECRETBOX_VERSION);
    if (len >= 16) /* the plaintext does not show through */
        assert_null(memmem(sbuf_data(box), sbuf_len(box), plain, 16));
    assert_int_equal(secretbox_open(key, sbuf_data(box), sbuf_len(box), back), 0);
    assert_int_equal(sbuf_len(back), len);
    if (len)
        assert_memory_equal(sbuf_data(back), plain, len);
    free(plain);
    sbuf_destroy(&box);
    sbuf_destroy(&back);
}

static void test_roundtrip(void **state)
{
    (void)state;
    size_t lens[] = {0, 1, 15, 16, 17, 1000, 70000};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
        s_roundtrip(lens[i]);
}

static void test_nonce_is_fresh(void **state)
{
    (void)state;
    unsigned char key[SECRETBOX_KEY_LEN];
    s_key(key);
    sbuf_t *a = sbuf_new(0), *b = sbuf_new(0);
    assert_int_equal(secretbox_seal(key, "same text", 9, a), 0);
    assert_int_equal(secretbox_seal(key, "same text", 9, b), 0);
    assert_int_equal(sbuf_len(a), sbuf_len(b));
    assert_memory_not_equal(sbuf_data(a) + 1, sbuf_data(b) + 1, SECRETBOX_NONCE_LEN);
    assert_memory_not_equal(sbuf_data(a), sbuf_data(b), sbuf_len(a));
    sbuf_destroy(&a);
    sbuf_destroy(&b);
}

static void test_tampering_refused(void **state)
{
    (void)state;
    unsigned char key[SECRETBOX_KEY_LEN];
    s_key(key);
    const char *msg = "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";
    sbuf_t *box = sbuf_new(0), *out = sbuf_new(0);
    assert_int_equal(secretbox_seal(key, msg, strlen(msg), box), 0);
    size_t n = sbuf_len(box);
    unsigned char *copy = malloc(n + 1);
    assert_non_null(copy);

    /* Every byte, version, nonce, ciphertext and tag alike, is covered. */
    for (size_t i = 0; i < n; i++) {
        memcpy(copy, sbuf_data(box), n);
        copy[i] ^= 0x01;
        assert_int_equal(secretbox_open(key, copy, n, out), -1);
        assert_int_equal(sbuf_len(out), 0);
    }
    memcpy(copy, sbuf_data(box), n);
    for (size_t cut = 0; cut < n; cut++)
        assert_int_equal(secretbox_open(key, copy, cut, out), -1);
    unsigned char *longer = malloc(n + 1);
    assert_non_null(longer);
    memcpy(longer, copy, n);
    longer[n] = 0;
    assert_int_equal(secretbox_open(key, longer, n + 1, out), -1);
    assert_int_equal(secretbox_open(key, NULL, 0, out), -1);

    unsigned char other[SECRETBOX_KEY_LEN];
    memcpy(other, key, sizeof other);
    other[31] ^= 0x80;
    assert_int_equal(secretbox_open(other, copy, n, out), -1);
    assert_int_equal(sbuf_len(out), 0);

    /* And the untouched box still opens. */
    assert_int_equal(secretbox_open(key, copy, n, out), 0);
    assert_string_equal(sbuf_data(out), msg);
    free(copy);
    free(longer);
    sbuf_destroy(&box);
    sbuf_destroy(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_parse),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_nonce_is_fresh),
        cmocka_unit_test(test_tampering_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
