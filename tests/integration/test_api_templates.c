/*
 * test_api_templates - /api/v1/templates against a real API node and
 * PostgreSQL: create with parse errors refused by line and column (and no
 * partial row), immutable versions (PATCH makes v2, ?version=1 still gives
 * the old text byte for byte), preview against a contact and sample data
 * (html escaped, subject/text not; strict refuses a missing variable,
 * lenient warns), SQL metacharacters round-tripping, tenancy (another
 * organization gets 404), scopes, and pagination.
 */
#include <pthread.h>
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

/* api_sql as a number (-1 for NULL). */
static long s_count(const char *sql)
{
    return api_sql_long(&s_env, "%s", sql);
}

/* POST a template given as a JSON object; id (>= 64) gets its id. */
static void s_create(json_t *body, const char *token, char *id)
{
    char *text = json_dumps(body, JSON_COMPACT);
    api_resp_t r = {0};
    api_call(&s_env, "POST", "/api/v1/templates", token, text, NULL, &r);
    if (r.status != 201)
        fail_msg("create: %d %s", r.status, sbuf_data(r.raw));
    snprintf(id, 64, "%s", s_str(&r, "id"));
    api_resp_free(&r);
    free(text);
    json_decref(body);
}

/* --------------------------------------------------------------- tests -- */

static void test_create_and_get(void **state)
{
    (void)state;
    api_resp_t r = {0};
    api_call(&s_env, "POST", "/api/v1/templates", s_env.key_full,
             "{\"name\":\"welcome\",\"subject\":\"Hi {{contact.email}}\","
             "\"html\":\"<p>Hello {{contact.fields.first | default: \\\"there\\\"}}</p>\","
             "\"text\":\"Hello\",\"strict\":true}",
             NULL, &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(s_str(&r, "name"), "welcome");
    assert_string_equal(s_str(&r, "subject"), "Hi {{contact.email}}");
    assert_string_equal(s_str(&r, "html"),
                        "<p>Hello {{contact.fields.first | default: \"there\"}}</p>");
    assert_string_equal(s_str(&r, "text"), "Hello");
    assert_true(json_is_true(json_object_get(r.json, "strict")));
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 1);
    assert_non_null(s_str(&r, "created_at"));
    assert_non_null(s_str(&r, "updated_at"));
    char id[64], path[128];
    snprintf(id, sizeof id, "%s", s_str(&r, "id"));
    api_resp_free(&r);

    snprintf(path, sizeof path, "/api/v1/templates/%s", id);
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_string_equal(s_str(&r, "id"), id);
    assert_string_equal(s_str(&r, "html"),
                        "<p>Hello {{contact.fields.first | default: \"there\"}}</p>");
    api_resp_free(&r);

    /* html and text are optional; strict defaults to false. */
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/templates", s_env.token,
                              "{\"name\":\"subject only\",\"subject\":\"x\"}", NULL, &r),
                     201);
    assert_string_equal(s_str(&r, "html"), "");
    assert_string_equal(s_str(&r, "text"), "");
    assert_true(json_is_false(json_object_get(r.json, "strict")));
    api_resp_free(&r);

    /* The same name again is a conflict and leaves one row. */
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/templates", s_env.key_full,
                              "{\"name\":\"welcome\",\"subject\":\"y\"}", NULL, &r),
                     409);
    api_resp_free(&r);
    assert_int_equal(s_count("SELECT count(*) FROM templates WHERE name = 'welcome'"), 1);

    /* Ids that are not uuids are plain 404s. */
    assert_int_equal(
        api_call(&s_env, "GET", "/api/v1/templates/not-a-uuid", s_env.key_full, NULL, NULL, &r),
        404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET",
                              "/api/v1/templates/00000000-0000-0000-0000-000000000000",
                              s_env.key_full, NULL, NULL, &r),
                     404);
    api_resp_free(&r);
}

