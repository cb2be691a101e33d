/*
 * test_api_tenancy - organizations never see each other. Driven by the
 * route table itself (api_route_tables), so a route added later is walked
 * too, and one without a case here fails the test until it gets one.
 *
 * Organization A creates one of everything. Organization B then calls every
 * route that names a resource ({id}, {email}) with A's identifiers and a
 * valid body, and must get 404 every time: not 403, not data, not a change.
 * Every listing B makes must hold none of A's ids or emails. Finally A's
 * rows are compared, byte for byte, with what they were before.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_util.h"
#include "rest.h"
#include "routes.h"

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

/* A's resource id per first path segment. */
typedef struct {
    const char *collection; /* "contacts" */
    const char *create;     /* POST body that makes one */
    char id[64];            /* the id A got */
} resource_t;

static resource_t s_res[] = {
    {"contacts", "{\"email\":\"alice@tenant-a.example\",\"fields\":{\"plan\":\"gold\"}}", ""},
    {"lists", "{\"name\":\"A list\"}", ""},
    {"tags", "{\"name\":\"a-tag\"}", ""},
    {"segments", "{\"name\":\"A seg\",\"rule\":{\"field\":\"status\",\"op\":\"eq\",\"value\":\"subscribed\"}}", ""},
    {"templates", "{\"name\":\"A tpl\",\"subject\":\"Hi {{contact.email}}\",\"html\":\"<p>A</p>\"}", ""},
    {"webhooks", "{\"url\":\"https://hooks.tenant-a.example/x\",\"events\":[\"message.sent\"]}", ""},
    {"domains", "{\"name\":\"mail.tenant-a.example\"}", ""},
};
#define NRES (sizeof s_res / sizeof s_res[0])
static char s_key_id[64];
static char s_message_id[64], s_batch_id[64];
static const char *s_suppressed = "blocked@tenant-a.example";

/* A valid body for each route that takes one, so B's call cannot stop at
 * validation (422) before reaching the lookup. */
static const struct {
    const char *name;
    const char *body;
} s_bodies[] = {
    {"contacts.update", "{\"status\":\"unsubscribed\"}"},
    {"contacts.tag", "{\"tags\":[\"b-tag\"]}"},
    {"contacts.untag", "{\"tags\":[\"a-tag\"]}"},
    {"lists.update", "{\"name\":\"renamed by B\"}"},
    {"lists.add_contacts", "{\"emails\":[\"bob@tenant-b.example\"]}"},
    {"lists.remove_contacts", "{\"emails\":[\"alice@tenant-a.example\"]}"},
    {"segments.update", "{\"name\":\"renamed by B\"}"},
    {"templates.update", "{\"subject\":\"changed by B\"}"},
    {"templates.preview", "{\"data\":{}}"},
    {"webhooks.update", "{\"enabled\":false}"},
};

static const char *s_body_for(const char *name, const char *method)
{
    for (size_t i = 0; i < sizeof s_bodies / sizeof s_bodies[0]; i++)
        if (strcmp(s_bodies[i].name, name) == 0)
            return s_bodies[i].body;
    if (strcmp(method, "GET") == 0 || strcmp(method, "DELETE") == 0)
        return NULL;
    if (strstr(name, "verify"))
        return NULL;
    return "";
}

static const char *s_id_for(const char *collection)
{
    if (strcmp(collection, "api-keys") == 0)
        return s_key_id;
    if (strcmp(collection, "messages") == 0)
        return s_message_id;
    if (strcmp(collection, "messages/batches") == 0)
        return s_batch_id;
    for (size_t i = 0; i < NRES; i++)
        if (strcmp(s_res[i].collection, collection) == 0)
            return s_res[i].id;
    return NULL;
}

/* Everything A owns, as one text, to prove nothing changed. */
static char *s_snapshot(void)
{
    char sql[4096];
    snprintf(sql, sizeof sql,
             "SELECT md5(concat_ws('|',"
             " (SELECT string_agg(c::text, ',' ORDER BY c.id) FROM contacts c WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(l::text, ',' ORDER BY l.id) FROM lists l WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(m::text, ',' ORDER BY m.list_id, m.contact_id) FROM list_members m WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(t::text, ',' ORDER BY t.id) FROM tags t WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(ct::text, ',' ORDER BY ct.contact_id, ct.tag_id) FROM contact_tags ct WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(s::text, ',' ORDER BY s.id) FROM segments s WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(s::text, ',' ORDER BY s.id) FROM suppressions s WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(t::text, ',' ORDER BY t.id) FROM templates t WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(v::text, ',' ORDER BY v.template_id, v.version) FROM template_versions v WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(w::text, ',' ORDER BY w.id) FROM webhooks w WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(m::text, ',' ORDER BY m.id) FROM messages m WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(d.id::text || d.status || d.checks::text, ',' ORDER BY d.id) FROM domains d WHERE organization_id = '%1$s'),"
             " (SELECT string_agg(k.id::text || coalesce(k.revoked_at::text, '-'), ',' ORDER BY k.id) FROM api_keys k WHERE organization_id = '%1$s')))",
             E.org_id);
    return api_sql(&E, sql);
}

