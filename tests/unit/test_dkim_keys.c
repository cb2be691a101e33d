/*
 * test_dkim_keys - generated Ed25519 and RSA-2048 keys sign and verify; the
 * public exports have the RFC shapes and decode back to keys that verify
 * the same signatures; PEM round trips; bad exports and PEM are refused;
 * TXT records build (with 255-byte zone strings) and match only the right
 * key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dkim_keys.h"
#include "sbuf.h"

static const char MSG[] = "From: a@example.com\r\nSubject: hi\r\n";

/* Sign with priv, verify with pub; a changed message or signature fails. */
static void s_sign_verify(const dkim_key_t *priv, const dkim_key_t *pub)
{
    sbuf_t *sig = sbuf_new(0);
    assert_int_equal(dkim_key_sign(priv, MSG, sizeof MSG - 1, sig), 0);
    assert_true(sbuf_len(sig) > 0);
    assert_int_equal(dkim_key_verify(pub, MSG, sizeof MSG - 1, sbuf_data(sig), sbuf_len(sig)), 1);
    assert_int_equal(dkim_key_verify(pub, MSG, sizeof MSG - 2, sbuf_data(sig), sbuf_len(sig)), 0);
    char *bad = malloc(sbuf_len(sig));
    assert_non_null(bad);
    memcpy(bad, sbuf_data(sig), sbuf_len(sig));
    bad[0] ^= 1;
    assert_int_equal(dkim_key_verify(pub, MSG, sizeof MSG - 1, bad, sbuf_len(sig)), 0);
    free(bad);
    sbuf_destroy(&sig);
}

static void s_check_alg(dkim_alg_t alg)
{
    dkim_key_t *key = dkim_key_generate(alg);
    assert_non_null(key);
    assert_int_equal(dkim_key_alg(key), alg);
    assert_int_equal(dkim_key_has_private(key), 1);
    s_sign_verify(key, key);

    sbuf_t *pub = sbuf_new(0), *pem = sbuf_new(0);
    assert_int_equal(dkim_key_public_b64(key, pub), 0);
    if (alg == DKIM_ED25519)
        assert_int_equal(sbuf_len(pub), 44); /* base64 of 32 raw bytes */
    else {
        /* DER SubjectPublicKeyInfo of RSA-2048 is 294 bytes -> 392 chars,
         * and every such export starts with the same SEQUENCE header. */
        assert_int_equal(sbuf_len(pub), 392);
        assert_memory_equal(sbuf_data(pub), "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", 44);
    }
    assert_null(strpbrk(sbuf_data(pub), "\r\n "));

    /* The export decodes to a public-only key that verifies our signatures. */
    dkim_key_t *back = dkim_key_from_public(alg, sbuf_data(pub));
    assert_non_null(back);
    assert_int_equal(dkim_key_has_private(back), 0);
    s_sign_verify(key, back);
    sbuf_t *sig = sbuf_new(0);
    assert_int_equal(dkim_key_sign(back, MSG, 3, sig), -1); /* no private half */
    sbuf_t *again = sbuf_new(0);
    assert_int_equal(dkim_key_public_b64(back, again), 0);
    assert_string_equal(sbuf_data(again), sbuf_data(pub));
    assert_int_equal(dkim_key_private_pem(back, pem), -1);

    /* PKCS#8 PEM round trip. */
    assert_int_equal(dkim_key_private_pem(key, pem), 0);
    assert_non_null(strstr(sbuf_data(pem), "-----BEGIN PRIVATE KEY-----"));
    dkim_key_t *loaded = dkim_key_from_pem(sbuf_data(pem), sbuf_len(pem));
    assert_non_null(loaded);
    assert_int_equal(dkim_key_alg(loaded), alg);
    s_sign_verify(loaded, back);
    sbuf_reset(again);
    assert_int_equal(dkim_key_public_b64(loaded, again), 0);
    assert_string_equal(sbuf_data(again), sbuf_data(pub));

    /* A second key is a different key: it does not verify our signature. */
    dkim_key_t *other = dkim_key_generate(alg);
    assert_non_null(other);
    sbuf_reset(sig);
    assert_int_equal(dkim_key_sign(key, MSG, sizeof MSG - 1, sig), 0);
    assert_int_equal(dkim_key_verify(other, MSG, sizeof MSG - 1, sbuf_data(sig), sbuf_len(sig)),
                     0);

    dkim_key_destroy(&key);
    dkim_key_destroy(&key);
    assert_null(key);
    dkim_key_destroy(&back);
    dkim_key_destroy(&loaded);
    dkim_key_destroy(&other);
    dkim_key_destroy(NULL);
    sbuf_destroy(&pub);
    sbuf_destroy(&pem);
    sbuf_destroy(&sig);
    sbuf_destroy(&again);
}

static void test_ed25519(void **state)
{
    (void)state;
    s_check_alg(DKIM_ED25519);
}

static void test_rsa(void **state)
{
    (void)state;
    s_check_alg(DKIM_RSA);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    const char *bad[] = {"", "abc", "!!!!", "AAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
                         "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" /* 36 bytes */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(dkim_key_from_public(DKIM_ED25519, bad[i]));
        assert_null(dkim_key_from_public(DKIM_RSA, bad[i]));
    }
    assert_null(dkim_key_from_public(DKIM_RSA, NULL));
    /* An Ed25519 export is not an RSA key, and the other way round. */
    dkim_key_t *ed = dkim_key_generate(DKIM_ED25519), *rsa = dkim_key_generate(DKIM_RSA);
    sbuf_t *e = sbuf_new(0), *r = sbuf_new(0);
    assert_int_equal(dkim_key_public_b64(ed, e), 0);
    assert_int_equal(dkim_key_public_b64(rsa, r), 0);
    assert_null(dkim_key_from_public(DKIM_RSA, sbuf_data(e)));
    assert_null(dkim_key_from_public(DKIM_ED25519, sbuf_data(r)));

    const char *pem = "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n";
    assert_null(dkim_key_from_pem(pem, strlen(pem)));
    assert_null(dkim_key_from_pem("", 0));
    assert_null(dkim_key_from_pem(NULL, 5));
    dkim_key_destroy(&ed);
    dkim_key_destroy(&rsa);
    sbuf_destroy(&e);
    sbuf_destroy(&r);
}

