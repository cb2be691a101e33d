/*
 * test_delivery_tls - the smtp_tls and relay AUTH settings reach the
 * worker's delivery engine: a message through the API, the relay a fake
 * ESMTP server (smtp_fake_util.h: nothing installable here does STARTTLS
 * with our own certificate and checked AUTH; smtp-sink has neither).
 *
 *   smtp_tls=verified, relay with a self-signed certificate: deferred with
 *   a verification reason; the relay never saw AUTH nor a message.
 *   The same with smtp_tls_ca_file naming that certificate: sent, after
 *   STARTTLS and AUTH PLAIN with smtp_relay_user / smtp_relay_password.
 *   A relay that requires AUTH but offers no STARTTLS, smtp_tls left
 *   opportunistic: the password is not sent in the clear, the message is
 *   deferred saying so.
 *   smtp_tls=verified with direct MX delivery (dnsmasq serves the MX
 *   records): the certificate is checked against the MX host name, so a
 *   certificate for mx.tls.test delivers mail for tls.test and defers mail
 *   for wrong.test, whose MX host (same address) it does not name.
 *   Start-up refusals: credentials with no relay, an unreadable CA file:
 *   the worker exits non-zero naming the setting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "delivery_util.h"
#include "dns_util.h"
#include "smtp_fake_util.h"

#define TEST_SECRET_KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static api_env_t E;
static char s_tmp[] = "/tmp/delivery-tls.XXXXXX";
static char s_cert[64], s_key[64];
static char s_mxcert[64], s_mxkey[64]; /* names mx.tls.test */

/* Restart worker 0 with the current environment (settings via setenv). */
static void s_restart_worker(void)
{
    assert_int_equal(harness_stop(E.mesh.workers[0], SIGTERM, 10000), 0);
    E.mesh.workers[0] = NULL;
    assert_int_equal(mesh_start_worker(&E.mesh, 0), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, 1, 10000), 0);
}

static void s_relay(const smtp_fake_t *f)
{
    char relay[64];
    snprintf(relay, sizeof relay, "127.0.0.1:%d", f->port);
    setenv("POSTCHI_SMTP_RELAY", relay, 1);
}

static char *s_send_to(const char *rcpt, const char *subject, const char *want, char *id)
{
    assert_int_equal(dl_send(&E, id,
                             "{\"from\":{\"email\":\"news@send.example\"},\"to\":\"%s\","
                             "\"subject\":\"%s\",\"text\":\"tls body\"}",
                             rcpt, subject),
                     202);
    return dl_wait_status(&E, id, want, 20000);
}

static char *s_send_wait(const char *subject, const char *want, char *id)
{
    return s_send_to("x@dest.test", subject, want, id);
}

/* Send to rcpt and expect it deferred with needle in its last response; id
 * gets the row's id. */
static void s_expect_deferred(const char *rcpt, const char *subject, const char *needle, char *id)
{
    char *st = s_send_to(rcpt, subject, "deferred", id);
    assert_string_equal(st, "deferred");
    free(st);
    char *why = dl_sql(&E, "SELECT last_response FROM messages WHERE id = '%s'", id);
    assert_non_null(why);
    if (!strstr(why, needle))
        fail_msg("last response of %s: \"%s\", expected it to name \"%s\"", id, why, needle);
    free(why);
}

