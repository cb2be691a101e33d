/*
 * test_rule - the segment rule language: exact SQL and parameters for every
 * operator on every field kind, errors with their JSON paths, limits, SQL
 * metacharacters staying in parameters, and rule_eval truth tables.
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

#include "rule.h"
#include "sbuf.h"

/* Custom-field left-hand sides, as rule_compile_sql writes them. */
#define S(k) "(CASE WHEN jsonb_typeof(c.fields->$" k "::text) = 'string' THEN c.fields->>$" k "::text END)"
#define N(k)                                                                                    \
    "(CASE WHEN jsonb_typeof(c.fields->$" k "::text) = 'number' THEN (c.fields->>$" k           \
    "::text)::numeric END)"
#define B(k) "(CASE WHEN jsonb_typeof(c.fields->$" k "::text) = 'boolean' THEN c.fields->>$" k "::text END)"
#define LIST_SQL(k)                                                                             \
    "EXISTS (SELECT 1 FROM list_members lm WHERE lm.contact_id = c.id AND lm.organization_id = " \
    "c.organization_id AND lm.list_id = $" k "::uuid)"
#define TAG_SQL(k)                                                                              \
    "EXISTS (SELECT 1 FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id AND t.organization_id " \
    "= ct.organization_id WHERE ct.contact_id = c.id AND ct.organization_id = c.organization_id " \
    "AND t.name = $" k ")"

#define UUID "0f8fad5b-d9cb-469f-a165-70867728950e"

typedef struct {
    const char *rule;      /* JSON text */
    int first;             /* first parameter number */
    const char *sql;       /* expected SQL */
    const char *params[8]; /* expected parameters, NULL-terminated */
} sql_case_t;

