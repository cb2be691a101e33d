/*
 * test_delivery - a message from the API to a real SMTP server: POST
 * /messages commits the outbox row, the mailer actor claims it, builds and
 * DKIM-signs it (Ed25519 and RSA-2048), the worker's delivery engine sends
 * it through the relay (Postfix's smtp-sink, dumping what it receives), and
 * the outcome lands in messages / message_events. Both signatures are then
 * checked by an independent verifier (dkimpy) against the domain's public
 * keys. With the relay down the message is deferred with a back-off, and
 * once the relay is back the sweeper's re-drive delivers it. Attachment
 * content types with parameters arrive in the parts as given.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_util.h"
#include "delivery_util.h"
#include "dkim_verify_py.h"
#include "secretbox.h"
#include "verp.h"

#define TEST_SECRET_KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static api_env_t E;
static harness_proc_t *s_sink;
static int s_sink_port;
static char s_dump[64] = "/tmp/postchi-sink-XXXXXX";

static int s_start_sink(void)
{
    char listen[64], tmpl[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", s_sink_port);
    snprintf(tmpl, sizeof tmpl, "%s/%%M.", s_dump);
    char *argv[] = {"/usr/sbin/smtp-sink", "-u", "nobody", "-d", tmpl, listen, "100", NULL};
    s_sink = harness_spawn("smtp-sink", argv, NULL);
    if (!s_sink)
        return -1;
    usleep(300 * 1000);
    return 0;
}

static int s_setup(void **state)
{
    (void)state;
    if (!mkdtemp(s_dump))
        return -1;
    chmod(s_dump, 0777); /* smtp-sink writes as nobody */
    s_sink_port = harness_free_port();
    if (s_start_sink() != 0)
        return -1;
    static char relay[64];
    snprintf(relay, sizeof relay, "127.0.0.1:%d", s_sink_port);
    /* Workers inherit these (the harness passes the environment on). */
    setenv("POSTCHI_SMTP_RELAY", relay, 1);
    setenv("POSTCHI_SECRET_KEY", TEST_SECRET_KEY, 1);
    return api_env_start(&E, NULL);
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = api_env_stop(&E);
    if (s_sink)
        harness_stop(s_sink, SIGTERM, 5000);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_dump);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dump);
    return bad;
}

static char *s_status(const char *id)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT status FROM messages WHERE id = '%s'", id);
    return api_sql(&E, sql);
}

/* Wait for the row to reach want; returns the last status seen. */
static char *s_wait_status(const char *id, const char *want, int ms)
{
    int64_t deadline = harness_now_ms() + ms;
    char *st = NULL;
    while (harness_now_ms() < deadline) {
        free(st);
        st = s_status(id);
        if (st && strcmp(st, want) == 0)
            break;
        usleep(100 * 1000);
    }
    return st;
}

