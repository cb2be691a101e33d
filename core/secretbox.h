/*
 * secretbox - authenticated encryption of small secrets at rest (DKIM
 * private keys) with AES-256-GCM under one 32-byte key from config
 * (secret_key, 64 hex digits).
 *
 * A sealed box is: version byte (1) || 12-byte random nonce || ciphertext
 * || 16-byte GCM tag. The version byte is also authenticated (as AAD), so
 * nothing in a box can be changed without secretbox_open refusing it.
 *
 * Security note: nonces are random (RAND_bytes); with 96-bit nonces one key
 * is safe for far more boxes than Postchi will ever seal. Plaintext buffers
 * are cleansed by the caller's choice (secretbox_open writes into an sbuf).
 */
#ifndef POSTCHI_SECRETBOX_H
#define POSTCHI_SECRETBOX_H

#include <stddef.h>

#include "sbuf.h"

#define SECRETBOX_KEY_LEN 32
#define SECRETBOX_VERSION 1
#define SECRETBOX_NONCE_LEN 12
#define SECRETBOX_TAG_LEN 16
/* Bytes a sealed box adds to its plaintext. */
#define SECRETBOX_OVERHEAD (1 + SECRETBOX_NONCE_LEN + SECRETBOX_TAG_LEN)

/* Parse exactly 64 hex digits (either case, nothing else) into key.
 * 0, or -1 when hex is NULL, the wrong length or not hex (key untouched). */
int secretbox_key_parse(const char *hex, unsigned char key[SECRETBOX_KEY_LEN]);

/* Seal len bytes of plain under key and append the box to out.
 * 0, or -1 (out of memory or a crypto failure; out unchanged). */
int secretbox_seal(const unsigned char key[SECRETBOX_KEY_LEN], const void *plain, size_t len,
                   sbuf_t *out);

/* Open a box of len bytes and append the plaintext to out. 0, or -1 when
 * the box is short, of an unknown version, was sealed under another key or
 * was changed in any way (out unchanged). */
int secretbox_open(const unsigned char key[SECRETBOX_KEY_LEN], const void *box, size_t len,
                   sbuf_t *out);

#endif
