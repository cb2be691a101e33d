/*
 * test_dkim_sign - messages signed with freshly generated Ed25519 and
 * RSA-2048 keys (core/dkim_keys) verify under dkimpy, an independent
 * verifier given the TXT records dkim_keys builds: plain, multipart, folded
 * and oddly spaced headers, trailing blank lines, non-ASCII, no body, a
 * body without a final CRLF, the full List-Unsubscribe set. Tampered
 * messages (body, a signed header, an added From) fail; whitespace changes
 * relaxed canonicalization ignores still pass. Bad input gets -1 and a
 * reason. Concurrent signing from several threads gives valid signatures.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../integration/dkim_verify_py.h"
#include "dkim_keys.h"
#include "dkim_sign.h"
#include "sbuf.h"

#define DOMAIN "example.com"

typedef struct {
    dkim_signer_t *signer;   /* the one under test */
    sbuf_t *ed_pem;          /* Ed25519 private key, PKCS#8 PEM */
    sbuf_t *rsa_pem;         /* RSA-2048 private key, PKCS#8 PEM */
    sbuf_t *ed_txt;          /* its TXT record value */
    sbuf_t *rsa_txt;         /* its TXT record value */
    dkim_sign_key_t keys[2]; /* ed25519 then rsa */
} fixture_t;

static const char *const REC_NAMES[] = {"ed._domainkey." DOMAIN, "rsa._domainkey." DOMAIN};

static void s_make_key(dkim_alg_t alg, sbuf_t *pem, sbuf_t *txt)
{
    dkim_key_t *k = dkim_key_generate(alg);
    assert_non_null(k);
    sbuf_t *pub = sbuf_new(0);
    assert_int_equal(dkim_key_private_pem(k, pem), 0);
    assert_int_equal(dkim_key_public_b64(k, pub), 0);
    assert_int_equal(dkim_txt_record(alg, sbuf_data(pub), txt, NULL), 0);
    sbuf_destroy(&pub);
    dkim_key_destroy(&k);
}

static int s_setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    sbuf_t *err = sbuf_new(0);
    f->signer = dkim_signer_new(err);
    if (!f->signer) {
        fprintf(stderr, "%s\n", sbuf_data(err));
        sbuf_destroy(&err);
        free(f);
        return -1;
    }
    sbuf_destroy(&err);
    f->ed_pem = sbuf_new(0);
    f->rsa_pem = sbuf_new(0);
    f->ed_txt = sbuf_new(0);
    f->rsa_txt = sbuf_new(0);
    s_make_key(DKIM_ED25519, f->ed_pem, f->ed_txt);
    s_make_key(DKIM_RSA, f->rsa_pem, f->rsa_txt);
    f->keys[0] = (dkim_sign_key_t){DOMAIN, "ed", sbuf_data(f->ed_pem), 1};
    f->keys[1] = (dkim_sign_key_t){DOMAIN, "rsa", sbuf_data(f->rsa_pem), 0};
    *state = f;
    return 0;
}

static int s_teardown(void **state)
{
    fixture_t *f = *state;
    if (!f)
        return 0;
    dkim_signer_destroy(&f->signer);
    dkim_signer_destroy(&f->signer); /* idempotent */
    sbuf_destroy(&f->ed_pem);
    sbuf_destroy(&f->rsa_pem);
    sbuf_destroy(&f->ed_txt);
    sbuf_destroy(&f->rsa_txt);
    free(f);
    return 0;
}

/* Sign msg with nkeys keys from f->keys + first; the signed message
 * (signature fields + msg), caller frees. */
static char *s_signed(fixture_t *f, size_t first, size_t nkeys, const char *msg, size_t len,
                      size_t *out_len)
{
    sbuf_t *sig = sbuf_new(0), *err = sbuf_new(0);
    int rc = dkim_signer_sign(f->signer, f->keys + first, nkeys, msg, len, sig, err);
    if (rc != 0)
        fail_msg("dkim_signer_sign: %s", sbuf_data(err));
    /* Every line of the fields is CRLF-terminated and within 78 octets
     * plus CRLF as RFC 5322 asks, and each key gave one field. */
    const char *p = sbuf_data(sig), *end = p + sbuf_len(sig);
    size_t fields = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        assert_true(nl > p && nl[-1] == '\r');
        assert_true(nl - p - 1 <= 78 + 20); /* b= runs are unbreakable at most once */
        if (strncmp(p, "DKIM-Signature: ", 16) == 0)
            fields++;
        else
            assert_true(*p == ' ' || *p == '\t');
        p = nl + 1;
    }
    assert_int_equal(fields, nkeys);
    sbuf_append(sig, msg, len);
    char *out = sbuf_detach(sig, out_len);
    sbuf_destroy(&sig);
    sbuf_destroy(&err);
    return out;
}

