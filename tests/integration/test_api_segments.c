/*
 * test_api_segments - /segments against a running API node: a fixed set of
 * contacts (lists, tags, custom fields, statuses, an SQL-looking value and
 * a second organization's look-alikes), then for several rules the live
 * count and the paged members must equal a hand-computed set, in
 * (created_at, id) order. Also validation (the rule module's path message
 * on field "rule"), metacharacters, tenancy, scopes, update and delete.
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

#define N_CONTACTS 6

static api_env_t s_env;
static char s_other_key[160], s_other_token[2048];
static char *s_other_org;
static char *s_c[N_CONTACTS]; /* contact ids of organization A, c[0]..c[5] */
static char *s_l1, *s_l2;     /* list ids of A */
static char *s_theirs;        /* B's contact, a member of B's list with A's tag name */

/* Organization A's contacts, created in this order (created_at ascending). */
static const struct {
    const char *email, *status, *fields;
} s_people[N_CONTACTS] = {
    {"alice@ex.com", "subscribed", "{\"batch\":\"s1\",\"plan\":\"pro\",\"age\":30}"},
    {"bob@ex.com", "unsubscribed", "{\"batch\":\"s1\",\"plan\":\"free\",\"age\":17}"},
    {"carol@ex.org", "subscribed", "{\"batch\":\"s1\",\"plan\":\"pro\",\"age\":\"30\"}"},
    {"dave@ex.org", "bounced", "{\"batch\":\"s1\"}"},
    {"eve@ex.com", "subscribed", "{\"batch\":\"s1\",\"plan\":\"pro'; --\",\"age\":45}"},
    {"frank@ex.net", "complained", "{\"batch\":\"s1\",\"plan\":null,\"age\":30.0}"},
};

static char *s_tag(const char *org, const char *name)
{
    return aud_test_sql(&s_env, "INSERT INTO tags (organization_id, name) VALUES ('%s', '%s')"
                                " RETURNING id", org, aud_test_q(name));
}

static void s_tag_contact(const char *org, const char *contact, const char *tag)
{
    free(aud_test_sql(&s_env, "INSERT INTO contact_tags (organization_id, contact_id, tag_id)"
                              " VALUES ('%s', '%s', '%s') RETURNING 1", org, contact, tag));
}

static void s_join(const char *org, const char *list, const char *contact)
{
    free(aud_test_sql(&s_env, "INSERT INTO list_members (organization_id, list_id, contact_id)"
                              " VALUES ('%s', '%s', '%s') RETURNING 1", org, list, contact));
}

static int s_setup(void **state)
{
    (void)state;
    if (api_env_start(&s_env, NULL) != 0 ||
        api_env_other_org(&s_env, s_other_token, s_other_key) != 0)
        return -1;
    s_other_org = aud_test_other_org_id(&s_env);
    for (int i = 0; i < N_CONTACTS; i++) {
        char at[64];
        snprintf(at, sizeof at, "2024-01-0%dT10:00:00Z", i + 1);
        s_c[i] = aud_test_contact(&s_env, s_env.org_id, s_people[i].email, s_people[i].status,
                                  s_people[i].fields, at);
        if (!s_c[i])
            return -1;
    }
    const char *o = s_env.org_id;
    s_l1 = aud_test_sql(&s_env, "INSERT INTO lists (organization_id, name) VALUES ('%s', 'L1')"
                                " RETURNING id", o);
    s_l2 = aud_test_sql(&s_env, "INSERT INTO lists (organization_id, name) VALUES ('%s', 'L2')"
                                " RETURNING id", o);
    char *vip = s_tag(o, "vip"), *odd = s_tag(o, "it's \"odd\" %_");
    s_join(o, s_l1, s_c[0]);
    s_join(o, s_l1, s_c[1]);
    s_join(o, s_l2, s_c[3]);
    s_tag_contact(o, s_c[0], vip);
    s_tag_contact(o, s_c[2], vip);
    s_tag_contact(o, s_c[5], odd);
    /* B: a look-alike of everything, which A's segments must never show. */
    s_theirs = aud_test_contact(&s_env, s_other_org, "alice@ex.com", "subscribed",
                                "{\"batch\":\"s1\",\"plan\":\"pro\",\"age\":30}",
                                "2024-01-01T09:00:00Z");
    char *bl = aud_test_sql(&s_env, "INSERT INTO lists (organization_id, name) VALUES ('%s',"
                                    " 'L1') RETURNING id", s_other_org);
    char *bvip = s_tag(s_other_org, "vip");
    s_join(s_other_org, bl, s_theirs);
    s_tag_contact(s_other_org, s_theirs, bvip);
    int ok = s_l1 && s_l2 && vip && odd && s_theirs && bl && bvip;
    free(vip);
    free(odd);
    free(bl);
    free(bvip);
    return ok ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_CONTACTS; i++)
        free(s_c[i]);
    free(s_l1);
    free(s_l2);
    free(s_theirs);
    free(s_other_org);
    return api_env_stop(&s_env) == 0 ? 0 : -1;
}

