/*
 * dkim_sign - DKIM signing through libopendkim (see dkim_sign.h).
 *
 * How: one DKIM_LIB per signer, configured once with the signed header set
 * and From oversigning; each key of each message gets its own DKIM handle
 * (libopendkim makes one signature per handle), fed the header fields as
 * they stand (folds kept, libopendkim canonicalizes), the body in one
 * piece, then asked for the signature field. libopendkim 2.11 signs
 * ed25519-sha256 itself (DKIM_SIGN_ED25519SHA256, RFC 8463).
 *
 * What can go wrong: libopendkim reports statuses (key unreadable, no From,
 * syntax), turned into err text; a message with a bare LF, no header
 * section or no From is refused before libopendkim sees it, because what a
 * verifier would make of it is undefined. Private key text is passed to
 * libopendkim as given and never copied here.
 *
 * Threads: DKIM_LIB holds only its configuration after set-up; handles are
 * per call, so concurrent calls share nothing mutable.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <opendkim/dkim.h>

#include "dkim_sign.h"

/* What "DKIM-Signature: " takes on the first line, for folding. */
#define SIG_FIELD "DKIM-Signature: "

struct dkim_signer {
    DKIM_LIB *lib; /* libopendkim library handle, configured in dkim_signer_new */
};

static const char *const SIGNED_HEADERS[] = {"from",
                                             "to",
                                             "cc",
                                             "subject",
                                             "date",
                                             "message-id",
                                             "reply-to",
                                             "mime-version",
                                             "content-type",
                                             "content-transfer-encoding",
                                             "list-unsubscribe",
                                             "list-unsubscribe-post",
                                             NULL};
static const char *const OVERSIGNED_HEADERS[] = {"from", NULL};

const char *const *dkim_signer_headers(void)
{
    return SIGNED_HEADERS;
}

