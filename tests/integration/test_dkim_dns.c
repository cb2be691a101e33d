/*
 * test_dkim_dns - messages signed by dkim_signer_sign with freshly
 * generated Ed25519 and RSA-2048 keys verify under dkimpy looking the keys
 * up in real DNS: dnsmasq on loopback serving the TXT records dkim_keys
 * builds (the RSA one longer than 255 bytes, so split in character-strings
 * as a zone would carry it), queried through dnspython. A message whose
 * selector is not published, one signed with another key than the
 * published one, and a tampered one fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dkim_keys.h"
#include "dkim_sign.h"
#include "dkim_verify_py.h"
#include "dns_util.h"
#include "harness.h"
#include "sbuf.h"

#define DOMAIN "dkim.test"

static int s_port;                                 /* dnsmasq's */
static harness_proc_t *s_dnsmasq;                  /* the server */
static dkim_signer_t *s_signer;                    /* under test */
static sbuf_t *s_ed_pem, *s_rsa_pem, *s_other_pem; /* private keys; other is unpublished */

/* A fresh key: its PEM into pem, its TXT record value returned (caller
 * frees). */
static char *s_key(dkim_alg_t alg, sbuf_t *pem)
{
    dkim_key_t *k = dkim_key_generate(alg);
    sbuf_t *pub = sbuf_new(0), *txt = sbuf_new(0);
    if (!k || dkim_key_private_pem(k, pem) || dkim_key_public_b64(k, pub) ||
        dkim_txt_record(alg, sbuf_data(pub), txt, NULL))
        return NULL;
    dkim_key_destroy(&k);
    sbuf_destroy(&pub);
    char *out = sbuf_detach(txt, NULL);
    sbuf_destroy(&txt);
    return out;
}

static int s_setup(void **state)
{
    (void)state;
    s_ed_pem = sbuf_new(0);
    s_rsa_pem = sbuf_new(0);
    s_other_pem = sbuf_new(0);
    char *ed = s_key(DKIM_ED25519, s_ed_pem), *rsa = s_key(DKIM_RSA, s_rsa_pem);
    char *other = s_key(DKIM_ED25519, s_other_pem);
    if (!ed || !rsa || !other)
        return -1;
    if (strlen(rsa) <= 255) /* the split is part of what is tested */
        return -1;
    char *ed_arg = dns_util_txt_arg("ed._domainkey." DOMAIN, ed);
    char *rsa_arg = dns_util_txt_arg("rsa._domainkey." DOMAIN, rsa);
    char *opts[] = {ed_arg, rsa_arg, NULL};
    char *local[] = {DOMAIN, NULL};
    s_dnsmasq = dns_util_start("dnsmasq", opts, local, &s_port);
    free(ed_arg);
    free(rsa_arg);
    free(ed);
    free(rsa);
    free(other);
    sbuf_t *err = sbuf_new(0);
    s_signer = dkim_signer_new(err);
    sbuf_destroy(&err);
    return s_dnsmasq && s_signer ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    dkim_signer_destroy(&s_signer);
    sbuf_destroy(&s_ed_pem);
    sbuf_destroy(&s_rsa_pem);
    sbuf_destroy(&s_other_pem);
    return harness_stop(s_dnsmasq, 15, 2000) == 0 ? 0 : -1;
}

static const char MSG[] = "From: Team <team@" DOMAIN ">\r\n"
                          "To: user@example.org\r\n"
                          "Subject: =?UTF-8?Q?Caf=C3=A9?= news\r\n"
                          "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                          "Message-ID: <dns.1@" DOMAIN ">\r\n"
                          "MIME-Version: 1.0\r\n"
                          "List-Unsubscribe: <https://" DOMAIN "/u/1>\r\n"
                          "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                          "Content-Type: multipart/alternative; boundary=\"x\"\r\n"
                          "\r\n"
                          "--x\r\n"
                          "Content-Type: text/plain; charset=utf-8\r\n"
                          "\r\n"
                          "Caf\xc3\xa9   au lait\r\n"
                          "--x--\r\n"
                          "\r\n";

/* msg signed with keys, as one buffer; caller frees. */
static char *s_sign(const dkim_sign_key_t *keys, size_t n, size_t *len)
{
    sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
    if (dkim_signer_sign(s_signer, keys, n, MSG, sizeof MSG - 1, out, err) != 0)
        fail_msg("dkim_signer_sign: %s", sbuf_data(err));
    sbuf_append(out, MSG, sizeof MSG - 1);
    char *m = sbuf_detach(out, len);
    sbuf_destroy(&out);
    sbuf_destroy(&err);
    return m;
}

static int s_verify(char *m, size_t len, int want)
{
    sbuf_t *out = sbuf_new(0);
    const char *msgs[] = {m};
    int rc = dkim_verify_py(msgs, &len, &want, 1, NULL, NULL, 0, s_port, out);
    print_message("%s", sbuf_data(out));
    sbuf_destroy(&out);
    assert_int_not_equal(rc, -1);
    return rc;
}

static void test_both_verify_through_dns(void **state)
{
    (void)state;
    dkim_sign_key_t keys[] = {{DOMAIN, "ed", sbuf_data(s_ed_pem), 1},
                              {DOMAIN, "rsa", sbuf_data(s_rsa_pem), 0}};
    size_t len;
    char *m = s_sign(keys, 2, &len);
    assert_int_equal(s_verify(m, len, 2), 1);
    /* Tampered: the body changes, both fail. */
    char *at = strstr(m, "au lait");
    assert_non_null(at);
    at[0] = 'A';
    assert_int_equal(s_verify(m, len, 2), 0);
    free(m);
    /* Ed25519 only. */
    m = s_sign(keys, 1, &len);
    assert_int_equal(s_verify(m, len, 1), 1);
    free(m);
}

static void test_unpublished_or_wrong_key_fails(void **state)
{
    (void)state;
    dkim_sign_key_t missing = {DOMAIN, "nosuch", sbuf_data(s_ed_pem), 1};
    size_t len;
    char *m = s_sign(&missing, 1, &len);
    assert_int_equal(s_verify(m, len, 1), 0); /* NXDOMAIN for the selector */
    free(m);
    dkim_sign_key_t wrong = {DOMAIN, "ed", sbuf_data(s_other_pem), 1};
    m = s_sign(&wrong, 1, &len);
    assert_int_equal(s_verify(m, len, 1), 0); /* published key is another */
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_both_verify_through_dns),
        cmocka_unit_test(test_unpublished_or_wrong_key_fails),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