static void test_verified_and_auth(void **state)
{
    (void)state;
    smtp_fake_t f = {.offer_tls = 1, .cert = s_cert, .key = s_key, .user = "relay-u",
                     .pass = "relay-pw"};
    assert_int_equal(smtp_fake_start(&f), 0);
    s_relay(&f);
    setenv("POSTCHI_SMTP_TLS", "verified", 1);
    setenv("POSTCHI_SMTP_RELAY_USER", "relay-u", 1);
    setenv("POSTCHI_SMTP_RELAY_PASSWORD", "relay-pw", 1);
    unsetenv("POSTCHI_SMTP_TLS_CA_FILE");
    s_restart_worker();

    /* self-signed, not trusted: deferred before any credentials go out */
    char id[64];
    s_expect_deferred("x@dest.test", "Subject-untrusted", "verif", id);
    assert_int_equal(smtp_fake_get(&f, &f.auth_tries), 0);
    assert_int_equal(smtp_fake_get(&f, &f.messages), 0);

    /* with the certificate as trust anchor: STARTTLS, AUTH, sent */
    setenv("POSTCHI_SMTP_TLS_CA_FILE", s_cert, 1);
    s_restart_worker();
    char *st = s_send_wait("Subject-trusted", "sent", id);
    assert_string_equal(st, "sent");
    free(st);
    assert_true(smtp_fake_get(&f, &f.tls_ok) >= 1);
    /* the engine may open several connections at once; each authenticated */
    assert_true(smtp_fake_get(&f, &f.auth_ok) >= 1);
    assert_int_equal(smtp_fake_get(&f, &f.auth_tries), smtp_fake_get(&f, &f.auth_ok));
    assert_int_equal(smtp_fake_get(&f, &f.messages), 1);
    pthread_mutex_lock(&f.lock);
    assert_non_null(strstr(sbuf_data(f.data), "Subject-trusted"));
    pthread_mutex_unlock(&f.lock);

    /* the worker's connection must close before the fake can stop */
    unsetenv("POSTCHI_SMTP_TLS_CA_FILE");
    setenv("POSTCHI_SMTP_TLS", "opportunistic", 1);
    s_restart_worker();
    smtp_fake_stop(&f);
}

static void test_no_auth_in_clear(void **state)
{
    (void)state;
    smtp_fake_t f = {.offer_tls = 0, .user = "relay-u", .pass = "relay-pw"};
    assert_int_equal(smtp_fake_start(&f), 0);
    s_relay(&f);
    setenv("POSTCHI_SMTP_TLS", "opportunistic", 1);
    setenv("POSTCHI_SMTP_RELAY_USER", "relay-u", 1);
    setenv("POSTCHI_SMTP_RELAY_PASSWORD", "relay-pw", 1);
    s_restart_worker();
    char id[64];
    s_expect_deferred("x@dest.test", "Subject-plain", "without TLS", id);
    assert_int_equal(smtp_fake_get(&f, &f.auth_tries), 0);
    assert_int_equal(smtp_fake_get(&f, &f.messages), 0);
    unsetenv("POSTCHI_SMTP_RELAY_USER");
    unsetenv("POSTCHI_SMTP_RELAY_PASSWORD");
    s_restart_worker();
    smtp_fake_stop(&f);
}

/* A worker started with env (on top of the test's) exits non-zero within
 * 10 s and its log names needle. */
static void s_refused(char *const *env, const char *needle)
{
    /* the test database's servers first: refusals come after connecting */
    char *all[32];
    size_t k = 0;
    for (char *const *s = harness_server_env(E.db); *s && k < 24; s++)
        all[k++] = *s;
    for (size_t i = 0; env[i] && k < 31; i++)
        all[k++] = env[i];
    all[k] = NULL;
    harness_proc_t *p = harness_spawn_postchi("worker-refused", "worker", all);
    assert_non_null(p);
    int64_t deadline = harness_now_ms() + 10000;
    while (harness_alive(p) && harness_now_ms() < deadline)
        usleep(50 * 1000);
    assert_false(harness_alive(p));
    FILE *lf = fopen(harness_log_path(p), "r");
    assert_non_null(lf);
    sbuf_t *log = sbuf_new(0);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, lf)) > 0)
        sbuf_append(log, buf, n);
    fclose(lf);
    if (!strstr(sbuf_data(log), needle))
        fprintf(stderr, "log lacks '%s':\n%s\n", needle, sbuf_data(log));
    assert_non_null(strstr(sbuf_data(log), needle));
    sbuf_destroy(&log);
    assert_true(harness_stop(p, SIGTERM, 1000) != 0);
}

