/*
 * test_api_webhooks - /api/v1/webhooks against a real API node and
 * PostgreSQL: create (secret shown once, never again), every URL and event
 * rule, update, delete, SQL metacharacters in the URL, tenancy (another
 * organization gets 404), scopes, pagination, and no row left behind by a
 * refused request; URLs pointing at loopback, private, link-local and
 * other non-public addresses (every IPv4 spelling, IPv4 inside IPv6) or
 * localhost refused, and taken under webhook_allow_private.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "api_util.h"

static api_env_t s_env;
static char s_other_token[2048];
static char s_other_key[160];

static int s_setup(void **state)
{
    (void)state;
    if (api_env_start(&s_env, NULL) != 0)
        return -1;
    return api_env_other_org(&s_env, s_other_token, s_other_key);
}

static int s_teardown(void **state)
{
    (void)state;
    return api_env_stop(&s_env) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------- helpers -- */

static const char *s_str(const api_resp_t *r, const char *key)
{
    return json_string_value(json_object_get(r->json, key));
}

static long s_count(const char *sql)
{
    return api_sql_long(&s_env, "%s", sql);
}

static long s_org_webhooks(void)
{
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM webhooks WHERE organization_id = '%s'",
             s_env.org_id);
    return s_count(sql);
}

/* POST a webhook for url with events (JSON array text); id (>= 64) gets its
 * id, secret (>= 80, may be NULL) its secret. */
static void s_create(const char *url, const char *events, char *id, char *secret)
{
    json_t *body = json_pack("{s:s, s:o}", "url", url, "events", json_loads(events, 0, NULL));
    char *text = json_dumps(body, JSON_COMPACT);
    api_resp_t r = {0};
    api_call(&s_env, "POST", "/api/v1/webhooks", s_env.key_full, text, NULL, &r);
    if (r.status != 201)
        fail_msg("create %s: %d %s", url, r.status, sbuf_data(r.raw));
    snprintf(id, 64, "%s", s_str(&r, "id"));
    if (secret)
        snprintf(secret, 80, "%s", s_str(&r, "secret"));
    api_resp_free(&r);
    free(text);
    json_decref(body);
}

/* --------------------------------------------------------------- tests -- */

static void test_create_get_list(void **state)
{
    (void)state;
    api_resp_t r = {0};
    api_call(&s_env, "POST", "/api/v1/webhooks", s_env.key_full,
             "{\"url\":\"https://hooks.example.com/postchi?x=1\","
             "\"events\":[\"message.delivered\",\"message.bounced\",\"flow.run_completed\"]}",
             NULL, &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(s_str(&r, "url"), "https://hooks.example.com/postchi?x=1");
    json_t *events = json_object_get(r.json, "events");
    assert_int_equal(json_array_size(events), 3);
    assert_string_equal(json_string_value(json_array_get(events, 0)), "message.delivered");
    assert_string_equal(json_string_value(json_array_get(events, 2)), "flow.run_completed");
    assert_true(json_is_true(json_object_get(r.json, "enabled")));
    assert_non_null(s_str(&r, "created_at"));
    const char *secret = s_str(&r, "secret");
    assert_non_null(secret);
    assert_int_equal(strlen(secret), 6 + 64);
    assert_memory_equal(secret, "whsec_", 6);
    assert_int_equal(strspn(secret + 6, "0123456789abcdef"), 64);
    char id[64], saved[80], path[128];
    snprintf(id, sizeof id, "%s", s_str(&r, "id"));
    snprintf(saved, sizeof saved, "%s", secret);
    api_resp_free(&r);

    /* The secret is stored (the sender signs with it)... */
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT secret FROM webhooks WHERE id = '%s'", id);
    char *stored = api_sql(&s_env, sql);
    assert_string_equal(stored, saved);
    free(stored);
    /* ...but never shown again, nor written to the audit log. */
    snprintf(path, sizeof path, "/api/v1/webhooks/%s", id);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_string_equal(s_str(&r, "id"), id);
    assert_null(json_object_get(r.json, "secret"));
    assert_null(strstr(sbuf_data(r.raw), saved));
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/webhooks", s_env.key_read, NULL, NULL, &r),
                     200);
    assert_non_null(strstr(sbuf_data(r.raw), id));
    assert_null(strstr(sbuf_data(r.raw), "whsec_"));
    api_resp_free(&r);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%%%s%%'",
             saved + 6);
    assert_int_equal(s_count(sql), 0);

    /* Two webhooks never share a secret. */
    char id2[64], secret2[80];
    s_create("http://93.184.216.34:8080/hook", "[\"message.sent\"]", id2, secret2);
    assert_string_not_equal(secret2, saved);

    /* Every listed event is accepted; enabled may be given on create. */
    api_call(&s_env, "POST", "/api/v1/webhooks", s_env.token,
             "{\"url\":\"http://[2606:4700::1]:9/x\",\"enabled\":false,\"events\":[\"message.sent\","
             "\"message.delivered\",\"message.deferred\",\"message.bounced\",\"message.failed\","
             "\"message.opened\",\"message.clicked\",\"message.complained\","
             "\"contact.unsubscribed\",\"flow.run_completed\"]}",
             NULL, &r);
    assert_int_equal(r.status, 201);
    assert_int_equal(json_array_size(json_object_get(r.json, "events")), 10);
    assert_true(json_is_false(json_object_get(r.json, "enabled")));
    api_resp_free(&r);

    assert_int_equal(
        api_call(&s_env, "GET", "/api/v1/webhooks/nope", s_env.key_read, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET",
                              "/api/v1/webhooks/00000000-0000-0000-0000-000000000000",
                              s_env.key_read, NULL, NULL, &r),
                     404);
    api_resp_free(&r);
}