static void test_create_validation(void **state)
{
    (void)state;
    long templates = s_count("SELECT count(*) FROM templates");
    long versions = s_count("SELECT count(*) FROM template_versions");
    static const struct {
        const char *body;    /* request */
        const char *field;   /* field that must carry the error */
        const char *message; /* part of its message */
    } cases[] = {
        {"{\"subject\":\"x\"}", "name", NULL},
        {"{\"name\":\"\",\"subject\":\"x\"}", "name", "empty"},
        {"{\"name\":\"a\\u0001b\",\"subject\":\"x\"}", "name", "control"},
        {"{\"name\":7,\"subject\":\"x\"}", "name", NULL},
        {"{\"name\":\"broken\"}", "subject", NULL},
        {"{\"name\":\"broken\",\"subject\":\"two\\nlines\"}", "subject", "single line"},
        {"{\"name\":\"broken\",\"subject\":\"{{ x\"}", "subject", "line 1, column 1: unclosed tag"},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"html\":\"a\\nb\\nxx    {{#if contact.x}}hi\"}",
         "html", "line 3, column 7: {{#if}} is never closed"},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"html\":\"{{#each x}}{{/if}}\"}", "html",
         "line 1, column 12:"},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"text\":\"\\n  {{{ a }}\"}", "text",
         "line 2, column 3:"},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"text\":\"{{ contact.email | nope }}\"}", "text",
         "unknown filter 'nope'"},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"html\":5}", "html", NULL},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"strict\":\"yes\"}", "strict", NULL},
        {"{\"name\":\"broken\",\"subject\":\"x\",\"colour\":\"red\"}", "colour", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_resp_t r = {0};
        api_call(&s_env, "POST", "/api/v1/templates", s_env.key_full, cases[i].body, NULL, &r);
        api_expect_invalid(&r, cases[i].field, cases[i].message);
        api_resp_free(&r);
    }
    /* A body that is not an object is the framework's 400. */
    api_resp_t r = {0};
    assert_int_equal(
        api_call(&s_env, "POST", "/api/v1/templates", s_env.key_full, "[1,2]", NULL, &r), 400);
    api_resp_free(&r);
    /* Several bad parts at once: every one is reported. */
    api_call(&s_env, "POST", "/api/v1/templates", s_env.key_full,
             "{\"name\":\"broken\",\"subject\":\"{{\",\"html\":\"{{/if}}\",\"text\":\"{{#if}}\"}",
             NULL, &r);
    api_expect_invalid(&r, "subject", "line 1, column 1");
    api_expect_invalid(&r, "html", "line 1, column 1");
    api_expect_invalid(&r, "text", "line 1, column 1");
    api_resp_free(&r);
    /* Nothing was written by any of them: no template, no version. */
    assert_int_equal(s_count("SELECT count(*) FROM templates"), templates);
    assert_int_equal(s_count("SELECT count(*) FROM template_versions"), versions);
    assert_int_equal(s_count("SELECT count(*) FROM templates WHERE name = 'broken'"), 0);
}