static void test_every_route_is_404_across_organizations(void **state)
{
    (void)state;
    api_resp_t r;
    /* A makes one of everything. */
    for (size_t i = 0; i < NRES; i++) {
        char path[64];
        snprintf(path, sizeof path, "/api/v1/%s", s_res[i].collection);
        api_call(&E, "POST", path, E.key_full, s_res[i].create, NULL, &r);
        if (r.status != 201 && r.status != 200)
            fail_msg("A cannot create %s: %d %s", s_res[i].collection, r.status, sbuf_data(r.raw));
        snprintf(s_res[i].id, sizeof s_res[i].id, "%s",
                 json_string_value(json_object_get(r.json, "id")));
        api_resp_free(&r);
    }
    api_callf(&E, "POST", "/api/v1/suppressions", E.key_full, &r,
              "{\"email\":\"%s\",\"reason\":\"manual\"}", s_suppressed);
    assert_true(r.status == 201 || r.status == 200);
    api_resp_free(&r);
    /* A message and a bulk send, from A's domain once verified. */
    free(api_sql(&E, "UPDATE domains SET status = 'verified' WHERE name = 'mail.tenant-a.example' RETURNING 1"));
    api_call(&E, "POST", "/api/v1/messages", E.key_full,
             "{\"from\":{\"email\":\"a@mail.tenant-a.example\"},\"to\":\"alice@tenant-a.example\","
             "\"subject\":\"s\",\"text\":\"t\",\"send_at\":\"2099-01-01T00:00:00Z\"}", NULL, &r);
    assert_int_equal(r.status, 202);
    snprintf(s_message_id, sizeof s_message_id, "%s", json_string_value(json_object_get(
             json_array_get(json_object_get(r.json, "messages"), 0), "id")));
    api_resp_free(&r);
    api_callf(&E, "POST", "/api/v1/messages", E.key_full, &r,
              "{\"from\":{\"email\":\"a@mail.tenant-a.example\"},\"to_list\":\"%s\","
              "\"subject\":\"s\",\"text\":\"t\"}", s_id_for("lists"));
    assert_int_equal(r.status, 202);
    snprintf(s_batch_id, sizeof s_batch_id, "%s", json_string_value(json_object_get(r.json, "batch_id")));
    api_resp_free(&r);
    api_call(&E, "GET", "/api/v1/api-keys?limit=1", E.token, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    snprintf(s_key_id, sizeof s_key_id, "%s",
             json_string_value(json_object_get(json_array_get(json_object_get(r.json, "data"), 0), "id")));
    api_resp_free(&r);
    char *before = s_snapshot();
    assert_non_null(before);

    char token_b[2048], key_b[160];
    assert_int_equal(api_env_other_org(&E, token_b, key_b), 0);

    int walked = 0, listings = 0;
    const api_route_t *const *tables = api_route_tables();
    for (int t = 0; tables[t]; t++) {
        for (const api_route_t *rt = tables[t]; rt->method; rt++) {
            if (rt->scope == API_SCOPE_PUBLIC)
                continue;
            const char *cred = rt->scope == API_SCOPE_USER ? token_b : key_b;
            char path[512] = "/api/v1";
            char collection[64] = "";
            int has_param = 0;
            const char *p = rt->path;
            sscanf(p, "/%63[^/]", collection);
            if (strncmp(p, "/messages/batches/", 18) == 0)
                snprintf(collection, sizeof collection, "messages/batches");
            while (*p) {
                if (*p == '{') {
                    const char *end = strchr(p, '}');
                    int is_email = strncmp(p, "{email}", 7) == 0;
                    const char *id = is_email ? s_suppressed : s_id_for(collection);
                    if (!id || !id[0])
                        fail_msg("route %s %s: no resource of A to aim at", rt->method, rt->path);
                    strncat(path, id, sizeof path - strlen(path) - 1);
                    has_param = 1;
                    p = end + 1;
                } else {
                    size_t n = strlen(path);
                    if (n + 1 < sizeof path) {
                        path[n] = *p;
                        path[n + 1] = 0;
                    }
                    p++;
                }
            }
            if (has_param) {
                const char *body = s_body_for(rt->name, rt->method);
                if (body && !body[0])
                    fail_msg("route %s has no tenancy case: add a valid body to s_bodies",
                             rt->name);
                api_call(&E, rt->method, path, cred, body, NULL, &r);
                if (r.status != 404)
                    fail_msg("%s %s by another organization: %d, want 404: %s", rt->method, path,
                             r.status, sbuf_data(r.raw));
                api_resp_free(&r);
                walked++;
            } else if (strcmp(rt->method, "GET") == 0) {
                api_call(&E, "GET", path, cred, NULL, NULL, &r);
                assert_int_equal(r.status, 200);
                for (size_t i = 0; i < NRES; i++)
                    if (strstr(sbuf_data(r.raw), s_res[i].id))
                        fail_msg("%s shows organization A's %s", path, s_res[i].collection);
                if (strstr(sbuf_data(r.raw), "tenant-a.example") || strstr(sbuf_data(r.raw), s_key_id))
                    fail_msg("%s shows organization A's data: %s", path, sbuf_data(r.raw));
                api_resp_free(&r);
                listings++;
            }
        }
    }
    fprintf(stderr, "walked %d routes with ids and %d listings as another organization\n", walked,
            listings);
    assert_true(walked >= 25);
    assert_true(listings >= 9);

    char *after = s_snapshot();
    assert_string_equal(before, after);
    free(before);
    free(after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_route_is_404_across_organizations),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