static const sql_case_t sql_cases[] = {
    /* email: every operator */
    {"{\"field\":\"email\",\"op\":\"eq\",\"value\":\"a@x.io\"}", 1, "COALESCE(c.email = $1, false)", {"a@x.io"}},
    {"{\"field\":\"email\",\"op\":\"neq\",\"value\":\"a@x.io\"}", 2, "COALESCE(c.email <> $2, false)", {"a@x.io"}},
    {"{\"field\":\"email\",\"op\":\"contains\",\"value\":\"@x\"}", 2, "COALESCE(strpos(c.email, $2) > 0, false)", {"@x"}},
    {"{\"field\":\"email\",\"op\":\"starts_with\",\"value\":\"a_b%c\\\\d\"}", 2,
     "COALESCE(c.email LIKE $2 ESCAPE E'\\\\', false)", {"a\\_b\\%c\\\\d%"}},
    {"{\"field\":\"email\",\"op\":\"gt\",\"value\":\"m\"}", 2, "COALESCE(c.email COLLATE \"C\" > $2, false)", {"m"}},
    {"{\"field\":\"email\",\"op\":\"gte\",\"value\":\"m\"}", 2, "COALESCE(c.email COLLATE \"C\" >= $2, false)", {"m"}},
    {"{\"field\":\"email\",\"op\":\"lt\",\"value\":\"m\"}", 2, "COALESCE(c.email COLLATE \"C\" < $2, false)", {"m"}},
    {"{\"field\":\"email\",\"op\":\"lte\",\"value\":\"m\"}", 2, "COALESCE(c.email COLLATE \"C\" <= $2, false)", {"m"}},
    {"{\"field\":\"email\",\"op\":\"in\",\"value\":[\"a@x\",\"b@x\"]}", 2, "COALESCE(c.email IN ($2, $3), false)", {"a@x", "b@x"}},
    {"{\"field\":\"email\",\"op\":\"exists\"}", 2, "(c.email IS NOT NULL)", {NULL}},
    /* status */
    {"{\"field\":\"status\",\"op\":\"eq\",\"value\":\"bounced\"}", 2, "COALESCE(c.status = $2, false)", {"bounced"}},
    {"{\"field\":\"status\",\"op\":\"neq\",\"value\":\"subscribed\"}", 2, "COALESCE(c.status <> $2, false)", {"subscribed"}},
    {"{\"field\":\"status\",\"op\":\"in\",\"value\":[\"complained\",\"unsubscribed\"]}", 2,
     "COALESCE(c.status IN ($2, $3), false)", {"complained", "unsubscribed"}},
    {"{\"field\":\"status\",\"op\":\"exists\"}", 2, "(c.status IS NOT NULL)", {NULL}},
    /* created_at: values are passed in canonical form */
    {"{\"field\":\"created_at\",\"op\":\"eq\",\"value\":\"2024-05-01T12:00:00Z\"}", 2,
     "COALESCE(c.created_at = $2::timestamptz, false)", {"2024-05-01T12:00:00.000000+00:00"}},
    {"{\"field\":\"created_at\",\"op\":\"neq\",\"value\":\"2024-05-01t12:00:00.5-03:30\"}", 2,
     "COALESCE(c.created_at <> $2::timestamptz, false)", {"2024-05-01T12:00:00.500000-03:30"}},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"2024-02-29T23:59:59.1234567z\"}", 2,
     "COALESCE(c.created_at > $2::timestamptz, false)", {"2024-02-29T23:59:59.123456+00:00"}},
    {"{\"field\":\"created_at\",\"op\":\"gte\",\"value\":\"2024-05-01T12:00:00+01:00\"}", 2,
     "COALESCE(c.created_at >= $2::timestamptz, false)", {"2024-05-01T12:00:00.000000+01:00"}},
    {"{\"field\":\"created_at\",\"op\":\"lt\",\"value\":\"2024-05-01T12:00:00Z\"}", 2,
     "COALESCE(c.created_at < $2::timestamptz, false)", {"2024-05-01T12:00:00.000000+00:00"}},
    {"{\"field\":\"created_at\",\"op\":\"lte\",\"value\":\"2024-05-01T12:00:00Z\"}", 2,
     "COALESCE(c.created_at <= $2::timestamptz, false)", {"2024-05-01T12:00:00.000000+00:00"}},
    {"{\"field\":\"created_at\",\"op\":\"exists\"}", 2, "(c.created_at IS NOT NULL)", {NULL}},
    /* custom fields: name first, then the value */
    {"{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro\"}", 2, "COALESCE(" S("2") " = $3, false)", {"plan", "pro"}},
    {"{\"field\":\"fields.age\",\"op\":\"eq\",\"value\":30}", 2, "COALESCE(" N("2") " = $3::numeric, false)", {"age", "30"}},
    {"{\"field\":\"fields.vip\",\"op\":\"eq\",\"value\":true}", 2, "COALESCE(" B("2") " = $3, false)", {"vip", "true"}},
    {"{\"field\":\"fields.vip\",\"op\":\"neq\",\"value\":false}", 2, "COALESCE(" B("2") " <> $3, false)", {"vip", "false"}},
    {"{\"field\":\"fields.plan\",\"op\":\"neq\",\"value\":\"pro\"}", 2, "COALESCE(" S("2") " <> $3, false)", {"plan", "pro"}},
    {"{\"field\":\"fields.score\",\"op\":\"neq\",\"value\":0.1}", 2, "COALESCE(" N("2") " <> $3::numeric, false)", {"score", "0.1"}},
    {"{\"field\":\"fields.plan\",\"op\":\"contains\",\"value\":\"r%o\"}", 2, "COALESCE(strpos(" S("2") ", $3) > 0, false)", {"plan", "r%o"}},
    {"{\"field\":\"fields.plan\",\"op\":\"starts_with\",\"value\":\"p_\"}", 2,
     "COALESCE(" S("2") " LIKE $3 ESCAPE E'\\\\', false)", {"plan", "p\\_%"}},
    {"{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":-5}", 2, "COALESCE(" N("2") " > $3::numeric, false)", {"age", "-5"}},
    {"{\"field\":\"fields.age\",\"op\":\"gte\",\"value\":1.5e3}", 2, "COALESCE(" N("2") " >= $3::numeric, false)", {"age", "1500"}},
    {"{\"field\":\"fields.age\",\"op\":\"lt\",\"value\":2.25}", 2, "COALESCE(" N("2") " < $3::numeric, false)", {"age", "2.25"}},
    {"{\"field\":\"fields.age\",\"op\":\"lte\",\"value\":9007199254740993}", 2,
     "COALESCE(" N("2") " <= $3::numeric, false)", {"age", "9007199254740993"}},
    {"{\"field\":\"fields.city\",\"op\":\"lt\",\"value\":\"M\"}", 2, "COALESCE(" S("2") " COLLATE \"C\" < $3, false)", {"city", "M"}},
    {"{\"field\":\"fields.x\",\"op\":\"in\",\"value\":[\"a\",1,true,\"b\",2.5,false]}", 2,
     "COALESCE(" S("2") " IN ($3, $4) OR " N("2") " IN ($5::numeric, $6::numeric) OR " B("2") " IN ($7, $8), false)",
     {"x", "a", "b", "1", "2.5", "true", "false"}},
    {"{\"field\":\"fields.x\",\"op\":\"in\",\"value\":[7]}", 2, "COALESCE(" N("2") " IN ($3::numeric), false)", {"x", "7"}},
    {"{\"field\":\"fields.Nick_2\",\"op\":\"exists\"}", 2, "COALESCE(c.fields ? $2::text, false)", {"Nick_2"}},
    /* membership; UUIDs are lowercased */
    {"{\"in_list\":\"0F8FAD5B-D9CB-469F-A165-70867728950E\"}", 2, LIST_SQL("2"), {UUID}},
    {"{\"has_tag\":\"vip\"}", 2, TAG_SQL("2"), {"vip"}},
    /* nesting, numbering across nodes */
    {"{\"and\":[{\"has_tag\":\"a\"},{\"or\":[{\"in_list\":\"" UUID "\"},{\"not\":{\"field\":\"fields.n\",\"op\":\"exists\"}}]}]}", 1,
     "(" TAG_SQL("1") " AND (" LIST_SQL("2") " OR (NOT COALESCE(c.fields ? $3::text, false))))", {"a", UUID, "n"}},
    {"{\"or\":[{\"has_tag\":\"x\"}]}", 5, "(" TAG_SQL("5") ")", {"x"}},
};

static rule_t *parse_ok(const char *text)
{
    sbuf_t *err = sbuf_new(64);
    rule_t *r = rule_parse_text(text, strlen(text), err);
    if (!r)
        fail_msg("parse failed for %s: %s", text, sbuf_data(err));
    sbuf_destroy(&err);
    return r;
}