static void test_versions(void **state)
{
    (void)state;
    char id[64], path[160];
    s_create(json_pack("{s:s, s:s, s:s, s:s}", "name", "versioned", "subject", "S1", "html",
                       "<p>one</p>\n", "text", "one"),
             s_env.key_full, id);
    snprintf(path, sizeof path, "/api/v1/templates/%s", id);

    api_resp_t r = {0};
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"html\":\"<p>two</p>\"}", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    assert_string_equal(s_str(&r, "html"), "<p>two</p>");
    assert_string_equal(s_str(&r, "subject"), "S1"); /* carried over */
    assert_string_equal(s_str(&r, "text"), "one");
    api_resp_free(&r);

    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    assert_string_equal(s_str(&r, "html"), "<p>two</p>");
    api_resp_free(&r);

    char vpath[200];
    snprintf(vpath, sizeof vpath, "%s?version=1", path);
    assert_int_equal(api_call(&s_env, "GET", vpath, s_env.key_read, NULL, NULL, &r), 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 1);
    assert_int_equal(json_integer_value(json_object_get(r.json, "current_version")), 2);
    assert_string_equal(s_str(&r, "html"), "<p>one</p>\n");
    assert_string_equal(s_str(&r, "subject"), "S1");
    api_resp_free(&r);

    snprintf(vpath, sizeof vpath, "%s?version=3", path);
    assert_int_equal(api_call(&s_env, "GET", vpath, s_env.key_read, NULL, NULL, &r), 404);
    api_resp_free(&r);
    const char *bad_versions[] = {"abc", "0", "-1", "1x", "99999999999"};
    for (size_t i = 0; i < sizeof bad_versions / sizeof bad_versions[0]; i++) {
        snprintf(vpath, sizeof vpath, "%s?version=%s", path, bad_versions[i]);
        api_call(&s_env, "GET", vpath, s_env.key_read, NULL, NULL, &r);
        api_expect_invalid(&r, "version", NULL);
        api_resp_free(&r);
    }

    /* name and strict change the template, not its text: no new version. */
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"name\":\"renamed\",\"strict\":true}", NULL,
             &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    assert_string_equal(s_str(&r, "name"), "renamed");
    assert_true(json_is_true(json_object_get(r.json, "strict")));
    api_resp_free(&r);
    /* The same text again is not a change either. */
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"html\":\"<p>two</p>\"}", NULL, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    api_resp_free(&r);

    /* A part that does not parse: 422, and still two versions. */
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"text\":\"ok\",\"html\":\"x {{#each a}}\"}",
             NULL, &r);
    api_expect_invalid(&r, "html", "line 1, column 3: {{#each}} is never closed");
    api_resp_free(&r);
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"bogus\":1}", NULL, &r);
    api_expect_invalid(&r, "bogus", NULL);
    api_resp_free(&r);
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"name\":\"\"}", NULL, &r);
    api_expect_invalid(&r, "name", NULL);
    api_resp_free(&r);

    /* A subject change makes version 3; version 1 is untouched in the table. */
    api_call(&s_env, "PATCH", path, s_env.key_full, "{\"subject\":\"S3\"}", NULL, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 3);
    assert_string_equal(s_str(&r, "html"), "<p>two</p>");
    api_resp_free(&r);
    char sql[400];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM template_versions WHERE template_id = '%s'",
             id);
    assert_int_equal(s_count(sql), 3);
    snprintf(sql, sizeof sql,
             "SELECT html || '|' || subject || '|' || text FROM template_versions "
             "WHERE template_id = '%s' AND version = 1",
             id);
    char *v1 = api_sql(&s_env, sql);
    assert_non_null(v1);
    assert_string_equal(v1, "<p>one</p>\n|S1|one");
    free(v1);

    /* PATCH of a template that is not there. */
    api_call(&s_env, "PATCH", "/api/v1/templates/00000000-0000-0000-0000-000000000000",
             s_env.key_full, "{\"name\":\"x\"}", NULL, &r);
    assert_int_equal(r.status, 404);
    api_resp_free(&r);
}

/* A contact in the main organization; id (>= 64) gets its id. */
static void s_contact(const char *email, const char *fields_json, char *id)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO contacts (organization_id, email, fields) "
             "VALUES ('%s', '%s', '%s') RETURNING id",
             s_env.org_id, email, fields_json);
    char *v = api_sql(&s_env, sql);
    assert_non_null(v);
    snprintf(id, 64, "%s", v);
    free(v);
}