static void test_validation(void **state)
{
    (void)state;
    long before = s_org_webhooks();
    char long_url[2100];
    memcpy(long_url, "https://e.com/", 14);
    memset(long_url + 14, 'a', sizeof long_url - 15);
    long_url[sizeof long_url - 1] = '\0';
    static const struct {
        const char *url;   /* url value (JSON string contents) */
        const char *field; /* expected error field */
        const char *why;   /* part of the message */
    } urls[] = {
        {"ftp://example.com/x", "url", "http"},
        {"example.com/hook", "url", "http"},
        {"/relative", "url", "http"},
        {"javascript:alert(1)", "url", "http"},
        {"http://", "url", "host"},
        {"https:///path", "url", "host"},
        {"https://user:pw@example.com/", "url", "user name or password"},
        {"https://user@example.com/", "url", "user name or password"},
        {"http://exa mple.com/", "url", "spaces"},
        {"http://example.com/a\\tb", "url", "control"},
        {"http://example.com/\\u0001", "url", "control"},
        {"http://example.com/\\u00e9", "url", "ASCII"},
        {"http://example.com:0/", "url", "port"},
        {"http://example.com:99999/", "url", "port"},
        {"http://example.com:/", "url", "port"},
        {"http://example.com:8a/", "url", "port"},
        {"http://:80/", "url", "host"},
        {"http://[::1/", "url", "IPv6"},
        {"http://[]/", "url", "IPv6"},
        {"http://exa_mple.com<x>/", "url", "host"},
        {"http:\\\\\\\\example.com", "url", "backslash"},
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        api_resp_t r = {0};
        api_callf(&s_env, "POST", "/api/v1/webhooks", s_env.key_full, &r,
                  "{\"url\":\"%s\",\"events\":[\"message.sent\"]}", urls[i].url);
        api_expect_invalid(&r, urls[i].field, urls[i].why);
        api_resp_free(&r);
    }
    api_resp_t r = {0};
    api_callf(&s_env, "POST", "/api/v1/webhooks", s_env.key_full, &r,
              "{\"url\":\"%s\",\"events\":[\"message.sent\"]}", long_url);
    api_expect_invalid(&r, "url", NULL);
    api_resp_free(&r);

    static const struct {
        const char *body;
        const char *field;
        const char *why;
    } cases[] = {
        {"{\"events\":[\"message.sent\"]}", "url", NULL},
        {"{\"url\":5,\"events\":[\"message.sent\"]}", "url", NULL},
        {"{\"url\":\"https://e.com\"}", "events", NULL},
        {"{\"url\":\"https://e.com\",\"events\":[]}", "events", "non-empty"},
        {"{\"url\":\"https://e.com\",\"events\":\"message.sent\"}", "events", "array"},
        {"{\"url\":\"https://e.com\",\"events\":[\"*\"]}", "events", "\"*\" is not allowed"},
        {"{\"url\":\"https://e.com\",\"events\":[\"message.sent\",\"message.sent\"]}", "events",
         "twice"},
        {"{\"url\":\"https://e.com\",\"events\":[\"message.sent\",\"message.nope\"]}", "events",
         "item 1 is not a known event"},
        {"{\"url\":\"https://e.com\",\"events\":[1]}", "events", "item 0"},
        {"{\"url\":\"https://e.com\",\"events\":[\"MESSAGE.SENT\"]}", "events", NULL},
        {"{\"url\":\"https://e.com\",\"events\":[\"message.sent\"],\"enabled\":1}", "enabled",
         NULL},
        {"{\"url\":\"https://e.com\",\"events\":[\"message.sent\"],\"secret\":\"mine\"}", "secret",
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_call(&s_env, "POST", "/api/v1/webhooks", s_env.key_full, cases[i].body, NULL, &r);
        api_expect_invalid(&r, cases[i].field, cases[i].why);
        api_resp_free(&r);
    }
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/webhooks", s_env.key_full, "[]", NULL, &r),
                     400);
    api_resp_free(&r);
    /* Both fields wrong: both reported. */
    api_call(&s_env, "POST", "/api/v1/webhooks", s_env.key_full,
             "{\"url\":\"gopher://x\",\"events\":[\"*\"]}", NULL, &r);
    api_expect_invalid(&r, "url", NULL);
    api_expect_invalid(&r, "events", NULL);
    api_resp_free(&r);
    assert_int_equal(s_org_webhooks(), before);

    /* Edge cases that are fine. */
    char id[64];
    s_create("HTTPS://EXAMPLE.com:443", "[\"message.opened\"]", id, NULL);
    s_create("http://a.b/p%20q?x=y&z=%22#frag", "[\"message.opened\"]", id, NULL);
    memset(long_url + 14, 'a', 2048 - 14);
    long_url[2048] = '\0';
    s_create(long_url, "[\"message.opened\"]", id, NULL);
}