static void test_sql_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof sql_cases / sizeof sql_cases[0]; i++) {
        const sql_case_t *tc = &sql_cases[i];
        rule_t *r = parse_ok(tc->rule);
        rule_sql_t out;
        sbuf_t *err = sbuf_new(16);
        assert_int_equal(rule_compile_sql(r, tc->first, &out, err), 0);
        if (strcmp(out.sql, tc->sql) != 0)
            fail_msg("case %zu %s:\n got  %s\n want %s", i, tc->rule, out.sql, tc->sql);
        int n = 0;
        while (n < 8 && tc->params[n])
            n++;
        assert_int_equal(out.n_params, n);
        assert_int_equal(out.first_param, tc->first);
        for (int k = 0; k < n; k++)
            assert_string_equal(out.params[k], tc->params[k]);
        rule_sql_clear(&out);
        rule_sql_clear(&out); /* idempotent */
        assert_null(out.sql);
        sbuf_destroy(&err);
        rule_destroy(&r);
        assert_null(r);
    }
}

typedef struct {
    const char *rule;  /* JSON text */
    const char *error; /* the exact message */
} err_case_t;

static const err_case_t err_cases[] = {
    {"{\"and\":[{\"has_tag\":\"a\"},{\"has_tag\":\"b\"},{\"field\":\"email\",\"op\":\"like\",\"value\":\"x\"}]}",
     "rule.and[2].op: unknown operator 'like'"},
    /* jansson's own words may change between versions: prefix only (*) */
    {"", "rule: invalid JSON at line 1 column 0: *"},
    {"{\"has_tag\":\"a\"", "rule: invalid JSON at line 1 column 14: *"},
    {"{\"has_tag\":\"a\"}\n\x01", "rule: invalid JSON at line 2 column *"},
    {"[]", "rule: expected a rule object"},
    {"{}", "rule: expected one of and, or, not, field, in_list, has_tag"},
    {"{\"and\":[], \"or\":[]}", "rule: has both 'and' and 'or'; a rule has exactly one of and, or, not, field, in_list, has_tag"},
    {"{\"has_tag\":\"a\",\"op\":\"eq\"}", "rule: 'op' and 'value' only go with 'field'"},
    {"{\"has_tag\":\"a\",\"colour\":1}", "rule: unknown key 'colour'"},
    {"{\"has_tag\":\"a\",\"x'; DROP\\n\":1}", "rule: unknown key 'x\\x27; DROP\\x0a'"},
    {"{\"has_tag\":\"a\",\"has_tag\":\"b\"}", "rule: invalid JSON at line 1 column 24: duplicate object key*"},
    {"{\"and\":[]}", "rule.and: expected a non-empty array of rules"},
    {"{\"or\":{}}", "rule.or: expected a non-empty array of rules"},
    {"{\"or\":[1]}", "rule.or[0]: expected a rule object"},
    {"{\"not\":[]}", "rule.not: expected a rule object"},
    {"{\"not\":{\"not\":{\"field\":\"phone\",\"op\":\"eq\",\"value\":\"1\"}}}",
     "rule.not.not.field: unknown field 'phone' (want email, status, created_at or fields.<name>)"},
    {"{\"field\":1,\"op\":\"eq\",\"value\":\"1\"}", "rule.field: expected a field name string"},
    {"{\"field\":\"fields.\",\"op\":\"exists\"}", "rule.field: invalid custom field name '' (want [A-Za-z0-9_]{1,64})"},
    {"{\"field\":\"fields.a-b\",\"op\":\"exists\"}", "rule.field: invalid custom field name 'a-b' (want [A-Za-z0-9_]{1,64})"},
    {"{\"field\":\"fields.a.b\",\"op\":\"exists\"}", "rule.field: invalid custom field name 'a.b' (want [A-Za-z0-9_]{1,64})"},
    {"{\"field\":\"fields.x\\u00e9\",\"op\":\"exists\"}", "rule.field: invalid custom field name 'x\\xc3\\xa9' (want [A-Za-z0-9_]{1,64})"},
    {"{\"field\":\"fields.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"op\":\"exists\"}",
     "rule.field: invalid custom field name 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' (want [A-Za-z0-9_]{1,64})"},
    {"{\"field\":\"email\",\"value\":\"x\"}", "rule: missing 'op'"},
    {"{\"field\":\"email\",\"op\":7}", "rule.op: expected an operator string"},
    {"{\"field\":\"status\",\"op\":\"contains\",\"value\":\"x\"}", "rule.op: operator 'contains' does not apply to field 'status'"},
    {"{\"field\":\"status\",\"op\":\"gt\",\"value\":\"x\"}", "rule.op: operator 'gt' does not apply to field 'status'"},
    {"{\"field\":\"created_at\",\"op\":\"in\",\"value\":[\"x\"]}", "rule.op: operator 'in' does not apply to field 'created_at'"},
    {"{\"field\":\"created_at\",\"op\":\"starts_with\",\"value\":\"2024\"}", "rule.op: operator 'starts_with' does not apply to field 'created_at'"},
    {"{\"field\":\"email\",\"op\":\"exists\",\"value\":null}", "rule.value: operator 'exists' takes no value"},
    {"{\"field\":\"email\",\"op\":\"eq\"}", "rule: missing 'value' for operator 'eq'"},
    {"{\"field\":\"email\",\"op\":\"eq\",\"value\":3}", "rule.value: expected a string"},
    {"{\"field\":\"email\",\"op\":\"eq\",\"value\":null}", "rule.value: expected a string"},
    {"{\"field\":\"status\",\"op\":\"eq\",\"value\":\"active\"}",
     "rule.value: unknown status 'active' (want subscribed, unsubscribed, bounced or complained)"},
    {"{\"field\":\"status\",\"op\":\"in\",\"value\":[\"bounced\",\"gone\"]}",
     "rule.value[1]: unknown status 'gone' (want subscribed, unsubscribed, bounced or complained)"},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"yesterday\"}",
     "rule.value: not an RFC 3339 timestamp 'yesterday' (want e.g. 2024-05-01T12:00:00Z)"},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"2023-02-29T00:00:00Z\"}",
     "rule.value: not an RFC 3339 timestamp '2023-02-29T00:00:00Z' (want e.g. 2024-05-01T12:00:00Z)"},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"2024-01-01 00:00:00Z\"}",
     "rule.value: not an RFC 3339 timestamp '2024-01-01 00:00:00Z' (want e.g. 2024-05-01T12:00:00Z)"},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"2024-01-01T00:00:00+0100\"}",
     "rule.value: not an RFC 3339 timestamp '2024-01-01T00:00:00+0100' (want e.g. 2024-05-01T12:00:00Z)"},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":1714561200}", "rule.value: expected an RFC 3339 timestamp string"},
    {"{\"field\":\"fields.a\",\"op\":\"contains\",\"value\":1}", "rule.value: expected a string"},
    {"{\"field\":\"fields.a\",\"op\":\"gt\",\"value\":true}", "rule.value: expected a string or a number"},
    {"{\"field\":\"fields.a\",\"op\":\"eq\",\"value\":{}}", "rule.value: expected a string, a number or a boolean"},
    {"{\"field\":\"fields.a\",\"op\":\"eq\",\"value\":[1]}", "rule.value: expected a string, a number or a boolean"},
    {"{\"field\":\"fields.a\",\"op\":\"in\",\"value\":[1,null]}", "rule.value[1]: expected a string, a number or a boolean"},
    {"{\"field\":\"fields.a\",\"op\":\"in\",\"value\":[]}", "rule.value: operator 'in' needs an array of 1 to 1000 values"},
    {"{\"field\":\"fields.a\",\"op\":\"in\",\"value\":\"x\"}", "rule.value: operator 'in' needs an array of 1 to 1000 values"},
    {"{\"in_list\":\"not-a-uuid\"}", "rule.in_list: not a UUID 'not-a-uuid'"},
    {"{\"in_list\":\"0f8fad5b-d9cb-469f-a165-70867728950g\"}", "rule.in_list: not a UUID '0f8fad5b-d9cb-469f-a165-70867728950g'"},
    {"{\"in_list\":5}", "rule.in_list: expected a list UUID string"},
    {"{\"has_tag\":\"\"}", "rule.has_tag: tag name must not be empty"},
    {"{\"has_tag\":null}", "rule.has_tag: expected a tag name string"},
    {"{\"or\":[{\"has_tag\":\"a\"},{\"and\":[{\"field\":\"fields.n\",\"op\":\"gte\",\"value\":\"1\"},{\"not\":{\"field\":\"email\",\"op\":\"eq\",\"value\":false}}]}]}",
     "rule.or[1].and[1].not.value: expected a string"},
    {"{\"field\":\"email\",\"op\":\"EQ\",\"value\":\"x\"}", "rule.op: unknown operator 'EQ'"},
};