static void test_preview_contact(void **state)
{
    (void)state;
    char cid[64], tid[64], path[160];
    s_contact("ann@example.com",
              "{\"first\": \"Ann\", \"x\": \"<script>alert(1)</script>\", \"n\": 3}", cid);
    s_create(json_pack("{s:s, s:s, s:s, s:s}", "name", "preview contact", "subject",
                       "Hi {{contact.fields.first}} {{contact.fields.x}}", "html",
                       "<p>{{contact.fields.x}}</p><i>{{{contact.fields.x}}}</i>{{contact.email}}"
                       "{{#if contact.fields.n}} n={{contact.fields.n}}{{/if}}",
                       "text", "{{contact.fields.x}} {{contact.status}}"),
             s_env.key_full, tid);
    snprintf(path, sizeof path, "/api/v1/templates/%s/preview", tid);

    /* A read key may preview. */
    api_resp_t r = {0};
    api_callf(&s_env, "POST", path, s_env.key_read, &r, "{\"contact_id\":\"%s\"}", cid);
    if (r.status != 200)
        fail_msg("preview: %d %s", r.status, sbuf_data(r.raw));
    assert_string_equal(s_str(&r, "subject"), "Hi Ann <script>alert(1)</script>");
    assert_string_equal(s_str(&r, "html"), "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
                                           "<i><script>alert(1)</script></i>ann@example.com n=3");
    assert_string_equal(s_str(&r, "text"), "<script>alert(1)</script> subscribed");
    assert_int_equal(json_array_size(json_object_get(r.json, "warnings")), 0);
    api_resp_free(&r);

    /* Contact plus sample data: data is the root, contact is added to it. */
    api_callf(&s_env, "POST", path, s_env.key_full, &r,
              "{\"contact_id\":\"%s\",\"data\":{\"contact\":{\"email\":\"fake\"},\"x\":1}}", cid);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(s_str(&r, "html"), "ann@example.com"));
    api_resp_free(&r);

    /* Another organization's contact is a 404, as is a missing one. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO contacts (organization_id, email) SELECT id, 'other@example.com' "
             "FROM organizations WHERE id <> '%s' LIMIT 1 RETURNING id",
             s_env.org_id);
    char *other = api_sql(&s_env, sql);
    assert_non_null(other);
    api_callf(&s_env, "POST", path, s_env.key_full, &r, "{\"contact_id\":\"%s\"}", other);
    assert_int_equal(r.status, 404);
    api_resp_free(&r);
    free(other);
    api_call(&s_env, "POST", path, s_env.key_full,
             "{\"contact_id\":\"00000000-0000-0000-0000-000000000000\"}", NULL, &r);
    assert_int_equal(r.status, 404);
    api_resp_free(&r);

    /* Bad preview bodies. */
    static const struct {
        const char *body;
        const char *field;
    } bad[] = {
        {"{\"contact_id\":\"nope\"}", "contact_id"},
        {"{\"contact_id\":12}", "contact_id"},
        {"{\"data\":[1]}", "data"},
        {"{\"data\":\"x\"}", "data"},
        {"{\"version\":0}", "version"},
        {"{\"version\":\"1\"}", "version"},
        {"{\"other\":1}", "other"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_call(&s_env, "POST", path, s_env.key_full, bad[i].body, NULL, &r);
        api_expect_invalid(&r, bad[i].field, NULL);
        api_resp_free(&r);
    }
    api_call(&s_env, "POST", path, s_env.key_full, "{\"version\":9}", NULL, &r);
    assert_int_equal(r.status, 404);
    api_resp_free(&r);
    api_call(&s_env, "POST", "/api/v1/templates/00000000-0000-0000-0000-000000000000/preview",
             s_env.key_full, "{}", NULL, &r);
    assert_int_equal(r.status, 404);
    api_resp_free(&r);
}