static void test_update_delete(void **state)
{
    (void)state;
    char id[64], secret[80], path[128], sql[256];
    s_create("https://old.example.com/h", "[\"message.sent\"]", id, secret);
    snprintf(path, sizeof path, "/api/v1/webhooks/%s", id);

    api_resp_t r = {0};
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"enabled\":false}", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_true(json_is_false(json_object_get(r.json, "enabled")));
    assert_string_equal(s_str(&r, "url"), "https://old.example.com/h");
    assert_null(json_object_get(r.json, "secret"));
    api_resp_free(&r);

    api_call(&s_env, "PATCH", path, s_env.key_full,
             "{\"url\":\"http://new.example.com:8443/x\",\"events\":[\"message.clicked\","
             "\"contact.unsubscribed\"]}",
             NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_str(&r, "url"), "http://new.example.com:8443/x");
    json_t *events = json_object_get(r.json, "events");
    assert_int_equal(json_array_size(events), 2);
    assert_string_equal(json_string_value(json_array_get(events, 1)), "contact.unsubscribed");
    assert_true(json_is_false(json_object_get(r.json, "enabled"))); /* unchanged */
    api_resp_free(&r);
    snprintf(sql, sizeof sql, "SELECT secret FROM webhooks WHERE id = '%s'", id);
    char *stored = api_sql(&s_env, sql);
    assert_string_equal(stored, secret); /* PATCH never changes the secret */
    free(stored);

    /* Bad PATCHes change nothing. */
    const char *bad[][2] = {
        {"{\"url\":\"ftp://x\"}", "url"},
        {"{\"events\":[]}", "events"},
        {"{\"events\":[\"*\"]}", "events"},
        {"{\"enabled\":\"no\"}", "enabled"},
        {"{\"secret\":\"x\"}", "secret"},
        {"{\"url\":\"https://ok.example.com\",\"events\":[\"bad\"]}", "events"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_call(&s_env, "PATCH", path, s_env.key_full, bad[i][0], NULL, &r);
        api_expect_invalid(&r, bad[i][1], NULL);
        api_resp_free(&r);
    }
    snprintf(sql, sizeof sql,
             "SELECT url || ' ' || array_to_string(events, ',') FROM webhooks "
             "WHERE id = '%s'",
             id);
    stored = api_sql(&s_env, sql);
    assert_string_equal(stored,
                        "http://new.example.com:8443/x message.clicked,contact.unsubscribed");
    free(stored);

    api_call(&s_env, "PATCH", "/api/v1/webhooks/00000000-0000-0000-0000-000000000000",
             s_env.key_full, "{\"enabled\":true}", NULL, &r);
    assert_int_equal(r.status, 404);
    api_resp_free(&r);

    /* The audit log has the create, the updates and the delete. */
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 204);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM webhooks WHERE id = '%s'", id);
    assert_int_equal(s_count(sql), 0);
    snprintf(sql, sizeof sql,
             "SELECT string_agg(action, ',' ORDER BY id) FROM audit_log "
             "WHERE resource_id = '%s'",
             id);
    stored = api_sql(&s_env, sql);
    assert_non_null(stored);
    assert_string_equal(stored, "webhook.created,webhook.updated,webhook.updated,webhook.deleted");
    free(stored);
    assert_int_equal(
        api_call(&s_env, "DELETE", "/api/v1/webhooks/x'--", s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
}

static void test_sql_metacharacters(void **state)
{
    (void)state;
    const char *url = "https://example.com/h?q=';DROP%20TABLE%20webhooks;--&x=\"$1\"&y=%_";
    char id[64], path[128];
    s_create(url, "[\"message.failed\"]", id, NULL);
    snprintf(path, sizeof path, "/api/v1/webhooks/%s", id);
    api_resp_t r = {0};
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_full, NULL, NULL, &r), 200);
    assert_string_equal(s_str(&r, "url"), url);
    api_resp_free(&r);
    json_t *body = json_pack("{s:s}", "url", "http://x.example/');DELETE%20FROM%20webhooks;--");
    char *text = json_dumps(body, JSON_COMPACT);
    api_call(&s_env, "PATCH", path, s_env.key_full, text, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_str(&r, "url"), "http://x.example/');DELETE%20FROM%20webhooks;--");
    api_resp_free(&r);
    free(text);
    json_decref(body);
    assert_true(s_org_webhooks() >= 1);
}

