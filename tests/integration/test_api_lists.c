/*
 * test_api_lists - /lists and /tags against a running API node on a fresh
 * database: CRUD, every validation error by field name, SQL metacharacters
 * kept intact, tenancy (another organization gets 404 and can never add
 * this organization's contacts), scopes, pagination, bulk membership with
 * its events rows, and no partial rows when a request is refused.
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

#define META "x'; DROP TABLE lists; -- \"q\" \\ % _ $1 \xc3\xa9"

static api_env_t s_env;
static char s_other_token[2048]; /* owner JWT of a second organization */
static char s_other_key[160];    /* its full API key */
static char *s_other_org;        /* its id */

static int s_setup(void **state)
{
    (void)state;
    if (api_env_start(&s_env, NULL) != 0)
        return -1;
    if (api_env_other_org(&s_env, s_other_token, s_other_key) != 0)
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

/* Create a list named name with the full key; returns its id (caller frees). */
static char *s_list(const char *name)
{
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_env.key_full,
                                    json_pack("{s:s}", "name", name), &r),
                     201);
    char *id = strdup(aud_test_str(&r, "id"));
    api_resp_free(&r);
    return id;
}

static long s_members(const char *list_id)
{
    return aud_test_sql_long(&s_env, "SELECT count(*) FROM list_members WHERE list_id = '%s'",
                             list_id);
}

static void test_list_crud(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_env.key_full,
                                    json_pack("{s:s, s:s}", "name", "Newsletter", "description",
                                              "weekly news"),
                                    &r),
                     201);
    char *id = strdup(aud_test_str(&r, "id"));
    assert_true(api_is_uuid(id));
    assert_string_equal(aud_test_str(&r, "name"), "Newsletter");
    assert_string_equal(aud_test_str(&r, "description"), "weekly news");
    assert_int_equal(json_integer_value(json_object_get(r.json, "member_count")), 0);
    assert_int_equal(strlen(aud_test_str(&r, "created_at")), 27); /* ....SS.uuuuuuZ */
    assert_int_equal(aud_test_str(&r, "created_at")[26], 'Z');
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE action ="
                                       " 'list.create' AND resource_id = '%s'"
                                       " AND organization_id = '%s'",
                                       id, s_env.org_id),
                     1);

    char path[128];
    snprintf(path, sizeof path, "/api/v1/lists/%s", id);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_string_equal(aud_test_str(&r, "name"), "Newsletter");
    api_resp_free(&r);

    /* PATCH one field leaves the other. */
    assert_int_equal(aud_test_callj(&s_env, "PATCH", path, s_env.key_full,
                                    json_pack("{s:s}", "name", "Weekly"), &r),
                     200);
    assert_string_equal(aud_test_str(&r, "name"), "Weekly");
    assert_string_equal(aud_test_str(&r, "description"), "weekly news");
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "PATCH", path, s_env.token,
                                    json_pack("{s:s}", "description", ""), &r),
                     200);
    assert_string_equal(aud_test_str(&r, "name"), "Weekly");
    assert_string_equal(aud_test_str(&r, "description"), "");
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE action ="
                                       " 'list.update' AND resource_id = '%s'",
                                       id),
                     2);

    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 204);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE action ="
                                       " 'list.delete' AND resource_id = '%s'",
                                       id),
                     1);
    /* Path ids that are not uuids are simply not found. */
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/lists/..%2F..%2Fetc", s_env.key_full,
                              NULL, NULL, &r),
                     404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/lists/1%20OR%201=1", s_env.key_full, NULL,
                              NULL, &r),
                     404);
    api_resp_free(&r);
    free(id);
}