static void test_preview_data_strict_and_lenient(void **state)
{
    (void)state;
    char lenient[64], strict[64], path[160];
    s_create(json_pack("{s:s, s:s, s:s, s:s}", "name", "lenient", "subject", "{{greeting}}", "html",
                       "<b>{{name}}</b>\n{{missing.path}}", "text", "{{name | upper}} {{obj}}"),
             s_env.key_full, lenient);
    s_create(json_pack("{s:s, s:s, s:s, s:b}", "name", "strict", "subject", "{{greeting}}", "html",
                       "<b>{{name}}</b>\n  {{missing.path}}", "strict", 1),
             s_env.key_full, strict);

    api_resp_t r = {0};
    snprintf(path, sizeof path, "/api/v1/templates/%s/preview", lenient);
    api_call(&s_env, "POST", path, s_env.key_full,
             "{\"data\":{\"greeting\":\"Hey & <you>\",\"name\":\"<Bob>\",\"obj\":{}}}", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_str(&r, "subject"), "Hey & <you>"); /* text: not escaped */
    assert_string_equal(s_str(&r, "html"), "<b>&lt;Bob&gt;</b>\n");
    assert_string_equal(s_str(&r, "text"), "<BOB> ");
    json_t *warnings = json_object_get(r.json, "warnings");
    assert_int_equal(json_array_size(warnings), 2);
    int found = 0;
    size_t i;
    json_t *w;
    json_array_foreach(warnings, i, w)
    {
        const char *msg = json_string_value(json_object_get(w, "message"));
        if (strstr(msg, "missing.path")) {
            assert_string_equal(json_string_value(json_object_get(w, "part")), "html");
            assert_int_equal(json_integer_value(json_object_get(w, "line")), 2);
            assert_int_equal(json_integer_value(json_object_get(w, "column")), 1);
            found = 1;
        }
    }
    assert_true(found);
    api_resp_free(&r);

    /* No data at all renders with empty values and warnings. */
    api_call(&s_env, "POST", path, s_env.key_full, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_true(json_array_size(json_object_get(r.json, "warnings")) >= 3);
    api_resp_free(&r);

    /* Strict: the missing variable is an error naming path and position. */
    snprintf(path, sizeof path, "/api/v1/templates/%s/preview", strict);
    api_call(&s_env, "POST", path, s_env.key_full,
             "{\"data\":{\"greeting\":\"hi\",\"name\":\"x\"}}", NULL, &r);
    api_expect_invalid(&r, "data", "html line 2, column 3: missing variable missing.path");
    api_resp_free(&r);
    api_call(&s_env, "POST", path, s_env.key_full,
             "{\"data\":{\"greeting\":\"hi\",\"name\":\"x\",\"missing\":{\"path\":\"ok\"}}}", NULL,
             &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_str(&r, "html"), "<b>x</b>\n  ok");
    api_resp_free(&r);

    /* Switching strict off makes the same data render with a warning. */
    char tpath[160];
    snprintf(tpath, sizeof tpath, "/api/v1/templates/%s", strict);
    api_call(&s_env, "PATCH", tpath, s_env.key_full, "{\"strict\":false}", NULL, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);
    api_call(&s_env, "POST", path, s_env.key_full,
             "{\"data\":{\"greeting\":\"hi\",\"name\":\"x\"}}", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "warnings")), 1);
    api_resp_free(&r);

    /* Preview of an older version. */
    api_call(&s_env, "PATCH", tpath, s_env.key_full, "{\"html\":\"v2 {{name}}\"}", NULL, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "version")), 2);
    api_resp_free(&r);
    api_call(&s_env, "POST", path, s_env.key_full, "{\"data\":{\"name\":\"N\"},\"version\":1}",
             NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_str(&r, "html"), "<b>N</b>\n  ");
    api_resp_free(&r);
    api_call(&s_env, "POST", path, s_env.key_full, "{\"data\":{\"name\":\"N\"}}", NULL, &r);
    assert_string_equal(s_str(&r, "html"), "v2 N");
    api_resp_free(&r);

    /* `| required` fails even a lenient template. */
    char req_id[64];
    s_create(json_pack("{s:s, s:s, s:s}", "name", "required", "subject", "x", "text",
                       "{{ code | required }}"),
             s_env.key_full, req_id);
    snprintf(path, sizeof path, "/api/v1/templates/%s/preview", req_id);
    api_call(&s_env, "POST", path, s_env.key_full, "{\"data\":{}}", NULL, &r);
    api_expect_invalid(&r, "data", "text line 1, column 1: required variable code is missing");
    api_resp_free(&r);
}

/* One writer of test_concurrent_patches: PATCH_ROUNDS new html bodies. */
#define PATCH_ROUNDS 8
typedef struct {
    const char *path; /* the template */
    int writer;       /* 0 or 1, makes the bodies distinct */
    int ok;           /* PATCHes answered 200 */
} s_writer_t;

