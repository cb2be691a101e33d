/*
 * test_api_suppressions - /suppressions against a running API node:
 * upsert (201 then 200, case-insensitive), validation by field, expiry
 * (future only; expired rows hidden unless asked for), filters, delete by
 * percent-encoded address, metacharacters, tenancy, scopes, pagination and
 * audit rows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "rest.h"

#include "api_util.h"
#include "audience_util.h"

static api_env_t s_env;
static char s_other_key[160], s_other_token[2048];
static char *s_other_org;

static int s_setup(void **state)
{
    (void)state;
    if (api_env_start(&s_env, NULL) != 0 ||
        api_env_other_org(&s_env, s_other_token, s_other_key) != 0)
        return -1;
    s_other_org = aud_test_other_org_id(&s_env);
    return s_other_org ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    free(s_other_org);
    return api_env_stop(&s_env) == 0 ? 0 : -1;
}

static long s_rows(const char *email)
{
    return aud_test_sql_long(&s_env,
                             "SELECT count(*) FROM suppressions WHERE organization_id = '%s'"
                             " AND lower(email) = lower('%s')",
                             s_env.org_id, aud_test_q(email));
}

static void test_upsert(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                    json_pack("{s:s, s:s}", "email", " Bounce@Example.COM ",
                                              "reason", "bounce"),
                                    &r),
                     201);
    assert_string_equal(aud_test_str(&r, "email"), "Bounce@example.com");
    assert_string_equal(aud_test_str(&r, "reason"), "bounce");
    assert_true(json_is_null(json_object_get(r.json, "expires_at")));
    char *id = strdup(aud_test_str(&r, "id"));
    api_resp_free(&r);

    /* Same address, other case: the row is updated, 200. */
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                    json_pack("{s:s, s:s, s:s}", "email", "bounce@EXAMPLE.com",
                                              "reason", "manual", "expires_at",
                                              "2999-01-31T12:00:00.5+02:00"),
                                    &r),
                     200);
    assert_string_equal(aud_test_str(&r, "id"), id);
    assert_string_equal(aud_test_str(&r, "reason"), "manual");
    assert_string_equal(aud_test_str(&r, "expires_at"), "2999-01-31T10:00:00.500000Z");
    api_resp_free(&r);
    assert_int_equal(s_rows("bounce@example.com"), 1);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE resource_id = '%s'"
                                       " AND action IN ('suppression.create',"
                                       " 'suppression.update')",
                                       id),
                     2);
    free(id);
}

static void test_validation(void **state)
{
    (void)state;
    api_resp_t r = {0};
    long before = aud_test_sql_long(&s_env, "SELECT count(*) FROM suppressions");
    struct {
        const char *body, *field;
    } bad[] = {
        {"{\"reason\":\"bounce\"}", "email"},
        {"{\"email\":\"no-at-sign\",\"reason\":\"bounce\"}", "email"},
        {"{\"email\":\"a@b\",\"reason\":\"bounce\"}", "email"},
        {"{\"email\":\"a b@example.com\",\"reason\":\"bounce\"}", "email"},
        {"{\"email\":\"a@example.com\\r\\nBcc: x@y.z\",\"reason\":\"bounce\"}", "email"},
        {"{\"email\":42,\"reason\":\"bounce\"}", "email"},
        {"{\"email\":\"a@example.com\"}", "reason"},
        {"{\"email\":\"a@example.com\",\"reason\":\"spam\"}", "reason"},
        {"{\"email\":\"a@example.com\",\"reason\":\"bounce\",\"expires_at\":\"tomorrow\"}",
         "expires_at"},
        {"{\"email\":\"a@example.com\",\"reason\":\"bounce\",\"expires_at\":\"2001-01-01T00:00:00Z\"}",
         "expires_at"},
        {"{\"email\":\"a@example.com\",\"reason\":\"bounce\",\"expires_at\":1893456000}",
         "expires_at"},
        {"{\"email\":\"a@example.com\",\"reason\":\"bounce\",\"expires_at\":\"2999-13-01T00:00:00Z\"}",
         "expires_at"},
        {"{\"email\":\"a@example.com\",\"reason\":\"bounce\",\"note\":\"x\"}", "note"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                  bad[i].body, NULL, &r),
                         422);
        assert_true(aud_test_has_error(&r, bad[i].field));
        api_resp_free(&r);
    }
    /* Several errors at once, each named. */
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                              "{\"email\":\"x\",\"reason\":\"x\",\"expires_at\":\"x\"}", NULL, &r),
                     422);
    assert_true(aud_test_has_error(&r, "email"));
    assert_true(aud_test_has_error(&r, "reason"));
    assert_true(aud_test_has_error(&r, "expires_at"));
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM suppressions"), before);
}