static void test_verified_mx(void **state)
{
    (void)state;
    char *records[] = {"--mx-host=tls.test,mx.tls.test,10", "--host-record=mx.tls.test,127.0.0.1",
                       "--mx-host=wrong.test,mx.wrong.test,10",
                       "--host-record=mx.wrong.test,127.0.0.1", NULL};
    char *local[] = {"tls.test", "wrong.test", NULL};
    int dns_port = 0;
    harness_proc_t *dns = dns_util_start("dnsmasq-tls", records, local, &dns_port);
    assert_non_null(dns);
    smtp_fake_t f = {.offer_tls = 1, .cert = s_mxcert, .key = s_mxkey};
    assert_int_equal(smtp_fake_start(&f), 0);
    char resolver[64], port[16];
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", dns_port);
    snprintf(port, sizeof port, "%d", f.port);
    setenv("POSTCHI_SMTP_RELAY", "", 1);
    setenv("POSTCHI_SMTP_PORT", port, 1);
    setenv("POSTCHI_DNS_RESOLVER", resolver, 1);
    setenv("POSTCHI_SMTP_TLS", "verified", 1);
    setenv("POSTCHI_SMTP_TLS_CA_FILE", s_mxcert, 1);
    unsetenv("POSTCHI_SMTP_RELAY_USER");
    unsetenv("POSTCHI_SMTP_RELAY_PASSWORD");
    s_restart_worker();

    char id[64];
    char *st = s_send_to("a@tls.test", "Subject-mx-verified", "sent", id);
    assert_string_equal(st, "sent");
    free(st);
    assert_int_equal(smtp_fake_get(&f, &f.messages), 1);
    /* Same address, but the MX name is not on the certificate. */
    s_expect_deferred("b@wrong.test", "Subject-mx-wrong-name", "verif", id);
    assert_int_equal(smtp_fake_get(&f, &f.messages), 1);

    setenv("POSTCHI_SMTP_RELAY", "127.0.0.1:9", 1);
    setenv("POSTCHI_SMTP_TLS", "opportunistic", 1);
    unsetenv("POSTCHI_SMTP_TLS_CA_FILE");
    unsetenv("POSTCHI_DNS_RESOLVER");
    unsetenv("POSTCHI_SMTP_PORT");
    s_restart_worker();
    smtp_fake_stop(&f);
    harness_stop(dns, SIGTERM, 5000);
}

static void test_startup_refusals(void **state)
{
    (void)state;
    char *no_relay_auth[] = {"POSTCHI_SMTP_RELAY=", "POSTCHI_SMTP_RELAY_USER=u",
                             "POSTCHI_SMTP_RELAY_PASSWORD=p", "POSTCHI_METRICS_PORT=0", NULL};
    s_refused(no_relay_auth, "AUTH is only ever sent to smtp_relay");
    char *user_only[] = {"POSTCHI_SMTP_RELAY=127.0.0.1:9", "POSTCHI_SMTP_RELAY_USER=u",
                         "POSTCHI_SMTP_RELAY_PASSWORD=", "POSTCHI_METRICS_PORT=0", NULL};
    s_refused(user_only, "set both or neither");
    char *bad_ca[] = {"POSTCHI_SMTP_RELAY=127.0.0.1:9", "POSTCHI_SMTP_TLS=verified",
                      "POSTCHI_SMTP_TLS_CA_FILE=/nonexistent/ca.pem", "POSTCHI_METRICS_PORT=0",
                      NULL};
    s_refused(bad_ca, "setting 'smtp_tls_ca_file'");
}

static int s_setup(void **state)
{
    (void)state;
    if (!mkdtemp(s_tmp))
        return -1;
    snprintf(s_cert, sizeof s_cert, "%s/cert.pem", s_tmp);
    snprintf(s_key, sizeof s_key, "%s/key.pem", s_tmp);
    /* The relay is reached by address, so the certificate names 127.0.0.1. */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-subj /CN=relay.test -addext subjectAltName=IP:127.0.0.1 -days 2 "
             "-keyout %s -out %s 2>/dev/null",
             s_key, s_cert);
    if (system(cmd) != 0)
        return -1;
    /* Direct MX delivery checks the MX host's name. */
    snprintf(s_mxcert, sizeof s_mxcert, "%s/mx-cert.pem", s_tmp);
    snprintf(s_mxkey, sizeof s_mxkey, "%s/mx-key.pem", s_tmp);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-subj /CN=mx.tls.test -addext subjectAltName=DNS:mx.tls.test -days 2 "
             "-keyout %s -out %s 2>/dev/null",
             s_mxkey, s_mxcert);
    if (system(cmd) != 0)
        return -1;
    setenv("POSTCHI_SMTP_RELAY", "127.0.0.1:9", 1); /* replaced per test */
    return dl_env_start_api(&E);
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = api_env_stop(&E);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_tmp);
    return bad;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verified_and_auth),
        cmocka_unit_test(test_no_auth_in_clear),
        cmocka_unit_test(test_verified_mx),
        cmocka_unit_test(test_startup_refusals),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
