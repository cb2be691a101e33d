/*
 * dkim_sign - DKIM signing with OpenSSL (see dkim_sign.h).
 *
 * Why not libopendkim: its API takes the private key as text on every
 * message, so each signature parses the PEM (OpenSSL 3's decoders) and
 * signs with a fresh key object (RSA blinding and Montgomery set-up again),
 * and each key canonicalizes and hashes the body again. Measured with
 * tests/bench/bench_dkim: 1,300 us per RSA signature through libopendkim
 * against 270 us for the RSA operation, 470 us against 31 us for Ed25519.
 * The delivery target leaves no room for that, so this module does the
 * RFC 6376 work itself, which is small: relaxed canonicalization, two
 * SHA-256 hashes and one signature per key.
 *
 * How: the message is split into header fields and body once; the body is
 * canonicalized and hashed once (bh= is the same for every key: both
 * algorithms use relaxed body canonicalization and SHA-256); per key, the
 * signed fields are picked the way a verifier picks them (RFC 6376 5.4.2,
 * bottom-up for repeated names), canonicalized, followed by the new
 * DKIM-Signature field with an empty b=, and signed through core/dkim_keys
 * (rsa-sha256: PKCS#1 v1.5 over SHA-256 of that data; ed25519-sha256:
 * Ed25519 over its SHA-256 hash, RFC 8463). Parsed keys are cached by PEM
 * text, so a key is parsed once per process.
 *
 * What can go wrong: a key that does not parse or is not of the algorithm
 * asked; d= or s= with characters that would break the field; a message
 * that is not RFC 5322 with CRLF line ends (no header section, no From,
 * bare LF). Each is -1 with a reason, never an abort.
 *
 * Threads: the key cache is behind a mutex; parsed keys are never freed
 * before the signer, so a key in use by one thread cannot go away under
 * it. Past KEY_CACHE_MAX keys, new keys are parsed per call and dropped.
 * Security: private key text is never copied except into the cache's key
 * (the dict's own copy of the PEM, which is wiped before it is freed).
 */
#include <ctype.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "dict.h"
#include "dkim_keys.h"
#include "dkim_sign.h"

#define KEY_CACHE_MAX 100000 /* parsed keys kept; about 3 KB each for RSA */
#define LINE_MAX_OUT 78      /* RFC 5322 recommended line length */

struct dkim_signer {
    pthread_mutex_t lock; /* guards keys */
    dict_t *keys;         /* PEM text -> dkim_key_t *, parsed once */
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
/* Listed once more in h= than present, so a verifier refuses an added one. */
static const char *const OVERSIGNED_HEADERS[] = {"from", NULL};

/* One header field of the message being signed. */
typedef struct {
    const char *name;  /* start of the field */
    size_t name_len;   /* bytes of the name (before the colon, trailing WSP removed) */
    const char *value; /* after the colon */
    size_t value_len;  /* up to, not including, the final CRLF */
    bool used;         /* already taken for h= while hashing */
} field_t;

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
    if (!self || !(self->keys = dict_new()) || pthread_mutex_init(&self->lock, NULL) != 0) {
        s_err(err, "out of memory", NULL);
        if (self)
            dict_destroy(&self->keys);
        free(self);
        return NULL;
    }
    return self;
}

static int s_drop_key(void *arg, const void *key, size_t len, void *value)
{
    (void)arg;
    OPENSSL_cleanse((void *)(uintptr_t)key, len); /* the dict's copy of the PEM */
    dkim_key_t *k = value;
    dkim_key_destroy(&k);
    return 1;
}