/* The newest dump file's contents with CRLF line ends, or NULL. */
static sbuf_t *s_received(const char *needle)
{
    DIR *d = opendir(s_dump);
    struct dirent *e;
    sbuf_t *found = NULL;
    while (d && (e = readdir(d)) != NULL && !found) {
        if (e->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", s_dump, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        sbuf_t *b = sbuf_new(4096);
        char line[8192];
        while (fgets(line, sizeof line, f)) {
            size_t n = strcspn(line, "\r\n");
            sbuf_append(b, line, n);
            sbuf_append_str(b, "\r\n");
        }
        fclose(f);
        if (strstr(sbuf_data(b), needle))
            found = b;
        else
            sbuf_destroy(&b);
    }
    if (d)
        closedir(d);
    return found;
}

static char s_domain_id[64];

static void s_verified_domain(void)
{
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/domains", E.key_full, "{\"name\":\"send.example\"}", NULL, &r);
    assert_int_equal(r.status, 201);
    snprintf(s_domain_id, sizeof s_domain_id, "%s",
             json_string_value(json_object_get(r.json, "id")));
    api_resp_free(&r);
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE domains SET status = 'verified' WHERE id = '%s'", s_domain_id);
    free(api_sql(&E, sql));
}

/* The worker's DKIM signing histogram for keys: exactly count
 * observations (more than at_least seconds in all when count > 0). */
static void s_assert_signed(const char *keys, double count, double at_least)
{
    char series[128];
    int port = E.mesh.worker_metrics[0];
    snprintf(series, sizeof series, "postchi_delivery_dkim_sign_seconds_count{keys=\"%s\"}",
             keys);
    assert_true(mesh_metric(port, series) == count);
    snprintf(series, sizeof series, "postchi_delivery_dkim_sign_seconds_sum{keys=\"%s\"}", keys);
    double sum = mesh_metric(port, series);
    if (count > 0)
        assert_true(sum > at_least && sum < 0.5 * count);
    else
        assert_true(sum == 0);
}

static void test_send_signed_through_relay(void **state)
{
    (void)state;
    s_verified_domain();
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/messages", E.key_send,
             "{\"from\":{\"email\":\"hello@send.example\",\"name\":\"Héllo Team\"},"
             "\"to\":[\"ada@dest.example\"],\"subject\":\"Welcome, Ada — day one\","
             "\"reply_to\":[\"help@send.example\",\"desk@send.example\"],"
             "\"html\":\"<p>Hi Ada</p>\",\"text\":\"Hi Ada\",\"headers\":{\"X-Campaign\":\"c1\"}}",
             NULL, &r);
    assert_int_equal(r.status, 202);
    const char *id =
        json_string_value(json_object_get(json_array_get(json_object_get(r.json, "messages"), 0), "id"));
    assert_non_null(id);
    char mid[64];
    snprintf(mid, sizeof mid, "%s", id);
    api_resp_free(&r);

    char *st = s_wait_status(mid, "sent", 15000);
    assert_string_equal(st, "sent");
    free(st);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(type, ',' ORDER BY id) FROM message_events WHERE message_id = '%s'",
             mid);
    char *events = api_sql(&E, sql);
    assert_non_null(strstr(events, "sent"));
    free(events);

    /* What the server received: both signatures verify independently. */
    sbuf_t *msg = s_received("Hi Ada");
    assert_non_null(msg);
    const char *text = sbuf_data(msg);
    assert_non_null(strstr(text, "X-Campaign: c1"));
    /* Every reply_to address, not only the first. */
    const char *rt = strstr(text, "Reply-To:");
    assert_non_null(rt);
    size_t rtl = strcspn(rt, "\n");
    assert_non_null(memmem(rt, rtl, "help@send.example", 17));
    assert_non_null(memmem(rt, rtl, "desk@send.example", 17));
    /* The envelope sender is the VERP return path with a signed token
     * (smtp-sink writes MAIL FROM into its X-Mail-Args header). */
    unsigned char key[SECRETBOX_KEY_LEN];
    char token[VERP_TOKEN_LEN + 1], verp[160];
    assert_int_equal(secretbox_key_parse(TEST_SECRET_KEY, key), 0);
    assert_int_equal(verp_token_make(key, mid, token, sizeof token), 0);
    snprintf(verp, sizeof verp, "<bounces+%s@bounces.send.example>", token);
    const char *mail_args = strstr(text, "X-Mail-Args:");
    assert_non_null(mail_args);
    size_t line = strcspn(mail_args, "\r\n");
    assert_non_null(memmem(mail_args, line, verp, strlen(verp)));
    /* The sink's own headers come first and are not signed: start the
     * message at the first DKIM-Signature. */
    const char *start = strstr(text, "DKIM-Signature:");
    assert_non_null(start);
    dl_dkim_verify_both(&E, "send.example", start);
    sbuf_destroy(&msg);

    sbuf_t *m = sbuf_new(4096);
    assert_int_equal(harness_http_get(E.mesh.worker_metrics[0], "/metrics", m), 200);
    assert_non_null(strstr(sbuf_data(m), "postchi_delivery_messages_total{outcome=\"sent\"} "));
    sbuf_destroy(&m);
    /* The first message of the run: signed once, with both keys, and its
     * signing time observed once, in a sane range (RSA-2048 alone is about
     * 0.25 ms; under sanitizers several times that). */
    s_assert_signed("both", 1, 0);
    s_assert_signed("ed25519", 0, 0);
    /* Its SMTP transaction, timed once: under the reply timeouts, and the
     * sink on loopback answers in well under a second. */
    int port = E.mesh.worker_metrics[0];
    assert_true(mesh_metric(port, "postchi_delivery_smtp_transaction_seconds_count") == 1);
    double txn = mesh_metric(port, "postchi_delivery_smtp_transaction_seconds_sum");
    assert_true(txn > 0 && txn < 1);
}

