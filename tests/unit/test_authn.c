/*
 * test_authn - credentials: JWT issue/verify and every way a forged or
 * broken token is refused (alg none/HS512/RS256, tampering, wrong secret,
 * wrong issuer, expiry, bad base64, extra dots, oversize), tokens signed by
 * an independent implementation (jwt.io's example, Python's hmac), Argon2id
 * password hashes, API key shape and hash, random hex.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "authn.h"

#define SECRET "unit-test-secret-that-is-long-enough-0123"
#define ISSUER "postchi-test"
#define USER "11111111-2222-3333-4444-555555555555"
#define ORG "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

/* base64url without padding, written independently of authn.c (via
 * OpenSSL's standard base64 and a character swap) so crafted tokens do not
 * share code with the verifier. Caller frees. */
static char *b64url(const void *data, size_t len)
{
    char *out = malloc(len / 3 * 4 + 8);
    assert_non_null(out);
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

/* header.payload.HMAC-SHA256(secret) for arbitrary header/payload JSON. */
static char *craft(const char *header, const char *payload, const char *secret)
{
    char *h = b64url(header, strlen(header));
    char *p = b64url(payload, strlen(payload));
    size_t n = strlen(h) + strlen(p) + 2;
    char *input = malloc(n);
    assert_non_null(input);
    snprintf(input, n, "%s.%s", h, p);
    unsigned char mac[32];
    unsigned mac_len = 0;
    assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)input,
                         strlen(input), mac, &mac_len));
    char *s = b64url(mac, mac_len);
    size_t tn = n + strlen(s) + 1;
    char *token = malloc(tn);
    assert_non_null(token);
    snprintf(token, tn, "%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    free(s);
    return token;
}

static char *good_payload(long long exp)
{
    char *p = malloc(256);
    assert_non_null(p);
    snprintf(p, 256,
             "{\"sub\":\"" USER "\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER
             "\",\"iat\":1700000000,\"exp\":%lld}",
             exp);
    return p;
}

/* Verify and return the reason (NULL on success). */
static const char *verify_why(const char *secret, const char *token)
{
    char user[AUTHN_ID_MAX], org[AUTHN_ID_MAX];
    const char *why = "unset";
    int rc = authn_jwt_verify(secret, ISSUER, token, user, org, &why);
    if (rc == 0) {
        assert_null(why);
        return NULL;
    }
    assert_int_equal(rc, -1);
    assert_non_null(why);
    assert_string_equal(user, "");
    assert_string_equal(org, "");
    return why;
}