static void test_list_validation(void **state)
{
    (void)state;
    api_resp_t r = {0};
    long before = aud_test_sql_long(&s_env, "SELECT count(*) FROM lists");
    struct {
        const char *body;
        const char *field;
    } cases[] = {
        {"{}", "name"},
        {"{\"name\": \"\"}", "name"},
        {"{\"name\": \"   \"}", "name"},
        {"{\"name\": 42}", "name"},
        {"{\"name\": null}", "name"},
        {"{\"name\": \"a\\u0001b\"}", "name"},
        {"{\"name\": \"tab\\there\"}", "name"},
        {"{\"name\": \"ok\", \"description\": 7}", "description"},
        {"{\"name\": \"ok\", \"colour\": \"red\"}", "colour"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(
            api_call(&s_env, "POST", "/api/v1/lists", s_env.key_full, cases[i].body, NULL, &r),
            422);
        assert_true(aud_test_has_error(&r, cases[i].field));
        api_resp_free(&r);
    }
    /* A body that is JSON but not an object. */
    int st = api_call(&s_env, "POST", "/api/v1/lists", s_env.key_full, "[\"name\"]", NULL, &r);
    assert_true(st == 422 || st == 400);
    if (st == 422)
        assert_true(aud_test_has_error(&r, "body"));
    api_resp_free(&r);
    /* 200 bytes is the limit. */
    char name[202];
    memset(name, 'n', 201);
    name[201] = '\0';
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_env.key_full,
                                    json_pack("{s:s}", "name", name), &r),
                     422);
    assert_true(aud_test_has_error(&r, "name"));
    api_resp_free(&r);
    name[200] = '\0';
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_env.key_full,
                                    json_pack("{s:s}", "name", name), &r),
                     201);
    api_resp_free(&r);
    /* A duplicate name is a conflict and adds nothing. */
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_env.key_full,
                                    json_pack("{s:s}", "name", name), &r),
                     409);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM lists"), before + 1);

    /* PATCH validates the same way and names the field. */
    char *id = s_list("patch-me");
    char path[128];
    snprintf(path, sizeof path, "/api/v1/lists/%s", id);
    assert_int_equal(
        api_call(&s_env, "PATCH", path, s_env.key_full, "{\"name\": \"\"}", NULL, &r), 422);
    assert_true(aud_test_has_error(&r, "name"));
    api_resp_free(&r);
    assert_int_equal(
        api_call(&s_env, "PATCH", path, s_env.key_full, "{\"id\": \"x\"}", NULL, &r), 422);
    assert_true(aud_test_has_error(&r, "id"));
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "PATCH", path, s_env.key_full,
                                    json_pack("{s:s}", "name", name), &r),
                     409);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM lists WHERE id = '%s'"
                                       " AND name = 'patch-me'",
                                       id),
                     1);
    free(id);
}

static void test_list_metacharacters(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_env.key_full,
                                    json_pack("{s:s, s:s}", "name", META, "description",
                                              META "\n' OR '1'='1"),
                                    &r),
                     201);
    assert_string_equal(aud_test_str(&r, "name"), META);
    assert_string_equal(aud_test_str(&r, "description"), META "\n' OR '1'='1");
    char *id = strdup(aud_test_str(&r, "id"));
    api_resp_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/api/v1/lists/%s", id);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_string_equal(aud_test_str(&r, "name"), META);
    api_resp_free(&r);
    char *stored = aud_test_sql(&s_env, "SELECT name FROM lists WHERE id = '%s'", id);
    assert_string_equal(stored, META);
    free(stored);
    free(id);
}