static void test_relay_down_defers_then_retry_delivers(void **state)
{
    (void)state;
    harness_stop(s_sink, SIGTERM, 5000);
    s_sink = NULL;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/messages", E.key_send,
             "{\"from\":{\"email\":\"hello@send.example\"},\"to\":\"bob@dest.example\","
             "\"subject\":\"Retry me\",\"text\":\"Hello again Bob\"}",
             NULL, &r);
    assert_int_equal(r.status, 202);
    char mid[64];
    snprintf(mid, sizeof mid, "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(r.json, "messages"), 0), "id")));
    api_resp_free(&r);
    char *st = s_wait_status(mid, "deferred", 15000);
    assert_string_equal(st, "deferred");
    free(st);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT (next_attempt_at > now())::text || '|' || attempts FROM messages WHERE id = '%s'",
             mid);
    char *v = api_sql(&E, sql);
    assert_string_equal(v, "true|1"); /* backed off, one attempt so far */
    free(v);

    /* The relay is back; make the retry due now rather than in a minute. */
    assert_int_equal(s_start_sink(), 0);
    snprintf(sql, sizeof sql, "UPDATE messages SET next_attempt_at = now() WHERE id = '%s'", mid);
    free(api_sql(&E, sql));
    st = s_wait_status(mid, "sent", 20000);
    assert_string_equal(st, "sent");
    free(st);
    snprintf(sql, sizeof sql,
             "SELECT string_agg(type, ',' ORDER BY id) FROM message_events WHERE message_id = '%s'",
             mid);
    v = api_sql(&E, sql);
    assert_non_null(strstr(v, "deferred"));
    assert_non_null(strstr(v, "sent"));
    free(v);
    sbuf_t *msg = s_received("Hello again Bob");
    assert_non_null(msg);
    sbuf_destroy(&msg);
}

static void test_ed25519_only_domain_signs_once(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/domains", E.key_full,
             "{\"name\":\"fast.example\",\"signing\":\"rsa-only\"}", NULL, &r);
    assert_int_equal(r.status, 422); /* only "both" or "ed25519" */
    api_resp_free(&r);
    api_call(&E, "POST", "/api/v1/domains", E.key_full,
             "{\"name\":\"fast.example\",\"signing\":\"ed25519\"}", NULL, &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(json_string_value(json_object_get(r.json, "signing")), "ed25519");
    char did[64], sql[256];
    snprintf(did, sizeof did, "%s", json_string_value(json_object_get(r.json, "id")));
    api_resp_free(&r);
    snprintf(sql, sizeof sql, "UPDATE domains SET status = 'verified' WHERE id = '%s'", did);
    free(api_sql(&E, sql));
    api_call(&E, "POST", "/api/v1/messages", E.key_send,
             "{\"from\":{\"email\":\"hi@fast.example\"},\"to\":\"eve@dest.example\","
             "\"subject\":\"Quick\",\"text\":\"Signed once, with Ed25519\"}",
             NULL, &r);
    assert_int_equal(r.status, 202);
    char mid[64];
    snprintf(mid, sizeof mid, "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(r.json, "messages"), 0), "id")));
    api_resp_free(&r);
    char *st = s_wait_status(mid, "sent", 15000);
    assert_string_equal(st, "sent");
    free(st);
    sbuf_t *msg = s_received("Signed once, with Ed25519");
    assert_non_null(msg);
    const char *start = strstr(sbuf_data(msg), "DKIM-Signature:");
    assert_non_null(start);
    assert_null(strstr(start + 1, "DKIM-Signature:")); /* exactly one */
    assert_non_null(strstr(start, "a=ed25519-sha256"));
    s_assert_signed("ed25519", 1, 0); /* its one signing, and no RSA */
    snprintf(sql, sizeof sql,
             "SELECT dkim_ed25519_selector || '|' || dkim_ed25519_public FROM domains WHERE id = '%s'",
             did);
    char *keys = api_sql(&E, sql);
    char *sel = strtok(keys, "|"), *pub = strtok(NULL, "|");
    char name[128], val[256];
    snprintf(name, sizeof name, "%s._domainkey.fast.example", sel);
    snprintf(val, sizeof val, "v=DKIM1; k=ed25519; p=%s", pub);
    const char *names[] = {name}, *values[] = {val}, *msgs[] = {start};
    size_t lens[] = {strlen(start)};
    int want[] = {1};
    sbuf_t *out = sbuf_new(256);
    if (dkim_verify_py(msgs, lens, want, 1, names, values, 1, 0, out) != 1)
        fail_msg("dkimpy did not verify the Ed25519 signature: %s", sbuf_data(out));
    sbuf_destroy(&out);
    free(keys);
    sbuf_destroy(&msg);
}

/* Unfold msg's header lines in place (CRLF before a blank goes). */
static void s_unfold(sbuf_t *msg)
{
    char *s = (char *)sbuf_data(msg);
    size_t n = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '\r' && s[i + 1] == '\n' && (s[i + 2] == ' ' || s[i + 2] == '\t')) {
            i++;
            continue;
        }
        s[n++] = s[i];
    }
    s[n] = '\0';
}

