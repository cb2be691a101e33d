/*
 * authn - login tokens (JWT HS256), password hashes (Argon2id) and API keys.
 *
 * How it is used: the login route issues tokens with authn_jwt_issue and
 * the framework checks every Authorization header with authn_key_parse
 * (API keys) or authn_jwt_verify (JWTs). Registration and login hash and
 * check passwords with authn_password_*.
 *
 * What can go wrong: every token is attacker-controlled input. Verification
 * bounds its size (AUTHN_TOKEN_MAX) before decoding anything, insists on
 * exactly three base64url parts without padding, accepts only the header
 * {"alg":"HS256"} (with an optional "typ":"JWT", nothing else: no kid, no
 * crit, no jku), checks the MAC in constant time before it parses the
 * payload, then requires sub, org, iss (= ours), iat and exp (not past).
 * A stored password hash is also input: its Argon2 parameters are bounded
 * before libargon2 allocates memory for them.
 *
 * Security: MACs, random bytes and key material are wiped (OPENSSL_cleanse)
 * before their memory is released. Randomness comes from RAND_bytes only.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <argon2.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "json_depth.h"
#include "log.h"

#include "authn.h"

/* Longest token verify looks at; a login token is a few hundred bytes. */
#define AUTHN_TOKEN_MAX 8192
/* HMAC-SHA256 output. */
#define MAC_LEN 32
/* Argon2id parameters: OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane). */
#define ARGON2_T 2
#define ARGON2_M_KIB 19456
#define ARGON2_P 1
#define ARGON2_SALT_LEN 16
#define ARGON2_HASH_LEN 32
/* Upper bounds on parameters read back from a stored hash (a hash string
 * naming 4 TiB of memory must not make us try). */
#define ARGON2_M_MAX (1024u * 1024u)
#define ARGON2_T_MAX 64u
#define ARGON2_P_MAX 64u
/* API key shape: "pk_" prefix "_" secret. */
#define KEY_SECRET_LEN 32
#define KEY_LEN (3 + AUTHN_PREFIX_LEN + 1 + KEY_SECRET_LEN)

static const char s_b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char s_base32[] = "abcdefghijklmnopqrstuvwxyz234567";
/* The only header we ever write. */
static const char s_header_json[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* ---- base64url (RFC 4648 section 5, no padding) ---- */

/* Encode n bytes; caller owns the result. NULL when out of memory. */
static char *s_b64url_encode(const unsigned char *in, size_t n)
{
    char *out = malloc(n / 3 * 4 + 5);
    if (!out)
        return NULL;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = s_b64url[v >> 18 & 63];
        out[o++] = s_b64url[v >> 12 & 63];
        out[o++] = s_b64url[v >> 6 & 63];
        out[o++] = s_b64url[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = s_b64url[v >> 18 & 63];
        out[o++] = s_b64url[v >> 12 & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = s_b64url[v >> 18 & 63];
        out[o++] = s_b64url[v >> 12 & 63];
        out[o++] = s_b64url[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

static int s_b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decode len characters into a new NUL-terminated buffer (*out, caller owns;
 * *out_len excludes the NUL). Refuses padding, characters outside the
 * alphabet, impossible lengths, and non-zero trailing bits (so each byte
 * string has exactly one encoding and a token cannot be re-spelled). */
static int s_b64url_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
    if (len % 4 == 1)
        return -1;
    unsigned char *buf = malloc(len / 4 * 3 + 3);
    if (!buf)
        return -1;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = s_b64url_value(in[i]);
        if (v < 0) {
            free(buf);
            return -1;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        free(buf);
        return -1;
    }
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return 0;
}

/* ---- JWT ---- */

static int s_hmac(const char *secret, const char *data, size_t len, unsigned char mac[MAC_LEN])
{
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)data, len, mac,
              &mac_len) ||
        mac_len != MAC_LEN)
        return -1;
    return 0;
}

int authn_jwt_issue(const char *secret, const char *issuer, int64_t ttl_s, const char *user_id,
                    const char *org_id, char **token)
{
    if (!secret || !*secret || !issuer || !user_id || !org_id || !token)
        return -1;
    if (strlen(secret) > INT_MAX)
        return -1;
    *token = NULL;
    int64_t now = (int64_t)time(NULL);
    json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "sub", user_id, "org", org_id, "iss",
                               issuer, "iat", (json_int_t)now, "exp", (json_int_t)(now + ttl_s));
    char *payload_json = claims ? json_dumps(claims, JSON_COMPACT) : NULL;
    json_decref(claims);
    char *header = s_b64url_encode((const unsigned char *)s_header_json, strlen(s_header_json));
    char *payload = payload_json
                        ? s_b64url_encode((const unsigned char *)payload_json, strlen(payload_json))
                        : NULL;
    free(payload_json);
    int rc = -1;
    char *out = NULL;
    if (header && payload) {
        size_t hl = strlen(header), pl = strlen(payload);
        /* header . payload . 43 characters of MAC + NUL */
        out = malloc(hl + 1 + pl + 1 + 44);
        if (out) {
            memcpy(out, header, hl);
            out[hl] = '.';
            memcpy(out + hl + 1, payload, pl);
            out[hl + 1 + pl] = '\0';
            unsigned char mac[MAC_LEN];
            char *sig = NULL;
            if (s_hmac(secret, out, hl + 1 + pl, mac) == 0)
                sig = s_b64url_encode(mac, MAC_LEN);
            OPENSSL_cleanse(mac, sizeof mac);
            if (sig) {
                out[hl + 1 + pl] = '.';
                memcpy(out + hl + 1 + pl + 1, sig, strlen(sig) + 1);
                free(sig);
                rc = 0;
            }
        }
    }
    free(header);
    free(payload);
    if (rc == 0)
        *token = out;
    else
        free(out);
    return rc;
}