static void test_list_members(void **state)
{
    (void)state;
    char *list = s_list("members");
    char *c1 = aud_test_contact(&s_env, s_env.org_id, "m1@example.com", NULL, NULL, NULL);
    char *c2 = aud_test_contact(&s_env, s_env.org_id, "m2@example.com", NULL, NULL, NULL);
    char *c3 = aud_test_contact(&s_env, s_env.org_id, "O'Brien+%_@Example.com", NULL, NULL, NULL);
    char path[160];
    snprintf(path, sizeof path, "/api/v1/lists/%s/contacts", list);
    api_resp_t r = {0};

    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:[s,s,s]}", "contact_ids", c1, c2, c1), &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "added")), 2);
    assert_int_equal(json_integer_value(json_object_get(r.json, "already")), 0);
    assert_int_equal(json_array_size(json_object_get(r.json, "not_found")), 0);
    api_resp_free(&r);

    /* Ids in any letter case, one already a member, one unknown. */
    char upper[40];
    snprintf(upper, sizeof upper, "%s", c3);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    const char *ghost = "00000000-0000-4000-8000-000000000000";
    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:[s,s,s]}", "contact_ids", c2, upper, ghost), &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "added")), 1);
    assert_int_equal(json_integer_value(json_object_get(r.json, "already")), 1);
    json_t *nf = json_object_get(r.json, "not_found");
    assert_int_equal(json_array_size(nf), 1);
    assert_string_equal(json_string_value(json_array_get(nf, 0)), ghost);
    api_resp_free(&r);
    assert_int_equal(s_members(list), 3);

    /* One events row per new member, naming list and contact. */
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM events WHERE name = 'list_added'"
                                       " AND organization_id = '%s'"
                                       " AND payload->>'list_id' = '%s'"
                                       " AND payload->>'contact_id' = contact_id::text",
                                       s_env.org_id, list),
                     3);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM events WHERE name = 'list_added'"
                                       " AND payload->>'list_id' = '%s' AND contact_id = '%s'",
                                       list, c3),
                     1);

    /* Emails: existing ones (any case) are used, new ones created. */
    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:[s,s,s]}", "emails", "  o'brien+%_@EXAMPLE.com",
                                              "New.Person@Example.ORG", "new.person@example.org"),
                                    &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "added")), 1);
    assert_int_equal(json_integer_value(json_object_get(r.json, "already")), 1);
    assert_int_equal(json_integer_value(json_object_get(r.json, "created")), 1);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM contacts WHERE organization_id ="
                                       " '%s' AND email = 'New.Person@example.org'"
                                       " AND status = 'subscribed'",
                                       s_env.org_id),
                     1);
    assert_int_equal(s_members(list), 4);
    char get[96];
    snprintf(get, sizeof get, "/api/v1/lists/%s", list);
    assert_int_equal(api_call(&s_env, "GET", get, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "member_count")), 4);
    api_resp_free(&r);

    /* Remove by id and by email; unknown ones are ignored. */
    assert_int_equal(aud_test_callj(&s_env, "DELETE", path, s_env.key_full,
                                    json_pack("{s:[s,s], s:[s,s]}", "contact_ids", c1, ghost,
                                              "emails", "NEW.PERSON@example.org",
                                              "nobody@example.net"),
                                    &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "removed")), 2);
    api_resp_free(&r);
    assert_int_equal(s_members(list), 2);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE resource_id = '%s'"
                                       " AND action IN ('list.contacts_add',"
                                       " 'list.contacts_remove')",
                                       list),
                     4);
    /* Read keys cannot change membership. */
    assert_int_equal(aud_test_callj(&s_env, "DELETE", path, s_env.key_read,
                                    json_pack("{s:[s]}", "contact_ids", c2), &r),
                     403);
    api_resp_free(&r);
    assert_int_equal(s_members(list), 2);
    free(list);
    free(c1);
    free(c2);
    free(c3);
}

static void test_list_members_many(void **state)
{
    (void)state;
    /* 150 new members: one request, 150 events rows, counted right. */
    char *list = s_list("many");
    json_t *emails = json_array();
    for (int i = 0; i < 150; i++) {
        char email[64];
        snprintf(email, sizeof email, "bulk%03d@many.example", i);
        json_array_append_new(emails, json_string(email));
    }
    char path[160];
    snprintf(path, sizeof path, "/api/v1/lists/%s/contacts", list);
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:o}", "emails", emails), &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "added")), 150);
    assert_int_equal(json_integer_value(json_object_get(r.json, "created")), 150);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(DISTINCT contact_id) FROM events WHERE"
                                       " name = 'list_added' AND payload->>'list_id' = '%s'",
                                       list),
                     150);
    free(list);
}

