/*
 * test_api_events - triggers end to end: a call to the API writes an event
 * row, the API node tells tenant/<org> through the broker, and the tenant
 * actor on a worker marks the row dispatched. Covers POST /events (custom
 * events: validation, scope, contact created on first sight) and the
 * list_added trigger from list membership.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_util.h"

static api_env_t E;

static int s_setup(void **state)
{
    (void)state;
    return api_env_start(&E, NULL);
}

static int s_teardown(void **state)
{
    (void)state;
    return api_env_stop(&E);
}

/* Wait until the events row is dispatched; 1 when it was within ms. */
static int s_dispatched(long id, int ms)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT dispatched_at IS NOT NULL FROM events WHERE id = %ld", id);
    int64_t deadline = harness_now_ms() + ms;
    while (harness_now_ms() < deadline) {
        char *v = api_sql(&E, sql);
        int done = v && strcmp(v, "t") == 0;
        free(v);
        if (done)
            return 1;
        usleep(50 * 1000);
    }
    return 0;
}

static void test_custom_event_reaches_tenant_actor(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/events", E.key_send,
             "{\"name\":\"order.completed\",\"contact\":{\"email\":\"Buyer@Example.COM\"},"
             "\"properties\":{\"total\":42,\"note\":\"O'Brien; DROP TABLE events;--\"}}",
             NULL, &r);
    assert_int_equal(r.status, 202);
    long id = (long)json_integer_value(json_object_get(r.json, "id"));
    const char *contact = json_string_value(json_object_get(r.json, "contact_id"));
    assert_true(id > 0);
    assert_non_null(contact);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT email || '|' || status FROM contacts WHERE id = '%s' AND organization_id = '%s'",
             contact, E.org_id);
    char *v = api_sql(&E, sql);
    assert_string_equal(v, "Buyer@example.com|subscribed");
    free(v);
    snprintf(sql, sizeof sql, "SELECT payload->'properties'->>'note' FROM events WHERE id = %ld",
             id);
    v = api_sql(&E, sql);
    assert_string_equal(v, "O'Brien; DROP TABLE events;--");
    free(v);
    assert_true(s_dispatched(id, 2500)); /* the sweeper waits 3 s: this is the direct path */
    char contact_id[64];
    snprintf(contact_id, sizeof contact_id, "%s", contact);
    api_resp_free(&r);

    /* A second event for the same person reuses the contact. */
    char *before = api_sql(&E, "SELECT count(*) FROM contacts");
    api_call(&E, "POST", "/api/v1/events", E.key_full,
             "{\"name\":\"page.viewed\",\"contact\":{\"email\":\"buyer@example.com\"}}", NULL, &r);
    assert_int_equal(r.status, 202);
    assert_string_equal(json_string_value(json_object_get(r.json, "contact_id")), contact_id);
    char *after = api_sql(&E, "SELECT count(*) FROM contacts");
    assert_string_equal(before, after);
    free(before);
    free(after);
    api_resp_free(&r);
}

static void test_event_validation(void **state)
{
    (void)state;
    struct {
        const char *body;
        const char *field;
    } bad[] = {
        {"{\"contact\":{\"email\":\"a@b.example\"}}", "name"},
        {"{\"name\":\"has space\",\"contact\":{\"email\":\"a@b.example\"}}", "name"},
        {"{\"name\":\"x\"}", "contact"},
        {"{\"name\":\"x\",\"contact\":\"a@b.example\"}", "contact"},
        {"{\"name\":\"x\",\"contact\":{\"email\":\"not-an-address\"}}", "contact.email"},
        {"{\"name\":\"x\",\"contact\":{\"email\":\"a@b.example\",\"id\":1}}", "id"},
        {"{\"name\":\"x\",\"contact\":{\"email\":\"a@b.example\"},\"properties\":[1]}",
         "properties"},
        {"{\"name\":\"x\",\"contact\":{\"email\":\"a@b.example\"},\"extra\":true}", "extra"},
    };
    char *before = api_sql(&E, "SELECT count(*) FROM events");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_resp_t r;
        api_call(&E, "POST", "/api/v1/events", E.key_full, bad[i].body, NULL, &r);
        assert_int_equal(r.status, 422);
        json_t *errs = json_object_get(r.json, "errors");
        int found = 0;
        size_t k;
        json_t *e;
        json_array_foreach(errs, k, e)
        {
            found |= strcmp(json_string_value(json_object_get(e, "field")), bad[i].field) == 0;
        }
        if (!found)
            fail_msg("body %s: no error for field %s: %s", bad[i].body, bad[i].field,
                     sbuf_data(r.raw));
        api_resp_free(&r);
    }
    char *after = api_sql(&E, "SELECT count(*) FROM events");
    assert_string_equal(before, after); /* nothing half-written */
    free(before);
    free(after);

    api_resp_t r;
    api_call(&E, "POST", "/api/v1/events", E.key_read,
             "{\"name\":\"x\",\"contact\":{\"email\":\"a@b.example\"}}", NULL, &r);
    assert_int_equal(r.status, 403);
    api_resp_free(&r);
}

