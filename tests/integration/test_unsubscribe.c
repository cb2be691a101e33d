/*
 * test_unsubscribe - List-Unsubscribe end to end: a bulk send to a list is
 * delivered through a real smtp-sink, the delivered message carries
 * List-Unsubscribe with both an https one-click URL under public_url and a
 * mailto address at the domain's return path, plus List-Unsubscribe-Post,
 * and both DKIM signatures still verify (dkimpy) with those headers signed.
 * The URL then works over real HTTP: GET shows a page and changes nothing,
 * a forged token is a 404 that writes nothing, POST "List-Unsubscribe=
 * One-Click" unsubscribes the contact (events, message_events, audit rows),
 * a second POST is a harmless 200, and the next bulk send skips the contact
 * as suppressed (contact_unsubscribed). A single (non-bulk) send has no
 * List-Unsubscribe. The mailto address works through the worker's inbound
 * SMTP listener, in any letter case; a forged one is refused at RCPT.
 *
 * public_url is https://mail.test.example (a TLS proxy in production); the
 * test sends the URL's path to the API node's plain HTTP port.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audience_util.h"
#include "delivery_util.h"

#define PUBLIC_URL "https://mail.test.example"
#define FROM "{\"email\":\"news@send.example\"}"

static api_env_t E;
static dsink_t S;
static int s_inbound_port;

static int s_setup(void **state)
{
    (void)state;
    static char port[16];
    s_inbound_port = harness_free_port();
    snprintf(port, sizeof port, "%d", s_inbound_port);
    setenv("POSTCHI_INBOUND_PORT", port, 1);
    setenv("POSTCHI_PUBLIC_URL", PUBLIC_URL "/", 1); /* the trailing slash is dropped */
    return dl_env_start(&E, &S, 1);
}

static int s_teardown(void **state)
{
    (void)state;
    return dl_env_stop(&E, &S);
}

/* ---- helpers ---- */

typedef struct {
    const char *a, *b; /* both must occur */
    sbuf_t *found;     /* the dump, CRLF line ends */
} find_t;

static void s_find(const char *text, void *arg)
{
    find_t *f = arg;
    if (f->found || !strstr(text, f->a) || !strstr(text, f->b))
        return;
    f->found = sbuf_new(4096);
    for (const char *p = text; *p; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n')
            sbuf_append_str(f->found, "\r\n");
        else
            sbuf_append(f->found, p, 1);
    }
}

/* The delivered message holding both a and b (caller frees), or NULL. */
static sbuf_t *s_delivered(const char *a, const char *b)
{
    find_t f = {a, b, NULL};
    dsink_each(&S, s_find, &f);
    return f.found;
}

/* A list of org E holding contacts for the given addresses; its id (caller
 * frees). */
static char *s_list(const char *name, const char *const *emails)
{
    char *list = aud_test_sql(&E, "INSERT INTO lists (organization_id, name) VALUES ('%s', '%s') "
                                  "RETURNING id", E.org_id, name);
    assert_non_null(list);
    for (int i = 0; emails[i]; i++) {
        char *c = aud_test_contact(&E, E.org_id, emails[i], NULL, NULL, NULL);
        assert_non_null(c);
        free(aud_test_sql(&E, "INSERT INTO list_members (organization_id, list_id, contact_id) "
                              "VALUES ('%s', '%s', '%s') RETURNING 1", E.org_id, list, c));
        free(c);
    }
    return list;
}

/* Send subject to the list; returns the batch id (caller frees); *suppressed
 * gets the response's suppressed count. */
static char *s_bulk(const char *list, const char *subject, long *suppressed)
{
    api_resp_t r = {0};
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{\"from\":" FROM ",\"to_list\":\"%s\",\"subject\":\"%s\",\"html\":\"<p>n</p>\"}",
              list, subject);
    assert_int_equal(r.status, 202);
    *suppressed = (long)json_integer_value(json_object_get(r.json, "suppressed"));
    char *batch = strdup(aud_test_str(&r, "batch_id"));
    api_resp_free(&r);
    return batch;
}

/* The row id of rcpt in batch (caller frees). */
static char *s_row(const char *batch, const char *rcpt)
{
    char *id = dl_sql(&E, "SELECT id FROM messages WHERE batch_id = '%s' AND recipient = '%s'",
                      batch, rcpt);
    assert_non_null(id);
    return id;
}