static void test_list_members_refused_atomically(void **state)
{
    (void)state;
    char *list = s_list("atomic");
    char *c1 = aud_test_contact(&s_env, s_env.org_id, "a1@atomic.example", NULL, NULL, NULL);
    char *c2 = aud_test_contact(&s_env, s_env.org_id, "a2@atomic.example", NULL, NULL, NULL);
    char path[160];
    snprintf(path, sizeof path, "/api/v1/lists/%s/contacts", list);
    long events = aud_test_sql_long(&s_env, "SELECT count(*) FROM events");
    long contacts = aud_test_sql_long(&s_env, "SELECT count(*) FROM contacts");
    api_resp_t r = {0};

    /* One malformed id among three: 422 naming it, nothing added. */
    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:[s,s,s], s:[s]}", "contact_ids", c1,
                                              "1' OR '1'='1", c2, "emails",
                                              "fresh@atomic.example"),
                                    &r),
                     422);
    assert_true(aud_test_has_error(&r, "contact_ids[1]"));
    api_resp_free(&r);
    /* A bad email likewise, and a non-string id. */
    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:[s,i], s:[s,s]}", "contact_ids", c1, 5,
                                              "emails", "ok@atomic.example", "no-at-sign"),
                                    &r),
                     422);
    assert_true(aud_test_has_error(&r, "contact_ids[1]"));
    assert_true(aud_test_has_error(&r, "emails[1]"));
    api_resp_free(&r);
    const char *bad[][2] = {
        {"{}", "contact_ids"},
        {"{\"contact_ids\": []}", "contact_ids"},
        {"{\"contact_ids\": \"x\"}", "contact_ids"},
        {"{\"emails\": {}}", "emails"},
        {"{\"ids\": []}", "ids"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(api_call(&s_env, "POST", path, s_env.key_full, bad[i][0], NULL, &r), 422);
        assert_true(aud_test_has_error(&r, bad[i][1]));
        api_resp_free(&r);
    }
    /* JSON that is not an object: refused by the framework or here. */
    int st = api_call(&s_env, "POST", path, s_env.key_full, "[1]", NULL, &r);
    assert_true(st == 400 || st == 422);
    api_resp_free(&r);
    /* More than 10,000 together. */
    json_t *ids = json_array(), *emails = json_array();
    for (int i = 0; i < 6000; i++) {
        json_array_append_new(ids, json_string(c1));
        json_array_append_new(emails, json_string("x@atomic.example"));
    }
    assert_int_equal(aud_test_callj(&s_env, "POST", path, s_env.key_full,
                                    json_pack("{s:o, s:o}", "contact_ids", ids, "emails", emails),
                                    &r),
                     422);
    assert_true(aud_test_has_error(&r, "contact_ids"));
    api_resp_free(&r);

    /* A list that does not exist: 404, and the email upsert rolled back. */
    assert_int_equal(aud_test_callj(&s_env, "POST",
                                    "/api/v1/lists/00000000-0000-4000-8000-000000000000/contacts",
                                    s_env.key_full,
                                    json_pack("{s:[s]}", "emails", "orphan@atomic.example"), &r),
                     404);
    api_resp_free(&r);

    assert_int_equal(s_members(list), 0);
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM events"), events);
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM contacts"), contacts);
    free(list);
    free(c1);
    free(c2);
}

static void test_list_tenancy(void **state)
{
    (void)state;
    char *list = s_list("tenant-a");
    char *mine = aud_test_contact(&s_env, s_env.org_id, "mine@tenant.example", NULL, NULL, NULL);
    char *theirs =
        aud_test_contact(&s_env, s_other_org, "theirs@tenant.example", NULL, NULL, NULL);
    char path[160], members[180];
    snprintf(path, sizeof path, "/api/v1/lists/%s", list);
    snprintf(members, sizeof members, "%s/contacts", path);
    api_resp_t r = {0};
    const char *creds[] = {s_other_key, s_other_token};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "GET", path, creds[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(aud_test_callj(&s_env, "PATCH", path, creds[k],
                                        json_pack("{s:s}", "name", "stolen"), &r),
                         404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, creds[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(aud_test_callj(&s_env, "POST", members, creds[k],
                                        json_pack("{s:[s]}", "contact_ids", theirs), &r),
                         404);
        api_resp_free(&r);
        assert_int_equal(aud_test_callj(&s_env, "DELETE", members, creds[k],
                                        json_pack("{s:[s]}", "contact_ids", mine), &r),
                         404);
        api_resp_free(&r);
    }
    /* Their listing does not show our lists. */
    json_t *names = json_array();
    assert_true(aud_test_walk(&s_env, "/api/v1/lists", s_other_key, 100, "name", names) >= 1);
    for (size_t i = 0; i < json_array_size(names); i++)
        assert_string_not_equal(json_string_value(json_array_get(names, i)), "tenant-a");
    json_decref(names);

    /* Our list cannot gain their contact, by id or by email (their email
     * becomes a new contact of ours, never theirs). */
    assert_int_equal(aud_test_callj(&s_env, "POST", members, s_env.key_full,
                                    json_pack("{s:[s,s], s:[s]}", "contact_ids", theirs, mine,
                                              "emails", "theirs@tenant.example"),
                                    &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "added")), 2);
    assert_int_equal(json_integer_value(json_object_get(r.json, "created")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(r.json, "not_found"), 0)),
                        theirs);
    api_resp_free(&r);
    assert_int_equal(
        aud_test_sql_long(&s_env, "SELECT count(*) FROM list_members WHERE contact_id = '%s'",
                          theirs),
        0);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM list_members m JOIN contacts c"
                                       " ON c.id = m.contact_id WHERE m.list_id = '%s'"
                                       " AND c.organization_id <> '%s'",
                                       list, s_env.org_id),
                     0);

    /* Their list cannot gain our contact either. */
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/lists", s_other_key,
                                    json_pack("{s:s}", "name", "tenant-a"), &r),
                     201); /* same name, other organization: fine */
    char other_members[180];
    snprintf(other_members, sizeof other_members, "/api/v1/lists/%s/contacts",
             aud_test_str(&r, "id"));
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "POST", other_members, s_other_key,
                                    json_pack("{s:[s]}", "contact_ids", mine), &r),
                     200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "added")), 0);
    assert_int_equal(json_array_size(json_object_get(r.json, "not_found")), 1);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM list_members WHERE contact_id ="
                                       " '%s' AND organization_id <> '%s'",
                                       mine, s_env.org_id),
                     0);
    free(list);
    free(mine);
    free(theirs);
}

