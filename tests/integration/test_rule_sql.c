/*
 * test_rule_sql - compiled rules run on a real PostgreSQL and agree with
 * rule_eval.
 *
 * Builds minimal contacts / list_members / tags / contact_tags tables in a
 * fresh database, inserts ~20 varied contacts (NULL columns, mixed JSON
 * kinds, SQL and LIKE metacharacters, non-ASCII, cross-tenant traps), then
 * for each rule compares the ids the SQL selects with the ids rule_eval
 * accepts on the same rows read back as JSON. The session time zone is set
 * to +05:45 so timestamps round-trip through a non-UTC offset, and email
 * has a linguistic (ICU) collation so ordering must not depend on it.
 * Failures list contacts by the last three digits of their ids.
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

#include "db.h"
#include "rule.h"
#include "sbuf.h"

#include "harness.h"

#define ORG_A "aaaaaaaa-0000-0000-0000-000000000001"
#define ORG_B "bbbbbbbb-0000-0000-0000-000000000002"
#define LIST_1 "11111111-1111-4111-8111-111111111111"
#define LIST_2 "22222222-2222-4222-8222-222222222222"

static const char s_schema[] =
    "CREATE TABLE contacts (id uuid PRIMARY KEY, organization_id uuid NOT NULL,"
    " email text COLLATE \"und-x-icu\", status text, fields jsonb, created_at timestamptz);"
    "CREATE TABLE list_members (list_id uuid NOT NULL, contact_id uuid NOT NULL,"
    " organization_id uuid NOT NULL);"
    "CREATE TABLE tags (id uuid PRIMARY KEY, organization_id uuid NOT NULL, name text NOT NULL);"
    "CREATE TABLE contact_tags (contact_id uuid NOT NULL, tag_id uuid NOT NULL,"
    " organization_id uuid NOT NULL);"
    "SET TIME ZONE 'Asia/Kathmandu';";

typedef struct {
    const char *email;      /* NULL for SQL NULL */
    const char *status;     /* NULL for SQL NULL */
    const char *created_at; /* NULL for SQL NULL */
    const char *fields;     /* jsonb text, NULL for SQL NULL */
} contact_t;

/* Organization A's contacts; id of entry i is ...0000000000NN with NN = i+1. */
static const contact_t s_contacts[] = {
    {"alice@example.com", "subscribed", "2024-01-10T10:00:00Z",
     "{\"plan\":\"pro\",\"age\":30,\"score\":2.5,\"vip\":true,\"city\":\"Berlin\"}"},
    {"bob@example.com", "unsubscribed", "2024-02-01T00:00:00Z",
     "{\"plan\":\"free\",\"age\":17,\"city\":\"berlin\"}"},
    {"carol@test.org", "bounced", "2023-12-31T23:59:59.999999Z",
     "{\"plan\":\"pro\",\"age\":\"30\",\"score\":0.1}"},
    {"dave@test.org", "complained", "2024-03-15T12:30:00+02:00",
     "{\"age\":30.0,\"vip\":false,\"note\":\"50% off_now\"}"},
    {"eve@example.com", "subscribed", "2024-06-01T00:00:00Z", "{}"},
    {"frank_1@example.com", "subscribed", "2022-01-01T00:00:00Z",
     "{\"plan\":null,\"age\":-3,\"score\":1e3}"},
    {"frankz1@example.com", "subscribed", "2022-01-01T00:00:00.5Z", "{\"note\":\"a\\\\b\"}"},
    {"grace%@example.com", "subscribed", "2024-01-01T00:00:00Z", "{\"plan\":\"PRO\",\"vip\":\"true\"}"},
    {NULL, NULL, NULL, NULL},
    {"heidi@x.io", "subscribed", "2024-05-05T05:05:05.050505+05:05",
     "{\"plan\":\"pro plus\",\"age\":99999999999,\"list\":[\"x\"]}"},
    {"ivan@x.io", "subscribed", "2024-04-01T00:00:00Z",
     "{\"city\":\"Z\\u00fcrich\",\"plan\":\"enterprise\",\"score\":2.50}"},
    {"judy@x.io", "bounced", "2024-04-02T00:00:00Z", "{\"plan\":\"pro\",\"age\":45,\"nested\":{\"a\":1}}"},
    {"mallory@x.io", "subscribed", "2024-04-03T00:00:00Z",
     "{\"plan\":\"'; DROP TABLE contacts; --\",\"age\":30.5}"},
    {"\xc3\x84rger@x.io", "unsubscribed", "2024-04-04T00:00:00Z", "{\"age\":\"abc\",\"city\":\"\"}"},
    {"Oscar@X.io", "subscribed", "2024-04-05T00:00:00Z", "{\"score\":0.10,\"vip\":true}"},
    {"peggy@x.io", "complained", "2021-06-30T23:00:00-01:00", "{\"plan\":\"pro\",\"age\":0}"},
    {"trent@x.io", "subscribed", "2024-07-01T00:00:00Z", "{\"plan\":\"$2\",\"age\":1e2}"},
    {"victor@x.io", "bounced", "2024-07-02T00:00:00Z", "{\"plan\":\"pro\\\\%\",\"vip\":null}"},
    {"walter@x.io", "subscribed", "2024-07-03T00:00:00Z", "{\"plan\":\"pr_\",\"age\":18}"},
    {"zoe@x.io", "subscribed", NULL, "{\"plan\":\"pro\"}"},
};
#define N_CONTACTS (sizeof s_contacts / sizeof s_contacts[0])