/* 1 when dkimpy verifies every signature of every message. */
static int s_verify(fixture_t *f, char **msgs, const size_t *lens, const int *want, size_t n)
{
    const char *values[] = {sbuf_data(f->ed_txt), sbuf_data(f->rsa_txt)};
    sbuf_t *out = sbuf_new(0);
    int rc = dkim_verify_py((const char *const *)msgs, lens, want, n, REC_NAMES, values, 2, 0, out);
    print_message("%s", sbuf_data(out));
    sbuf_destroy(&out);
    assert_int_not_equal(rc, -1);
    return rc;
}

static const char PLAIN[] = "From: Alice <alice@example.com>\r\n"
                            "To: bob@example.org\r\n"
                            "Subject: Hello\r\n"
                            "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                            "Message-ID: <1@example.com>\r\n"
                            "MIME-Version: 1.0\r\n"
                            "Content-Type: text/plain; charset=utf-8\r\n"
                            "Content-Transfer-Encoding: 7bit\r\n"
                            "\r\n"
                            "Hello Bob,\r\n"
                            "  indented  with   spaces \t \r\n"
                            "bye\r\n";

static const char MULTIPART[] =
    "From: news@example.com\r\n"
    "To: a@example.org, b@example.org\r\n"
    "Cc: c@example.org\r\n"
    "Reply-To: support@example.com\r\n"
    "Subject: Monthly news\r\n"
    "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    "Message-ID: <2@example.com>\r\n"
    "MIME-Version: 1.0\r\n"
    "List-Unsubscribe: <mailto:u+1@example.com>, <https://example.com/u/1>\r\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    "X-Unsigned: not in h=\r\n"
    "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Hi =E2=9C=93\r\n"
    "--b1\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "PGI+SGk8L2I+\r\n"
    "--b1--\r\n";

static const char FOLDED[] = "From: Carol\r\n <carol@example.com>\r\n"
                             "To: one@example.org,\r\n"
                             "\ttwo@example.org,\r\n"
                             "    three@example.org\r\n"
                             "SUBJECT:    a subject   that is \r\n"
                             "\tfolded   over\r\n"
                             " three lines  \r\n"
                             "date:Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                             "Message-ID: <3@example.com>\r\n"
                             "\r\n"
                             "body\r\n";

static const char TRAILING[] = "From: a@example.com\r\n"
                               "Subject: trailing blank lines\r\n"
                               "\r\n"
                               "text   \r\n"
                               "\r\n"
                               "  \r\n"
                               "\r\n"
                               "\r\n";

static const char UTF8[] =
    "From: =?UTF-8?B?w4lsb2TDqWU=?= <elodee@example.com>\r\n"
    "To: J\xc3\xbcrgen <j\xc3\xbcrgen@exampl\xc3\xa9.de>\r\n"
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= \xe2\x9c\x89 \xd8\xb3\xd9\x84\xd8\xa7\xd9\x85\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Gr\xc3\xbc\xc3\x9f"
    "e \xe2\x80\x94 \xd8\xb3\xd9\x84\xd8\xa7\xd9\x85 \xf0\x9f\x93\xa7\r\n";

/* Repeated signed fields (picked bottom-up by verifiers), a TAB after a
 * colon, a long h= list to fold, WSP-only body lines. */
static const char REPEATED[] = "Received: from x by y\r\n"
                               "From: a@example.com\r\n"
                               "To: first@example.org\r\n"
                               "Subject:\tspaced   name\r\n"
                               "To: second@example.org\r\n"
                               "Cc: c1@example.org\r\n"
                               "Cc: c2@example.org\r\n"
                               "Reply-To: r@example.com\r\n"
                               "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                               "Message-ID: <4@example.com>\r\n"
                               "MIME-Version: 1.0\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Transfer-Encoding: 7bit\r\n"
                               "List-Unsubscribe: <https://example.com/u/4>\r\n"
                               "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                               "\r\n"
                               " \t \r\n"
                               "x\t\ty  \r\n"
                               "\t\r\n";