/* Attachment content types with parameters reach the recipient as given:
 * the charset once, the user's name and no second one, an inline image's
 * parameter inside multipart/related; still signed and verifiable. */
static void test_attachment_content_type_parameters_delivered(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/messages", E.key_send,
             "{\"from\":{\"email\":\"hello@send.example\"},\"to\":\"cy@dest.example\","
             "\"subject\":\"Files\",\"text\":\"Parameters ride along\","
             "\"html\":\"<p>Parameters ride along <img src=\\\"cid:logo\\\"></p>\","
             "\"attachments\":[{\"filename\":\"data.csv\",\"content_type\":"
             "\"text/csv; charset=utf-8\",\"content\":\"YSxiCjEsMgo=\"},"
             "{\"filename\":\"a b.pdf\",\"content_type\":\"application/pdf; name=\\\"a b.pdf\\\"\","
             "\"content\":\"JVBERi0xLjQK\"},"
             "{\"filename\":\"logo.png\",\"content_type\":\"image/png;x-dpi=72\","
             "\"content\":\"iVBORw0KGgo=\",\"content_id\":\"logo\"}]}",
             NULL, &r);
    if (r.status != 202)
        fail_msg("%d %s", r.status, sbuf_data(r.raw));
    char mid[64];
    snprintf(mid, sizeof mid, "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(r.json, "messages"), 0), "id")));
    api_resp_free(&r);
    char *st = s_wait_status(mid, "sent", 15000);
    assert_string_equal(st, "sent");
    free(st);
    sbuf_t *msg = s_received("Parameters ride along");
    assert_non_null(msg);
    const char *start = strstr(sbuf_data(msg), "DKIM-Signature:");
    assert_non_null(start);
    dl_dkim_verify_both(&E, "send.example", start);
    s_unfold(msg);
    const char *text = sbuf_data(msg);
    static const char CSV[] = "\r\nContent-Type: text/csv; charset=utf-8; name=\"data.csv\"\r\n";
    const char *csv = strstr(text, CSV);
    if (!csv)
        fail_msg("no csv part as given:\n%s", text);
    assert_null(strstr(csv + sizeof CSV - 1, "text/csv")); /* one csv part */
    if (!strstr(text, "\r\nContent-Type: application/pdf; name=\"a b.pdf\"\r\n"
                      "Content-Transfer-Encoding: base64\r\n"
                      "Content-Disposition: attachment; filename=\"a b.pdf\"\r\n"))
        fail_msg("no pdf part with the user's name alone:\n%s", text);
    const char *rel = strstr(text, "\r\nContent-Type: multipart/related;");
    const char *png = strstr(text, "\r\nContent-Type: image/png; x-dpi=72; name=\"logo.png\"\r\n");
    assert_non_null(rel);
    assert_non_null(png);
    assert_true(png > rel);
    assert_non_null(strstr(png, "Content-ID: <logo>"));
    sbuf_destroy(&msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_signed_through_relay),
        cmocka_unit_test(test_relay_down_defers_then_retry_delivers),
        cmocka_unit_test(test_ed25519_only_domain_signs_once),
        cmocka_unit_test(test_attachment_content_type_parameters_delivered),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