static void test_tenancy_and_scope(void **state)
{
    (void)state;
    char id[64], path[128];
    s_create("https://mine.example.com/", "[\"message.sent\"]", id, NULL);
    snprintf(path, sizeof path, "/api/v1/webhooks/%s", id);
    api_resp_t r = {0};
    const char *other[] = {s_other_key, s_other_token};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "GET", path, other[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "PATCH", path, other[k], "{\"enabled\":false}", NULL, &r),
                         404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, other[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "GET", "/api/v1/webhooks?limit=200", other[k], NULL, NULL, &r), 200);
        assert_null(strstr(sbuf_data(r.raw), id));
        api_resp_free(&r);
    }
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT enabled::text FROM webhooks WHERE id = '%s'", id);
    char *enabled = api_sql(&s_env, sql);
    assert_string_equal(enabled, "true");
    free(enabled);

    const char *weak[] = {s_env.key_read, s_env.key_send};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/webhooks", weak[k],
                                  "{\"url\":\"https://x.example\",\"events\":[\"message.sent\"]}",
                                  NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "PATCH", path, weak[k], "{\"enabled\":false}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, weak[k], NULL, NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "GET", path, weak[k], NULL, NULL, &r), 200);
        api_resp_free(&r);
    }
    assert_int_equal(s_count("SELECT count(*) FROM webhooks WHERE url = 'https://x.example'"), 0);
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/webhooks", NULL, NULL, NULL, &r), 401);
    api_resp_free(&r);
}

static void test_pagination(void **state)
{
    (void)state;
    char id[64];
    for (int i = 0; i < 5; i++)
        s_create("https://page.example.com/", "[\"message.sent\"]", id, NULL);
    long total = s_org_webhooks();
    char path[512] = "/api/v1/webhooks?limit=2";
    long seen = 0;
    json_t *ids = json_object();
    for (int pages = 0; pages < 100; pages++) {
        api_resp_t r = {0};
        assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
        json_t *data = json_object_get(r.json, "data");
        assert_true(json_array_size(data) <= 2);
        size_t i;
        json_t *w;
        json_array_foreach(data, i, w)
        {
            const char *wid = json_string_value(json_object_get(w, "id"));
            assert_null(json_object_get(ids, wid));
            json_object_set_new(ids, wid, json_true());
            assert_null(json_object_get(w, "secret"));
            seen++;
        }
        const char *next = json_string_value(json_object_get(r.json, "next_cursor"));
        if (!next) {
            api_resp_free(&r);
            break;
        }
        snprintf(path, sizeof path, "/api/v1/webhooks?limit=2&cursor=%s", next);
        api_resp_free(&r);
    }
    assert_int_equal(seen, total);
    json_decref(ids);
    const char *bad[] = {"/api/v1/webhooks?limit=0", "/api/v1/webhooks?limit=-3",
                         "/api/v1/webhooks?cursor=zzz", "/api/v1/webhooks?cursor=bm90LWEtY3Vyc29y"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_resp_t r = {0};
        api_call(&s_env, "GET", bad[i], s_env.key_read, NULL, NULL, &r);
        if (r.status != 400 && r.status != 422)
            fail_msg("%s: %d %s", bad[i], r.status, sbuf_data(r.raw));
        api_resp_free(&r);
    }
}