/* 0 when the decoded header is exactly {"alg":"HS256"} plus an optional
 * "typ":"JWT"; -1 otherwise. */
static int s_header_ok(const unsigned char *json, size_t len)
{
    /* Read before the signature is checked, so from anyone: two levels
     * at most ({"alg":["HS256"]} is still told apart as an unsupported
     * algorithm; a deep one would overflow the request thread's stack in
     * the parser). */
    if (!json_depth_ok((const char *)json, len, 2))
        return -1;
    json_t *h = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, NULL);
    if (!h || !json_is_object(h)) {
        json_decref(h);
        return -1;
    }
    int ok = 0;
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "alg") == 0 && json_is_string(v) && strcmp(json_string_value(v), "HS256") == 0)
            ok |= 1;
        else if (strcmp(key, "typ") == 0 && json_is_string(v) &&
                 strcmp(json_string_value(v), "JWT") == 0)
            continue;
        else
            ok |= 2;
    }
    json_decref(h);
    return ok == 1 ? 0 : -1;
}

/* Copy a string claim that must be present, non-empty and fit AUTHN_ID_MAX. */
static int s_claim_id(json_t *claims, const char *name, char *out)
{
    json_t *v = json_object_get(claims, name);
    if (!json_is_string(v))
        return -1;
    size_t len = json_string_length(v);
    const char *s = json_string_value(v);
    if (len == 0 || len >= AUTHN_ID_MAX || strlen(s) != len)
        return -1;
    memcpy(out, s, len + 1);
    return 0;
}

