/*
 * unsub_token - unsubscribe tokens and the statement that acts on them
 * (see unsub_token.h).
 *
 * How: make = uuid bytes || HMAC-SHA256(subkey, uuid bytes)[0..10), base32;
 * check = decode strictly (length, alphabet, zero stray bits), recompute the
 * MAC and compare it with CRYPTO_memcmp. The subkey is derived on each call:
 * one HMAC over 22 bytes costs less than the message it rides on.
 *
 * What can go wrong: everything given to check comes from anyone (a URL
 * path, an email local part); any defect is -1, never a read past the text.
 * The statement is one SQL command (CTEs), so it commits all its rows or
 * none; concurrent unsubscribes of one contact serialize on its row lock
 * (FOR UPDATE) and the second sees it unsubscribed and writes nothing.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "hex.h"
#include "unsub_token.h"

#define UUID_BYTES 16
#define RAW_LEN (UUID_BYTES + UNSUB_TOKEN_MAC_LEN)
#define SUBKEY_LABEL "postchi unsubscribe v1"

static const char B32[] = "abcdefghijklmnopqrstuvwxyz234567";

/* mac[0..UNSUB_TOKEN_MAC_LEN) for the uuid bytes under key's subkey. */
static int s_mac(const unsigned char key[UNSUB_TOKEN_KEY_LEN], const unsigned char uuid[UUID_BYTES],
                 unsigned char mac[UNSUB_TOKEN_MAC_LEN])
{
    unsigned char sub[EVP_MAX_MD_SIZE], full[EVP_MAX_MD_SIZE];
    unsigned int sublen = 0, fulllen = 0;
    int ok = HMAC(EVP_sha256(), key, UNSUB_TOKEN_KEY_LEN, (const unsigned char *)SUBKEY_LABEL,
                  sizeof SUBKEY_LABEL - 1, sub, &sublen) != NULL &&
             HMAC(EVP_sha256(), sub, (int)sublen, uuid, UUID_BYTES, full, &fulllen) != NULL &&
             fulllen >= UNSUB_TOKEN_MAC_LEN;
    if (ok)
        memcpy(mac, full, UNSUB_TOKEN_MAC_LEN);
    OPENSSL_cleanse(sub, sizeof sub);
    OPENSSL_cleanse(full, sizeof full);
    return ok ? 0 : -1;
}

/* Canonical uuid text (8-4-4-4-12 hex digits, either case) to bytes. */
static int s_uuid_parse(const char *text, unsigned char out[UUID_BYTES])
{
    if (!text || strlen(text) != 36)
        return -1;
    size_t j = 0;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return -1;
            continue;
        }
        int hi = hex_digit(text[i]), lo = hex_digit(text[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[j++] = (unsigned char)(hi << 4 | lo);
        i++;
    }
    return 0;
}

static void s_uuid_text(const unsigned char in[UUID_BYTES], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    size_t j = 0;
    for (size_t i = 0; i < UUID_BYTES; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[in[i] >> 4];
        out[j++] = hex[in[i] & 15];
    }
    out[j] = 0;
}