static void test_list_scopes(void **state)
{
    (void)state;
    char *list = s_list("scoped");
    char path[160], members[180];
    snprintf(path, sizeof path, "/api/v1/lists/%s", list);
    snprintf(members, sizeof members, "%s/contacts", path);
    api_resp_t r = {0};
    const char *weak[] = {s_env.key_read, s_env.key_send};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/lists", weak[k],
                                  "{\"name\": \"nope\"}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "PATCH", path, weak[k], "{\"name\": \"nope\"}", NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, weak[k], NULL, NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "POST", members, weak[k],
                                  "{\"emails\": [\"s@scope.example\"]}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "GET", path, weak[k], NULL, NULL, &r), 200);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/tags", weak[k],
                                  "{\"name\": \"nope\"}", NULL, &r),
                         403);
        api_resp_free(&r);
    }
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/lists", NULL, NULL, NULL, &r), 401);
    api_resp_free(&r);
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM lists WHERE name = 'nope'"),
                     0);
    assert_int_equal(aud_test_sql_long(&s_env, "SELECT count(*) FROM tags WHERE name = 'nope'"),
                     0);
    free(list);
}

static void test_list_pagination(void **state)
{
    (void)state;
    for (int i = 0; i < 7; i++) {
        char name[32];
        snprintf(name, sizeof name, "page-%d", i);
        free(s_list(name));
    }
    long total = aud_test_sql_long(&s_env, "SELECT count(*) FROM lists WHERE organization_id = '%s'",
                                   s_env.org_id);
    json_t *ids = json_array();
    int pages = aud_test_walk(&s_env, "/api/v1/lists", s_env.key_read, 2, "id", ids);
    assert_int_equal((long)json_array_size(ids), total);
    assert_int_equal(pages, (int)((total + 1) / 2)); /* a full last page has no next_cursor */
    /* Same order as (created_at, id). */
    char *first = aud_test_sql(&s_env,
                               "SELECT id FROM lists WHERE organization_id = '%s'"
                               " ORDER BY created_at, id LIMIT 1",
                               s_env.org_id);
    assert_string_equal(json_string_value(json_array_get(ids, 0)), first);
    free(first);
    json_decref(ids);

    api_resp_t r = {0};
    const char *bad_limits[] = {"0", "501", "-1", "abc"};
    for (size_t i = 0; i < 4; i++) {
        char path[64];
        snprintf(path, sizeof path, "/api/v1/lists?limit=%s", bad_limits[i]);
        assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 422);
        assert_true(aud_test_has_error(&r, "limit"));
        api_resp_free(&r);
    }
    int st = api_call(&s_env, "GET", "/api/v1/lists?cursor=%27%3B--", s_env.key_read, NULL, NULL,
                      &r);
    assert_true(st == 400 || st == 422);
    api_resp_free(&r);
    /* A well-formed cursor around a position we never make. */
    const char *forged[] = {"1|' OR 1=1 --", "abc|00000000-0000-4000-8000-000000000000",
                            "99999999999999999999999|00000000-0000-4000-8000-000000000000",
                            "12"};
    for (size_t i = 0; i < 4; i++) {
        char *cursor = api_cursor_make(forged[i]);
        char path[256];
        snprintf(path, sizeof path, "/api/v1/lists?cursor=%s", aud_test_pct(cursor));
        free(cursor);
        assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 422);
        assert_true(aud_test_has_error(&r, "cursor"));
        api_resp_free(&r);
    }
}