static void test_metacharacters_and_delete(void **state)
{
    (void)state;
    /* '%' is kept intact too (create and filter); the delete below uses an
     * address without it: the router decodes path segments a second time
     * after civetweb (reported), so a '%' cannot reach DELETE today. */
    const char *pct = "100%_sure'--@Example.org";
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                    json_pack("{s:s, s:s}", "email", pct, "reason", "manual"), &r),
                     201);
    assert_string_equal(aud_test_str(&r, "email"), "100%_sure'--@example.org");
    api_resp_free(&r);
    char query[256];
    snprintf(query, sizeof query, "/api/v1/suppressions?email=%s", aud_test_pct(pct));
    assert_int_equal(api_call(&s_env, "GET", query, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
    api_resp_free(&r);

    const char *email = "o'brien+_*=$1{x}--&#@Example.org";
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                    json_pack("{s:s, s:s}", "email", email, "reason", "complaint"),
                                    &r),
                     201);
    assert_string_equal(aud_test_str(&r, "email"), "o'brien+_*=$1{x}--&#@example.org");
    api_resp_free(&r);
    char *stored = aud_test_sql(&s_env, "SELECT email FROM suppressions WHERE reason ="
                                        " 'complaint' AND organization_id = '%s'",
                                s_env.org_id);
    assert_string_equal(stored, "o'brien+_*=$1{x}--&#@example.org");
    free(stored);
    /* The LIKE wildcard in it must not match other rows: filter is exact. */
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                    json_pack("{s:s, s:s}", "email",
                                              "o'brien+X*=$1{x}--&#@example.org", "reason",
                                              "manual"),
                                    &r),
                     201);
    api_resp_free(&r);
    char path[256];
    snprintf(path, sizeof path, "/api/v1/suppressions?email=%s", aud_test_pct(email));
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "data")), 1);
    api_resp_free(&r);

    /* Other organization: 404 on delete, nothing removed. */
    snprintf(path, sizeof path, "/api/v1/suppressions/%s", aud_test_pct(email));
    assert_int_equal(api_call(&s_env, "DELETE", path, s_other_key, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_other_token, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_read, NULL, NULL, &r), 403);
    api_resp_free(&r);
    assert_int_equal(s_rows(email), 1);
    /* Delete with the address in another case, percent-encoded. */
    snprintf(path, sizeof path, "/api/v1/suppressions/%s", aud_test_pct("O'BRIEN+_*=$1{x}--&#@EXAMPLE.ORG"));
    int st = api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r);
    api_resp_free(&r);
    /* The local part is case-sensitive by the RFC but suppressions match
     * lower(email), like the unique index: the row goes. */
    assert_int_equal(st, 204);
    assert_int_equal(s_rows(email), 0);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE action ="
                                       " 'suppression.delete' AND organization_id = '%s'",
                                       s_env.org_id),
                     1);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", "/api/v1/suppressions/not-an-email",
                              s_env.key_full, NULL, NULL, &r),
                     404);
    api_resp_free(&r);
    /* Traversal never reaches a handler (the router answers 404 or 405). */
    st = api_call(&s_env, "DELETE", "/api/v1/suppressions/..%2F..%2Fetc%2Fpasswd", s_env.key_full,
                  NULL, NULL, &r);
    assert_true(st == 404 || st == 405);
    api_resp_free(&r);
}