int authn_jwt_verify(const char *secret, const char *issuer, const char *token, char *user_id,
                     char *org_id, const char **why)
{
    static const char *s_why_unused;
    if (!why)
        why = &s_why_unused;
    *why = "malformed";
    if (user_id)
        user_id[0] = '\0';
    if (org_id)
        org_id[0] = '\0';
    if (!secret || !*secret || !issuer || !token || !user_id || !org_id)
        return -1;
    size_t len = strnlen(token, AUTHN_TOKEN_MAX + 1);
    if (len > AUTHN_TOKEN_MAX)
        return -1;
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot1 || !dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return -1;
    size_t hlen = (size_t)(dot1 - token);
    size_t plen = (size_t)(dot2 - dot1 - 1);
    size_t slen = len - (size_t)(dot2 + 1 - token);
    if (hlen == 0 || plen == 0 || slen == 0)
        return -1;

    unsigned char *header = NULL, *payload = NULL, *sig = NULL;
    size_t header_len = 0, payload_len = 0, sig_len = 0;
    json_t *claims = NULL;
    int rc = -1;
    if (s_b64url_decode(token, hlen, &header, &header_len) != 0)
        goto done;
    if (s_header_ok(header, header_len) != 0) {
        /* Well-formed JSON with the wrong algorithm (or extra header
         * fields) is told apart from garbage, for the log. */
        json_t *h = json_depth_ok((const char *)header, header_len, 2)
                        ? json_loadb((const char *)header, header_len, 0, NULL)
                        : NULL;
        if (json_is_object(h))
            *why = "unsupported algorithm";
        json_decref(h);
        goto done;
    }
    if (s_b64url_decode(dot2 + 1, slen, &sig, &sig_len) != 0 || sig_len != MAC_LEN)
        goto done;
    unsigned char mac[MAC_LEN];
    if (s_hmac(secret, token, (size_t)(dot2 - token), mac) != 0) {
        OPENSSL_cleanse(mac, sizeof mac);
        goto done;
    }
    int same = CRYPTO_memcmp(mac, sig, MAC_LEN) == 0;
    OPENSSL_cleanse(mac, sizeof mac);
    if (!same) {
        *why = "bad signature";
        goto done;
    }
    if (s_b64url_decode(dot1 + 1, plen, &payload, &payload_len) != 0)
        goto done;
    claims = json_loadb((const char *)payload, payload_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(claims))
        goto done;
    json_t *iss = json_object_get(claims, "iss");
    json_t *iat = json_object_get(claims, "iat");
    json_t *exp = json_object_get(claims, "exp");
    if (!json_is_string(iss) || !json_is_integer(iat) || !json_is_integer(exp))
        goto done;
    if (strcmp(json_string_value(iss), issuer) != 0) {
        *why = "wrong issuer";
        goto done;
    }
    if (s_claim_id(claims, "sub", user_id) != 0 || s_claim_id(claims, "org", org_id) != 0)
        goto done;
    if ((int64_t)json_integer_value(exp) <= (int64_t)time(NULL)) {
        *why = "expired";
        goto done;
    }
    *why = NULL;
    rc = 0;
done:
    if (rc != 0) {
        if (user_id)
            user_id[0] = '\0';
        if (org_id)
            org_id[0] = '\0';
    }
    json_decref(claims);
    free(header);
    free(payload);
    if (sig)
        OPENSSL_cleanse(sig, sig_len);
    free(sig);
    return rc;
}

/* ---- passwords ---- */

int authn_password_hash(const char *password, char **hash)
{
    if (!password || !hash)
        return -1;
    *hash = NULL;
    unsigned char salt[ARGON2_SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return -1;
    size_t enc_len = argon2_encodedlen(ARGON2_T, ARGON2_M_KIB, ARGON2_P, ARGON2_SALT_LEN,
                                       ARGON2_HASH_LEN, Argon2_id);
    char *enc = malloc(enc_len);
    int rc = -1;
    if (enc) {
        int arc = argon2id_hash_encoded(ARGON2_T, ARGON2_M_KIB, ARGON2_P, password,
                                        strlen(password), salt, sizeof salt, ARGON2_HASH_LEN, enc,
                                        enc_len);
        if (arc == ARGON2_OK) {
            *hash = enc;
            rc = 0;
        } else {
            log_error("argon2 failed: %s", argon2_error_message(arc));
            free(enc);
        }
    }
    OPENSSL_cleanse(salt, sizeof salt);
    return rc;
}

/* 0 when hash is an Argon2id PHC string whose parameters are within our
 * bounds (checked before libargon2 allocates m KiB for it). */
static int s_hash_params_ok(const char *hash)
{
    unsigned v = 0, m = 0, t = 0, p = 0;
    int used = 0;
    if (sscanf(hash, "$argon2id$v=%u$m=%u,t=%u,p=%u$%n", &v, &m, &t, &p, &used) != 4 || used == 0)
        return -1;
    if (v != ARGON2_VERSION_13 || m == 0 || m > ARGON2_M_MAX || t == 0 || t > ARGON2_T_MAX ||
        p == 0 || p > ARGON2_P_MAX)
        return -1;
    return 0;
}

int authn_password_verify(const char *hash, const char *password)
{
    if (!hash || !password || s_hash_params_ok(hash) != 0)
        return -1;
    int arc = argon2id_verify(hash, password, strlen(password));
    if (arc == ARGON2_OK)
        return 1;
    if (arc == ARGON2_VERIFY_MISMATCH)
        return 0;
    return -1;
}

/* ---- API keys ---- */

/* SHA-256 of s, lower-case hex into hex (AUTHN_HASH_HEX). */
static int s_sha256_hex(const char *s, size_t len, char *hex)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(s, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32)
        return -1;
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < md_len; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[2 * md_len] = '\0';
    return 0;
}