void dkim_signer_destroy(dkim_signer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    dkim_signer_t *self = *self_p;
    size_t cursor = 0;
    while (dict_size(self->keys) > 0)
        dict_sweep(self->keys, &cursor, SIZE_MAX, s_drop_key, NULL);
    dict_destroy(&self->keys);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

/* The parsed key for pem, from the cache or parsed now. *owned is set when
 * the caller must destroy it (cache full). NULL when it does not parse. */
static dkim_key_t *s_key(dkim_signer_t *self, const char *pem, bool *owned)
{
    size_t len = strlen(pem);
    *owned = false;
    pthread_mutex_lock(&self->lock);
    dkim_key_t *k = dict_get(self->keys, pem, len);
    pthread_mutex_unlock(&self->lock);
    if (k)
        return k;
    /* Parse outside the lock: it is the slow part. */
    k = dkim_key_from_pem(pem, len);
    if (!k)
        return NULL;
    pthread_mutex_lock(&self->lock);
    dkim_key_t *raced = dict_get(self->keys, pem, len);
    if (raced) {
        dkim_key_destroy(&k);
        k = raced;
    } else if (dict_size(self->keys) >= KEY_CACHE_MAX || dict_put(self->keys, pem, len, k) != 0) {
        *owned = true;
    }
    pthread_mutex_unlock(&self->lock);
    return k;
}

/* Split msg into header fields (appended to fields, *nfields of them) and
 * the body at *body_off. -1 with err when msg is not a CRLF RFC 5322
 * message with a From field. Caller frees *fields. */
static int s_split(const char *msg, size_t len, field_t **fields, size_t *nfields, size_t *body_off,
                   sbuf_t *err)
{
    const char *p = msg, *end = msg + len;
    size_t cap = 0, n = 0;
    bool from = false;
    *fields = NULL;
    *nfields = 0;
    *body_off = 0;
    if (len == 0 || msg[0] == '\r' || msg[0] == '\n' || msg[0] == ' ' || msg[0] == '\t') {
        s_err(err, "message has no header section", NULL);
        return -1;
    }
    while (p < end) {
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') { /* the blank line */
            *body_off = (size_t)(p + 2 - msg);
            break;
        }
        /* A field runs until a CRLF not followed by a fold (SP / HT). */
        const char *q = p, *nl;
        for (;;) {
            nl = memchr(q, '\n', (size_t)(end - q));
            if (!nl) {
                s_err(err, "header section does not end with CRLF", NULL);
                goto fail;
            }
            if (nl[-1] != '\r') {
                s_err(err, "bare LF in header section (CRLF line ends required)", NULL);
                goto fail;
            }
            if (nl + 1 >= end || (nl[1] != ' ' && nl[1] != '\t'))
                break;
            q = nl + 1;
        }
        const char *colon = memchr(p, ':', (size_t)(nl - p));
        if (!colon) {
            s_err(err, "header field without a colon", NULL);
            goto fail;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            field_t *grown = realloc(*fields, cap * sizeof **fields);
            if (!grown) {
                s_err(err, "out of memory", NULL);
                goto fail;
            }
            *fields = grown;
        }
        field_t *f = &(*fields)[n++];
        f->name = p;
        f->name_len = (size_t)(colon - p);
        while (f->name_len > 0 && (p[f->name_len - 1] == ' ' || p[f->name_len - 1] == '\t'))
            f->name_len--;
        f->value = colon + 1;
        f->value_len = (size_t)(nl - 1 - f->value);
        f->used = false;
        if (f->name_len == 4 && strncasecmp(p, "from", 4) == 0)
            from = true;
        p = nl + 1;
    }
    if (p >= end)
        *body_off = len; /* header section only, no blank line */
    *nfields = n;
    if (!from) {
        s_err(err, "message has no From field", NULL);
        goto fail;
    }
    /* A bare LF in the body canonicalizes differently across verifiers. */
    for (const char *b = msg + *body_off; b < end;) {
        const char *nl = memchr(b, '\n', (size_t)(end - b));
        if (!nl)
            break;
        if (nl[-1] != '\r') {
            s_err(err, "bare LF in message body (CRLF line ends required)", NULL);
            goto fail;
        }
        b = nl + 1;
    }
    return 0;
fail:
    free(*fields);
    *fields = NULL;
    *nfields = 0;
    return -1;
}

/* Is q at the end of a line of the body ending at e? */
static bool s_eol(const char *q, const char *e)
{
    return q == e || (q[0] == '\r' && q + 1 < e && q[1] == '\n');
}

/* bh=: SHA-256 of the relaxed canonical body (RFC 6376 3.4.4): WSP runs
 * become one SP, WSP at line ends goes, empty lines at the end go, a
 * non-empty body ends with CRLF. The canonical body equals the input
 * except where a run of WSP is not a single SP, so the input is hashed in
 * place, span by span, and only those places are rewritten: no copy. */