/* Create a segment of rule text (with the batch marker ANDed in); 201
 * expected; returns its id (caller frees). */
static char *s_segment(const char *name, const char *rule_text)
{
    json_t *rule = json_loads(rule_text, 0, NULL);
    assert_non_null(rule);
    api_resp_t r = {0};
    int st = aud_test_callj(&s_env, "POST", "/api/v1/segments", s_env.key_full,
                            json_pack("{s:s, s:{s:[{s:s, s:s, s:s}, o]}}", "name", name, "rule",
                                      "and", "field", "fields.batch", "op", "eq", "value", "s1",
                                      rule),
                            &r);
    if (st != 201)
        fprintf(stderr, "segment %s: %d %s\n", name, st, sbuf_data(r.raw));
    assert_int_equal(st, 201);
    char *id = strdup(aud_test_str(&r, "id"));
    api_resp_free(&r);
    return id;
}

/* The segment's count and members (paged by 2) equal want (indexes into
 * s_c, in creation order, ended by -1). */
static void s_expect(const char *id, const int *want)
{
    int n = 0;
    while (want[n] >= 0)
        n++;
    char path[160];
    snprintf(path, sizeof path, "/api/v1/segments/%s", id);
    api_resp_t r = {0};
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "count")), n);
    api_resp_free(&r);
    snprintf(path, sizeof path, "/api/v1/segments/%s/contacts", id);
    json_t *ids = json_array();
    assert_true(aud_test_walk(&s_env, path, s_env.key_read, 2, "id", ids) >= 1);
    assert_int_equal(json_array_size(ids), n);
    for (int i = 0; i < n; i++)
        assert_string_equal(json_string_value(json_array_get(ids, (size_t)i)), s_c[want[i]]);
    json_decref(ids);
}

static void test_segment_rules_match_hand_computed_sets(void **state)
{
    (void)state;
    char in_l1[128], not_l1[128], in_l2[128];
    snprintf(in_l1, sizeof in_l1, "{\"in_list\":\"%s\"}", s_l1);
    snprintf(not_l1, sizeof not_l1, "{\"not\":{\"in_list\":\"%s\"}}", s_l1);
    snprintf(in_l2, sizeof in_l2, "{\"in_list\":\"%s\"}", s_l2);
    char and_sub[256];
    snprintf(and_sub, sizeof and_sub,
             "{\"and\":[{\"in_list\":\"%s\"},{\"field\":\"status\",\"op\":\"eq\","
             "\"value\":\"subscribed\"}]}",
             s_l1);
    struct {
        const char *rule;
        int want[N_CONTACTS + 1];
    } cases[] = {
        {in_l1, {0, 1, -1}},
        {not_l1, {2, 3, 4, 5, -1}},
        {in_l2, {3, -1}},
        {"{\"has_tag\":\"vip\"}", {0, 2, -1}},
        {"{\"has_tag\":\"it's \\\"odd\\\" %_\"}", {5, -1}},
        {"{\"has_tag\":\"nobody\"}", {-1}},
        {"{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro\"}", {0, 2, -1}},
        {"{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro'; --\"}", {4, -1}},
        {"{\"field\":\"fields.plan\",\"op\":\"starts_with\",\"value\":\"pro\"}", {0, 2, 4, -1}},
        {"{\"field\":\"fields.plan\",\"op\":\"exists\"}", {0, 1, 2, 4, 5, -1}},
        {"{\"field\":\"fields.age\",\"op\":\"eq\",\"value\":30}", {0, 5, -1}},
        {"{\"field\":\"fields.age\",\"op\":\"gte\",\"value\":30}", {0, 4, 5, -1}},
        {"{\"field\":\"status\",\"op\":\"eq\",\"value\":\"subscribed\"}", {0, 2, 4, -1}},
        {"{\"field\":\"status\",\"op\":\"in\",\"value\":[\"bounced\",\"complained\"]}", {3, 5, -1}},
        {"{\"field\":\"email\",\"op\":\"contains\",\"value\":\"@ex.org\"}", {2, 3, -1}},
        {"{\"field\":\"created_at\",\"op\":\"gte\",\"value\":\"2024-01-05T00:00:00Z\"}",
         {4, 5, -1}},
        {and_sub, {0, -1}},
        {"{\"or\":[{\"has_tag\":\"vip\"},{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":40}]}",
         {0, 2, 4, -1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "rule-%zu", i);
        char *id = s_segment(name, cases[i].rule);
        s_expect(id, cases[i].want);
        free(id);
    }
}