static void s_err(sbuf_t *err, const char *what, const char *detail)
{
    if (!err)
        return;
    sbuf_reset(err);
    sbuf_appendf(err, "dkim_sign: %s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

dkim_signer_t *dkim_signer_new(sbuf_t *err)
{
    dkim_signer_t *self = calloc(1, sizeof *self);
    if (!self) {
        s_err(err, "out of memory", NULL);
        return NULL;
    }
    self->lib = dkim_init(NULL, NULL);
    if (!self->lib) {
        s_err(err, "dkim_init failed", NULL);
        free(self);
        return NULL;
    }
    /* libopendkim takes the lists as a char ** (length: the size of that
     * pointer) and copies them into the library handle; it never writes
     * through them. */
    const char *const *sign = SIGNED_HEADERS, *const *over = OVERSIGNED_HEADERS;
    if (dkim_options(self->lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, (void *)(uintptr_t)sign,
                     sizeof sign) != DKIM_STAT_OK ||
        dkim_options(self->lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, (void *)(uintptr_t)over,
                     sizeof over) != DKIM_STAT_OK) {
        s_err(err, "dkim_options failed", NULL);
        dkim_signer_destroy(&self);
        return NULL;
    }
    return self;
}

void dkim_signer_destroy(dkim_signer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    dkim_signer_t *self = *self_p;
    if (self->lib)
        dkim_close(self->lib);
    free(self);
    *self_p = NULL;
}

/* Where the header section of msg ends: *hdr_len bytes of header fields
 * (each CRLF-terminated), the body from *body_off. -1 with err when msg is
 * not a CRLF message with a From field. */
static int s_split(const char *msg, size_t len, size_t *hdr_len, size_t *body_off, sbuf_t *err)
{
    const char *p = msg;
    const char *end = msg + len;
    bool from = false;
    if (len == 0 || msg[0] == '\r' || msg[0] == ' ' || msg[0] == '\t') {
        s_err(err, "message has no header section", NULL);
        return -1;
    }
    for (const char *nl; (nl = memchr(p, '\n', (size_t)(end - p))) != NULL; p = nl + 1) {
        if (nl == msg || nl[-1] != '\r') {
            s_err(err, "bare LF in message (CRLF line ends required)", NULL);
            return -1;
        }
        if (!from && (size_t)(nl - p) >= 5 && strncasecmp(p, "from:", 5) == 0)
            from = true;
        if (nl + 1 < end && nl[1] == '\r' && nl + 2 < end && nl[2] == '\n') {
            *hdr_len = (size_t)(nl + 1 - msg);
            *body_off = *hdr_len + 2;
            break;
        }
        if (nl + 1 == end) { /* headers only, no body */
            *hdr_len = len;
            *body_off = len;
            break;
        }
    }
    if (*body_off == 0) {
        s_err(err, "header section does not end with CRLF", NULL);
        return -1;
    }
    if (!from) {
        s_err(err, "message has no From field", NULL);
        return -1;
    }
    /* The body must use CRLF too: a bare LF canonicalizes differently
     * across verifiers. */
    for (const char *q = msg + *body_off; q < end;) {
        const char *nl = memchr(q, '\n', (size_t)(end - q));
        if (!nl)
            break;
        if (nl[-1] != '\r') {
            s_err(err, "bare LF in message body (CRLF line ends required)", NULL);
            return -1;
        }
        q = nl + 1;
    }
    return 0;
}

/* Feed every header field of the hdr_len-byte header section to dkim,
 * folded fields whole, without their final CRLF. */
static DKIM_STAT s_feed_headers(DKIM *dkim, const char *hdr, size_t hdr_len)
{
    const char *p = hdr;
    const char *end = hdr + hdr_len;
    while (p < end) {
        const char *q = p;
        const char *nl;
        /* A field runs until a CRLF not followed by a fold (SP / HT). */
        for (;;) {
            nl = memchr(q, '\n', (size_t)(end - q));
            if (!nl || nl + 1 >= end || (nl[1] != ' ' && nl[1] != '\t'))
                break;
            q = nl + 1;
        }
        const char *fend = nl ? nl - 1 : end; /* drop the CRLF */
        DKIM_STAT st = dkim_header(dkim, (u_char *)p, (size_t)(fend - p));
        if (st != DKIM_STAT_OK)
            return st;
        p = nl ? nl + 1 : end;
    }
    return DKIM_STAT_OK;
}

/* Append the header value in buf (folded by libopendkim with LF or CRLF)
 * as a CRLF-folded DKIM-Signature field. */
static int s_append_field(sbuf_t *out, const u_char *buf, size_t len)
{
    if (sbuf_append_str(out, SIG_FIELD) != 0)
        return -1;
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        size_t stop = (i > start && buf[i - 1] == '\r') ? i - 1 : i;
        if (sbuf_append(out, buf + start, stop - start) != 0 || sbuf_append(out, "\r\n", 2) != 0)
            return -1;
        start = i + 1;
    }
    if (sbuf_append(out, buf + start, len - start) != 0 || sbuf_append(out, "\r\n", 2) != 0)
        return -1;
    return 0;
}

/* Does the PKCS#8 PEM hold an Ed25519 key? Its DER starts with the
 * same 12 bytes for v1 and v2 (30 len 02 01 0v 30 05 06 03 2B 65 70: the
 * id-Ed25519 OID), whose base64 characters 8..15 are "BQYDK2Vw"; an RSA
 * PKCS#8 or traditional key never has that. Cheap, so a key passed with
 * the wrong algorithm is refused without parsing it twice. */
static bool s_pem_is_ed25519(const char *pem)
{
    const char *nl = strchr(pem, '\n');
    if (!nl)
        return false;
    nl++;
    while (*nl == '\r' || *nl == '\n')
        nl++;
    return strlen(nl) >= 16 && memcmp(nl + 8, "BQYDK2Vw", 8) == 0;
}

/* One signature with one key; appends the field to out. */
static int s_sign_one(dkim_signer_t *self, const dkim_sign_key_t *key, const char *msg,
                      size_t hdr_len, size_t body_off, size_t len, sbuf_t *out, sbuf_t *err)
{
    if (!key->domain || !*key->domain || !key->selector || !*key->selector ||
        !key->private_pem || !*key->private_pem) {
        s_err(err, "key lacks domain, selector or private key", NULL);
        return -1;
    }
    if (s_pem_is_ed25519(key->private_pem) != (key->ed25519 != 0)) {
        s_err(err, key->ed25519 ? "ed25519 asked but the key is not Ed25519"
                                : "rsa asked but the key is Ed25519",
              NULL);
        return -1;
    }
    DKIM_STAT st = DKIM_STAT_OK;
    /* secretkey is not written to by libopendkim (it copies it), hence
     * the cast. */
    DKIM *dkim = dkim_sign(self->lib, (const u_char *)"postchi", NULL,
                           (dkim_sigkey_t)(uintptr_t)key->private_pem,
                           (const u_char *)key->selector, (const u_char *)key->domain,
                           DKIM_CANON_RELAXED, DKIM_CANON_RELAXED,
                           key->ed25519 ? DKIM_SIGN_ED25519SHA256 : DKIM_SIGN_RSASHA256, -1, &st);
    if (!dkim) {
        s_err(err, "cannot start signature", dkim_getresultstr(st));
        return -1;
    }
    int rc = -1;
    const char *stage = NULL;
    u_char *sig = NULL;
    size_t siglen = 0;
    if ((st = s_feed_headers(dkim, msg, hdr_len)) != DKIM_STAT_OK)
        stage = "header";
    else if ((st = dkim_eoh(dkim)) != DKIM_STAT_OK)
        stage = "end of header";
    else if (len > body_off &&
             (st = dkim_body(dkim, (u_char *)(uintptr_t)(msg + body_off), len - body_off)) !=
                 DKIM_STAT_OK)
        stage = "body";
    else if (len > body_off && msg[len - 1] != '\n' &&
             (st = dkim_body(dkim, (u_char *)"\r\n", 2)) != DKIM_STAT_OK)
        stage = "body end"; /* what SMTP DATA will add before "." */
    else if ((st = dkim_eom(dkim, NULL)) != DKIM_STAT_OK)
        stage = "signing (is the key valid?)";
    else if ((st = dkim_getsighdr_d(dkim, strlen(SIG_FIELD), &sig, &siglen)) != DKIM_STAT_OK)
        stage = "signature field";
    if (stage) {
        const char *why = dkim_geterror(dkim);
        s_err(err, stage, why && *why ? why : dkim_getresultstr(st));
    } else if (s_append_field(out, sig, siglen) != 0) {
        s_err(err, "out of memory", NULL);
    } else {
        rc = 0;
    }
    dkim_free(dkim); /* owns sig */
    return rc;
}

int dkim_signer_sign(dkim_signer_t *self, const dkim_sign_key_t *keys, size_t nkeys,
                     const char *msg, size_t len, sbuf_t *sig_headers_out, sbuf_t *err)
{
    if (!self || !sig_headers_out || (nkeys > 0 && !keys) || (len > 0 && !msg)) {
        s_err(err, "bad arguments", NULL);
        return -1;
    }
    size_t hdr_len = 0, body_off = 0;
    if (s_split(msg, len, &hdr_len, &body_off, err) != 0)
        return -1;
    size_t mark = sbuf_len(sig_headers_out);
    for (size_t i = 0; i < nkeys; i++) {
        if (s_sign_one(self, &keys[i], msg, hdr_len, body_off, len, sig_headers_out, err) != 0) {
            sbuf_truncate(sig_headers_out, mark);
            return -1;
        }
    }
    return 0;
}