static int s_body_hash(const char *body, size_t len, unsigned char out[SHA256_DIGEST_LENGTH])
{
    /* Drop the trailing lines that are empty or WSP only (they
     * canonicalize to nothing); e is then the end of the last line with
     * content, after its CRLF if it has one. */
    const char *b = body, *e = body + len;
    while (e > b) {
        const char *le = e[-1] == '\n' ? e - 2 : e; /* content end of the last line */
        const char *ls = le;
        while (ls > b && ls[-1] != '\n')
            ls--;
        const char *c = ls;
        while (c < le && (*c == ' ' || *c == '\t'))
            c++;
        if (c < le)
            break;
        e = ls;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    const char *span = b; /* input not yet hashed, equal to its canonical form */
    for (const char *p = b; ok && p < e; p++) {
        if (*p != ' ' && *p != '\t')
            continue;
        const char *q = p + 1;
        while (q < e && (*q == ' ' || *q == '\t'))
            q++;
        bool eol = s_eol(q, e);
        if (*p == ' ' && q == p + 1 && !eol)
            continue; /* a single SP inside a line: already canonical */
        ok = EVP_DigestUpdate(ctx, span, (size_t)(p - span)) == 1 &&
             (eol || EVP_DigestUpdate(ctx, " ", 1) == 1);
        span = q;
        p = q - 1;
    }
    ok = ok && EVP_DigestUpdate(ctx, span, (size_t)(e - span)) == 1;
    if (ok && e > b && e[-1] != '\n') /* a last line without CRLF: SMTP DATA adds it */
        ok = EVP_DigestUpdate(ctx, "\r\n", 2) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, out, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* Append the relaxed canonical form (RFC 6376 3.4.2) of a field: name
 * lower-cased, folds removed, WSP runs to one SP, WSP around the colon and
 * at the end removed. crlf: end with CRLF (every field but the signature's
 * own). */
static int s_canon_field(sbuf_t *out, const char *name, size_t name_len, const char *value,
                         size_t value_len, bool crlf)
{
    if (sbuf_reserve(out, name_len + value_len + 3) != 0)
        return -1;
    for (size_t i = 0; i < name_len; i++) {
        char c = (char)tolower((unsigned char)name[i]);
        sbuf_append(out, &c, 1);
    }
    sbuf_append(out, ":", 1);
    const char *p = value, *end = value + value_len;
    bool wsp = false, any = false;
    for (; p < end; p++) {
        char c = *p;
        if (c == '\r' || c == '\n')
            continue; /* unfold: the WSP after it stays and counts as WSP */
        if (c == ' ' || c == '\t') {
            wsp = true;
            continue;
        }
        if (wsp && any)
            sbuf_append(out, " ", 1);
        wsp = false;
        any = true;
        sbuf_append(out, &c, 1);
    }
    return crlf ? sbuf_append(out, "\r\n", 2) : 0;
}

/* d= and s= go into the field verbatim: letters, digits, '-', '.', '_'. */
static bool s_tag_ok(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_')
            return false;
    return true;
}

/* Append tag (e.g. "h=a:b:c;") to the field being built, folding before it
 * with CRLF TAB when it would pass LINE_MAX_OUT; *col is the current column.
 * Long h= lists are folded at their colons. */
static void s_put_tag(sbuf_t *out, size_t *col, const char *tag, size_t len)
{
    const char *p = tag, *end = tag + len;
    bool first = true;
    while (p < end) {
        /* The next piece: up to and including the next ':' for h=, or all. */
        const char *cut = end;
        if (len > LINE_MAX_OUT) {
            const char *c = memchr(p, ':', (size_t)(end - p));
            if (c)
                cut = c + 1;
        }
        size_t n = (size_t)(cut - p);
        size_t sep = first ? 1 : 0; /* the space between tags */
        if (*col + sep + n > LINE_MAX_OUT && *col > 1) {
            sbuf_append(out, "\r\n\t", 3);
            *col = 1;
            sep = 0;
        }
        if (sep) {
            sbuf_append(out, " ", 1);
            (*col)++;
        }
        sbuf_append(out, p, n);
        *col += n;
        p = cut;
        first = false;
    }
}

/* The signature field for one key, with the body hash bh (base64), signed
 * fields chosen from fields; appended to out with its CRLF. */
static int s_sign_one(dkim_signer_t *self, const dkim_sign_key_t *key, field_t *fields,
                      size_t nfields, const char *bh, time_t now, sbuf_t *out, sbuf_t *err)
{
    if (!key->private_pem || !*key->private_pem) {
        s_err(err, "key has no private key", NULL);
        return -1;
    }
    if (!s_tag_ok(key->domain) || !s_tag_ok(key->selector)) {
        s_err(err, "key's domain or selector is empty or has characters a d=/s= tag cannot carry",
              NULL);
        return -1;
    }
    bool owned = false;
    dkim_key_t *k = s_key(self, key->private_pem, &owned);
    if (!k) {
        s_err(err, "private key does not parse (PKCS#8 PEM expected)", NULL);
        return -1;
    }
    int rc = -1;
    sbuf_t *hlist = sbuf_new(256), *data = sbuf_new(2048), *field = sbuf_new(1024);
    sbuf_t *sig = sbuf_new(512);
    if (!hlist || !data || !field || !sig) {
        s_err(err, "out of memory", NULL);
        goto done;
    }
    if ((dkim_key_alg(k) == DKIM_ED25519) != (key->ed25519 != 0)) {
        s_err(err,
              key->ed25519 ? "ed25519 asked but the key is RSA"
                           : "rsa asked but the key is Ed25519",
              NULL);
        goto done;
    }

    /* h=: every present field of the set, in message order, then the
     * oversigned names once more. The hashed data picks, for each name in
     * h=, the last not yet used instance, as a verifier does. */
    sbuf_append_str(hlist, "h=");
    for (size_t i = 0; i < nfields; i++)
        for (const char *const *h = SIGNED_HEADERS; *h; h++)
            if (strlen(*h) == fields[i].name_len &&
                strncasecmp(*h, fields[i].name, fields[i].name_len) == 0) {
                if (sbuf_len(hlist) > 2)
                    sbuf_append(hlist, ":", 1);
                sbuf_append_str(hlist, *h);
                break;
            }
    for (const char *const *h = OVERSIGNED_HEADERS; *h; h++)
        sbuf_appendf(hlist, ":%s", *h);
    for (size_t i = 0; i < nfields; i++)
        fields[i].used = false;
    const char *names = sbuf_data(hlist) + 2;
    while (*names) {
        size_t nl = strcspn(names, ":");
        for (size_t i = nfields; i-- > 0;) {
            if (!fields[i].used && fields[i].name_len == nl &&
                strncasecmp(fields[i].name, names, nl) == 0) {
                fields[i].used = true;
                if (s_canon_field(data, fields[i].name, fields[i].name_len, fields[i].value,
                                  fields[i].value_len, true) != 0) {
                    s_err(err, "out of memory", NULL);
                    goto done;
                }
                break;
            }
        }
        names += nl + (names[nl] == ':');
    }
    sbuf_append(hlist, ";", 1);

    /* The field with an empty b=, exactly as it will be sent, so its
     * canonical form is what a verifier computes after removing b='s
     * value. */
    size_t col = strlen("DKIM-Signature:");
    sbuf_append_str(field, "DKIM-Signature:");
    char tag[128];
    int tl;
    s_put_tag(field, &col, "v=1;", 4);
    tl = snprintf(tag, sizeof tag, "a=%s;", key->ed25519 ? "ed25519-sha256" : "rsa-sha256");
    s_put_tag(field, &col, tag, (size_t)tl);
    s_put_tag(field, &col, "c=relaxed/relaxed;", 18);
    sbuf_t *dtag = sbuf_new(64);
    if (!dtag) {
        s_err(err, "out of memory", NULL);
        goto done;
    }
    sbuf_appendf(dtag, "d=%s;", key->domain);
    s_put_tag(field, &col, sbuf_data(dtag), sbuf_len(dtag));
    sbuf_reset(dtag);
    sbuf_appendf(dtag, "s=%s;", key->selector);
    s_put_tag(field, &col, sbuf_data(dtag), sbuf_len(dtag));
    sbuf_destroy(&dtag);
    tl = snprintf(tag, sizeof tag, "t=%lld;", (long long)now);
    s_put_tag(field, &col, tag, (size_t)tl);
    tl = snprintf(tag, sizeof tag, "bh=%s;", bh);
    s_put_tag(field, &col, tag, (size_t)tl);
    s_put_tag(field, &col, sbuf_data(hlist), sbuf_len(hlist));
    s_put_tag(field, &col, "b=", 2);
    size_t colon = strlen("DKIM-Signature");
    if (s_canon_field(data, sbuf_data(field), colon, sbuf_data(field) + colon + 1,
                      sbuf_len(field) - colon - 1, false) != 0) {
        s_err(err, "out of memory", NULL);
        goto done;
    }

    /* RFC 8463: Ed25519 signs the SHA-256 hash of the header data;
     * dkim_key_sign hashes for RSA itself. */
    unsigned char hh[SHA256_DIGEST_LENGTH];
    int srk;
    if (key->ed25519) {
        SHA256((const unsigned char *)sbuf_data(data), sbuf_len(data), hh);
        srk = dkim_key_sign(k, hh, sizeof hh, sig);
    } else {
        srk = dkim_key_sign(k, sbuf_data(data), sbuf_len(data), sig);
    }
    if (srk != 0) {
        s_err(err, "signing failed", NULL);
        goto done;
    }
    /* b=: base64, folded with CRLF TAB SP (whitespace in b= is ignored). */
    size_t b64cap = 4 * ((sbuf_len(sig) + 2) / 3) + 1;
    char *b64 = malloc(b64cap);
    if (!b64) {
        s_err(err, "out of memory", NULL);
        goto done;
    }
    int b64len = EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)sbuf_data(sig),
                                 (int)sbuf_len(sig));
    size_t mark = sbuf_len(out);
    int ar = sbuf_append(out, sbuf_data(field), sbuf_len(field));
    for (int i = 0; ar == 0 && i < b64len;) {
        size_t room = col < LINE_MAX_OUT ? LINE_MAX_OUT - col : 0;
        if (room < 8) {
            ar = sbuf_append(out, "\r\n\t ", 4);
            col = 2;
            continue;
        }
        size_t n = (size_t)(b64len - i) < room ? (size_t)(b64len - i) : room;
        ar = sbuf_append(out, b64 + i, n);
        col += n;
        i += (int)n;
    }
    free(b64);
    if (ar != 0 || sbuf_append(out, "\r\n", 2) != 0) {
        sbuf_truncate(out, mark);
        s_err(err, "out of memory", NULL);
        goto done;
    }
    rc = 0;
done:
    if (owned)
        dkim_key_destroy(&k);
    sbuf_destroy(&hlist);
    sbuf_destroy(&data);
    sbuf_destroy(&field);
    sbuf_destroy(&sig);
    return rc;
}