static void s_wait_sent(const char *id)
{
    char *st = dl_wait_status(&E, id, "sent", 20000);
    assert_non_null(st);
    assert_string_equal(st, "sent");
    free(st);
}

/* The text between open and the next '>' after it, into out. */
static void s_bracketed(const char *text, const char *open, char *out, size_t size)
{
    const char *p = strstr(text, open);
    assert_non_null(p);
    p += 1; /* past '<' */
    const char *e = strchr(p, '>');
    assert_non_null(e);
    assert_true((size_t)(e - p) < size);
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = 0;
}

/* Events of type (and via, when not NULL) on message id. */
static long s_events(const char *id, const char *type, const char *via)
{
    return aud_test_sql_long(&E, "SELECT count(*) FROM message_events WHERE message_id = '%s' AND "
                                 "type = '%s' AND ('%s' = '' OR detail->>'via' = '%s')",
                             id, type, via ? via : "", via ? via : "");
}

/* Both DKIM signatures of the delivered message verify. */
static void s_dkim_ok(const char *text)
{
    const char *start = strstr(text, "DKIM-Signature:");
    assert_non_null(start);
    dl_dkim_verify_both(&E, "send.example", start);
    /* The unsubscribe headers are in the signed set (h= of the first
     * signature field, which ends at a line not starting with a blank). */
    size_t n = 0;
    while (start[n] && !(start[n] == '\n' && start[n + 1] != ' ' && start[n + 1] != '\t'))
        n++;
    char *sig = strndup(start, n);
    for (char *p = sig; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    assert_non_null(strstr(sig, "list-unsubscribe:"));
    assert_non_null(strstr(sig, "list-unsubscribe-post"));
    free(sig);
}

/* ---- tests ---- */

static void test_one_click(void **state)
{
    (void)state;
    const char *people[] = {"u1@rcpt.example", "u2@rcpt.example", NULL};
    char *list = s_list("one-click", people);
    long suppressed = -1;
    char *batch = s_bulk(list, "Newsletter one", &suppressed);
    assert_int_equal(suppressed, 0);
    char *id1 = s_row(batch, "u1@rcpt.example"), *id2 = s_row(batch, "u2@rcpt.example");
    s_wait_sent(id1);
    s_wait_sent(id2);

    sbuf_t *msg = s_delivered("Newsletter one", "u1@rcpt.example");
    assert_non_null(msg);
    const char *text = sbuf_data(msg);
    assert_non_null(strstr(text, "\r\nList-Unsubscribe: "));
    assert_non_null(strstr(text, "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    char url[512], mailto[512];
    s_bracketed(text, "<" PUBLIC_URL "/api/v1/u/", url, sizeof url);
    s_bracketed(text, "<mailto:unsubscribe+", mailto, sizeof mailto);
    char *rp = dl_sql(&E, "SELECT '@' || return_path FROM domains WHERE name = 'send.example' "
                          "AND organization_id = '%s'", E.org_id);
    assert_non_null(rp); /* the address is at the domain's return path */
    assert_string_equal(mailto + strlen(mailto) - strlen(rp), rp);
    free(rp);
    const char *path = url + strlen(PUBLIC_URL);      /* "/api/v1/u/<token>" */
    const char *token = path + strlen("/api/v1/u/");
    assert_int_equal(strlen(token), 42);
    assert_non_null(strstr(mailto, token));
    s_dkim_ok(text);
    /* Another recipient, another token. */
    sbuf_t *msg2 = s_delivered("Newsletter one", "u2@rcpt.example");
    assert_non_null(msg2);
    assert_null(strstr(sbuf_data(msg2), token));
    sbuf_destroy(&msg2);

    const char *c1 = "(SELECT id FROM contacts WHERE email = 'u1@rcpt.example')";
    char sql[512];
    /* GET: a page naming the address, a form posting back; nothing changes. */
    api_resp_t r = {0};
    assert_int_equal(api_call(&E, "GET", path, NULL, NULL, NULL, &r), 200);
    char ct[128];
    assert_non_null(api_resp_header(&r, "Content-Type", ct, sizeof ct));
    assert_non_null(strstr(ct, "text/html"));
    assert_non_null(strstr(sbuf_data(r.raw), "u1@rcpt.example"));
    assert_non_null(strstr(sbuf_data(r.raw), "<form method=\"post\""));
    api_resp_free(&r);
    char *st = dl_sql(&E, "SELECT status FROM contacts WHERE email = '%s'", "u1@rcpt.example");
    assert_string_equal(st, "subscribed");
    free(st);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM message_events WHERE type = 'unsubscribed'");
    assert_int_equal(aud_test_sql_long(&E, "%s", sql), 0);

    /* Forged tokens: one character changed, the other row's uuid with this
     * MAC, garbage. 404 and nothing written. */
    char forged[512];
    snprintf(forged, sizeof forged, "%s", path);
    char *last = forged + strlen(forged) - 5;
    *last = *last == 'a' ? 'b' : 'a';
    const char *bad[] = {forged, "/api/v1/u/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                         "/api/v1/u/x'%20OR%201=1", NULL};
    for (int i = 0; bad[i]; i++) {
        assert_int_equal(api_call(&E, "GET", bad[i], NULL, NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&E, "POST", bad[i], NULL, "List-Unsubscribe=One-Click",
                                  "Content-Type: application/x-www-form-urlencoded\r\n", &r),
                         404);
        assert_string_equal(aud_test_str(&r, "title"), "Not Found");
        api_resp_free(&r);
    }
    assert_int_equal(aud_test_sql_long(&E, "%s", sql), 0);
    assert_int_equal(aud_test_sql_long(&E, "SELECT count(*) FROM audit_log WHERE action = "
                                           "'contact.unsubscribed'"), 0);
    st = dl_sql(&E, "SELECT status FROM contacts WHERE email = '%s'", "u1@rcpt.example");
    assert_string_equal(st, "subscribed");
    free(st);

    /* RFC 8058 one-click. */
    assert_int_equal(api_call(&E, "POST", path, NULL, "List-Unsubscribe=One-Click",
                              "Content-Type: application/x-www-form-urlencoded\r\n", &r),
                     200);
    assert_non_null(strstr(sbuf_data(r.raw), "u1@rcpt.example"));
    api_resp_free(&r);
    st = dl_sql(&E, "SELECT status FROM contacts WHERE email = '%s'", "u1@rcpt.example");
    assert_string_equal(st, "unsubscribed");
    free(st);
    st = dl_sql(&E, "SELECT status FROM contacts WHERE email = '%s'", "u2@rcpt.example");
    assert_string_equal(st, "subscribed");
    free(st);
    assert_int_equal(s_events(id1, "unsubscribed", "https"), 1);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM events WHERE name = 'unsubscribed' AND "
                              "contact_id = %s AND organization_id = '%s'", c1, E.org_id);
    assert_int_equal(aud_test_sql_long(&E, "%s", sql), 1);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM audit_log WHERE action = "
                              "'contact.unsubscribed' AND actor_type = 'system' AND "
                              "resource_id = %s::text AND organization_id = '%s'", c1, E.org_id);
    assert_int_equal(aud_test_sql_long(&E, "%s", sql), 1);

    /* Again (a provider retrying, or a second click): 200, nothing more. */
    assert_int_equal(api_call(&E, "POST", path, NULL, "--x\r\n\r\nList-Unsubscribe=One-Click",
                              "Content-Type: multipart/form-data; boundary=x\r\n", &r),
                     200);
    api_resp_free(&r);
    assert_int_equal(s_events(id1, "unsubscribed", NULL), 1);
    assert_int_equal(aud_test_sql_long(&E, "%s", sql), 1);
    /* The page now says so and offers no form. */
    assert_int_equal(api_call(&E, "GET", path, NULL, NULL, NULL, &r), 200);
    assert_non_null(strstr(sbuf_data(r.raw), "already unsubscribed"));
    assert_null(strstr(sbuf_data(r.raw), "<form"));
    api_resp_free(&r);

    /* The next bulk send skips the contact. */
    char *batch2 = s_bulk(list, "Newsletter two", &suppressed);
    assert_int_equal(suppressed, 1);
    char *row = s_row(batch2, "u1@rcpt.example");
    st = dl_status(&E, row);
    assert_string_equal(st, "suppressed");
    free(st);
    assert_int_equal(aud_test_sql_long(&E, "SELECT count(*) FROM message_events WHERE "
                                           "message_id = '%s' AND detail->>'reason' = "
                                           "'contact_unsubscribed'", row), 1);
    char *row2 = s_row(batch2, "u2@rcpt.example");
    s_wait_sent(row2);
    free(row);
    free(row2);
    free(batch2);
    sbuf_destroy(&msg);
    free(id1);
    free(id2);
    free(batch);
    free(list);
}

static void test_single_send_has_none(void **state)
{
    (void)state;
    char id[64];
    assert_int_equal(dl_send(&E, id, "{\"from\":" FROM ",\"to\":[\"single@rcpt.example\"],"
                                     "\"subject\":\"Receipt 42\",\"text\":\"thanks\"}"),
                     202);
    s_wait_sent(id);
    sbuf_t *msg = s_delivered("Receipt 42", "single@rcpt.example");
    assert_non_null(msg);
    assert_null(strstr(sbuf_data(msg), "List-Unsubscribe"));
    sbuf_destroy(&msg);
}

/* Deliver a small message to rcpt through the inbound listener; the
 * final SMTP code (250 accepted), or -1. */
static int s_smtp(const char *rcpt)
{
    char path[] = "/tmp/postchi-unsub-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char msg[] = "Subject: unsubscribe\r\n\r\nplease\r\n";
    assert_int_equal(write(fd, msg, sizeof msg - 1), (ssize_t)(sizeof msg - 1));
    close(fd);
    int code = dl_smtp_deliver(s_inbound_port, "someone@rcpt.example", rcpt, path);
    unlink(path);
    return code;
}

static void test_mailto(void **state)
{
    (void)state;
    const char *people[] = {"m1@rcpt.example", NULL};
    char *list = s_list("mailto", people);
    long suppressed = -1;
    char *batch = s_bulk(list, "Mailto news", &suppressed);
    char *id = s_row(batch, "m1@rcpt.example");
    s_wait_sent(id);
    sbuf_t *msg = s_delivered("Mailto news", "m1@rcpt.example");
    assert_non_null(msg);
    char mailto[512];
    s_bracketed(sbuf_data(msg), "<mailto:unsubscribe+", mailto, sizeof mailto);
    const char *addr = mailto + strlen("mailto:");

    /* Forged: one token character changed; refused at RCPT, nothing written. */
    char forged[512];
    snprintf(forged, sizeof forged, "%s", addr);
    char *c = forged + strlen("unsubscribe+") + 3;
    *c = *c == 'a' ? 'b' : 'a';
    assert_int_equal(s_smtp(forged), 550);
    char *st = dl_sql(&E, "SELECT status FROM contacts WHERE email = '%s'", "m1@rcpt.example");
    assert_string_equal(st, "subscribed");
    free(st);

    /* An MTA that upper-cased the address: still ours. */
    char upper[512];
    snprintf(upper, sizeof upper, "%s", addr);
    for (char *p = upper; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    assert_int_equal(s_smtp(upper), 250);
    st = dl_sql(&E, "SELECT status FROM contacts WHERE email = '%s'", "m1@rcpt.example");
    assert_string_equal(st, "unsubscribed");
    free(st);
    assert_int_equal(s_events(id, "unsubscribed", "mailto"), 1);
    /* Again: accepted, nothing more written. */
    assert_int_equal(s_smtp(addr), 250);
    assert_int_equal(s_events(id, "unsubscribed", NULL), 1);
    /* The events row reaches the tenant actor (the sweeper's re-drive). */
    char *ev = NULL;
    for (int i = 0; i < 200; i++) {
        free(ev);
        ev = dl_sql(&E, "SELECT count(*) FROM events WHERE name = 'unsubscribed' AND "
                        "dispatched_at IS NOT NULL AND payload->>'message_id' = '%s'", id);
        if (ev && strcmp(ev, "1") == 0)
            break;
        usleep(100 * 1000);
    }
    assert_string_equal(ev, "1");
    free(ev);
    sbuf_destroy(&msg);
    free(id);
    free(batch);
    free(list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_click),
        cmocka_unit_test(test_single_send_has_none),
        cmocka_unit_test(test_mailto),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