static void test_segment_crud_and_validation(void **state)
{
    (void)state;
    api_resp_t r = {0};
    char *id = s_segment("crud", "{\"has_tag\":\"vip\"}");
    char path[160];
    snprintf(path, sizeof path, "/api/v1/segments/%s", id);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_string_equal(aud_test_str(&r, "name"), "crud");
    assert_true(json_is_object(json_object_get(r.json, "rule")));
    api_resp_free(&r);

    /* A bad rule: 422 on "rule" with the rule module's path message, and
     * the stored rule is unchanged. */
    assert_int_equal(api_call(&s_env, "PATCH", path, s_env.key_full,
                              "{\"rule\":{\"and\":[{\"has_tag\":\"a\"},{\"has_tag\":\"b\"},"
                              "{\"field\":\"email\",\"op\":\"like\",\"value\":\"%\"}]}}",
                              NULL, &r),
                     422);
    assert_true(aud_test_has_error(&r, "rule"));
    assert_string_equal(aud_test_error_message(&r, "rule"),
                        "rule.and[2].op: unknown operator 'like'");
    api_resp_free(&r);
    s_expect(id, (const int[]){0, 2, -1});

    /* PATCH the rule: the count follows; PATCH the name alone keeps it. */
    assert_int_equal(api_call(&s_env, "PATCH", path, s_env.key_full,
                              "{\"rule\":{\"field\":\"status\",\"op\":\"eq\","
                              "\"value\":\"bounced\"}}",
                              NULL, &r),
                     200);
    api_resp_free(&r);
    s_expect(id, (const int[]){3, -1}); /* no batch marker now: only A's bounced one */
    assert_int_equal(
        api_call(&s_env, "PATCH", path, s_env.key_full, "{\"name\":\"renamed\"}", NULL, &r),
        200);
    assert_string_equal(aud_test_str(&r, "name"), "renamed");
    api_resp_free(&r);
    s_expect(id, (const int[]){3, -1});

    struct {
        const char *body, *field;
    } bad[] = {
        {"{\"name\":\"x\"}", "rule"},
        {"{\"rule\":{\"has_tag\":\"vip\"}}", "name"},
        {"{\"name\":\"\",\"rule\":{\"has_tag\":\"vip\"}}", "name"},
        {"{\"name\":\"x\",\"rule\":[]}", "rule"},
        {"{\"name\":\"x\",\"rule\":\"has_tag\"}", "rule"},
        {"{\"name\":\"x\",\"rule\":{}}", "rule"},
        {"{\"name\":\"x\",\"rule\":{\"in_list\":\"not-a-uuid\"}}", "rule"},
        {"{\"name\":\"x\",\"rule\":{\"field\":\"fields.a b\",\"op\":\"eq\",\"value\":1}}", "rule"},
        {"{\"name\":\"x\",\"rule\":{\"field\":\"password\",\"op\":\"eq\",\"value\":1}}", "rule"},
        {"{\"name\":\"x\",\"rule\":{\"has_tag\":\"vip\"},\"extra\":1}", "extra"},
    };
    long before = aud_test_sql_long(&s_env, "SELECT count(*) FROM segments");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(
            api_call(&s_env, "POST", "/api/v1/segments", s_env.key_full, bad[i].body, NULL, &r),
            422);
        assert_true(aud_test_has_error(&r, bad[i].field));
        api_resp_free(&r);
    }
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM segments"), before);
    /* A duplicate name. */
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/segments", s_env.key_full,
                              "{\"name\":\"renamed\",\"rule\":{\"has_tag\":\"vip\"}}", NULL, &r),
                     409);
    api_resp_free(&r);

    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE resource_id = '%s'"
                                       " AND action IN ('segment.create', 'segment.update')",
                                       id),
                     3);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 204);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    char members[200];
    snprintf(members, sizeof members, "%s/contacts", path);
    assert_int_equal(api_call(&s_env, "GET", members, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/segments/x'--/contacts", s_env.key_full,
                              NULL, NULL, &r),
                     404);
    api_resp_free(&r);
    free(id);
}