/* Organization A's memberships (contact index, list id / tag name). */
static const struct {
    int contact;
    const char *list;
} s_lists[] = {{0, LIST_1}, {1, LIST_1}, {3, LIST_1}, {9, LIST_1}, {14, LIST_1}, {0, LIST_2}, {4, LIST_2}};
static const struct {
    int contact;
    const char *tag;
} s_tags[] = {{0, "vip"}, {2, "vip"}, {11, "vip"}, {2, "new"}, {5, "new"}, {17, "it's"}};
static const char *const s_tag_names[] = {"vip", "new", "it's"};

static const char *const s_rules[] = {
    "{\"field\":\"email\",\"op\":\"eq\",\"value\":\"alice@example.com\"}",
    "{\"field\":\"email\",\"op\":\"neq\",\"value\":\"alice@example.com\"}",
    "{\"field\":\"email\",\"op\":\"contains\",\"value\":\"%\"}",
    "{\"field\":\"email\",\"op\":\"starts_with\",\"value\":\"frank_\"}",
    "{\"field\":\"email\",\"op\":\"starts_with\",\"value\":\"grace%\"}",
    "{\"field\":\"email\",\"op\":\"gt\",\"value\":\"d\"}",
    "{\"field\":\"email\",\"op\":\"lte\",\"value\":\"carol@test.org\"}",
    "{\"field\":\"email\",\"op\":\"in\",\"value\":[\"eve@example.com\",\"Oscar@X.io\",\"nobody\"]}",
    "{\"field\":\"email\",\"op\":\"exists\"}",
    "{\"field\":\"status\",\"op\":\"neq\",\"value\":\"bounced\"}",
    "{\"field\":\"status\",\"op\":\"in\",\"value\":[\"bounced\",\"complained\"]}",
    "{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"2024-01-01T00:00:00Z\"}",
    "{\"field\":\"created_at\",\"op\":\"lte\",\"value\":\"2024-03-15T10:30:00Z\"}",
    "{\"field\":\"created_at\",\"op\":\"eq\",\"value\":\"2024-03-15T16:15:00+05:45\"}",
    "{\"field\":\"created_at\",\"op\":\"lt\",\"value\":\"2024-01-01T00:00:00.000001+00:00\"}",
    "{\"field\":\"created_at\",\"op\":\"neq\",\"value\":\"2022-01-01T00:00:00.5Z\"}",
    "{\"field\":\"created_at\",\"op\":\"gte\",\"value\":\"2024-05-05T00:00:05.0505051Z\"}",
    "{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro\"}",
    "{\"field\":\"fields.plan\",\"op\":\"neq\",\"value\":\"pro\"}",
    "{\"not\":{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro\"}}",
    "{\"field\":\"fields.plan\",\"op\":\"contains\",\"value\":\"pro\"}",
    "{\"field\":\"fields.plan\",\"op\":\"starts_with\",\"value\":\"pr_\"}",
    "{\"field\":\"fields.plan\",\"op\":\"starts_with\",\"value\":\"pro\\\\\"}",
    "{\"field\":\"fields.plan\",\"op\":\"gt\",\"value\":\"f\"}",
    "{\"field\":\"fields.plan\",\"op\":\"in\",\"value\":[\"free\",\"$2\",30,true]}",
    "{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"'; DROP TABLE contacts; --\"}",
    "{\"field\":\"fields.plan\",\"op\":\"exists\"}",
    "{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":18}",
    "{\"field\":\"fields.age\",\"op\":\"gte\",\"value\":30}",
    "{\"field\":\"fields.age\",\"op\":\"eq\",\"value\":30}",
    "{\"field\":\"fields.age\",\"op\":\"neq\",\"value\":30}",
    "{\"field\":\"fields.age\",\"op\":\"lte\",\"value\":100.0}",
    "{\"field\":\"fields.age\",\"op\":\"in\",\"value\":[30,17,\"30\",\"abc\"]}",
    "{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":\"2\"}",
    "{\"field\":\"fields.score\",\"op\":\"eq\",\"value\":0.1}",
    "{\"field\":\"fields.score\",\"op\":\"lt\",\"value\":2.5}",
    "{\"field\":\"fields.vip\",\"op\":\"eq\",\"value\":true}",
    "{\"field\":\"fields.vip\",\"op\":\"neq\",\"value\":true}",
    "{\"field\":\"fields.vip\",\"op\":\"exists\"}",
    "{\"field\":\"fields.city\",\"op\":\"lt\",\"value\":\"a\"}",
    "{\"field\":\"fields.note\",\"op\":\"starts_with\",\"value\":\"50%\"}",
    "{\"field\":\"fields.note\",\"op\":\"contains\",\"value\":\"\\\\\"}",
    "{\"in_list\":\"" LIST_1 "\"}",
    "{\"not\":{\"in_list\":\"" LIST_2 "\"}}",
    "{\"has_tag\":\"vip\"}",
    "{\"has_tag\":\"it's\"}",
    "{\"and\":[{\"has_tag\":\"vip\"},{\"in_list\":\"" LIST_1 "\"}]}",
    ("{\"or\":[{\"has_tag\":\"new\"},{\"and\":[{\"field\":\"status\",\"op\":\"eq\",\"value\":\"subscribed\"},"
    "{\"not\":{\"field\":\"fields.age\",\"op\":\"exists\"}}]}]}"),
};