static void test_idempotent_event(void **state)
{
    (void)state;
    const char *body = "{\"name\":\"signup\",\"contact\":{\"email\":\"once@example.com\"}}";
    api_resp_t a, b, c;
    api_call(&E, "POST", "/api/v1/events", E.key_full, body, "Idempotency-Key: evt-1\r\n", &a);
    api_call(&E, "POST", "/api/v1/events", E.key_full, body, "Idempotency-Key: evt-1\r\n", &b);
    assert_int_equal(a.status, 202);
    assert_int_equal(b.status, 202);
    assert_string_equal(sbuf_data(a.raw), sbuf_data(b.raw));
    char replayed[16];
    assert_non_null(api_resp_header(&b, "Idempotent-Replayed", replayed, sizeof replayed));
    char *n = api_sql(&E, "SELECT count(*) FROM events WHERE payload->>'name' = 'signup'");
    assert_string_equal(n, "1");
    free(n);
    /* Same key, other body: refused. */
    api_call(&E, "POST", "/api/v1/events", E.key_full,
             "{\"name\":\"signup\",\"contact\":{\"email\":\"twice@example.com\"}}",
             "Idempotency-Key: evt-1\r\n", &c);
    assert_int_equal(c.status, 422);
    /* A claim left behind by a node that died mid-request (status 0, long
     * ago) does not block its key: the next request runs. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO idempotency_keys (organization_id, key, route, request_hash, status,"
             " response, created_at) VALUES ('%s', 'evt-orphan', 'events.create', 'x', 0, '',"
             " now() - interval '10 minutes')",
             E.org_id);
    free(api_sql(&E, sql));
    api_resp_t d;
    api_call(&E, "POST", "/api/v1/events", E.key_full,
             "{\"name\":\"orphan\",\"contact\":{\"email\":\"orphan@example.com\"}}",
             "Idempotency-Key: evt-orphan\r\n", &d);
    assert_int_equal(d.status, 202);
    api_resp_free(&d);
    api_resp_free(&a);
    api_resp_free(&b);
    api_resp_free(&c);
}

static void test_list_added_reaches_tenant_actor(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/lists", E.key_full, "{\"name\":\"Newsletter\"}", NULL, &r);
    assert_int_equal(r.status, 201);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/lists/%s/contacts",
             json_string_value(json_object_get(r.json, "id")));
    api_resp_free(&r);
    api_call(&E, "POST", path, E.key_full, "{\"emails\":[\"a@list.example\",\"b@list.example\"]}",
             NULL, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);
    char *id = api_sql(&E, "SELECT max(id) FROM events WHERE name = 'list_added'");
    assert_non_null(id);
    assert_true(s_dispatched(atol(id), 2500));
    free(id);
    char *pending = api_sql(&E, "SELECT count(*) FROM events WHERE name = 'list_added' "
                                "AND dispatched_at IS NULL");
    assert_string_equal(pending, "0");
    free(pending);
}

static void test_other_org_cannot_trigger_for_us(void **state)
{
    (void)state;
    char token[2048], key[160];
    assert_int_equal(api_env_other_org(&E, token, key), 0);
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/events", key,
             "{\"name\":\"x\",\"contact\":{\"email\":\"buyer@example.com\"}}", NULL, &r);
    assert_int_equal(r.status, 202);
    /* Same email, other organization: a different contact. */
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT organization_id <> '%s' FROM contacts WHERE id = '%s'",
             E.org_id, json_string_value(json_object_get(r.json, "contact_id")));
    char *v = api_sql(&E, sql);
    assert_string_equal(v, "t");
    free(v);
    api_resp_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_custom_event_reaches_tenant_actor),
        cmocka_unit_test(test_event_validation),
        cmocka_unit_test(test_idempotent_event),
        cmocka_unit_test(test_list_added_reaches_tenant_actor),
        cmocka_unit_test(test_other_org_cannot_trigger_for_us),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