static void test_segment_metacharacters(void **state)
{
    (void)state;
    const char *meta = "seg'; DELETE FROM contacts; -- \\ \" %_ $2";
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/segments", s_env.key_full,
                                    json_pack("{s:s, s:{s:s, s:s, s:s}}", "name", meta, "rule",
                                              "field", "fields.plan", "op", "eq", "value", meta),
                                    &r),
                     201);
    assert_string_equal(aud_test_str(&r, "name"), meta);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(r.json, "rule"), "value")), meta);
    char *id = strdup(aud_test_str(&r, "id"));
    api_resp_free(&r);
    s_expect(id, (const int[]){-1});
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM contacts WHERE"
                                               " organization_id = '%s'", s_env.org_id),
                     N_CONTACTS);
    free(id);
}

static void test_segment_tenancy_and_scope(void **state)
{
    (void)state;
    char rule[128];
    snprintf(rule, sizeof rule, "{\"in_list\":\"%s\"}", s_l1);
    char *id = s_segment("tenancy", rule);
    char path[160], members[200];
    snprintf(path, sizeof path, "/api/v1/segments/%s", id);
    snprintf(members, sizeof members, "%s/contacts", path);
    api_resp_t r = {0};
    const char *creds[] = {s_other_key, s_other_token};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "GET", path, creds[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "GET", members, creds[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "PATCH", path, creds[k], "{\"name\":\"stolen\"}", NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, creds[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
    }
    /* B's own segment naming A's list or A's tag name sees only B. */
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/segments", s_other_key,
                                    json_pack("{s:s, s:{s:s}}", "name", "peek", "rule", "in_list",
                                              s_l1),
                                    &r),
                     201);
    char other_path[160];
    snprintf(other_path, sizeof other_path, "/api/v1/segments/%s", aud_test_str(&r, "id"));
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", other_path, s_other_key, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "count")), 0);
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/segments", s_other_key,
                                    json_pack("{s:s, s:{s:s}}", "name", "vips", "rule", "has_tag",
                                              "vip"),
                                    &r),
                     201);
    snprintf(other_path, sizeof other_path, "/api/v1/segments/%s/contacts",
             aud_test_str(&r, "id"));
    api_resp_free(&r);
    json_t *ids = json_array();
    assert_int_equal(aud_test_walk(&s_env, other_path, s_other_key, 10, "id", ids), 1);
    assert_int_equal(json_array_size(ids), 1);
    assert_string_equal(json_string_value(json_array_get(ids, 0)), s_theirs);
    json_decref(ids);
    /* B's listing holds only B's segments. */
    ids = json_array();
    assert_int_equal(aud_test_walk(&s_env, "/api/v1/segments", s_other_key, 10, "name", ids), 1);
    assert_int_equal(json_array_size(ids), 2);
    json_decref(ids);

    /* Scopes. */
    const char *weak[] = {s_env.key_read, s_env.key_send};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/segments", weak[k],
                                  "{\"name\":\"nope\",\"rule\":{\"has_tag\":\"vip\"}}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "PATCH", path, weak[k], "{\"name\":\"nope\"}", NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, weak[k], NULL, NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "GET", members, weak[k], NULL, NULL, &r), 200);
        api_resp_free(&r);
    }
    free(id);
}

static void test_segment_pagination(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "page-%d", i);
        free(s_segment(name, "{\"has_tag\":\"vip\"}"));
    }
    long total = aud_test_sql_long(
        &s_env, "SELECT count(*) FROM segments WHERE organization_id = '%s'", s_env.org_id);
    json_t *ids = json_array();
    assert_int_equal(aud_test_walk(&s_env, "/api/v1/segments", s_env.key_read, 3, "id", ids),
                     (int)((total + 2) / 3));
    assert_int_equal((long)json_array_size(ids), total);
    json_decref(ids);
    api_resp_t r = {0};
    assert_int_equal(
        api_call(&s_env, "GET", "/api/v1/segments?limit=0", s_env.key_read, NULL, NULL, &r), 422);
    assert_true(aud_test_has_error(&r, "limit"));
    api_resp_free(&r);
    char *id = s_segment("cursor", "{\"has_tag\":\"vip\"}");
    char *cursor = api_cursor_make("x|y");
    char path[256];
    snprintf(path, sizeof path, "/api/v1/segments/%s/contacts?cursor=%s", id, cursor);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 422);
    assert_true(aud_test_has_error(&r, "cursor"));
    api_resp_free(&r);
    free(cursor);
    free(id);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segment_rules_match_hand_computed_sets),
        cmocka_unit_test(test_segment_crud_and_validation),
        cmocka_unit_test(test_segment_metacharacters),
        cmocka_unit_test(test_segment_tenancy_and_scope),
        cmocka_unit_test(test_segment_pagination),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
