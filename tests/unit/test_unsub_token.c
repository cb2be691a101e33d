/*
 * test_unsub_token - unsubscribe tokens: round trip (any case), the token's
 * shape (length, alphabet), refusal of every single changed character, of a
 * token made under another key, of garbage, short and overlong texts and of
 * non-uuid input to make; and the public_url setting's validation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "sbuf.h"
#include "unsub_token.h"

static const char *UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

static void s_key(unsigned char key[UNSUB_TOKEN_KEY_LEN], unsigned char seed)
{
    for (int i = 0; i < UNSUB_TOKEN_KEY_LEN; i++)
        key[i] = (unsigned char)(seed + i);
}

static void test_round_trip(void **state)
{
    (void)state;
    unsigned char key[UNSUB_TOKEN_KEY_LEN];
    s_key(key, 1);
    char tok[UNSUB_TOKEN_LEN + 1], uuid[37];
    assert_int_equal(unsub_token_make(key, UUID, tok), 0);
    assert_int_equal(strlen(tok), UNSUB_TOKEN_LEN);
    for (size_t i = 0; tok[i]; i++)
        assert_non_null(strchr("abcdefghijklmnopqrstuvwxyz234567", tok[i]));
    assert_int_equal(unsub_token_check(key, tok, uuid), 0);
    assert_string_equal(uuid, UUID);
    /* Deterministic: the same row gets the same token. */
    char again[UNSUB_TOKEN_LEN + 1];
    assert_int_equal(unsub_token_make(key, UUID, again), 0);
    assert_string_equal(tok, again);
    /* Upper case (an MTA that changed the local part) still names it; an
     * upper-case uuid makes the same token. */
    char up[UNSUB_TOKEN_LEN + 1];
    for (size_t i = 0; i <= UNSUB_TOKEN_LEN; i++)
        up[i] = (char)((tok[i] >= 'a' && tok[i] <= 'z') ? tok[i] - 32 : tok[i]);
    assert_int_equal(unsub_token_check(key, up, uuid), 0);
    assert_string_equal(uuid, UUID);
    assert_int_equal(unsub_token_make(key, "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0", again), 0);
    assert_string_equal(tok, again);
    /* Another row, another token. */
    assert_int_equal(unsub_token_make(key, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1", again), 0);
    assert_string_not_equal(tok, again);
}

static void test_every_flip_refused(void **state)
{
    (void)state;
    unsigned char key[UNSUB_TOKEN_KEY_LEN];
    s_key(key, 7);
    char tok[UNSUB_TOKEN_LEN + 1], uuid[37];
    assert_int_equal(unsub_token_make(key, UUID, tok), 0);
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
    for (size_t i = 0; i < UNSUB_TOKEN_LEN; i++) {
        for (size_t a = 0; a < 32; a++) {
            if (alphabet[a] == tok[i])
                continue;
            char bad[UNSUB_TOKEN_LEN + 1];
            memcpy(bad, tok, sizeof bad);
            bad[i] = alphabet[a];
            strcpy(uuid, "x");
            assert_int_equal(unsub_token_check(key, bad, uuid), -1);
            assert_string_equal(uuid, "");
        }
    }
}

static void test_wrong_key_refused(void **state)
{
    (void)state;
    unsigned char k1[UNSUB_TOKEN_KEY_LEN], k2[UNSUB_TOKEN_KEY_LEN];
    s_key(k1, 1);
    s_key(k2, 1);
    k2[31] ^= 1;
    char tok[UNSUB_TOKEN_LEN + 1], uuid[37];
    assert_int_equal(unsub_token_make(k1, UUID, tok), 0);
    assert_int_equal(unsub_token_check(k2, tok, uuid), -1);
    char tok2[UNSUB_TOKEN_LEN + 1];
    assert_int_equal(unsub_token_make(k2, UUID, tok2), 0);
    assert_string_not_equal(tok, tok2);
}

static void test_garbage_refused(void **state)
{
    (void)state;
    unsigned char key[UNSUB_TOKEN_KEY_LEN];
    s_key(key, 3);
    char tok[UNSUB_TOKEN_LEN + 1], uuid[37];
    assert_int_equal(unsub_token_make(key, UUID, tok), 0);
    char buf[200];
    /* Short by one, long by one, much longer. */
    snprintf(buf, sizeof buf, "%.*s", UNSUB_TOKEN_LEN - 1, tok);
    assert_int_equal(unsub_token_check(key, buf, uuid), -1);
    snprintf(buf, sizeof buf, "%sa", tok);
    assert_int_equal(unsub_token_check(key, buf, uuid), -1);
    snprintf(buf, sizeof buf, "%s%s%s", tok, tok, tok);
    assert_int_equal(unsub_token_check(key, buf, uuid), -1);
    const char *bad[] = {"", "a", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                         "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "'; DROP TABLE messages; --",
                         NULL};
    for (int i = 0; bad[i]; i++)
        assert_int_equal(unsub_token_check(key, bad[i], uuid), -1);
    assert_int_equal(unsub_token_check(key, NULL, uuid), -1);
    /* Characters outside the alphabet at each position: 0, 1, 8, 9, '=', '-',
     * a NUL in the middle. */
    const char outside[] = "0189=-/+ \x80";
    for (size_t i = 0; i < UNSUB_TOKEN_LEN; i += 5)
        for (size_t c = 0; outside[c]; c++) {
            memcpy(buf, tok, UNSUB_TOKEN_LEN + 1);
            buf[i] = outside[c];
            assert_int_equal(unsub_token_check(key, buf, uuid), -1);
        }
    memcpy(buf, tok, UNSUB_TOKEN_LEN + 1);
    buf[10] = 0;
    assert_int_equal(unsub_token_check(key, buf, uuid), -1);
    /* make refuses what is not a uuid. */
    const char *not_uuid[] = {"", "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                              "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg",
                              "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f00", "0f1e2d3c+4b5a-6978-8796-a5b4c3d2e1f0",
                              NULL};
    for (int i = 0; not_uuid[i]; i++) {
        assert_int_equal(unsub_token_make(key, not_uuid[i], tok), -1);
        assert_string_equal(tok, "");
    }
    assert_int_equal(unsub_token_make(key, NULL, tok), -1);
}

static char *s_base(const char *public_url, const char *bind, sbuf_t *err)
{
    config_t *cfg = config_new();
    assert_non_null(cfg);
    assert_int_equal(config_set(cfg, "public_url", public_url, NULL), 0);
    assert_int_equal(config_set(cfg, "api_bind", bind, NULL), 0);
    assert_int_equal(config_set(cfg, "api_port", "8081", NULL), 0);
    sbuf_reset(err);
    char *out = unsub_token_base_url(cfg, err);
    config_destroy(&cfg);
    return out;
}

static void test_base_url(void **state)
{
    (void)state;
    sbuf_t *err = sbuf_new(64);
    struct {
        const char *in, *bind, *want; /* want NULL: refused */
    } cases[] = {
        {"", "127.0.0.1", "http://127.0.0.1:8081"},
        {"", "::1", "http://[::1]:8081"},
        {"https://mail.example.com", "x", "https://mail.example.com"},
        {"https://mail.example.com/", "x", "https://mail.example.com"},
        {"https://mail.example.com/postchi//", "x", "https://mail.example.com/postchi"},
        {"http://10.0.0.1:8080", "x", "http://10.0.0.1:8080"},
        {"HTTPS://Mail.Example.com", "x", "HTTPS://Mail.Example.com"},
        {"ftp://mail.example.com", "x", NULL},
        {"mail.example.com", "x", NULL},
        {"https://", "x", NULL},
        {"https:///path", "x", NULL},
        {"https://mail example.com", "x", NULL},
        {"https://mail.example.com/?a=b", "x", NULL},
        {"https://mail.example.com/#x", "x", NULL},
        {"https://mail.example.com/<x>", "x", NULL},
        {"https://a.example,b.example", "x", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = s_base(cases[i].in, cases[i].bind, err);
        if (cases[i].want) {
            assert_non_null(got);
            assert_string_equal(got, cases[i].want);
        } else {
            assert_null(got);
            assert_non_null(strstr(sbuf_data(err), "public_url"));
        }
        free(got);
    }
    sbuf_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_flip_refused),
        cmocka_unit_test(test_wrong_key_refused),
        cmocka_unit_test(test_garbage_refused),
        cmocka_unit_test(test_base_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