/* URLs whose host is no public destination, in every spelling. */
static const struct {
    const char *url; /* JSON string contents */
    const char *why; /* in the message */
} PRIVATE_URLS[] = {
    {"http://127.0.0.1/", "loopback"},
    {"https://127.1:8443/hook", "loopback"},
    {"http://2130706433/", "loopback"},
    {"http://0x7f.1/", "loopback"},
    {"http://0X7F000001/", "loopback"},
    {"http://0177.0.0.1/", "loopback"},
    {"http://017700000001/", "loopback"},
    {"http://127.0.0.1./", "loopback"},
    {"http://[::1]/", "loopback"},
    {"http://[::ffff:127.0.0.1]/", "loopback"},
    {"http://[::ffff:7f00:1]:80/", "loopback"},
    {"http://[::127.0.0.1]/", "loopback"},
    {"http://[64:ff9b::7f00:1]/", "loopback"},
    {"http://[2002:7f00:1::]/", "loopback"},
    {"http://10.1.2.3/", "private"},
    {"http://172.16.0.1/", "private"},
    {"http://172.31.255.255/", "private"},
    {"http://192.168.1.1/", "private"},
    {"http://3232235777/", "private"},
    {"http://[fd00::1]/", "private"},
    {"http://[fc00::1]/", "private"},
    {"http://[::ffff:10.0.0.1]/", "private"},
    {"http://100.64.0.1/", "carrier-grade NAT"},
    {"http://169.254.169.254/latest/meta-data/", "link-local"},
    {"http://0xa9fea9fe/", "link-local"},
    {"http://169.254.43518/", "link-local"},
    {"http://[fe80::1]/", "link-local"},
    {"http://[::ffff:169.254.169.254]/", "link-local"},
    {"http://[64:ff9b::a9fe:a9fe]/", "link-local"},
    {"http://224.0.0.1/", "multicast"},
    {"http://[ff02::1]/", "multicast"},
    {"http://255.255.255.255/", "broadcast"},
    {"http://0.0.0.0:8080/", "unspecified"},
    {"http://0/", "unspecified"},
    {"http://[::]/", "unspecified"},
    {"http://240.0.0.1/", "reserved"},
    {"http://198.18.0.1/", "reserved"},
    {"http://[100::1]/", "reserved"},
    {"http://192.0.2.1/", "documentation"},
    {"http://203.0.113.9/", "documentation"},
    {"http://[2001:db8::1]/", "documentation"},
    {"http://localhost/", "localhost"},
    {"http://LOCALHOST:8080/x", "localhost"},
    {"http://localhost./", "localhost"},
    {"http://api.localhost/", "localhost"},
};

/* Numeric hosts that are no address: refused whatever the setting says. */
static const char *const MALFORMED_HOSTS[] = {
    "http://1.2.3.256/",
    "http://1.2.3.4.5/",
    "http://4294967296/",
    "http://08.1.1.1/",
    "http://example.1/",
};

static void s_expect_url_refused(const char *url, const char *why)
{
    api_resp_t r = {0};
    api_callf(&s_env, "POST", "/api/v1/webhooks", s_env.key_full, &r,
              "{\"url\":\"%s\",\"events\":[\"message.sent\"]}", url);
    if (r.status != 422)
        fail_msg("%s: %d, want 422: %s", url, r.status, sbuf_data(r.raw));
    api_expect_invalid(&r, "url", why);
    api_resp_free(&r);
}