/* Which contact rule_eval's lookup answers for. */
typedef struct {
    int contact;
} lookup_arg_t;

static int s_lookup(void *arg, rule_member_t kind, const char *key)
{
    const lookup_arg_t *la = arg;
    if (kind == RULE_MEMBER_LIST) {
        for (size_t i = 0; i < sizeof s_lists / sizeof s_lists[0]; i++)
            if (s_lists[i].contact == la->contact && strcmp(s_lists[i].list, key) == 0)
                return 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof s_tags / sizeof s_tags[0]; i++)
        if (s_tags[i].contact == la->contact && strcmp(s_tags[i].tag, key) == 0)
            return 1;
    return 0;
}

static void s_contact_id(int i, char *out, size_t size)
{
    snprintf(out, size, "00000000-0000-4000-8000-%012d", i + 1);
}

static void s_exec(db_t *db, const char *sql, int n, const char *const *values)
{
    sbuf_t *err = sbuf_new(64);
    if (db_exec(db, sql, n, values, err) != 0)
        fail_msg("%s: %s", sql, sbuf_data(err));
    sbuf_destroy(&err);
}

static void s_load(db_t *db)
{
    sbuf_t *err = sbuf_new(64);
    if (db_exec_script(db, s_schema, err) != 0)
        fail_msg("schema: %s", sbuf_data(err));
    sbuf_destroy(&err);
    char id[40], tag_id[40];
    for (size_t i = 0; i < N_CONTACTS; i++) {
        s_contact_id((int)i, id, sizeof id);
        const char *v[] = {id, ORG_A, s_contacts[i].email, s_contacts[i].status,
                           s_contacts[i].fields, s_contacts[i].created_at};
        s_exec(db, "INSERT INTO contacts VALUES ($1, $2, $3, $4, $5::jsonb, $6::timestamptz)", 6, v);
    }
    /* Organization B: a contact that matches almost everything, and a tag
     * called "vip" wrongly linked to one of A's contacts under B. */
    const char *b[] = {"00000000-0000-4000-8000-000000000999", ORG_B, "alice@example.com",
                       "subscribed", "{\"plan\":\"pro\",\"age\":30}"};
    s_exec(db, "INSERT INTO contacts VALUES ($1, $2, $3, $4, $5::jsonb, now())", 5, b);
    const char *bl[] = {LIST_1, b[0], ORG_B};
    s_exec(db, "INSERT INTO list_members VALUES ($1, $2, $3)", 3, bl);
    const char *btag[] = {"99999999-0000-4000-8000-000000000001", ORG_B, "vip"};
    s_exec(db, "INSERT INTO tags VALUES ($1, $2, $3)", 3, btag);
    s_contact_id(4, id, sizeof id);
    const char *trap[] = {id, btag[0], ORG_B};
    s_exec(db, "INSERT INTO contact_tags VALUES ($1, $2, $3)", 3, trap);
    const char *trap_list[] = {LIST_1, id, ORG_B};
    s_exec(db, "INSERT INTO list_members VALUES ($1, $2, $3)", 3, trap_list);

    for (size_t i = 0; i < sizeof s_lists / sizeof s_lists[0]; i++) {
        s_contact_id(s_lists[i].contact, id, sizeof id);
        const char *v[] = {s_lists[i].list, id, ORG_A};
        s_exec(db, "INSERT INTO list_members VALUES ($1, $2, $3)", 3, v);
    }
    for (size_t t = 0; t < sizeof s_tag_names / sizeof s_tag_names[0]; t++) {
        snprintf(tag_id, sizeof tag_id, "77777777-0000-4000-8000-%012zu", t + 1);
        const char *v[] = {tag_id, ORG_A, s_tag_names[t]};
        s_exec(db, "INSERT INTO tags VALUES ($1, $2, $3)", 3, v);
        for (size_t i = 0; i < sizeof s_tags / sizeof s_tags[0]; i++) {
            if (strcmp(s_tags[i].tag, s_tag_names[t]) != 0)
                continue;
            s_contact_id(s_tags[i].contact, id, sizeof id);
            const char *ct[] = {id, tag_id, ORG_A};
            s_exec(db, "INSERT INTO contact_tags VALUES ($1, $2, $3)", 3, ct);
        }
    }
}

