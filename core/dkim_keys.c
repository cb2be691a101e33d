/*
 * dkim_keys - DKIM key pairs through OpenSSL 3 EVP (see dkim_keys.h).
 *
 * How it is used: the API generates one key per algorithm when a domain is
 * added, stores the public exports in clear and the PEM private keys
 * sealed; verification matches published TXT records against the public
 * exports; the signer loads the PEM back.
 *
 * What can go wrong: OpenSSL failures (returned as NULL / -1, never
 * aborted on); PEM or base64 from storage or DNS that does not parse
 * (refused). Private key text is wiped from temporary buffers.
 */
#include <ctype.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "dkim_keys.h"

#define ED25519_RAW_LEN 32
#define RSA_BITS 2048
#define TXT_CHUNK 255

struct dkim_key {
    EVP_PKEY *pkey; /* the key pair, or the public half only */
    dkim_alg_t alg; /* which algorithm pkey is */
    int priv;       /* 1 when pkey holds the private half */
};

const char *dkim_alg_name(dkim_alg_t alg)
{
    return alg == DKIM_ED25519 ? "ed25519" : "rsa";
}

static dkim_key_t *s_wrap(EVP_PKEY *pkey, int priv)
{
    dkim_alg_t alg;
    if (!pkey)
        return NULL;
    if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_ED25519)
        alg = DKIM_ED25519;
    else if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA)
        alg = DKIM_RSA;
    else {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    dkim_key_t *self = calloc(1, sizeof *self);
    if (!self) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    self->pkey = pkey;
    self->alg = alg;
    self->priv = priv;
    return self;
}

dkim_key_t *dkim_key_generate(dkim_alg_t alg)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(alg == DKIM_ED25519 ? EVP_PKEY_ED25519 : EVP_PKEY_RSA,
                                            NULL);
    if (ctx && EVP_PKEY_keygen_init(ctx) == 1 &&
        (alg == DKIM_ED25519 || EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, RSA_BITS) == 1))
        if (EVP_PKEY_keygen(ctx, &pkey) != 1)
            pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return s_wrap(pkey, 1);
}

dkim_key_t *dkim_key_from_pem(const char *pem, size_t len)
{
    if (!pem || len == 0 || len > INT_MAX)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        return NULL;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return s_wrap(pkey, 1);
}

/* Decode base64 (no whitespace) into a malloc'd buffer; NULL on bad input. */
static unsigned char *s_b64_decode(const char *b64, size_t *out_len)
{
    size_t n = strlen(b64);
    if (n == 0 || n % 4 != 0 || n > INT_MAX)
        return NULL;
    unsigned char *buf = malloc(n / 4 * 3 + 1);
    if (!buf)
        return NULL;
    int got = EVP_DecodeBlock(buf, (const unsigned char *)b64, (int)n);
    if (got < 0) {
        free(buf);
        return NULL;
    }
    /* EVP_DecodeBlock counts padding as zero bytes. */
    size_t pad = (b64[n - 1] == '=') + (b64[n - 2] == '=');
    *out_len = (size_t)got - pad;
    return buf;
}

dkim_key_t *dkim_key_from_public(dkim_alg_t alg, const char *b64)
{
    size_t len = 0;
    EVP_PKEY *pkey = NULL;
    if (!b64)
        return NULL;
    unsigned char *der = s_b64_decode(b64, &len);
    if (!der)
        return NULL;
    if (alg == DKIM_ED25519) {
        if (len == ED25519_RAW_LEN)
            pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, der, len);
    } else {
        const unsigned char *p = der;
        pkey = d2i_PUBKEY(NULL, &p, (long)len);
        if (pkey && (p != der + len || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA)) {
            EVP_PKEY_free(pkey); /* trailing bytes or not RSA */
            pkey = NULL;
        }
    }
    free(der);
    return s_wrap(pkey, 0);
}

void dkim_key_destroy(dkim_key_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    EVP_PKEY_free((*self_p)->pkey);
    free(*self_p);
    *self_p = NULL;
}