static void test_errors_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof err_cases / sizeof err_cases[0]; i++) {
        sbuf_t *err = sbuf_new(64);
        rule_t *r = rule_parse_text(err_cases[i].rule, strlen(err_cases[i].rule), err);
        if (r)
            fail_msg("case %zu parsed but should not: %s", i, err_cases[i].rule);
        size_t want = strlen(err_cases[i].error);
        int prefix = want && err_cases[i].error[want - 1] == '*';
        if (prefix ? strncmp(sbuf_data(err), err_cases[i].error, want - 1) != 0
                   : strcmp(sbuf_data(err), err_cases[i].error) != 0)
            fail_msg("case %zu %s:\n got  %s\n want %s", i, err_cases[i].rule, sbuf_data(err),
                     err_cases[i].error);
        /* NULL err is allowed too */
        assert_null(rule_parse_text(err_cases[i].rule, strlen(err_cases[i].rule), NULL));
        sbuf_destroy(&err);
    }
}

static void test_parse_json_value(void **state)
{
    (void)state;
    sbuf_t *err = sbuf_new(64);
    /* a string with an embedded NUL can be built in memory, not parsed */
    json_t *j = json_pack("{s:s, s:s, s:o}", "field", "email", "op", "eq", "value",
                          json_stringn("a\0b", 3));
    assert_null(rule_parse(j, err));
    assert_string_equal(sbuf_data(err), "rule.value: string contains a NUL byte");
    json_decref(j);
    assert_null(rule_parse(NULL, NULL));
    rule_destroy(NULL);
    rule_t *none = NULL;
    rule_destroy(&none);
    sbuf_destroy(&err);
}

/* Strings that would break SQL if they were ever pasted into it. */
static const char *const nasty[] = {
    "'; DROP TABLE contacts; --",
    "\" OR 1=1 --",
    "$1",
    "a\\' OR ''='",
    "%_\\%",
    "); DELETE FROM tags; SELECT (",
    "E'\\x00'",
    "/* */ UNION SELECT password FROM users",
};