static void test_jwt_round_trip(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(authn_jwt_issue(SECRET, ISSUER, 3600, USER, ORG, &token), 0);
    assert_non_null(token);
    assert_int_equal(strncmp(token, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.", 37), 0);
    char user[AUTHN_ID_MAX], org[AUTHN_ID_MAX];
    const char *why = "unset";
    assert_int_equal(authn_jwt_verify(SECRET, ISSUER, token, user, org, &why), 0);
    assert_null(why);
    assert_string_equal(user, USER);
    assert_string_equal(org, ORG);
    free(token);
}

static void test_jwt_expired(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(authn_jwt_issue(SECRET, ISSUER, -10, USER, ORG, &token), 0);
    assert_string_equal(verify_why(SECRET, token), "expired");
    free(token);
    char *p = good_payload(1000000000); /* 2001 */
    token = craft("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", p, SECRET);
    assert_string_equal(verify_why(SECRET, token), "expired");
    free(token);
    free(p);
}

static void test_jwt_wrong_secret_and_issuer(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(authn_jwt_issue(SECRET, ISSUER, 3600, USER, ORG, &token), 0);
    assert_string_equal(verify_why("another-secret-of-sufficient-length-xxxxx", token),
                        "bad signature");
    char user[AUTHN_ID_MAX], org[AUTHN_ID_MAX];
    const char *why = NULL;
    assert_int_equal(authn_jwt_verify(SECRET, "someone-else", token, user, org, &why), -1);
    assert_string_equal(why, "wrong issuer");
    free(token);
}

static void test_jwt_other_algorithms(void **state)
{
    (void)state;
    char *p = good_payload(4102444800LL);
    /* Each header is signed with the right secret over HMAC-SHA256, so only
     * the header can be the reason for refusal. */
    const char *headers[] = {
        "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"alg\":\"HS512\",\"typ\":\"JWT\"}",
        "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", "{\"alg\":\"hs256\",\"typ\":\"JWT\"}",
        "{\"typ\":\"JWT\"}",                  "{\"alg\":\"HS256\",\"typ\":\"JWS\"}",
        "{\"alg\":\"HS256\",\"kid\":\"../../x\"}", "{\"alg\":[\"HS256\"]}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        char *token = craft(headers[i], p, SECRET);
        assert_string_equal(verify_why(SECRET, token), "unsupported algorithm");
        free(token);
    }
    /* The classic alg=none token: empty signature. */
    char *h = b64url("{\"alg\":\"none\"}", 14);
    char *b = b64url(p, strlen(p));
    char none[1024];
    snprintf(none, sizeof none, "%s.%s.", h, b);
    assert_non_null(verify_why(SECRET, none));
    free(h);
    free(b);
    /* Header without typ is fine. */
    char *token = craft("{\"alg\":\"HS256\"}", p, SECRET);
    assert_null(verify_why(SECRET, token));
    free(token);
    free(p);
}

static void test_jwt_tampered(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(authn_jwt_issue(SECRET, ISSUER, 3600, USER, ORG, &token), 0);
    /* A payload claiming another organization, keeping the old signature. */
    char *evil = good_payload(4102444800LL);
    evil = realloc(evil, 300);
    char *org_at = strstr(evil, ORG);
    memcpy(org_at, "bbbbbbbb", 8);
    char *pb = b64url(evil, strlen(evil));
    const char *dot1 = strchr(token, '.');
    const char *dot2 = strchr(dot1 + 1, '.');
    char forged[2048];
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(dot1 - token), token, pb, dot2);
    assert_string_equal(verify_why(SECRET, forged), "bad signature");
    /* One flipped character in the signature. */
    char *copy = strdup(token);
    size_t n = strlen(copy);
    copy[n - 5] = copy[n - 5] == 'A' ? 'B' : 'A';
    assert_string_equal(verify_why(SECRET, copy), "bad signature");
    /* A signature that is not 32 bytes, and the last character re-spelled
     * with non-zero padding bits (43 chars carry 258 bits: the final 2
     * must be zero). */
    strcpy(copy, token);
    copy[n - 1] = '\0';
    assert_string_equal(verify_why(SECRET, copy), "malformed");
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    strcpy(copy, token);
    size_t v = (size_t)(strchr(alphabet, copy[n - 1]) - alphabet);
    assert_int_equal(v & 3, 0);
    copy[n - 1] = alphabet[v | 1];
    assert_string_equal(verify_why(SECRET, copy), "malformed");
    free(copy);
    free(pb);
    free(evil);
    free(token);
}

static void test_jwt_malformed(void **state)
{
    (void)state;
    char *token = NULL;
    assert_int_equal(authn_jwt_issue(SECRET, ISSUER, 3600, USER, ORG, &token), 0);
    char buf[4096];
    const char *bad[] = {"", "abc", "a.b", "..", "a..c", ".b.c", "a.b.", "...", "a.b.c.d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_string_equal(verify_why(SECRET, bad[i]), "malformed");
    snprintf(buf, sizeof buf, "%s.", token); /* extra dot */
    assert_string_equal(verify_why(SECRET, buf), "malformed");
    snprintf(buf, sizeof buf, "%s.%s", token, "AAAA"); /* a fourth part */
    assert_string_equal(verify_why(SECRET, buf), "malformed");
    snprintf(buf, sizeof buf, "%s==", token); /* padding */
    assert_string_equal(verify_why(SECRET, buf), "malformed");
    snprintf(buf, sizeof buf, "e*%s", token); /* not base64url */
    assert_string_equal(verify_why(SECRET, buf), "malformed");
    snprintf(buf, sizeof buf, "%s", token);
    buf[40] = '+'; /* standard base64, not url-safe */
    assert_non_null(verify_why(SECRET, buf));
    /* Header that is not JSON, payload that is not JSON (validly signed). */
    char *t2 = craft("not json", "{}", SECRET);
    assert_string_equal(verify_why(SECRET, t2), "malformed");
    free(t2);
    t2 = craft("{\"alg\":\"HS256\"}", "[1,2,3]", SECRET);
    assert_string_equal(verify_why(SECRET, t2), "malformed");
    free(t2);
    /* Missing or mistyped claims, validly signed. */
    const char *payloads[] = {
        "{\"org\":\"" ORG "\",\"iss\":\"" ISSUER "\",\"iat\":1,\"exp\":4102444800}",
        "{\"sub\":\"" USER "\",\"iss\":\"" ISSUER "\",\"iat\":1,\"exp\":4102444800}",
        "{\"sub\":\"" USER "\",\"org\":\"" ORG "\",\"iat\":1,\"exp\":4102444800}",
        "{\"sub\":\"" USER "\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER "\",\"exp\":4102444800}",
        "{\"sub\":\"" USER "\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER "\",\"iat\":1}",
        "{\"sub\":\"" USER "\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER
        "\",\"iat\":1,\"exp\":\"4102444800\"}",
        "{\"sub\":\"\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER "\",\"iat\":1,\"exp\":4102444800}",
        "{\"sub\":12,\"org\":\"" ORG "\",\"iss\":\"" ISSUER "\",\"iat\":1,\"exp\":4102444800}",
        "{\"sub\":\"" USER USER USER "\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER
        "\",\"iat\":1,\"exp\":4102444800}",
        "{\"sub\":\"a\\u0000b\",\"org\":\"" ORG "\",\"iss\":\"" ISSUER
        "\",\"iat\":1,\"exp\":4102444800}",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        t2 = craft("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payloads[i], SECRET);
        assert_string_equal(verify_why(SECRET, t2), "malformed");
        free(t2);
    }
    /* Oversized: refused before any decoding. */
    size_t huge = 9000;
    char *big = malloc(huge + 1);
    memset(big, 'A', huge);
    memcpy(big, token, strlen(token));
    big[huge] = '\0';
    assert_string_equal(verify_why(SECRET, big), "malformed");
    free(big);
    /* NULL arguments. */
    char user[AUTHN_ID_MAX], org[AUTHN_ID_MAX];
    const char *why = NULL;
    assert_int_equal(authn_jwt_verify(SECRET, ISSUER, NULL, user, org, &why), -1);
    assert_int_equal(authn_jwt_verify("", ISSUER, token, user, org, &why), -1);
    assert_int_equal(authn_jwt_issue("", ISSUER, 1, USER, ORG, &t2), -1);
    free(token);
}

/* Tokens signed by other implementations: proves our HMAC and base64url
 * agree with the standard, not just with themselves. */
static void test_jwt_known_tokens(void **state)
{
    (void)state;
    /* jwt.io's example (secret "your-256-bit-secret"): the signature is
     * right, so the refusal is about its claims (no exp, iss, org). */
    const char *jwtio = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
                        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    assert_string_equal(verify_why("your-256-bit-secret", jwtio), "malformed");
    assert_string_equal(verify_why("your-256-bit-secreT", jwtio), "bad signature");
    /* Signed with Python's hmac/base64 (exp 2100-01-01), checked by hand. */
    const char *py =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMTExMTExMS0yMjIyLTMzMzMtNDQ0NC01NTU1NTU1NTU1NTUiLCJvcmciOiJhYWFhYWFhYS1iYmJi"
        "LWNjY2MtZGRkZC1lZWVlZWVlZWVlZWUiLCJpc3MiOiJwb3N0Y2hpLXRlc3QiLCJpYXQiOjE3MDAwMDAwMDAsImV4"
        "cCI6NDEwMjQ0NDgwMH0."
        "idtybnyUq45bOS-RrWu4xZ0_w_dRrwbchV_TkqenHfE";
    char user[AUTHN_ID_MAX], org[AUTHN_ID_MAX];
    const char *why = "unset";
    assert_int_equal(
        authn_jwt_verify("known-secret-for-the-unit-test-0123456789", ISSUER, py, user, org, &why),
        0);
    assert_string_equal(user, USER);
    assert_string_equal(org, ORG);
    /* RFC 4231 test case 2 through the same HMAC call the verifier makes. */
    unsigned char mac[32];
    unsigned mac_len = 0;
    HMAC(EVP_sha256(), "Jefe", 4, (const unsigned char *)"what do ya want for nothing?", 28, mac,
         &mac_len);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void test_password(void **state)
{
    (void)state;
    char *hash = NULL;
    assert_int_equal(authn_password_hash("correct horse battery staple", &hash), 0);
    assert_non_null(hash);
    assert_int_equal(strncmp(hash, "$argon2id$v=19$m=19456,t=2,p=1$", 31), 0);
    assert_int_equal(authn_password_verify(hash, "correct horse battery staple"), 1);
    assert_int_equal(authn_password_verify(hash, "correct horse battery stapler"), 0);
    assert_int_equal(authn_password_verify(hash, ""), 0);
    /* Same password, new salt, different hash. */
    char *again = NULL;
    assert_int_equal(authn_password_hash("correct horse battery staple", &again), 0);
    assert_string_not_equal(hash, again);
    free(again);
    /* Malformed hashes. */
    const char *bad[] = {
        "", "not-a-hash", "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$AAAA",
        "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!$AAAA", "$argon2id$v=19$m=19456,t=2,p=1$",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(authn_password_verify(bad[i], "x"), -1);
    /* The stored hash truncated. */
    char *cut = strdup(hash);
    cut[strlen(cut) - 10] = '\0';
    assert_int_equal(authn_password_verify(cut, "correct horse battery staple"), -1);
    free(cut);
    assert_int_equal(authn_password_verify(NULL, "x"), -1);
    free(hash);
}

static void test_keys(void **state)
{
    (void)state;
    char *key = NULL;
    char prefix[AUTHN_PREFIX_LEN + 1], hash[AUTHN_HASH_HEX];
    assert_int_equal(authn_key_generate(&key, prefix, hash), 0);
    assert_int_equal(strlen(key), 48);
    assert_int_equal(strncmp(key, "pk_", 3), 0);
    assert_int_equal(key[15], '_');
    assert_int_equal(strlen(prefix), AUTHN_PREFIX_LEN);
    assert_memory_equal(key + 3, prefix, AUTHN_PREFIX_LEN);
    assert_int_equal(strlen(hash), 64);
    for (int i = 3; i < 48; i++)
        if (i != 15)
            assert_non_null(strchr("abcdefghijklmnopqrstuvwxyz234567", key[i]));
    char p2[AUTHN_PREFIX_LEN + 1], h2[AUTHN_HASH_HEX];
    assert_int_equal(authn_key_parse(key, p2, h2), 0);
    assert_string_equal(p2, prefix);
    assert_string_equal(h2, hash);
    /* The hash is what the secret is not: different keys, different hashes. */
    char *key2 = NULL;
    char p3[AUTHN_PREFIX_LEN + 1], h3[AUTHN_HASH_HEX];
    assert_int_equal(authn_key_generate(&key2, p3, h3), 0);
    assert_string_not_equal(key, key2);
    assert_string_not_equal(hash, h3);
    free(key2);
    free(key);

    /* A known key: SHA-256 of the whole string, computed with Python. */
    assert_int_equal(authn_key_parse("pk_abcdefghijkl_mnopqrstuvwxyz234567abcdefghijkl", p2, h2), 0);
    assert_string_equal(p2, "abcdefghijkl");
    assert_string_equal(h2, "21af811f04cc79b0b42dcd14a9cc06b07f7b10ea525e2c3f8964ade224dc99c3");

    const char *not_keys[] = {
        "",
        "pk_",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.AAAA",
        "pk_abcdefghijkl_mnopqrstuvwxyz234567abcdefghijk",   /* short */
        "pk_abcdefghijkl_mnopqrstuvwxyz234567abcdefghijkla", /* long */
        "pk_ABCDEFGHIJKL_mnopqrstuvwxyz234567abcdefghijkl",  /* upper case */
        "pk_abcdefghijk1_mnopqrstuvwxyz234567abcdefghijkl",  /* 1 is not base32 */
        "pk_abcdefghijkl-mnopqrstuvwxyz234567abcdefghijkl",
        "sk_abcdefghijkl_mnopqrstuvwxyz234567abcdefghijkl",
        "pk_abcdefghijkl_mnopqrstuvwxyz234567abcdefghij\n",
    };
    for (size_t i = 0; i < sizeof not_keys / sizeof not_keys[0]; i++)
        assert_int_equal(authn_key_parse(not_keys[i], p2, h2), -1);
}

static void test_random_hex(void **state)
{
    (void)state;
    char a[33], b[33];
    assert_int_equal(authn_random_hex(a, 16), 0);
    assert_int_equal(authn_random_hex(b, 16), 0);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    assert_string_not_equal(a, b);
    assert_int_equal(authn_random_hex(a, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jwt_round_trip),
        cmocka_unit_test(test_jwt_expired),
        cmocka_unit_test(test_jwt_wrong_secret_and_issuer),
        cmocka_unit_test(test_jwt_other_algorithms),
        cmocka_unit_test(test_jwt_tampered),
        cmocka_unit_test(test_jwt_malformed),
        cmocka_unit_test(test_jwt_known_tokens),
        cmocka_unit_test(test_password),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_random_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