static db_t *s_connect(void)
{
    char name[64];
    assert_int_equal(harness_create_database(name, sizeof name), 0);
    assert_non_null(harness_server("PG_HOST"));
    sbuf_t *conninfo = sbuf_new(128);
    sbuf_appendf(conninfo, "host=%s port=%s user=%s dbname=%s", harness_server("PG_HOST"),
                 harness_server("PG_PORT"), harness_server("PG_USER"), name);
    sbuf_t *err = sbuf_new(64);
    db_t *db = db_connect(sbuf_data(conninfo), 0, err);
    if (!db)
        fail_msg("%s", sbuf_data(err));
    sbuf_destroy(&conninfo);
    sbuf_destroy(&err);
    return db;
}

/* Ids (comma-separated, in id order) the compiled rule selects in org A. */
static char *s_sql_ids(db_t *db, const rule_t *r, const char *text)
{
    rule_sql_t q;
    sbuf_t *err = sbuf_new(64);
    assert_int_equal(rule_compile_sql(r, 2, &q, err), 0);
    sbuf_t *sql = sbuf_new(256);
    sbuf_appendf(sql, "SELECT c.id::text FROM contacts c WHERE c.organization_id = $1 AND %s "
                      "ORDER BY c.id", q.sql);
    const char **params = calloc((size_t)q.n_params + 1, sizeof *params);
    assert_non_null(params);
    params[0] = ORG_A;
    for (int i = 0; i < q.n_params; i++)
        params[i + 1] = q.params[i];
    db_result_t *res = db_query(db, sbuf_data(sql), q.n_params + 1, params, err);
    if (!res)
        fail_msg("rule %s\nSQL %s\nfailed: %s", text, sbuf_data(sql), sbuf_data(err));
    sbuf_t *ids = sbuf_new(256);
    for (int row = 0; row < db_result_rows(res); row++) {
        const char *id = db_result_get(res, row, 0);
        sbuf_appendf(ids, "%s%s", row ? "," : "", id + strlen(id) - 3);
    }
    db_result_free(&res);
    free(params);
    rule_sql_clear(&q);
    sbuf_destroy(&sql);
    sbuf_destroy(&err);
    char *out = sbuf_detach(ids, NULL);
    sbuf_destroy(&ids);
    return out;
}