static void test_metacharacters_stay_in_parameters(void **state)
{
    (void)state;
    static const char *const shapes[] = {
        "{\"field\":\"email\",\"op\":\"eq\",\"value\":@V@}",
        "{\"field\":\"email\",\"op\":\"contains\",\"value\":@V@}",
        "{\"field\":\"email\",\"op\":\"starts_with\",\"value\":@V@}",
        "{\"field\":\"email\",\"op\":\"in\",\"value\":[\"ok\",@V@]}",
        "{\"field\":\"fields.note\",\"op\":\"eq\",\"value\":@V@}",
        "{\"field\":\"fields.note\",\"op\":\"lt\",\"value\":@V@}",
        "{\"field\":\"fields.note\",\"op\":\"contains\",\"value\":@V@}",
        "{\"field\":\"fields.note\",\"op\":\"starts_with\",\"value\":@V@}",
        "{\"field\":\"fields.note\",\"op\":\"in\",\"value\":[@V@]}",
        "{\"not\":{\"has_tag\":@V@}}",
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (size_t v = 0; v < sizeof nasty / sizeof nasty[0]; v++) {
            json_t *str = json_string(nasty[v]);
            char *quoted = json_dumps(str, JSON_ENCODE_ANY);
            const char *at = strstr(shapes[s], "@V@");
            assert_non_null(at);
            sbuf_t *text = sbuf_new(256);
            sbuf_append(text, shapes[s], (size_t)(at - shapes[s]));
            sbuf_append_str(text, quoted);
            sbuf_append_str(text, at + 3);
            rule_t *r = parse_ok(sbuf_data(text));
            sbuf_destroy(&text);
            rule_sql_t out;
            assert_int_equal(rule_compile_sql(r, 2, &out, NULL), 0);
            if (strstr(out.sql, nasty[v]))
                fail_msg("value pasted into SQL: %s", out.sql);
            assert_null(strstr(out.sql, "DROP"));
            assert_null(strstr(out.sql, "UNION"));
            assert_null(strstr(out.sql, "DELETE"));
            /* and the value (or its LIKE-escaped form) is a parameter */
            int found = 0;
            for (int k = 0; k < out.n_params; k++)
                if (strstr(out.params[k], nasty[v]) || strstr(nasty[v], "%") || strstr(nasty[v], "\\"))
                    found = 1;
            assert_true(found);
            rule_sql_clear(&out);
            rule_destroy(&r);
            free(quoted);
            json_decref(str);
        }
    }
}

/* The text built in b, as a string the caller frees; b is destroyed. */
static char *take(sbuf_t *b)
{
    char *s = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return s;
}

/* A chain of n nested "not"s around a has_tag. */
static char *nested_not(int n)
{
    sbuf_t *b = sbuf_new(64);
    for (int i = 0; i < n; i++)
        sbuf_append_str(b, "{\"not\":");
    sbuf_append_str(b, "{\"has_tag\":\"t\"}");
    for (int i = 0; i < n; i++)
        sbuf_append_str(b, "}");
    return take(b);
}

/* {"or":[ n tags ]} */
static char *wide_or(int n)
{
    sbuf_t *b = sbuf_new(64);
    sbuf_append_str(b, "{\"or\":[");
    for (int i = 0; i < n; i++)
        sbuf_appendf(b, "%s{\"has_tag\":\"t%d\"}", i ? "," : "", i);
    sbuf_append_str(b, "]}");
    return take(b);
}

/* {"field":"fields.x","op":"in","value":[ n numbers ]} */
static char *wide_in(int n)
{
    sbuf_t *b = sbuf_new(64);
    sbuf_append_str(b, "{\"field\":\"fields.x\",\"op\":\"in\",\"value\":[");
    for (int i = 0; i < n; i++)
        sbuf_appendf(b, "%s%d", i ? "," : "", i);
    sbuf_append_str(b, "]}");
    return take(b);
}

static void expect_error(const char *text, const char *prefix)
{
    sbuf_t *err = sbuf_new(64);
    rule_t *r = rule_parse_text(text, strlen(text), err);
    assert_null(r);
    if (strncmp(sbuf_data(err), prefix, strlen(prefix)) != 0)
        fail_msg("got '%s', want prefix '%s'", sbuf_data(err), prefix);
    sbuf_destroy(&err);
}

static void test_limits(void **state)
{
    (void)state;
    /* depth: 31 nots + the leaf = 32 levels is fine, one more is not */
    char *s = nested_not(31);
    rule_t *r = parse_ok(s);
    rule_sql_t out;
    assert_int_equal(rule_compile_sql(r, 1, &out, NULL), 0);
    rule_sql_clear(&out);
    rule_destroy(&r);
    free(s);
    s = nested_not(32);
    sbuf_t *path = sbuf_new(64);
    sbuf_append_str(path, "rule");
    for (int i = 0; i < 32; i++)
        sbuf_append_str(path, ".not");
    sbuf_append_str(path, ": nested deeper than 32 levels");
    expect_error(s, sbuf_data(path));
    sbuf_destroy(&path);
    free(s);
    /* absurd nesting: refused from the bytes, before the parser (whose
     * recursion would overflow an API request thread's stack) */
    s = nested_not(100000);
    expect_error(s, "rule: nested deeper than 32 levels");
    free(s);

    /* nodes: the or plus 999 children = 1000 */
    s = wide_or(999);
    r = parse_ok(s);
    assert_int_equal(rule_compile_sql(r, 1, &out, NULL), 0);
    assert_int_equal(out.n_params, 999);
    rule_sql_clear(&out);
    rule_destroy(&r);
    free(s);
    s = wide_or(1000);
    expect_error(s, "rule.or[999]: more than 1000 rule nodes");
    free(s);

    /* in values */
    s = wide_in(1000);
    r = parse_ok(s);
    assert_int_equal(rule_compile_sql(r, 1, &out, NULL), 0);
    assert_int_equal(out.n_params, 1001);
    assert_string_equal(out.params[1000], "999");
    rule_sql_clear(&out);
    rule_destroy(&r);
    free(s);
    s = wide_in(1001);
    expect_error(s, "rule.value: operator 'in' needs an array of 1 to 1000 values");
    free(s);
    /* total in values across the rule */
    sbuf_t *b = sbuf_new(64);
    sbuf_append_str(b, "{\"and\":[");
    for (int i = 0; i < 6; i++) {
        char *one = wide_in(1000);
        sbuf_appendf(b, "%s%s", i ? "," : "", one);
        free(one);
    }
    sbuf_append_str(b, "]}");
    expect_error(sbuf_data(b), "rule.and[5].value: more than 5000 'in' values in the whole rule");
    sbuf_destroy(&b);

    /* string length */
    b = sbuf_new(2048);
    sbuf_append_str(b, "{\"has_tag\":\"");
    for (int i = 0; i < 1024; i++)
        sbuf_append_str(b, "x");
    sbuf_append_str(b, "\"}");
    r = parse_ok(sbuf_data(b));
    rule_destroy(&r);
    sbuf_truncate(b, sbuf_len(b) - 2);
    sbuf_append_str(b, "x\"}");
    expect_error(sbuf_data(b), "rule.has_tag: string longer than 1024 bytes");
    sbuf_destroy(&b);

    /* text length */
    size_t big = RULE_MAX_TEXT + 1;
    char *text = malloc(big);
    memset(text, ' ', big);
    sbuf_t *err = sbuf_new(64);
    assert_null(rule_parse_text(text, big, err));
    assert_string_equal(sbuf_data(err), "rule: text longer than 1048576 bytes");
    free(text);
    sbuf_destroy(&err);
}