int dkim_body_hash(const char *body, size_t len, char bh64[DKIM_BH_SIZE])
{
    unsigned char bh[SHA256_DIGEST_LENGTH];
    if ((len > 0 && !body) || s_body_hash(body, len, bh) != 0)
        return -1;
    EVP_EncodeBlock((unsigned char *)bh64, bh, sizeof bh);
    return 0;
}

int dkim_signer_sign(dkim_signer_t *self, const dkim_sign_key_t *keys, size_t nkeys,
                     const char *msg, size_t len, sbuf_t *sig_headers_out, sbuf_t *err)
{
    return dkim_signer_sign_bh(self, keys, nkeys, msg, len, NULL, sig_headers_out, err);
}

int dkim_signer_sign_bh(dkim_signer_t *self, const dkim_sign_key_t *keys, size_t nkeys,
                        const char *msg, size_t len, const char *bh64_given,
                        sbuf_t *sig_headers_out, sbuf_t *err)
{
    if (!self || !sig_headers_out || (nkeys > 0 && !keys) || (len > 0 && !msg)) {
        s_err(err, "bad arguments", NULL);
        return -1;
    }
    field_t *fields = NULL;
    size_t nfields = 0, body_off = 0;
    if (s_split(msg, len, &fields, &nfields, &body_off, err) != 0)
        return -1;
    int rc = 0;
    size_t mark = sbuf_len(sig_headers_out);
    if (nkeys > 0) {
        /* Once, for every key: the same canonicalization and hash (or
         * the caller's, computed once for every message of a send). */
        char bh64[DKIM_BH_SIZE];
        if (bh64_given && strlen(bh64_given) < sizeof bh64) {
            memcpy(bh64, bh64_given, strlen(bh64_given) + 1);
        } else if (dkim_body_hash(msg + body_off, len - body_off, bh64) != 0) {
            s_err(err, "body hash failed", NULL);
            rc = -1;
        }
        if (rc == 0) {
            time_t now = time(NULL);
            for (size_t i = 0; rc == 0 && i < nkeys; i++)
                rc = s_sign_one(self, &keys[i], fields, nfields, bh64, now, sig_headers_out, err);
        }
    }
    if (rc != 0)
        sbuf_truncate(sig_headers_out, mark);
    free(fields);
    return rc;
}