int authn_key_generate(char **key, char *prefix, char *hash_hex)
{
    if (!key || !prefix || !hash_hex)
        return -1;
    *key = NULL;
    /* One random byte per base32 character: 256 is a multiple of 32, so
     * b & 31 is uniform. */
    unsigned char rnd[AUTHN_PREFIX_LEN + KEY_SECRET_LEN];
    char *out = malloc(KEY_LEN + 1);
    if (!out || RAND_bytes(rnd, sizeof rnd) != 1) {
        free(out);
        OPENSSL_cleanse(rnd, sizeof rnd);
        return -1;
    }
    memcpy(out, "pk_", 3);
    for (int i = 0; i < AUTHN_PREFIX_LEN; i++)
        out[3 + i] = s_base32[rnd[i] & 31];
    out[3 + AUTHN_PREFIX_LEN] = '_';
    for (int i = 0; i < KEY_SECRET_LEN; i++)
        out[3 + AUTHN_PREFIX_LEN + 1 + i] = s_base32[rnd[AUTHN_PREFIX_LEN + i] & 31];
    out[KEY_LEN] = '\0';
    OPENSSL_cleanse(rnd, sizeof rnd);
    if (s_sha256_hex(out, KEY_LEN, hash_hex) != 0) {
        OPENSSL_cleanse(out, KEY_LEN);
        free(out);
        return -1;
    }
    memcpy(prefix, out + 3, AUTHN_PREFIX_LEN);
    prefix[AUTHN_PREFIX_LEN] = '\0';
    *key = out;
    return 0;
}

static int s_is_base32(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '2' && c <= '7');
}

int authn_key_parse(const char *token, char *prefix, char *hash_hex)
{
    if (!token || !prefix || !hash_hex)
        return -1;
    if (strnlen(token, KEY_LEN + 1) != KEY_LEN || memcmp(token, "pk_", 3) != 0 ||
        token[3 + AUTHN_PREFIX_LEN] != '_')
        return -1;
    for (int i = 3; i < KEY_LEN; i++)
        if (i != 3 + AUTHN_PREFIX_LEN && !s_is_base32(token[i]))
            return -1;
    if (s_sha256_hex(token, KEY_LEN, hash_hex) != 0)
        return -1;
    memcpy(prefix, token + 3, AUTHN_PREFIX_LEN);
    prefix[AUTHN_PREFIX_LEN] = '\0';
    return 0;
}

int authn_random_hex(char *out, size_t n)
{
    if (!out || n == 0 || n > INT_MAX)
        return -1;
    unsigned char *rnd = malloc(n);
    if (!rnd)
        return -1;
    int rc = -1;
    if (RAND_bytes(rnd, (int)n) == 1) {
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
            out[2 * i] = digits[rnd[i] >> 4];
            out[2 * i + 1] = digits[rnd[i] & 15];
        }
        out[2 * n] = '\0';
        rc = 0;
    }
    OPENSSL_cleanse(rnd, n);
    free(rnd);
    return rc;
}