static void test_compile_arguments(void **state)
{
    (void)state;
    rule_t *r = parse_ok("{\"field\":\"fields.a\",\"op\":\"eq\",\"value\":1}");
    rule_sql_t out;
    sbuf_t *err = sbuf_new(64);
    /* two parameters starting at 65535 would need $65536 */
    assert_int_equal(rule_compile_sql(r, 65535, &out, err), -1);
    assert_string_equal(sbuf_data(err), "rule: more than 65535 SQL parameters");
    assert_null(out.sql);
    assert_int_equal(out.n_params, 0);
    sbuf_reset(err);
    assert_int_equal(rule_compile_sql(r, 0, &out, err), -1);
    assert_int_equal(rule_compile_sql(r, 65534, &out, err), 0);
    assert_int_equal(out.n_params, 2);
    rule_sql_clear(&out);
    rule_sql_clear(NULL);
    rule_destroy(&r);
    sbuf_destroy(&err);
}

typedef struct {
    const char *rule;    /* JSON text */
    const char *contact; /* JSON text */
    int want;            /* 1 / 0 / -1 */
} eval_case_t;

#define ALICE                                                                                   \
    "{\"email\":\"alice@example.com\",\"status\":\"subscribed\",\"created_at\":\"2024-03-01 "   \
    "10:00:00.25+01\",\"fields\":{\"plan\":\"pro\",\"age\":30,\"score\":2.5,\"vip\":true,"      \
    "\"nothing\":null,\"big\":9007199254740993}}"
#define BOB "{\"email\":\"bob@x.io\",\"status\":\"bounced\"}"

