/*
 * dkim_keys - DKIM signing keys: generate Ed25519 (RFC 8463) and RSA-2048
 * keys, export them the way DNS and storage want them, sign and verify,
 * and build / check the DKIM TXT record a domain publishes.
 *
 * Exports: the Ed25519 public key is base64 of the raw 32 bytes (RFC 8463:
 * p= is the raw key, k=ed25519); the RSA public key is base64 of the DER
 * SubjectPublicKeyInfo (k=rsa, RFC 6376). Private keys leave as PKCS#8 PEM
 * text, which the caller encrypts (secretbox) before storing.
 *
 * OpenSSL's EVP_PKEY stays inside this module.
 */
#ifndef POSTCHI_DKIM_KEYS_H
#define POSTCHI_DKIM_KEYS_H

#include <stddef.h>

#include "sbuf.h"

typedef enum {
    DKIM_ED25519 = 0, /* ed25519-sha256, k=ed25519 */
    DKIM_RSA          /* rsa-sha256, 2048 bits, k=rsa */
} dkim_alg_t;

typedef struct dkim_key dkim_key_t;

/* "ed25519" or "rsa" (the k= tag value). */
const char *dkim_alg_name(dkim_alg_t alg);

/* A fresh key pair; NULL when OpenSSL fails. Caller destroys. */
dkim_key_t *dkim_key_generate(dkim_alg_t alg);
/* A private key from PKCS#8 (or traditional) PEM text of len bytes; NULL
 * when it does not parse or is neither Ed25519 nor RSA. */
dkim_key_t *dkim_key_from_pem(const char *pem, size_t len);
/* A public-only key from its export (dkim_key_public_b64 format for alg);
 * NULL when the text is not valid base64 of such a key. */
dkim_key_t *dkim_key_from_public(dkim_alg_t alg, const char *b64);
void dkim_key_destroy(dkim_key_t **self_p);

dkim_alg_t dkim_key_alg(const dkim_key_t *self);
/* 1 when self holds the private half. */
int dkim_key_has_private(const dkim_key_t *self);

/* Append the public export (base64, no line breaks) to out. 0 or -1. */
int dkim_key_public_b64(const dkim_key_t *self, sbuf_t *out);
/* Append the private key as PKCS#8 PEM text. -1 for a public-only key. */
int dkim_key_private_pem(const dkim_key_t *self, sbuf_t *out);

/* Sign len bytes (Ed25519: the bytes themselves, PureEdDSA; RSA: SHA-256
 * then PKCS#1 v1.5) and append the signature to sig. 0 or -1. A DKIM
 * signer passes what RFC 6376/8463 say to sign (for ed25519-sha256 that is
 * the SHA-256 hash of the header data). */
int dkim_key_sign(const dkim_key_t *self, const void *data, size_t len, sbuf_t *sig);
/* 1 when sig is a valid signature of data under self, 0 when not, -1 on
 * an internal error. */
int dkim_key_verify(const dkim_key_t *self, const void *data, size_t len, const void *sig,
                    size_t siglen);

/* The DKIM TXT record for a public export: value gets the plain text
 * ("v=DKIM1; k=ed25519; p=..."), zone (may be NULL) the zone-file form:
 * the value cut into quoted character-strings of at most 255 bytes,
 * separated by spaces. 0 or -1. */
int dkim_txt_record(dkim_alg_t alg, const char *public_b64, sbuf_t *value, sbuf_t *zone);

/* Does a published DKIM TXT record (multi-string already concatenated)
 * carry this key? 1 when it does; 0 with *why set (static text) when it
 * does not: bad syntax, v= not DKIM1, wrong k=, revoked (empty p=), or p=
 * a different key. Whitespace inside p= is ignored, as RFC 6376 allows. */
int dkim_txt_match(dkim_alg_t alg, const char *public_b64, const char *txt, const char **why);

#endif