dkim_alg_t dkim_key_alg(const dkim_key_t *self)
{
    return self->alg;
}

int dkim_key_has_private(const dkim_key_t *self)
{
    return self->priv;
}

static int s_b64_append(const unsigned char *bytes, size_t len, sbuf_t *out)
{
    if (len > INT_MAX / 2)
        return -1;
    size_t need = (len + 2) / 3 * 4 + 1;
    unsigned char *txt = malloc(need);
    if (!txt)
        return -1;
    int n = EVP_EncodeBlock(txt, bytes, (int)len);
    int rc = sbuf_append(out, txt, (size_t)n);
    free(txt);
    return rc;
}

int dkim_key_public_b64(const dkim_key_t *self, sbuf_t *out)
{
    if (self->alg == DKIM_ED25519) {
        unsigned char raw[ED25519_RAW_LEN];
        size_t len = sizeof raw;
        if (EVP_PKEY_get_raw_public_key(self->pkey, raw, &len) != 1 || len != sizeof raw)
            return -1;
        return s_b64_append(raw, len, out);
    }
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(self->pkey, &der);
    if (n <= 0)
        return -1;
    int rc = s_b64_append(der, (size_t)n, out);
    OPENSSL_free(der);
    return rc;
}

int dkim_key_private_pem(const dkim_key_t *self, sbuf_t *out)
{
    if (!self->priv)
        return -1;
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return -1;
    int rc = -1;
    /* PEM_write_bio_PrivateKey writes PKCS#8 ("BEGIN PRIVATE KEY"). */
    if (PEM_write_bio_PrivateKey(bio, self->pkey, NULL, NULL, 0, NULL, NULL) == 1) {
        char *data = NULL;
        long n = BIO_get_mem_data(bio, &data);
        if (n > 0)
            rc = sbuf_append(out, data, (size_t)n);
        OPENSSL_cleanse(data, n > 0 ? (size_t)n : 0);
    }
    BIO_free(bio);
    return rc;
}

static const EVP_MD *s_md(const dkim_key_t *self)
{
    /* Ed25519 is PureEdDSA: no separate digest. */
    return self->alg == DKIM_ED25519 ? NULL : EVP_sha256();
}

int dkim_key_sign(const dkim_key_t *self, const void *data, size_t len, sbuf_t *sig)
{
    if (!self->priv)
        return -1;
    int rc = -1;
    size_t n = 0;
    unsigned char *buf = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestSignInit(ctx, NULL, s_md(self), NULL, self->pkey) != 1)
        goto done;
    if (EVP_DigestSign(ctx, NULL, &n, data, len) != 1 || !(buf = malloc(n)))
        goto done;
    if (EVP_DigestSign(ctx, buf, &n, data, len) != 1)
        goto done;
    rc = sbuf_append(sig, buf, n);
done:
    free(buf);
    EVP_MD_CTX_free(ctx);
    return rc;
}

int dkim_key_verify(const dkim_key_t *self, const void *data, size_t len, const void *sig,
                    size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return -1;
    int rc = -1;
    if (EVP_DigestVerifyInit(ctx, NULL, s_md(self), NULL, self->pkey) == 1)
        rc = EVP_DigestVerify(ctx, sig, siglen, data, len) == 1 ? 1 : 0;
    EVP_MD_CTX_free(ctx);
    return rc;
}