static const eval_case_t eval_cases[] = {
    {"{\"field\":\"email\",\"op\":\"eq\",\"value\":\"alice@example.com\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"eq\",\"value\":\"Alice@example.com\"}", ALICE, 0},
    {"{\"field\":\"email\",\"op\":\"neq\",\"value\":\"bob@x.io\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"contains\",\"value\":\"@example\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"contains\",\"value\":\"\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"contains\",\"value\":\"@EXAMPLE\"}", ALICE, 0},
    {"{\"field\":\"email\",\"op\":\"starts_with\",\"value\":\"ali\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"starts_with\",\"value\":\"lic\"}", ALICE, 0},
    {"{\"field\":\"email\",\"op\":\"gt\",\"value\":\"alice\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"lt\",\"value\":\"alice\"}", ALICE, 0},
    {"{\"field\":\"email\",\"op\":\"lte\",\"value\":\"alice@example.com\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"gte\",\"value\":\"b\"}", ALICE, 0},
    {"{\"field\":\"email\",\"op\":\"in\",\"value\":[\"x\",\"alice@example.com\"]}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"exists\"}", ALICE, 1},
    {"{\"field\":\"email\",\"op\":\"exists\"}", "{}", 0},
    {"{\"field\":\"email\",\"op\":\"neq\",\"value\":\"x\"}", "{}", 0},
    {"{\"not\":{\"field\":\"email\",\"op\":\"eq\",\"value\":\"x\"}}", "{}", 1},
    {"{\"field\":\"status\",\"op\":\"eq\",\"value\":\"subscribed\"}", ALICE, 1},
    {"{\"field\":\"status\",\"op\":\"in\",\"value\":[\"bounced\",\"complained\"]}", BOB, 1},
    {"{\"field\":\"status\",\"op\":\"neq\",\"value\":\"bounced\"}", BOB, 0},
    {"{\"field\":\"status\",\"op\":\"exists\"}", "{\"status\":null}", 0},
    /* 10:00:00.25+01 = 09:00:00.25Z */
    {"{\"field\":\"created_at\",\"op\":\"eq\",\"value\":\"2024-03-01T09:00:00.25Z\"}", ALICE, 1},
    {"{\"field\":\"created_at\",\"op\":\"eq\",\"value\":\"2024-03-01T04:30:00.250+00:00\"}", ALICE, 0},
    {"{\"field\":\"created_at\",\"op\":\"eq\",\"value\":\"2024-03-01T04:00:00.25-05:00\"}", ALICE, 1},
    {"{\"field\":\"created_at\",\"op\":\"neq\",\"value\":\"2024-03-01T09:00:00.25Z\"}", ALICE, 0},
    {"{\"field\":\"created_at\",\"op\":\"gt\",\"value\":\"2024-03-01T09:00:00.249999Z\"}", ALICE, 1},
    {"{\"field\":\"created_at\",\"op\":\"gte\",\"value\":\"2024-03-01T09:00:00.25Z\"}", ALICE, 1},
    {"{\"field\":\"created_at\",\"op\":\"lt\",\"value\":\"2024-03-01T09:00:00.25Z\"}", ALICE, 0},
    {"{\"field\":\"created_at\",\"op\":\"lte\",\"value\":\"2024-03-01T09:00:00.25Z\"}", ALICE, 1},
    {"{\"field\":\"created_at\",\"op\":\"exists\"}", ALICE, 1},
    {"{\"field\":\"created_at\",\"op\":\"exists\"}", "{\"created_at\":\"soon\"}", 0},
    {"{\"field\":\"created_at\",\"op\":\"lt\",\"value\":\"2030-01-01T00:00:00Z\"}", BOB, 0},
    /* custom strings */
    {"{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro\"}", ALICE, 1},
    {"{\"field\":\"fields.plan\",\"op\":\"neq\",\"value\":\"free\"}", ALICE, 1},
    {"{\"field\":\"fields.plan\",\"op\":\"neq\",\"value\":\"free\"}", BOB, 0},
    {"{\"field\":\"fields.plan\",\"op\":\"contains\",\"value\":\"r\"}", ALICE, 1},
    {"{\"field\":\"fields.plan\",\"op\":\"starts_with\",\"value\":\"pr\"}", ALICE, 1},
    {"{\"field\":\"fields.plan\",\"op\":\"starts_with\",\"value\":\"pro+\"}", ALICE, 0},
    {"{\"field\":\"fields.plan\",\"op\":\"gt\",\"value\":\"pa\"}", ALICE, 1},
    {"{\"field\":\"fields.plan\",\"op\":\"in\",\"value\":[1,\"pro\"]}", ALICE, 1},
    /* types do not mix */
    {"{\"field\":\"fields.age\",\"op\":\"eq\",\"value\":\"30\"}", ALICE, 0},
    {"{\"field\":\"fields.age\",\"op\":\"contains\",\"value\":\"3\"}", ALICE, 0},
    {"{\"field\":\"fields.age\",\"op\":\"neq\",\"value\":\"31\"}", ALICE, 0},
    {"{\"field\":\"fields.vip\",\"op\":\"eq\",\"value\":\"true\"}", ALICE, 0},
    {"{\"field\":\"fields.plan\",\"op\":\"gt\",\"value\":1}", ALICE, 0},
    /* custom numbers */
    {"{\"field\":\"fields.age\",\"op\":\"eq\",\"value\":30.0}", ALICE, 1},
    {"{\"field\":\"fields.age\",\"op\":\"neq\",\"value\":30}", ALICE, 0},
    {"{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":29.5}", ALICE, 1},
    {"{\"field\":\"fields.age\",\"op\":\"gte\",\"value\":30}", ALICE, 1},
    {"{\"field\":\"fields.age\",\"op\":\"lt\",\"value\":30}", ALICE, 0},
    {"{\"field\":\"fields.score\",\"op\":\"lte\",\"value\":2.5}", ALICE, 1},
    {"{\"field\":\"fields.score\",\"op\":\"in\",\"value\":[\"2.5\",true,2.5]}", ALICE, 1},
    {"{\"field\":\"fields.big\",\"op\":\"gt\",\"value\":9007199254740992}", ALICE, 1},
    {"{\"field\":\"fields.big\",\"op\":\"gt\",\"value\":9007199254740992.0}", ALICE, 1},
    /* custom booleans */
    {"{\"field\":\"fields.vip\",\"op\":\"eq\",\"value\":true}", ALICE, 1},
    {"{\"field\":\"fields.vip\",\"op\":\"neq\",\"value\":true}", ALICE, 0},
    {"{\"field\":\"fields.vip\",\"op\":\"in\",\"value\":[false]}", ALICE, 0},
    /* exists and null */
    {"{\"field\":\"fields.nothing\",\"op\":\"exists\"}", ALICE, 1},
    {"{\"field\":\"fields.nothing\",\"op\":\"eq\",\"value\":\"\"}", ALICE, 0},
    {"{\"field\":\"fields.missing\",\"op\":\"exists\"}", ALICE, 0},
    {"{\"field\":\"fields.plan\",\"op\":\"exists\"}", "{\"fields\":[1]}", 0},
    /* boolean structure */
    {"{\"and\":[{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":18},{\"field\":\"status\",\"op\":\"eq\",\"value\":\"subscribed\"}]}", ALICE, 1},
    {"{\"and\":[{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":18},{\"field\":\"status\",\"op\":\"eq\",\"value\":\"bounced\"}]}", ALICE, 0},
    {"{\"or\":[{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":50},{\"field\":\"status\",\"op\":\"eq\",\"value\":\"subscribed\"}]}", ALICE, 1},
    {"{\"or\":[{\"field\":\"fields.age\",\"op\":\"gt\",\"value\":50},{\"field\":\"status\",\"op\":\"eq\",\"value\":\"bounced\"}]}", ALICE, 0},
    {"{\"not\":{\"not\":{\"field\":\"fields.vip\",\"op\":\"eq\",\"value\":true}}}", ALICE, 1},
    /* not a contact */
    {"{\"field\":\"email\",\"op\":\"exists\"}", "[]", -1},
};