static const char NOBODY[] = "From: a@example.com\r\nSubject: no body\r\n\r\n";
static const char NOBLANK[] = "From: a@example.com\r\nSubject: no blank line\r\n";
static const char NOFINALCRLF[] = "From: a@example.com\r\nSubject: x\r\n\r\nlast line";

static void test_sign_verify_all(void **state)
{
    fixture_t *f = *state;
    const char *src[] = {PLAIN,    MULTIPART, FOLDED,  TRAILING,   UTF8,
                         REPEATED, NOBODY,    NOBLANK, NOFINALCRLF};
    enum { N = sizeof src / sizeof src[0] };
    char *msgs[2 * N];
    size_t lens[2 * N];
    int want[2 * N];
    for (size_t i = 0; i < N; i++) {
        /* Both keys, the default... */
        msgs[i] = s_signed(f, 0, 2, src[i], strlen(src[i]), &lens[i]);
        want[i] = 2;
        /* ...and Ed25519 only, the per-domain setting. */
        msgs[N + i] = s_signed(f, 0, 1, src[i], strlen(src[i]), &lens[N + i]);
        want[N + i] = 1;
    }
    assert_int_equal(s_verify(f, msgs, lens, want, 2 * N), 1);
    /* The signature says what was asked for. */
    assert_non_null(strstr(msgs[0], "a=ed25519-sha256"));
    assert_non_null(strstr(msgs[0], "a=rsa-sha256"));
    assert_non_null(strstr(msgs[0], "c=relaxed/relaxed"));
    assert_non_null(strstr(msgs[0], "s=ed;"));
    assert_non_null(strstr(msgs[0], "d=" DOMAIN));
    assert_null(strstr(msgs[N], "a=rsa-sha256"));
    for (size_t i = 0; i < 2 * N; i++)
        free(msgs[i]);
}

/* The h= tag of the first signature in signed_msg, unfolded. */
static void s_h_tag(const char *signed_msg, sbuf_t *out)
{
    const char *h = strstr(signed_msg, "\th=");
    if (!h)
        h = strstr(signed_msg, "; h=") + 1;
    assert_non_null(h);
    for (h += 3; *h && *h != ';'; h++)
        if (*h != ' ' && *h != '\t' && *h != '\r' && *h != '\n')
            sbuf_append(out, h, 1);
}

static void test_signed_headers(void **state)
{
    fixture_t *f = *state;
    size_t len;
    char *m = s_signed(f, 0, 1, MULTIPART, strlen(MULTIPART), &len);
    sbuf_t *h = sbuf_new(0);
    s_h_tag(m, h);
    print_message("h=%s\n", sbuf_data(h));
    /* Every present header of the set is signed, From twice (oversigned),
     * the unlisted one is not. */
    const char *lc = sbuf_data(h);
    /* The header section of the original message, without the body. */
    char hdrs[sizeof MULTIPART];
    memcpy(hdrs, MULTIPART, sizeof MULTIPART);
    strstr(hdrs, "\r\n\r\n")[2] = '\0';
    for (const char *const *name = dkim_signer_headers(); *name; name++) {
        char field[64];
        snprintf(field, sizeof field, "%s:", *name);
        if (strncasecmp(hdrs, field, strlen(field)) == 0 ||
            strcasestr(hdrs, field)) /* present in the message */
            assert_non_null(strcasestr(lc, *name));
    }
    assert_null(strcasestr(lc, "x-unsigned"));
    const char *first = strcasestr(lc, "from");
    assert_non_null(strcasestr(first + 4, "from"));
    sbuf_destroy(&h);
    free(m);
}

/* Replace the first occurrence of what in a copy of m with with. */
static char *s_replace(const char *m, size_t len, const char *what, const char *with,
                       size_t *out_len)
{
    const char *at = strstr(m, what);
    assert_non_null(at);
    sbuf_t *b = sbuf_new(len + strlen(with));
    sbuf_append(b, m, (size_t)(at - m));
    sbuf_append_str(b, with);
    sbuf_append_str(b, at + strlen(what));
    char *out = sbuf_detach(b, out_len);
    sbuf_destroy(&b);
    return out;
}