static void test_filters_and_expiry(void **state)
{
    (void)state;
    const char *o = s_env.org_id;
    /* An expired row (written directly: the API refuses past expiry). */
    free(aud_test_sql(&s_env,
                      "INSERT INTO suppressions (organization_id, email, reason, expires_at)"
                      " VALUES ('%s', 'gone@expired.example', 'unsubscribe',"
                      " now() - interval '1 day') RETURNING id",
                      o));
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.key_full,
                                    json_pack("{s:s, s:s, s:s}", "email", "soon@expired.example",
                                              "reason", "unsubscribe", "expires_at",
                                              "2999-01-01T00:00:00Z"),
                                    &r),
                     201);
    api_resp_free(&r);
    json_t *emails = json_array();
    assert_true(aud_test_walk(&s_env, "/api/v1/suppressions?reason=unsubscribe", s_env.key_read,
                              10, "email", emails) == 1);
    assert_int_equal(json_array_size(emails), 1);
    assert_string_equal(json_string_value(json_array_get(emails, 0)), "soon@expired.example");
    json_decref(emails);
    emails = json_array();
    assert_true(aud_test_walk(&s_env,
                              "/api/v1/suppressions?reason=unsubscribe&include_expired=true",
                              s_env.key_read, 10, "email", emails) == 1);
    assert_int_equal(json_array_size(emails), 2);
    json_decref(emails);
    emails = json_array();
    assert_true(aud_test_walk(&s_env, "/api/v1/suppressions?email=GONE%40expired.example",
                              s_env.key_read, 10, "email", emails) == 1);
    assert_int_equal(json_array_size(emails), 0);
    json_decref(emails);
    emails = json_array();
    assert_true(aud_test_walk(&s_env,
                              "/api/v1/suppressions?email=GONE%40expired.example&include_expired=true",
                              s_env.key_read, 10, "email", emails) == 1);
    assert_int_equal(json_array_size(emails), 1);
    json_decref(emails);

    const char *bad[][2] = {
        {"/api/v1/suppressions?reason=spam", "reason"},
        {"/api/v1/suppressions?reason=bounce'--", "reason"},
        {"/api/v1/suppressions?include_expired=yes", "include_expired"},
        {"/api/v1/suppressions?email=nope", "email"},
        {"/api/v1/suppressions?limit=1000", "limit"},
        {"/api/v1/suppressions?cursor=%25%27", "cursor"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int st = api_call(&s_env, "GET", bad[i][0], s_env.key_read, NULL, NULL, &r);
        assert_true(st == 422 || (st == 400 && strcmp(bad[i][1], "cursor") == 0));
        if (st == 422)
            assert_true(aud_test_has_error(&r, bad[i][1]));
        api_resp_free(&r);
    }
    (void)o;
}

static void test_tenancy_scope_pagination(void **state)
{
    (void)state;
    api_resp_t r = {0};
    for (int i = 0; i < 7; i++) {
        char email[64];
        snprintf(email, sizeof email, "page%d@pages.example", i);
        assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_env.token,
                                        json_pack("{s:s, s:s}", "email", email, "reason", "manual"),
                                        &r),
                         201);
        api_resp_free(&r);
    }
    long total = aud_test_sql_long(&s_env,
                                   "SELECT count(*) FROM suppressions WHERE organization_id = '%s'"
                                   " AND (expires_at IS NULL OR expires_at > now())",
                                   s_env.org_id);
    json_t *ids = json_array();
    assert_int_equal(aud_test_walk(&s_env, "/api/v1/suppressions", s_env.key_read, 3, "id", ids),
                     (int)((total + 2) / 3));
    assert_int_equal((long)json_array_size(ids), total);
    json_decref(ids);

    /* B sees none of A's and can suppress the same address independently. */
    ids = json_array();
    assert_int_equal(aud_test_walk(&s_env, "/api/v1/suppressions", s_other_key, 50, "id", ids), 1);
    assert_int_equal(json_array_size(ids), 0);
    json_decref(ids);
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/suppressions", s_other_key,
                                    json_pack("{s:s, s:s}", "email", "page0@pages.example",
                                              "reason", "bounce"),
                                    &r),
                     201);
    api_resp_free(&r);
    char *reason = aud_test_sql(&s_env,
                                "SELECT reason FROM suppressions WHERE organization_id = '%s'"
                                " AND email = 'page0@pages.example'",
                                s_env.org_id);
    assert_string_equal(reason, "manual");
    free(reason);

    const char *weak[] = {s_env.key_read, s_env.key_send};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/suppressions", weak[k],
                                  "{\"email\":\"w@weak.example\",\"reason\":\"manual\"}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", "/api/v1/suppressions/page1%40pages.example",
                                  weak[k], NULL, NULL, &r),
                         403);
        api_resp_free(&r);
    }
    assert_int_equal(s_rows("w@weak.example"), 0);
    assert_int_equal(s_rows("page1@pages.example"), 1);
    (void)s_other_org;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upsert),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_metacharacters_and_delete),
        cmocka_unit_test(test_filters_and_expiry),
        cmocka_unit_test(test_tenancy_scope_pagination),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