static void test_eval_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof eval_cases / sizeof eval_cases[0]; i++) {
        rule_t *r = parse_ok(eval_cases[i].rule);
        json_t *c = json_loads(eval_cases[i].contact, JSON_DECODE_ANY, NULL);
        assert_non_null(c);
        int got = rule_eval(r, c, NULL, NULL);
        if (got != eval_cases[i].want)
            fail_msg("case %zu %s on %s: got %d want %d", i, eval_cases[i].rule,
                     eval_cases[i].contact, got, eval_cases[i].want);
        json_decref(c);
        rule_destroy(&r);
    }
}

typedef struct {
    int calls;      /* lookups asked */
    int fail;       /* answer -1 */
    char last[64];  /* last key asked */
    rule_member_t kind; /* last kind asked */
} lookup_state_t;

/* Member of list UUID and of tag "vip" only. */
static int lookup(void *arg, rule_member_t kind, const char *key)
{
    lookup_state_t *st = arg;
    st->calls++;
    st->kind = kind;
    snprintf(st->last, sizeof st->last, "%s", key);
    if (st->fail)
        return -1;
    if (kind == RULE_MEMBER_LIST)
        return strcmp(key, UUID) == 0;
    return strcmp(key, "vip") == 0 ? 7 : 0; /* any positive means yes */
}

static void test_eval_membership(void **state)
{
    (void)state;
    json_t *c = json_loads(ALICE, 0, NULL);
    lookup_state_t st = {0};
    rule_t *r = parse_ok("{\"in_list\":\"0F8FAD5B-D9CB-469F-A165-70867728950E\"}");
    assert_int_equal(rule_eval(r, c, lookup, &st), 1);
    assert_int_equal(st.kind, RULE_MEMBER_LIST);
    assert_string_equal(st.last, UUID);
    assert_int_equal(rule_eval(r, c, NULL, NULL), -1);
    st.fail = 1;
    assert_int_equal(rule_eval(r, c, lookup, &st), -1);
    rule_destroy(&r);

    memset(&st, 0, sizeof st);
    r = parse_ok("{\"has_tag\":\"vip\"}");
    assert_int_equal(rule_eval(r, c, lookup, &st), 1);
    assert_int_equal(st.kind, RULE_MEMBER_TAG);
    rule_destroy(&r);

    /* short-circuit: the first or-branch decides, the tag is never asked */
    memset(&st, 0, sizeof st);
    r = parse_ok("{\"or\":[{\"field\":\"fields.plan\",\"op\":\"eq\",\"value\":\"pro\"},{\"has_tag\":\"x\"}]}");
    assert_int_equal(rule_eval(r, c, lookup, &st), 1);
    assert_int_equal(st.calls, 0);
    rule_destroy(&r);
    r = parse_ok("{\"and\":[{\"has_tag\":\"nope\"},{\"has_tag\":\"vip\"}]}");
    assert_int_equal(rule_eval(r, c, lookup, &st), 0);
    assert_int_equal(st.calls, 1);
    rule_destroy(&r);
    /* a failure under not is still a failure */
    st.fail = 1;
    r = parse_ok("{\"not\":{\"has_tag\":\"vip\"}}");
    assert_int_equal(rule_eval(r, c, lookup, &st), -1);
    rule_destroy(&r);
    assert_int_equal(rule_eval(NULL, c, lookup, &st), -1);
    json_decref(c);
}

static void test_parse_time(void **state)
{
    (void)state;
    long long us;
    assert_int_equal(rule_parse_time("1970-01-01T00:00:00Z", 20, 0, &us), 0);
    assert_int_equal(us, 0);
    assert_int_equal(rule_parse_time("1970-01-01T01:00:00+01:00", 25, 0, &us), 0);
    assert_int_equal(us, 0);
    assert_int_equal(rule_parse_time("2000-03-01T00:00:00.000001Z", 27, 0, &us), 0);
    assert_int_equal(us, 951868800000001LL);
    assert_int_equal(rule_parse_time("0001-01-01T00:00:00Z", 20, 0, &us), 0);
    assert_int_equal(us, -62135596800000000LL);
    assert_int_equal(rule_parse_time("1969-12-31 23:59:59.5-00:00:30", 30, 1, &us), 0);
    assert_int_equal(us, 29500000LL);
    assert_int_equal(rule_parse_time("2024-01-01 00:00:00+0530", 24, 1, &us), 0);
    assert_int_equal(rule_parse_time("2024-01-01 00:00:00+05", 22, 1, &us), 0);
    static const char *const bad[] = {
        "", "2024-01-01", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z", "2024-00-01T00:00:00Z",
        "2024-04-31T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T00:60:00Z",
        "2024-01-01T00:00:60Z", "2024-01-01T00:00:00.Z", "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00+05", "0000-01-01T00:00:00Z", "2024-01-01T00:00:00Zjunk",
        "+2024-01-01T00:00:00Z", "2024-1-01T00:00:00Z", "2024-01-01T00:00:00+05:3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (rule_parse_time(bad[i], strlen(bad[i]), 0, &us) == 0)
            fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(rule_parse_time(NULL, 0, 1, &us), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sql_table),
        cmocka_unit_test(test_errors_table),
        cmocka_unit_test(test_parse_json_value),
        cmocka_unit_test(test_metacharacters_stay_in_parameters),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_compile_arguments),
        cmocka_unit_test(test_eval_table),
        cmocka_unit_test(test_eval_membership),
        cmocka_unit_test(test_parse_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