/* Join the zone form's quoted strings back: it must equal the value. */
static void s_unquote_zone(const char *zone, sbuf_t *out, size_t *max_piece)
{
    *max_piece = 0;
    const char *s = zone;
    while (*s) {
        assert_int_equal(*s, '"');
        s++;
        size_t piece = 0;
        while (*s != '"') {
            assert_int_not_equal(*s, '\0');
            if (*s == '\\')
                s++;
            sbuf_append(out, s++, 1);
            piece++;
        }
        s++;
        if (piece > *max_piece)
            *max_piece = piece;
        if (*s)
            assert_int_equal(*s++, ' ');
    }
}

static void test_txt_record(void **state)
{
    (void)state;
    for (int a = 0; a < 2; a++) {
        dkim_alg_t alg = a ? DKIM_RSA : DKIM_ED25519;
        dkim_key_t *key = dkim_key_generate(alg);
        sbuf_t *pub = sbuf_new(0), *value = sbuf_new(0), *zone = sbuf_new(0),
               *joined = sbuf_new(0), *expect = sbuf_new(0);
        assert_int_equal(dkim_key_public_b64(key, pub), 0);
        assert_int_equal(dkim_txt_record(alg, sbuf_data(pub), value, zone), 0);
        sbuf_appendf(expect, "v=DKIM1; k=%s; p=%s", a ? "rsa" : "ed25519", sbuf_data(pub));
        assert_string_equal(sbuf_data(value), sbuf_data(expect));
        size_t max_piece;
        s_unquote_zone(sbuf_data(zone), joined, &max_piece);
        assert_string_equal(sbuf_data(joined), sbuf_data(value));
        assert_true(max_piece <= 255);
        if (alg == DKIM_RSA) /* ~410 bytes: two strings, the first full */
            assert_int_equal(max_piece, 255);

        const char *why = "unset";
        assert_int_equal(dkim_txt_match(alg, sbuf_data(pub), sbuf_data(value), &why), 1);
        assert_null(why);
        /* A resolver concatenating strings, folding whitespace in p=. */
        sbuf_t *folded = sbuf_new(0);
        sbuf_appendf(folded, " v=DKIM1 ;k = %s ; t=y; p=%.*s   %s ;", a ? "rsa" : "ed25519", 10,
                     sbuf_data(pub), sbuf_data(pub) + 10);
        assert_int_equal(dkim_txt_match(alg, sbuf_data(pub), sbuf_data(folded), &why), 1);
        sbuf_destroy(&folded);
        dkim_key_destroy(&key);
        sbuf_destroy(&pub);
        sbuf_destroy(&value);
        sbuf_destroy(&zone);
        sbuf_destroy(&joined);
        sbuf_destroy(&expect);
    }
}

static void test_txt_mismatch(void **state)
{
    (void)state;
    dkim_key_t *key = dkim_key_generate(DKIM_ED25519), *other = dkim_key_generate(DKIM_ED25519);
    sbuf_t *pub = sbuf_new(0), *opub = sbuf_new(0), *t = sbuf_new(0);
    dkim_key_public_b64(key, pub);
    dkim_key_public_b64(other, opub);
    const char *p = sbuf_data(pub);
    /* Each record is head + key + tail; key 0 is ours, 1 the other, 2 none. */
    struct {
        const char *head;
        int which;
        const char *tail;
        const char *why_part;
    } cases[] = {
        {"v=DKIM1; k=ed25519; p=", 1, "", "different key"},
        {"v=DKIM2; k=ed25519; p=", 0, "", "not DKIM1"},
        {"k=ed25519; v=DKIM1; p=", 0, "", "first"},
        {"v=DKIM1; p=", 0, "", "not ed25519"}, /* k defaults to rsa */
        {"v=DKIM1; k=rsa; p=", 0, "", "not ed25519"},
        {"v=DKIM1; k=ed25519; p=", 2, "", "revoked"},
        {"v=DKIM1; k=ed25519", 2, "", "no p="},
        {"just some text ", 0, "", "tag=value"},
        {"v=DKIM1; k=ed25519; p=", 0, "AAAA", "different key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sbuf_reset(t);
        sbuf_append_str(t, cases[i].head);
        sbuf_append_str(t, cases[i].which == 0 ? p : cases[i].which == 1 ? sbuf_data(opub) : "");
        sbuf_append_str(t, cases[i].tail);
        const char *why = NULL;
        assert_int_equal(dkim_txt_match(DKIM_ED25519, p, sbuf_data(t), &why), 0);
        assert_non_null(why);
        if (!strstr(why, cases[i].why_part))
            fail_msg("case %zu: why=\"%s\", expected to mention \"%s\"", i, why,
                     cases[i].why_part);
    }
    const char *why = NULL;
    assert_int_equal(dkim_txt_match(DKIM_ED25519, p, "", &why), 0);
    assert_non_null(why);
    dkim_key_destroy(&key);
    dkim_key_destroy(&other);
    sbuf_destroy(&pub);
    sbuf_destroy(&opub);
    sbuf_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ed25519),      cmocka_unit_test(test_rsa),
        cmocka_unit_test(test_bad_inputs),   cmocka_unit_test(test_txt_record),
        cmocka_unit_test(test_txt_mismatch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