static void test_sql_agrees_with_eval(void **state)
{
    (void)state;
    db_t *db = s_connect();
    s_load(db);
    sbuf_t *err = sbuf_new(64);
    /* The contacts as flows would see them: read back through PostgreSQL. */
    db_result_t *all = db_query(db,
                                "SELECT c.id::text, json_build_object('email', c.email, 'status', "
                                "c.status, 'created_at', c.created_at, 'fields', c.fields)::text "
                                "FROM contacts c WHERE c.organization_id = $1 ORDER BY c.id",
                                1, (const char *const[]){ORG_A}, err);
    assert_non_null(all);
    assert_int_equal(db_result_rows(all), (int)N_CONTACTS);
    json_t *contacts[N_CONTACTS];
    for (size_t i = 0; i < N_CONTACTS; i++) {
        char id[40];
        s_contact_id((int)i, id, sizeof id);
        assert_string_equal(db_result_get(all, (int)i, 0), id);
        json_error_t jerr;
        contacts[i] = json_loads(db_result_get(all, (int)i, 1), 0, &jerr);
        if (!contacts[i])
            fail_msg("contact %zu: %s", i, jerr.text);
    }
    /* the session's +05:45 zone is what rule_eval has to parse */
    assert_non_null(strstr(db_result_get(all, 0, 1), "+05:45"));
    db_result_free(&all);

    int matched_somewhere = 0;
    for (size_t k = 0; k < sizeof s_rules / sizeof s_rules[0]; k++) {
        rule_t *r = rule_parse_text(s_rules[k], strlen(s_rules[k]), err);
        if (!r)
            fail_msg("rule %s: %s", s_rules[k], sbuf_data(err));
        char *got = s_sql_ids(db, r, s_rules[k]);
        sbuf_t *want = sbuf_new(256);
        int n = 0;
        for (size_t i = 0; i < N_CONTACTS; i++) {
            lookup_arg_t la = {(int)i};
            int m = rule_eval(r, contacts[i], s_lookup, &la);
            assert_true(m == 0 || m == 1);
            if (m) {
                char id[40];
                s_contact_id((int)i, id, sizeof id);
                sbuf_appendf(want, "%s%s", n++ ? "," : "", id + strlen(id) - 3);
            }
        }
        if (strcmp(got, sbuf_data(want)) != 0)
            fail_msg("rule %s\n SQL  %s\n eval %s", s_rules[k], got, sbuf_data(want));
        /* every rule must separate the contacts, or it proves little */
        if (n == 0 || n == (int)N_CONTACTS)
            fail_msg("rule %s matches %d of %zu contacts", s_rules[k], n, N_CONTACTS);
        matched_somewhere += n;
        free(got);
        sbuf_destroy(&want);
        rule_destroy(&r);
    }
    assert_true(matched_somewhere > 0);

    /* the injection attempt was data: the table is still there */
    db_result_t *still = db_query(db, "SELECT count(*) FROM contacts", 0, NULL, err);
    assert_non_null(still);
    assert_string_equal(db_result_get(still, 0, 0), "21");
    db_result_free(&still);

    for (size_t i = 0; i < N_CONTACTS; i++)
        json_decref(contacts[i]);
    sbuf_destroy(&err);
    db_destroy(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sql_agrees_with_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