/* ---- tags ---- */

static void test_tags(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/tags", s_env.key_full,
                                    json_pack("{s:s}", "name", "vip"), &r),
                     201);
    char *vip = strdup(aud_test_str(&r, "id"));
    assert_string_equal(aud_test_str(&r, "name"), "vip");
    assert_int_equal(json_integer_value(json_object_get(r.json, "contact_count")), 0);
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/tags", s_env.token,
                                    json_pack("{s:s}", "name", "vip"), &r),
                     409);
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/tags", s_env.key_full,
                                    json_pack("{s:s}", "name", META), &r),
                     201);
    assert_string_equal(aud_test_str(&r, "name"), META);
    api_resp_free(&r);

    /* Validation. */
    char long_name[102];
    memset(long_name, 't', 101);
    long_name[101] = '\0';
    json_t *bodies[] = {json_pack("{}"),
                        json_pack("{s:s}", "name", ""),
                        json_pack("{s:s}", "name", long_name),
                        json_pack("{s:s}", "name", "new\nline"),
                        json_pack("{s:s}", "name", "c1\xc2\x85"),
                        json_pack("{s:i}", "name", 3),
                        json_pack("{s:s, s:s}", "name", "ok", "colour", "x")};
    const char *fields[] = {"name", "name", "name", "name", "name", "name", "colour"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        assert_int_equal(
            aud_test_callj(&s_env, "POST", "/api/v1/tags", s_env.key_full, bodies[i], &r), 422);
        assert_true(aud_test_has_error(&r, fields[i]));
        api_resp_free(&r);
    }
    long_name[100] = '\0';
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/tags", s_env.key_full,
                                    json_pack("{s:s}", "name", long_name), &r),
                     201);
    api_resp_free(&r);

    /* contact_count counts carriers. */
    char *c1 = aud_test_contact(&s_env, s_env.org_id, "t1@tags.example", NULL, NULL, NULL);
    char *c2 = aud_test_contact(&s_env, s_env.org_id, "t2@tags.example", NULL, NULL, NULL);
    free(aud_test_sql(&s_env,
                      "INSERT INTO contact_tags (organization_id, contact_id, tag_id)"
                      " VALUES ('%s', '%s', '%s'), ('%s', '%s', '%s') RETURNING 1",
                      s_env.org_id, c1, vip, s_env.org_id, c2, vip));
    char path[128];
    snprintf(path, sizeof path, "/api/v1/tags/%s", vip);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "contact_count")), 2);
    api_resp_free(&r);
    json_t *ids = json_array();
    assert_true(aud_test_walk(&s_env, "/api/v1/tags", s_env.key_read, 1, "id", ids) >= 3);
    assert_int_equal((long)json_array_size(ids),
                     aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM tags WHERE organization_id = '%s'",
                                       s_env.org_id));
    json_decref(ids);

    /* Tenancy and scope. */
    assert_int_equal(api_call(&s_env, "GET", path, s_other_key, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_other_key, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_read, NULL, NULL, &r), 403);
    api_resp_free(&r);
    assert_int_equal(aud_test_callj(&s_env, "POST", "/api/v1/tags", s_other_key,
                                    json_pack("{s:s}", "name", "vip"), &r),
                     201); /* names are per organization */
    api_resp_free(&r);
    ids = json_array();
    assert_int_equal(aud_test_walk(&s_env, "/api/v1/tags", s_other_key, 50, "id", ids), 1);
    assert_int_equal(json_array_size(ids), 1);
    json_decref(ids);

    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.key_full, NULL, NULL, &r), 204);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(
        aud_test_sql_long(&s_env, "SELECT count(*) FROM contact_tags WHERE tag_id = '%s'", vip),
        0);
    assert_int_equal(aud_test_sql_long(&s_env,
                                       "SELECT count(*) FROM audit_log WHERE resource_id = '%s'"
                                       " AND action IN ('tag.create', 'tag.delete')",
                                       vip),
                     2);
    free(vip);
    free(c1);
    free(c2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_crud),
        cmocka_unit_test(test_list_validation),
        cmocka_unit_test(test_list_metacharacters),
        cmocka_unit_test(test_list_members),
        cmocka_unit_test(test_list_members_many),
        cmocka_unit_test(test_list_members_refused_atomically),
        cmocka_unit_test(test_list_tenancy),
        cmocka_unit_test(test_list_scopes),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_tags),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
