/*
 * dkim_sign - DKIM-sign outgoing messages (RFC 6376, RFC 8463) with
 * OpenSSL through core/dkim_keys: ed25519-sha256 and/or rsa-sha256,
 * relaxed/relaxed, over a fixed header set with From oversigned. (Not
 * libopendkim: its per-message key parsing cost 4x the RSA operation;
 * see dkim_sign.c.)
 *
 * How it is used: a process makes one signer at start-up and every mailer
 * thread calls dkim_signer_sign on it with the sending domain's keys (the
 * PKCS#8 PEM text core/dkim_keys makes, unsealed by the caller). The
 * DKIM-Signature fields come back as header text the caller puts in front
 * of the message; the message itself is not copied.
 *
 * What can go wrong: a key that does not parse or is not of the algorithm
 * asked, a d=/s= value that could not go into the field verbatim, a
 * message that is not RFC 5322 with CRLF line ends (no header section, no
 * From, bare LF); each is -1 with a reason in err, never an abort.
 *
 * Names: core/dkim_keys.h already has dkim_key_t, and libopendkim (which
 * other code may link) exports dkim_sign(), so the signing call is
 * dkim_signer_sign and its key description dkim_sign_key_t.
 */
#ifndef POSTCHI_DKIM_SIGN_H
#define POSTCHI_DKIM_SIGN_H

#include <stddef.h>

#include "sbuf.h"

typedef struct dkim_signer dkim_signer_t;

/* One key to sign with. The strings are borrowed for the call only. */
typedef struct {
    const char *domain;      /* d= */
    const char *selector;    /* s= */
    const char *private_pem; /* PKCS#8 PEM (Ed25519 or RSA) as core/dkim_keys makes them */
    int ed25519;             /* 1: ed25519-sha256, 0: rsa-sha256 */
} dkim_sign_key_t;

/* One per process (holds the parsed-key cache); thread-safe for
 * concurrent dkim_signer_sign calls. NULL with err on failure. */
dkim_signer_t *dkim_signer_new(sbuf_t *err);
/* NULL-safe and idempotent; sets *self_p to NULL. No sign call may be in
 * flight. */
void dkim_signer_destroy(dkim_signer_t **self_p);

/* Sign msg (a complete RFC 5322 message of len bytes, CRLF line ends) once
 * with each of the nkeys keys, relaxed/relaxed, over from, to, cc, subject,
 * date, message-id, reply-to, mime-version, content-type,
 * content-transfer-encoding, list-unsubscribe, list-unsubscribe-post (those
 * present) with From oversigned. Appends one folded "DKIM-Signature: ..."
 * field per key, CRLF-terminated, in key order, to sig_headers_out; the
 * caller prepends them to the message. The body is canonicalized and
 * hashed once for all keys; each key's private PEM is parsed on its first
 * use only. A body not ending in CRLF is signed as if it did (SMTP DATA
 * adds it). 0, or -1 with err (sig_headers_out is then left as it was). */
int dkim_signer_sign(dkim_signer_t *self, const dkim_sign_key_t *keys, size_t nkeys,
                     const char *msg, size_t len, sbuf_t *sig_headers_out, sbuf_t *err);

/* Base64 SHA-256 of a relaxed canonical body, with its NUL. */
#define DKIM_BH_SIZE 45

/* bh= of body (the bytes after the header section): the same for every
 * message whose body is the same, so a sender of many such messages can
 * compute it once. 0 or -1. */
int dkim_body_hash(const char *body, size_t len, char bh64[DKIM_BH_SIZE]);

/* dkim_signer_sign with bh= given (from dkim_body_hash over this message's
 * body; NULL computes it). A wrong bh64 makes signatures that do not
 * verify, so it must come from the same body bytes. */
int dkim_signer_sign_bh(dkim_signer_t *self, const dkim_sign_key_t *keys, size_t nkeys,
                        const char *msg, size_t len, const char *bh64, sbuf_t *sig_headers_out,
                        sbuf_t *err);

/* The header field names signed, NULL-terminated (for tests and docs). */
const char *const *dkim_signer_headers(void);

#endif