static void *s_patch_writer(void *arg)
{
    s_writer_t *w = arg;
    for (int i = 0; i < PATCH_ROUNDS; i++) {
        api_resp_t r = {0};
        api_callf(&s_env, "PATCH", w->path, s_env.key_full, &r, "{\"html\":\"w%d r%d\"}", w->writer,
                  i);
        if (r.status == 200)
            w->ok++;
        else
            fprintf(stderr, "concurrent PATCH: %d %s\n", r.status, sbuf_data(r.raw));
        api_resp_free(&r);
    }
    return NULL;
}

static void test_concurrent_patches(void **state)
{
    (void)state;
    char id[64], path[160], sql[512];
    s_create(json_pack("{s:s, s:s}", "name", "raced", "subject", "x"), s_env.key_full, id);
    snprintf(path, sizeof path, "/api/v1/templates/%s", id);
    s_writer_t w[2] = {{path, 0, 0}, {path, 1, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, s_patch_writer, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    /* Every PATCH made its own version, numbered without gaps. */
    assert_int_equal(w[0].ok + w[1].ok, 2 * PATCH_ROUNDS);
    snprintf(sql, sizeof sql,
             "SELECT count(*) || ' ' || max(version) || ' ' || (SELECT current_version FROM "
             "templates WHERE id = '%s') FROM template_versions WHERE template_id = '%s'",
             id, id);
    char *v = api_sql(&s_env, sql);
    char want[32];
    snprintf(want, sizeof want, "%d %d %d", 2 * PATCH_ROUNDS + 1, 2 * PATCH_ROUNDS + 1,
             2 * PATCH_ROUNDS + 1);
    assert_string_equal(v, want);
    free(v);
}

static void test_sql_metacharacters(void **state)
{
    (void)state;
    const char *name = "x'); DROP TABLE templates; -- \"\\ %_ $1";
    const char *subject = "Robert'); DELETE FROM template_versions;-- \\ \" ` $$";
    const char *html = "<a href=\"x\">'; TRUNCATE templates; --</a>\n\\{{ literal \x01";
    const char *text = "E'\\x00' || chr(0) ; SELECT pg_sleep(1); /* */ 100%";
    char id[64], path[160];
    s_create(json_pack("{s:s, s:s, s:s, s:s}", "name", name, "subject", subject, "html", html,
                       "text", text),
             s_env.key_full, id);
    snprintf(path, sizeof path, "/api/v1/templates/%s", id);
    api_resp_t r = {0};
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_full, NULL, NULL, &r), 200);
    assert_string_equal(s_str(&r, "name"), name);
    assert_string_equal(s_str(&r, "subject"), subject);
    assert_string_equal(s_str(&r, "html"), html);
    assert_string_equal(s_str(&r, "text"), text);
    api_resp_free(&r);

    /* And through PATCH (a new version) too. */
    json_t *patch = json_pack("{s:s, s:s}", "name", "n2 ' \" ;--", "text", "t2 ' \" ;--");
    char *body = json_dumps(patch, JSON_COMPACT);
    api_call(&s_env, "PATCH", path, s_env.key_full, body, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(s_str(&r, "name"), "n2 ' \" ;--");
    assert_string_equal(s_str(&r, "text"), "t2 ' \" ;--");
    assert_string_equal(s_str(&r, "html"), html);
    api_resp_free(&r);
    free(body);
    json_decref(patch);
    assert_true(s_count("SELECT count(*) FROM templates") > 0);
}

static void test_tenancy_and_scope(void **state)
{
    (void)state;
    char id[64], path[160], ppath[200];
    s_create(json_pack("{s:s, s:s}", "name", "mine", "subject", "x"), s_env.key_full, id);
    snprintf(path, sizeof path, "/api/v1/templates/%s", id);
    snprintf(ppath, sizeof ppath, "%s/preview", path);

    api_resp_t r = {0};
    const char *other[] = {s_other_key, s_other_token};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "GET", path, other[k], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "PATCH", path, other[k], "{\"name\":\"stolen\"}", NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "POST", ppath, other[k], "{}", NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "GET", "/api/v1/templates?limit=200", other[k], NULL, NULL, &r), 200);
        assert_null(strstr(sbuf_data(r.raw), id));
        api_resp_free(&r);
    }
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT name FROM templates WHERE id = '%s'", id);
    char *name = api_sql(&s_env, sql);
    assert_string_equal(name, "mine");
    free(name);
    /* The other organization may use the same name: names are per org. */
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/templates", s_other_key,
                              "{\"name\":\"mine\",\"subject\":\"theirs\"}", NULL, &r),
                     201);
    api_resp_free(&r);

    /* Scopes: read and send keys cannot create or change; read may preview. */
    const char *weak[] = {s_env.key_read, s_env.key_send};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(api_call(&s_env, "POST", "/api/v1/templates", weak[k],
                                  "{\"name\":\"nope\",\"subject\":\"x\"}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "PATCH", path, weak[k], "{\"name\":\"nope\"}", NULL, &r),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "POST", ppath, weak[k], "{}", NULL, &r), 200);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "GET", path, weak[k], NULL, NULL, &r), 200);
        api_resp_free(&r);
    }
    assert_int_equal(s_count("SELECT count(*) FROM templates WHERE name = 'nope'"), 0);
    assert_int_equal(api_call(&s_env, "GET", path, NULL, NULL, NULL, &r), 401);
    api_resp_free(&r);
}