int dkim_txt_record(dkim_alg_t alg, const char *public_b64, sbuf_t *value, sbuf_t *zone)
{
    size_t start = sbuf_len(value);
    if (sbuf_appendf(value, "v=DKIM1; k=%s; p=%s", dkim_alg_name(alg), public_b64) != 0)
        return -1;
    if (!zone)
        return 0;
    const char *v = sbuf_data(value) + start;
    size_t len = sbuf_len(value) - start;
    for (size_t off = 0; off < len; off += TXT_CHUNK) {
        size_t n = len - off < TXT_CHUNK ? len - off : TXT_CHUNK;
        if (sbuf_append_str(zone, off ? " \"" : "\"") != 0)
            return -1;
        /* base64 and the tags hold no quote or backslash, but a zone file
         * would need them escaped, so be exact. */
        for (size_t i = 0; i < n; i++) {
            char c = v[off + i];
            if ((c == '"' || c == '\\') && sbuf_append(zone, "\\", 1) != 0)
                return -1;
            if (sbuf_append(zone, &c, 1) != 0)
                return -1;
        }
        if (sbuf_append_str(zone, "\"") != 0)
            return -1;
    }
    return 0;
}

/* 1 when s[0..n), less surrounding whitespace, is an RFC 6376 tag name
 * (ALPHA *(ALPHA / DIGIT / "_")); the trimmed name goes to out. */
static int s_tag_name(const char *s, size_t n, sbuf_t *out)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0 || !isalpha((unsigned char)s[0]))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_')
            return 0;
    return sbuf_append(out, s, n) == 0;
}

/* Copy s[0..n) without whitespace into out. */
static int s_strip_ws(const char *s, size_t n, sbuf_t *out)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]) && sbuf_append(out, &s[i], 1) != 0)
            return -1;
    return 0;
}

int dkim_txt_match(dkim_alg_t alg, const char *public_b64, const char *txt, const char **why)
{
    sbuf_t *p = sbuf_new(512), *k = sbuf_new(16), *v = sbuf_new(16);
    int seen_p = 0, seen_k = 0, first = 1, rc = 0;
    *why = "out of memory";
    if (!p || !k || !v)
        goto done;
    const char *s = txt;
    while (*s) {
        const char *end = strchr(s, ';');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        const char *eq = memchr(s, '=', n);
        sbuf_t *name = sbuf_new(8);
        if (!name)
            goto done;
        if (!eq) {
            s_strip_ws(s, n, name);
            int empty = sbuf_len(name) == 0; /* a trailing ";" is allowed */
            sbuf_destroy(&name);
            if (!empty) {
                *why = "the record is not a list of tag=value pairs";
                goto done;
            }
        } else if (!s_tag_name(s, (size_t)(eq - s), name)) {
            sbuf_destroy(&name);
            *why = "the record is not a list of tag=value pairs";
            goto done;
        } else {
            sbuf_t *val = NULL;
            const char *tag = sbuf_data(name);
            if (!strcmp(tag, "p"))
                val = p, seen_p = 1;
            else if (!strcmp(tag, "k"))
                val = k, seen_k = 1;
            else if (!strcmp(tag, "v")) {
                val = v;
                if (!first) {
                    sbuf_destroy(&name);
                    *why = "v= must be the first tag";
                    goto done;
                }
            }
            if (val) {
                sbuf_reset(val);
                s_strip_ws(eq + 1, n - (size_t)(eq + 1 - s), val);
            }
            sbuf_destroy(&name);
        }
        first = 0;
        s = end ? end + 1 : s + n;
    }
    if (sbuf_len(v) && strcmp(sbuf_data(v), "DKIM1")) {
        *why = "v= is not DKIM1";
        goto done;
    }
    if (strcmp(seen_k ? sbuf_data(k) : "rsa", dkim_alg_name(alg))) {
        *why = alg == DKIM_ED25519 ? "k= is not ed25519" : "k= is not rsa";
        goto done;
    }
    if (!seen_p) {
        *why = "the record has no p= tag";
        goto done;
    }
    if (sbuf_len(p) == 0) {
        *why = "p= is empty (the key is revoked)";
        goto done;
    }
    if (strcmp(sbuf_data(p), public_b64)) {
        *why = "p= holds a different key than the one generated for this selector";
        goto done;
    }
    *why = NULL;
    rc = 1;
done:
    sbuf_destroy(&p);
    sbuf_destroy(&k);
    sbuf_destroy(&v);
    return rc;
}
