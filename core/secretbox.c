/*
 * secretbox - AES-256-GCM seal/open through OpenSSL EVP (see secretbox.h
 * for the box layout).
 *
 * How it is used: the API seals DKIM private keys (PEM text) before they
 * go into PostgreSQL; the signer opens them when it loads a domain.
 *
 * What can go wrong: a wrong key or any changed byte makes the tag check
 * fail and open returns -1 with nothing written; the plaintext produced
 * before the tag check is wiped, never handed out.
 */
#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "hex.h"
#include "secretbox.h"

int secretbox_key_parse(const char *hex, unsigned char key[SECRETBOX_KEY_LEN])
{
    unsigned char tmp[SECRETBOX_KEY_LEN];
    if (!hex || strlen(hex) != 2 * SECRETBOX_KEY_LEN)
        return -1;
    for (size_t i = 0; i < SECRETBOX_KEY_LEN; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(tmp, sizeof tmp);
            return -1;
        }
        tmp[i] = (unsigned char)(hi << 4 | lo);
    }
    memcpy(key, tmp, sizeof tmp);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return 0;
}

/* One GCM pass. enc: encrypt plain into out_ct and write tag; otherwise
 * decrypt and check tag. in and out are len bytes. 0 or -1. */
static int s_gcm(int enc, const unsigned char *key, const unsigned char *nonce,
                 const unsigned char *aad, const unsigned char *in, size_t len,
                 unsigned char *out, unsigned char *tag)
{
    int ok = -1, n = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx || len > INT_MAX)
        goto done;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SECRETBOX_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) != 1)
        goto done;
    if (EVP_CipherUpdate(ctx, NULL, &n, aad, 1) != 1)
        goto done;
    if (len > 0 && EVP_CipherUpdate(ctx, out, &n, in, (int)len) != 1)
        goto done;
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SECRETBOX_TAG_LEN, tag) != 1)
        goto done;
    if (EVP_CipherFinal_ex(ctx, out + len, &n) != 1)
        goto done;
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SECRETBOX_TAG_LEN, tag) != 1)
        goto done;
    ok = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

int secretbox_seal(const unsigned char key[SECRETBOX_KEY_LEN], const void *plain, size_t len,
                   sbuf_t *out)
{
    if (len > INT_MAX - SECRETBOX_OVERHEAD)
        return -1;
    size_t total = SECRETBOX_OVERHEAD + len;
    /* One extra block of room: EVP_CipherFinal may write there (it writes
     * nothing for GCM, but the API does not promise it). */
    unsigned char *box = OPENSSL_malloc(total + 16);
    if (!box)
        return -1;
    box[0] = SECRETBOX_VERSION;
    unsigned char *nonce = box + 1, *ct = nonce + SECRETBOX_NONCE_LEN;
    int rc = -1;
    if (RAND_bytes(nonce, SECRETBOX_NONCE_LEN) == 1 &&
        s_gcm(1, key, nonce, box, plain, len, ct, ct + len) == 0) {
        /* s_gcm wrote the tag after the ciphertext, where the box wants it. */
        rc = sbuf_append(out, box, total);
    }
    OPENSSL_clear_free(box, total + 16);
    return rc;
}

int secretbox_open(const unsigned char key[SECRETBOX_KEY_LEN], const void *box, size_t len,
                   sbuf_t *out)
{
    const unsigned char *b = box;
    if (!b || len < SECRETBOX_OVERHEAD || b[0] != SECRETBOX_VERSION || len > INT_MAX)
        return -1;
    size_t plen = len - SECRETBOX_OVERHEAD;
    const unsigned char *nonce = b + 1, *ct = nonce + SECRETBOX_NONCE_LEN;
    unsigned char tag[SECRETBOX_TAG_LEN];
    memcpy(tag, ct + plen, sizeof tag);
    unsigned char *plain = OPENSSL_malloc(plen + 16);
    if (!plain)
        return -1;
    int rc = -1;
    if (s_gcm(0, key, nonce, b, ct, plen, plain, tag) == 0)
        rc = sbuf_append(out, plain, plen);
    OPENSSL_clear_free(plain, plen + 16);
    return rc;
}