static void test_pagination(void **state)
{
    (void)state;
    char other_id[64];
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "page %d", i);
        s_create(json_pack("{s:s, s:s, s:s}", "name", name, "subject", "s", "html", "<p>big</p>"),
                 s_env.key_full, other_id);
    }
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM templates WHERE organization_id = '%s'",
             s_env.org_id);
    long total = s_count(sql);
    assert_true(total >= 5);

    /* Walk every page of 2: each template once, in creation order, no bodies. */
    char path[512] = "/api/v1/templates?limit=2";
    long seen = 0;
    char last_created[64] = "";
    json_t *ids = json_object();
    for (int pages = 0; pages < 100; pages++) {
        api_resp_t r = {0};
        assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
        json_t *data = json_object_get(r.json, "data");
        assert_true(json_array_size(data) <= 2);
        size_t i;
        json_t *t;
        json_array_foreach(data, i, t)
        {
            const char *tid = json_string_value(json_object_get(t, "id"));
            assert_null(json_object_get(ids, tid));
            json_object_set_new(ids, tid, json_true());
            assert_null(json_object_get(t, "html"));
            assert_null(json_object_get(t, "text"));
            assert_non_null(json_object_get(t, "subject"));
            assert_non_null(json_object_get(t, "version"));
            const char *created = json_string_value(json_object_get(t, "created_at"));
            assert_true(strcmp(last_created, created) <= 0);
            snprintf(last_created, sizeof last_created, "%s", created);
            seen++;
        }
        const char *next = json_string_value(json_object_get(r.json, "next_cursor"));
        if (!next) {
            api_resp_free(&r);
            break;
        }
        assert_int_equal(json_array_size(data), 2);
        snprintf(path, sizeof path, "/api/v1/templates?limit=2&cursor=%s", next);
        api_resp_free(&r);
    }
    assert_int_equal(seen, total);
    json_decref(ids);

    const char *bad[] = {"/api/v1/templates?limit=0", "/api/v1/templates?limit=201",
                         "/api/v1/templates?limit=x", "/api/v1/templates?cursor=%%%%",
                         "/api/v1/templates?cursor=bm90LWEtY3Vyc29y"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_resp_t r = {0};
        api_call(&s_env, "GET", bad[i], s_env.key_read, NULL, NULL, &r);
        if (r.status != 400 && r.status != 422)
            fail_msg("%s: %d %s", bad[i], r.status, sbuf_data(r.raw));
        api_resp_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),
        cmocka_unit_test(test_create_validation),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_preview_contact),
        cmocka_unit_test(test_preview_data_strict_and_lenient),
        cmocka_unit_test(test_concurrent_patches),
        cmocka_unit_test(test_sql_metacharacters),
        cmocka_unit_test(test_tenancy_and_scope),
        cmocka_unit_test(test_pagination),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