static void test_tampered_fails(void **state)
{
    fixture_t *f = *state;
    size_t len;
    char *m = s_signed(f, 0, 2, MULTIPART, strlen(MULTIPART), &len);
    struct {
        const char *what, *with;
    } bad[] = {
        {"Hi =E2=9C=93", "Hi =E2=9C=94"},                              /* body byte */
        {"Subject: Monthly news", "Subject: Monthly new"},             /* signed header */
        {"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", ""}, /* signed header removed */
        {"\r\nFrom: news@example.com", "\r\nFrom: evil@example.net\r\nFrom: news@example.com"},
        {"--b1--\r\n", "--b1--\r\nappended\r\n"}, /* body extended */
    };
    enum { NBAD = sizeof bad / sizeof bad[0] };
    for (size_t i = 0; i < NBAD; i++) {
        size_t tlen;
        char *t = s_replace(m, len, bad[i].what, bad[i].with, &tlen);
        int want = 2;
        assert_int_equal(s_verify(f, &t, &tlen, &want, 1), 0);
        free(t);
    }
    /* What relaxed canonicalization ignores still verifies: whitespace
     * runs, header name case, an unsigned header added, trailing blank
     * lines in the body. */
    struct {
        const char *what, *with;
    } fine[] = {
        {"Subject: Monthly news", "subject:   Monthly \t news  "},
        {"X-Unsigned: not in h=", "X-Unsigned: changed freely"},
        {"--b1--\r\n", "--b1--  \r\n\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        size_t tlen;
        char *t = s_replace(m, len, fine[i].what, fine[i].with, &tlen);
        int want = 2;
        assert_int_equal(s_verify(f, &t, &tlen, &want, 1), 1);
        free(t);
    }
    free(m);
}

static void test_wrong_key_fails(void **state)
{
    fixture_t *f = *state;
    /* Signed with a key whose public half is not the published one. */
    sbuf_t *pem = sbuf_new(0), *txt = sbuf_new(0);
    s_make_key(DKIM_ED25519, pem, txt);
    dkim_sign_key_t other = {DOMAIN, "ed", sbuf_data(pem), 1};
    sbuf_t *sig = sbuf_new(0), *err = sbuf_new(0);
    assert_int_equal(dkim_signer_sign(f->signer, &other, 1, PLAIN, strlen(PLAIN), sig, err), 0);
    sbuf_append_str(sig, PLAIN);
    size_t len;
    char *m = sbuf_detach(sig, &len);
    int want = 1;
    assert_int_equal(s_verify(f, &m, &len, &want, 1), 0);
    free(m);
    sbuf_destroy(&sig);
    sbuf_destroy(&err);
    sbuf_destroy(&pem);
    sbuf_destroy(&txt);
}

/* -1 with a reason and sig untouched. */
static void s_refused(fixture_t *f, const dkim_sign_key_t *keys, size_t n, const char *msg,
                      size_t len)
{
    sbuf_t *sig = sbuf_new(0), *err = sbuf_new(0);
    sbuf_append_str(sig, "kept");
    assert_int_equal(dkim_signer_sign(f->signer, keys, n, msg, len, sig, err), -1);
    assert_true(sbuf_len(err) > 0);
    print_message("refused: %s\n", sbuf_data(err));
    assert_string_equal(sbuf_data(sig), "kept");
    sbuf_destroy(&sig);
    sbuf_destroy(&err);
}

static void test_bad_input(void **state)
{
    fixture_t *f = *state;
    static const char bare_lf[] = "From: a@example.com\nSubject: x\n\nbody\n";
    static const char body_lf[] = "From: a@example.com\r\nSubject: x\r\n\r\nbody\nmore\r\n";
    static const char no_from[] = "To: a@example.com\r\nSubject: x\r\n\r\nbody\r\n";
    static const char no_hdr[] = "\r\nbody\r\n";
    static const char no_eol[] = "From: a@example.com";
    static const char no_colon[] = "From: a@example.com\r\nnot a field\r\n\r\nbody\r\n";
    s_refused(f, f->keys, 2, no_colon, strlen(no_colon));
    s_refused(f, f->keys, 2, bare_lf, strlen(bare_lf));
    s_refused(f, f->keys, 2, body_lf, strlen(body_lf));
    s_refused(f, f->keys, 2, no_from, strlen(no_from));
    s_refused(f, f->keys, 2, no_hdr, strlen(no_hdr));
    s_refused(f, f->keys, 2, no_eol, strlen(no_eol));
    s_refused(f, f->keys, 2, "", 0);

    dkim_sign_key_t k[2] = {f->keys[0], f->keys[1]};
    /* A second key that fails drops the first one's field too. */
    k[1].private_pem = "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n";
    s_refused(f, k, 2, PLAIN, strlen(PLAIN));
    k[1] = f->keys[1];
    k[1].private_pem = "";
    s_refused(f, k, 2, PLAIN, strlen(PLAIN));
    k[1] = f->keys[1];
    k[1].selector = NULL;
    s_refused(f, k, 2, PLAIN, strlen(PLAIN));
    k[1] = f->keys[1];
    k[1].domain = "";
    s_refused(f, k, 2, PLAIN, strlen(PLAIN));
    k[1] = f->keys[1];
    k[1].domain = "example.com; l=0"; /* tag injection */
    s_refused(f, k, 2, PLAIN, strlen(PLAIN));
    k[1] = f->keys[1];
    k[1].selector = "s\r\nBcc: x";
    s_refused(f, k, 2, PLAIN, strlen(PLAIN));

    sbuf_t *sig = sbuf_new(0), *err = sbuf_new(0);
    assert_int_equal(dkim_signer_sign(NULL, f->keys, 2, PLAIN, strlen(PLAIN), sig, err), -1);
    assert_int_equal(dkim_signer_sign(f->signer, NULL, 2, PLAIN, strlen(PLAIN), sig, err), -1);
    /* No keys: nothing to add, not an error. */
    assert_int_equal(dkim_signer_sign(f->signer, f->keys, 0, PLAIN, strlen(PLAIN), sig, err), 0);
    assert_int_equal(sbuf_len(sig), 0);
    sbuf_destroy(&sig);
    sbuf_destroy(&err);
    dkim_signer_destroy(NULL);
}

/* A key passed with the wrong algorithm flag is refused (libopendkim
 * would sign with it anyway and label it wrongly). */
static void test_alg_mismatch(void **state)
{
    fixture_t *f = *state;
    dkim_sign_key_t k = f->keys[1];
    k.ed25519 = 1;
    s_refused(f, &k, 1, PLAIN, strlen(PLAIN));
    k = f->keys[0];
    k.ed25519 = 0;
    s_refused(f, &k, 1, PLAIN, strlen(PLAIN));
}

enum { THREADS = 4, ROUNDS = 25 };

typedef struct {
    fixture_t *f; /* shared fixture */
    char *last;   /* the thread's last signed message */
    size_t len;   /* its length */
    int failures; /* sign calls that failed */
} worker_t;

static void *s_worker(void *arg)
{
    worker_t *w = arg;
    for (int i = 0; i < ROUNDS; i++) {
        sbuf_t *sig = sbuf_new(0), *err = sbuf_new(0);
        const char *src = i % 2 ? MULTIPART : UTF8;
        if (dkim_signer_sign(w->f->signer, w->f->keys, 2, src, strlen(src), sig, err) != 0)
            w->failures++;
        sbuf_append_str(sig, src);
        free(w->last);
        w->last = sbuf_detach(sig, &w->len);
        sbuf_destroy(&sig);
        sbuf_destroy(&err);
    }
    return NULL;
}

static void test_threads(void **state)
{
    fixture_t *f = *state;
    pthread_t t[THREADS];
    worker_t w[THREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < THREADS; i++) {
        w[i].f = f;
        assert_int_equal(pthread_create(&t[i], NULL, s_worker, &w[i]), 0);
    }
    char *msgs[THREADS];
    size_t lens[THREADS];
    int want[THREADS];
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].failures, 0);
        msgs[i] = w[i].last;
        lens[i] = w[i].len;
        want[i] = 2;
    }
    assert_int_equal(s_verify(f, msgs, lens, want, THREADS), 1);
    for (int i = 0; i < THREADS; i++)
        free(msgs[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_verify_all), cmocka_unit_test(test_signed_headers),
        cmocka_unit_test(test_tampered_fails),  cmocka_unit_test(test_wrong_key_fails),
        cmocka_unit_test(test_bad_input),       cmocka_unit_test(test_alg_mismatch),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