/* Webhooks cannot be pointed at the network around Postchi (SSRF): literal
 * non-public addresses in any spelling and localhost names are a 422 on
 * url, on create and on PATCH, with nothing written; public addresses and
 * names (judged when resolved, at delivery) are taken. */
static void test_private_destinations_refused(void **state)
{
    (void)state;
    long before = s_org_webhooks();
    for (size_t i = 0; i < sizeof PRIVATE_URLS / sizeof PRIVATE_URLS[0]; i++)
        s_expect_url_refused(PRIVATE_URLS[i].url, PRIVATE_URLS[i].why);
    for (size_t i = 0; i < sizeof MALFORMED_HOSTS / sizeof MALFORMED_HOSTS[0]; i++)
        s_expect_url_refused(MALFORMED_HOSTS[i], "not a valid IPv4 address");
    assert_int_equal(s_org_webhooks(), before);

    static const char *const OK[] = {
        "http://93.184.216.34/",      "http://134744072/x", /* 8.8.8.8 */
        "http://[2606:4700::1111]/",  "http://[::ffff:8.8.8.8]/",
        "https://hooks.example.com/", "http://localhost.example.com/",
        "http://127.0.0.1.nip.io/",   "http://1.0x1g/",
    };
    char id[64];
    for (size_t i = 0; i < sizeof OK / sizeof OK[0]; i++)
        s_create(OK[i], "[\"message.sent\"]", id, NULL);
    assert_int_equal(s_org_webhooks(), before + (long)(sizeof OK / sizeof OK[0]));

    /* PATCH is held to the same rule, and changes nothing. */
    char path[128], sql[256];
    snprintf(path, sizeof path, "/api/v1/webhooks/%s", id);
    api_resp_t r = {0};
    api_call(&s_env, "PATCH", path, s_env.key_full,
             "{\"url\":\"http://169.254.169.254/latest/meta-data/\"}", NULL, &r);
    api_expect_invalid(&r, "url", "link-local");
    api_resp_free(&r);
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"url\":\"http://0x7f.1:6379/\"}", NULL,
             &r);
    api_expect_invalid(&r, "url", "loopback");
    api_resp_free(&r);
    snprintf(sql, sizeof sql, "SELECT url FROM webhooks WHERE id = '%s'", id);
    char *stored = api_sql(&s_env, sql);
    assert_string_equal(stored, "http://1.0x1g/");
    free(stored);
}

/* webhook_allow_private lifts the refusal for an installation whose
 * receivers are internal; malformed numeric hosts stay refused. */
static void test_allow_private_setting(void **state)
{
    (void)state;
    api_env_t e;
    char *extra[] = {"POSTCHI_WEBHOOK_ALLOW_PRIVATE=true", NULL};
    assert_int_equal(api_env_start(&e, extra), 0);
    api_resp_t r = {0};
    for (size_t i = 0; i < sizeof PRIVATE_URLS / sizeof PRIVATE_URLS[0]; i++) {
        api_callf(&e, "POST", "/api/v1/webhooks", e.key_full, &r,
                  "{\"url\":\"%s\",\"events\":[\"message.sent\"]}", PRIVATE_URLS[i].url);
        if (r.status != 201)
            fail_msg("%s: %d %s", PRIVATE_URLS[i].url, r.status, sbuf_data(r.raw));
        api_resp_free(&r);
    }
    for (size_t i = 0; i < sizeof MALFORMED_HOSTS / sizeof MALFORMED_HOSTS[0]; i++) {
        api_callf(&e, "POST", "/api/v1/webhooks", e.key_full, &r,
                  "{\"url\":\"%s\",\"events\":[\"message.sent\"]}", MALFORMED_HOSTS[i]);
        api_expect_invalid(&r, "url", "not a valid IPv4 address");
        api_resp_free(&r);
    }
    assert_int_equal(api_sql_long(&e, "SELECT count(*) FROM webhooks WHERE organization_id = '%s'",
                                  e.org_id),
                     (long)(sizeof PRIVATE_URLS / sizeof PRIVATE_URLS[0]));
    assert_int_equal(api_env_stop(&e), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_get_list),   cmocka_unit_test(test_validation),
        cmocka_unit_test(test_update_delete),     cmocka_unit_test(test_sql_metacharacters),
        cmocka_unit_test(test_tenancy_and_scope), cmocka_unit_test(test_pagination),
        cmocka_unit_test(test_private_destinations_refused),
        cmocka_unit_test(test_allow_private_setting),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