int unsub_token_make(const unsigned char key[UNSUB_TOKEN_KEY_LEN], const char *uuid_text,
                     char out[UNSUB_TOKEN_LEN + 1])
{
    unsigned char raw[RAW_LEN];
    out[0] = 0;
    if (s_uuid_parse(uuid_text, raw) != 0 || s_mac(key, raw, raw + UUID_BYTES) != 0)
        return -1;
    /* Big-endian bit stream, 5 bits a character; the last character's two
     * low bits are zero padding. */
    unsigned buf = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < RAW_LEN; i++) {
        buf = (buf << 8) | raw[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = B32[(buf >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[o++] = B32[(buf << (5 - bits)) & 31];
    out[o] = 0;
    return o == UNSUB_TOKEN_LEN ? 0 : -1;
}

static int s_b32(int c)
{
    c = tolower(c);
    if (c >= 'a' && c <= 'z')
        return c - 'a';
    if (c >= '2' && c <= '7')
        return c - '2' + 26;
    return -1;
}

int unsub_token_check(const unsigned char key[UNSUB_TOKEN_KEY_LEN], const char *text,
                      char uuid_out[37])
{
    uuid_out[0] = 0;
    if (!text || strnlen(text, UNSUB_TOKEN_LEN + 1) != UNSUB_TOKEN_LEN)
        return -1;
    unsigned char raw[RAW_LEN];
    unsigned buf = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < UNSUB_TOKEN_LEN; i++) {
        int v = s_b32((unsigned char)text[i]);
        if (v < 0)
            return -1;
        buf = (buf << 5) | (unsigned)v;
        bits += 5;
        if (bits >= 8) {
            raw[o++] = (unsigned char)(buf >> (bits - 8));
            bits -= 8;
        }
    }
    /* Leftover bits must be the zero padding make writes: otherwise two
     * texts would name one row, and a changed character could pass. */
    if (o != RAW_LEN || (buf & ((1u << bits) - 1)) != 0)
        return -1;
    unsigned char mac[UNSUB_TOKEN_MAC_LEN];
    if (s_mac(key, raw, mac) != 0 || CRYPTO_memcmp(mac, raw + UUID_BYTES, sizeof mac) != 0)
        return -1;
    s_uuid_text(raw, uuid_out);
    return 0;
}

/* The row's contact: its contact_id (bulk sends), else the organization's
 * contact with the recipient's address. */
#define SQL_CONTACT_OF_M                                                                           \
    "c.organization_id = m.organization_id AND CASE WHEN m.contact_id IS NOT NULL"                 \
    " THEN c.id = m.contact_id ELSE lower(c.email) = lower(m.recipient) END"

/* $1 row id, $2 via, $3 ip. Returns (recipient, organization, events id
 * written now or NULL); no row when the message does not exist. */
static const char SQL_APPLY[] =
    "WITH m AS (SELECT id, organization_id, recipient, contact_id FROM messages"
    " WHERE id = $1::uuid),"
    " k AS (SELECT c.id, c.status FROM contacts c JOIN m ON " SQL_CONTACT_OF_M
    " LIMIT 1 FOR UPDATE OF c),"
    " up AS (UPDATE contacts c SET status = 'unsubscribed', updated_at = now() FROM k"
    " WHERE c.id = k.id AND k.status = 'subscribed' RETURNING c.id, c.email),"
    " s AS (INSERT INTO suppressions (organization_id, email, reason)"
    " SELECT organization_id, recipient, 'unsubscribe' FROM m WHERE NOT EXISTS (SELECT 1 FROM k)"
    " ON CONFLICT (organization_id, lower(email)) DO NOTHING RETURNING id),"
    " ev AS (INSERT INTO events (organization_id, name, contact_id, payload)"
    " SELECT m.organization_id, 'unsubscribed', up.id, jsonb_build_object('contact_id', up.id,"
    " 'email', up.email, 'message_id', m.id, 'via', $2::text) FROM m, up RETURNING id),"
    " me AS (INSERT INTO message_events (organization_id, message_id, type, detail)"
    " SELECT m.organization_id, m.id, 'unsubscribed', jsonb_build_object('via', $2::text,"
    " 'contact_id', (SELECT id FROM up), 'suppressed', EXISTS (SELECT 1 FROM s)) FROM m"
    " WHERE EXISTS (SELECT 1 FROM up) OR EXISTS (SELECT 1 FROM s) RETURNING id),"
    " au AS (INSERT INTO audit_log (organization_id, actor_type, actor_id, action,"
    " resource_type, resource_id, detail)"
    " SELECT m.organization_id, 'system', NULL, 'contact.unsubscribed',"
    " CASE WHEN EXISTS (SELECT 1 FROM up) THEN 'contact' ELSE 'suppression' END,"
    " coalesce((SELECT id FROM up), (SELECT id FROM s))::text,"
    " jsonb_build_object('message_id', m.id, 'via', $2::text, 'ip', $3::text) FROM m"
    " WHERE EXISTS (SELECT 1 FROM up) OR EXISTS (SELECT 1 FROM s))"
    " SELECT m.recipient, m.organization_id, (SELECT id FROM ev) FROM m";

/* $1 row id. Returns (recipient, still subscribed 't'/'f'). */
static const char SQL_LOOKUP[] =
    "SELECT m.recipient, coalesce((SELECT c.status = 'subscribed' FROM contacts c"
    " WHERE " SQL_CONTACT_OF_M " LIMIT 1), NOT EXISTS (SELECT 1 FROM suppressions s"
    " WHERE s.organization_id = m.organization_id AND lower(s.email) = lower(m.recipient)))"
    " FROM messages m WHERE m.id = $1::uuid";

/* Check token, then run sql with the row id as $1 (and via, ip as $2, $3
 * when n is 3). UNSUB_DONE leaves the single row in *res_p (the
 * caller frees it) with its first column, the recipient, copied to email. */
static unsub_result_t s_run(db_t *db, const unsigned char key[UNSUB_TOKEN_KEY_LEN],
                            const char *token, const char *sql, int n, const char *via,
                            const char *ip, sbuf_t *email, db_result_t **res_p, sbuf_t *err)
{
    char uuid[37];
    *res_p = NULL;
    if (unsub_token_check(key, token, uuid) != 0)
        return UNSUB_NOT_FOUND;
    const char *p[] = {uuid, via, ip};
    db_result_t *res = db_query(db, sql, n, p, err);
    if (!res)
        return UNSUB_ERROR;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        return UNSUB_NOT_FOUND;
    }
    if (email)
        sbuf_append_str(email, db_result_get(res, 0, 0));
    *res_p = res;
    return UNSUB_DONE;
}

unsub_result_t unsub_token_apply(db_t *db, const unsigned char key[UNSUB_TOKEN_KEY_LEN],
                                 const char *token, const char *via, const char *ip,
                                 sbuf_t *email, char *org, long long *event_id, sbuf_t *err)
{
    if (event_id)
        *event_id = 0;
    db_result_t *res;
    unsub_result_t rc = s_run(db, key, token, SQL_APPLY, 3, via, ip, email, &res, err);
    if (rc == UNSUB_DONE) {
        if (org)
            snprintf(org, 37, "%s", db_result_get(res, 0, 1));
        const char *ev = db_result_get(res, 0, 2);
        if (event_id && ev)
            *event_id = strtoll(ev, NULL, 10);
    }
    db_result_free(&res);
    return rc;
}

unsub_result_t unsub_token_lookup(db_t *db, const unsigned char key[UNSUB_TOKEN_KEY_LEN],
                                  const char *token, sbuf_t *email, int *subscribed, sbuf_t *err)
{
    db_result_t *res;
    unsub_result_t rc = s_run(db, key, token, SQL_LOOKUP, 1, NULL, NULL, email, &res, err);
    if (rc == UNSUB_DONE && subscribed) {
        const char *s = db_result_get(res, 0, 1);
        *subscribed = s && s[0] == 't';
    }
    db_result_free(&res);
    return rc;
}

char *unsub_token_base_url(const config_t *cfg, sbuf_t *err)
{
    const char *u = config_str(cfg, "public_url");
    if (!u[0]) {
        const char *bind = config_str(cfg, "api_bind");
        int v6 = strchr(bind, ':') != NULL;
        size_t n = strlen(bind) + 32;
        char *out = malloc(n);
        if (!out) {
            sbuf_appendf(err, "setting 'public_url': out of memory");
            return NULL;
        }
        snprintf(out, n, "http://%s%s%s:%lld", v6 ? "[" : "", bind, v6 ? "]" : "",
                 (long long)config_int(cfg, "api_port"));
        return out;
    }
    size_t scheme = strncasecmp(u, "https://", 8) == 0  ? 8
                    : strncasecmp(u, "http://", 7) == 0 ? 7
                                                        : 0;
    size_t len = strlen(u);
    while (len > scheme && u[len - 1] == '/')
        len--;
    int ok = scheme > 0 && len > scheme && u[scheme] != '/' && len <= 512;
    for (size_t i = 0; ok && i < len; i++) {
        unsigned char c = (unsigned char)u[i];
        ok = c > 32 && c < 127 && !strchr("<>\"\\,'`?#{}|^", c);
    }
    if (!ok) {
        sbuf_appendf(err,
                     "setting 'public_url': must be an http:// or https:// URL with a host and "
                     "no blanks, quotes, brackets, commas, query or fragment (at most 512 bytes)");
        return NULL;
    }
    char *out = strndup(u, len);
    if (!out)
        sbuf_appendf(err, "setting 'public_url': out of memory");
    return out;
}
