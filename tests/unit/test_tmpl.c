/*
 * Unit tests for core/tmpl: every construct, escaping, filters, loops,
 * lenient versus strict missing variables, every parse error with its exact
 * line and column, and the size, step and nesting limits. Table-driven: a
 * failing row prints its name.
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

#include "sbuf.h"
#include "tmpl.h"

static const char *DATA = "{\"contact\": {\"email\": \"ada@example.com\", \"fields\": {"
                          "\"first_name\": \"Ada\", \"last_name\": \"<Love & \\\"lace\\\">\","
                          "\"age\": 36, \"score\": 1.5, \"whole\": 3.0, \"tenth\": 0.1,"
                          "\"big\": 1e20, \"neg\": -2.25, \"zero\": 0, \"vip\": true,"
                          "\"churned\": false, \"nothing\": null, \"empty\": \"\","
                          "\"tags\": [\"a\", \"b\", \"c\"], \"none\": [], \"obj\": {\"x\": 1},"
                          "\"orders\": [{\"id\": 1, \"total\": 9.99}, {\"id\": 2, \"total\": 20}],"
                          "\"nul\": \"a\\u0000b\", \"city\": \"T\\u00e9h\\u00e9ran\"}},"
                          "\"sample\": \"x=`'y'`\"}";

static json_t *s_data(void)
{
    json_error_t jerr;
    json_t *data = json_loads(DATA, JSON_ALLOW_NUL, &jerr);
    if (!data)
        fail_msg("fixture JSON: %s", jerr.text);
    return data;
}

/* Parse src or fail the test, naming the case. */
static tmpl_t *s_parse_ok(const char *name, const char *src)
{
    tmpl_error_t err = {0};
    tmpl_t *t = tmpl_parse(src, strlen(src), &err);
    if (!t)
        fail_msg("%s: parse failed at %d:%d: %s", name, err.line, err.column, err.message);
    return t;
}

/* ------------------------------------------------------------ rendering -- */

typedef struct {
    const char *name;    /* what the row checks */
    const char *src;     /* template */
    int flags;           /* render flags */
    const char *expect;  /* exact output */
    size_t warnings;     /* number of warnings expected */
    const char *warning; /* substring of the first warning, or NULL */
} render_case_t;

static const render_case_t RENDER_CASES[] = {
    {"plain text", "Hello, world", 0, "Hello, world", 0, NULL},
    {"empty template", "", 0, "", 0, NULL},
    {"variable", "{{contact.email}}", 0, "ada@example.com", 0, NULL},
    {"spaces in tag", "<{{   contact.email\t}}>", 0, "<ada@example.com>", 0, NULL},
    {"newlines in tag", "{{\ncontact.email\n}}", 0, "ada@example.com", 0, NULL},
    {"escaped by default", "{{contact.fields.last_name}}", 0, "&lt;Love &amp; &quot;lace&quot;&gt;",
     0, NULL},
    {"escapes quote backtick equals", "{{sample}}", 0, "x&#61;&#96;&#39;y&#39;&#96;", 0, NULL},
    {"template text is not escaped", "<b>&</b>", 0, "<b>&</b>", 0, NULL},
    {"triple braces raw", "{{{contact.fields.last_name}}}", 0, "<Love & \"lace\">", 0, NULL},
    {"triple braces spaces", "{{{ contact.fields.last_name }}}", 0, "<Love & \"lace\">", 0, NULL},
    {"raw filter", "{{ contact.fields.last_name | raw }}", 0, "<Love & \"lace\">", 0, NULL},
    {"text mode does not escape", "{{contact.fields.last_name}} {{sample}}", TMPL_TEXT,
     "<Love & \"lace\"> x=`'y'`", 0, NULL},
    {"unicode passes through", "سلام {{contact.fields.city}}!", 0, "سلام Téhéran!", 0, NULL},
    {"NUL in data dropped", "[{{contact.fields.nul}}]", 0, "[ab]", 0, NULL},
    {"default on missing", "Hi {{contact.fields.nick | default: \"there\"}}!", 0, "Hi there!", 0,
     NULL},
    {"default on empty", "{{contact.fields.empty | default: \"x\"}}", 0, "x", 0, NULL},
    {"default on null", "{{contact.fields.nothing | default: \"x\"}}", 0, "x", 0, NULL},
    {"default not on value", "{{contact.fields.first_name | default: \"x\"}}", 0, "Ada", 0, NULL},
    {"default not on zero", "{{contact.fields.zero | default: \"x\"}}", 0, "0", 0, NULL},
    {"default not on false", "{{contact.fields.churned | default: \"x\"}}", 0, "false", 0, NULL},
    {"default literal escapes", "{{x | default: \"say \\\"hi\\\" \\\\o/\"}}", TMPL_TEXT,
     "say \"hi\" \\o/", 0, NULL},
    {"default literal is escaped in html", "{{x | default: \"<&>\"}}", 0, "&lt;&amp;&gt;", 0, NULL},
    {"default literal with braces", "{{x | default: \"}}\"}}!", 0, "}}!", 0, NULL},
    {"default empty literal", "[{{x | default: \"\"}}]", 0, "[]", 0, NULL},
    {"upper", "{{contact.fields.first_name | upper}}", 0, "ADA", 0, NULL},
    {"lower", "{{contact.email|lower}}{{contact.fields.first_name|lower}}", 0, "ada@example.comada",
     0, NULL},
    {"upper leaves non-ASCII", "{{contact.fields.city | upper}}", 0, "TéHéRAN", 0, NULL},
    {"default then upper", "{{contact.fields.nick | default: \"there\" | upper}}", 0, "THERE", 0,
     NULL},
    {"upper then lower", "{{contact.fields.first_name | upper | lower}}", 0, "ada", 0, NULL},
    {"upper on number", "{{contact.fields.age | upper}}", 0, "36", 0, NULL},
    {"upper then raw", "{{contact.fields.last_name | upper | raw}}", 0, "<LOVE & \"LACE\">", 0,
     NULL},
    {"integer", "{{contact.fields.age}}", 0, "36", 0, NULL},
    {"real", "{{contact.fields.score}}", 0, "1.5", 0, NULL},
    {"integral real", "{{contact.fields.whole}}", 0, "3", 0, NULL},
    {"shortest real", "{{contact.fields.tenth}}", 0, "0.1", 0, NULL},
    {"negative real", "{{contact.fields.neg}}", 0, "-2.25", 0, NULL},
    {"huge real", "{{contact.fields.big}}", 0, "1e+20", 0, NULL},
    {"zero", "{{contact.fields.zero}}", 0, "0", 0, NULL},
    {"booleans", "{{contact.fields.vip}}/{{contact.fields.churned}}", 0, "true/false", 0, NULL},
    {"null is empty, no warning", "[{{contact.fields.nothing}}]", 0, "[]", 0, NULL},
    {"if true", "{{#if contact.fields.vip}}VIP{{else}}regular{{/if}}", 0, "VIP", 0, NULL},
    {"if false", "{{#if contact.fields.churned}}VIP{{else}}regular{{/if}}", 0, "regular", 0, NULL},
    {"if missing, no warning", "{{#if contact.fields.nope}}a{{else}}b{{/if}}", 0, "b", 0, NULL},
    {"if null", "{{#if contact.fields.nothing}}a{{else}}b{{/if}}", 0, "b", 0, NULL},
    {"if empty string", "{{#if contact.fields.empty}}a{{else}}b{{/if}}", 0, "b", 0, NULL},
    {"if zero", "{{#if contact.fields.zero}}a{{else}}b{{/if}}", 0, "b", 0, NULL},
    {"if empty array", "{{#if contact.fields.none}}a{{else}}b{{/if}}", 0, "b", 0, NULL},
    {"if array", "{{#if contact.fields.tags}}a{{else}}b{{/if}}", 0, "a", 0, NULL},
    {"if object", "{{#if contact.fields.obj}}a{{else}}b{{/if}}", 0, "a", 0, NULL},
    {"if string", "{{#if contact.fields.first_name}}a{{/if}}", 0, "a", 0, NULL},
    {"if real", "{{#if contact.fields.score}}a{{/if}}", 0, "a", 0, NULL},
    {"if false without else", "[{{#if contact.fields.churned}}a{{/if}}]", 0, "[]", 0, NULL},
    {"if spaces", "{{ #if contact.fields.vip }}a{{ else }}b{{ /if }}", 0, "a", 0, NULL},
    {"path through non-object", "{{#if contact.email.x}}a{{else}}b{{/if}}", 0, "b", 0, NULL},
    {"unless", "{{#unless contact.fields.vip}}a{{else}}b{{/unless}}", 0, "b", 0, NULL},
    {"unless missing", "{{#unless contact.fields.nope}}a{{/unless}}", 0, "a", 0, NULL},
    {"nested if",
     "{{#if contact.fields.vip}}{{#if contact.fields.churned}}x{{else}}y{{#if contact.email}}z"
     "{{/if}}{{/if}}{{/if}}",
     0, "yz", 0, NULL},
    {"each with index and last",
     "{{#each contact.fields.tags}}{{@index}}:{{this}}{{#unless @last}}, {{/unless}}{{/each}}", 0,
     "0:a, 1:b, 2:c", 0, NULL},
    {"each first and last",
     "{{#each contact.fields.tags}}{{#if @first}}[{{/if}}{{this}}{{#if @last}}]{{/if}}{{/each}}", 0,
     "[abc]", 0, NULL},
    {"@first @last as text", "{{#each contact.fields.tags}}{{@first}}{{@last}} {{/each}}", 0,
     "truefalse falsefalse falsetrue ", 0, NULL},
    {"if @index", "{{#each contact.fields.tags}}{{#if @index}},{{/if}}{{this}}{{/each}}", 0,
     "a,b,c", 0, NULL},
    {"each this.field", "{{#each contact.fields.orders}}#{{this.id}}={{ this.total }};{{/each}}", 0,
     "#1=9.99;#2=20;", 0, NULL},
    {"each else on empty", "{{#each contact.fields.none}}x{{else}}no orders{{/each}}", 0,
     "no orders", 0, NULL},
    {"each else on missing, no warning", "{{#each contact.fields.nope}}x{{else}}none{{/each}}", 0,
     "none", 0, NULL},
    {"each else on null", "{{#each contact.fields.nothing}}x{{else}}none{{/each}}", 0, "none", 0,
     NULL},
    {"each over non-array warns", "{{#each contact.fields.obj}}x{{else}}none{{/each}}", 0, "none",
     1, "contact.fields.obj is not an array"},
    {"each without else on empty", "[{{#each contact.fields.none}}x{{/each}}]", 0, "[]", 0, NULL},
    {"root paths inside each",
     "{{#each contact.fields.tags}}{{contact.fields.first_name}}{{/each}}", 0, "AdaAdaAda", 0,
     NULL},
    {"nested each restores @index",
     "{{#each contact.fields.orders}}{{#each contact.fields.tags}}{{@index}}{{/each}}|{{@index}};"
     "{{/each}}",
     0, "012|0;012|1;", 0, NULL},
    {"this in else of inner loop is the outer item",
     "{{#each contact.fields.tags}}{{#each contact.fields.none}}{{else}}{{this}}{{/each}}{{/each}}",
     0, "abc", 0, NULL},
    {"comment", "a{{! hidden }}b", 0, "ab", 0, NULL},
    {"long comment with braces", "a{{!-- {{x}} }} --}}b", 0, "ab", 0, NULL},
    {"empty comment", "a{{!}}b", 0, "ab", 0, NULL},
    {"escaped open braces", "\\{{contact.email}} {{contact.fields.first_name}}", 0,
     "{{contact.email}} Ada", 0, NULL},
    {"lone closing braces are text", "a }} b } {", 0, "a }} b } {", 0, NULL},
    {"single brace is text", "{ {contact.email} }", 0, "{ {contact.email} }", 0, NULL},
    {"missing renders empty with warning", "Hi {{contact.fields.nick}}!", 0, "Hi !", 1,
     "missing variable contact.fields.nick"},
    {"missing under scalar", "[{{contact.email.domain}}]", 0, "[]", 1,
     "missing variable contact.email.domain"},
    {"missing this field", "{{#each contact.fields.tags}}{{this.x}}{{/each}}", 0, "", 1,
     "missing variable this.x"},
    {"object renders empty with warning", "[{{contact.fields.obj}}]", 0, "[]", 1,
     "contact.fields.obj is an object and renders as nothing"},
    {"array renders empty with warning", "[{{contact.fields.tags}}]", 0, "[]", 1,
     "contact.fields.tags is an array and renders as nothing"},
    {"loop warnings are not repeated", "{{#each contact.fields.tags}}{{nope}}{{/each}}", 0, "", 1,
     "missing variable nope"},
    {"upper on missing warns once", "[{{nope | upper}}]", 0, "[]", 1, "missing variable nope"},
    {"two tags two warnings", "{{a}}{{a}}", 0, "", 2, "missing variable a"},
};

static void test_render_table(void **state)
{
    (void)state;
    json_t *data = s_data();
    for (size_t i = 0; i < sizeof RENDER_CASES / sizeof RENDER_CASES[0]; i++) {
        const render_case_t *c = &RENDER_CASES[i];
        tmpl_t *t = s_parse_ok(c->name, c->src);
        sbuf_t *out = sbuf_new(0);
        tmpl_warnings_t *warn = tmpl_warnings_new();
        tmpl_error_t err = {0};
        assert_non_null(out);
        assert_non_null(warn);
        if (tmpl_render(t, data, c->flags, out, warn, &err) != 0)
            fail_msg("%s: render failed at %d:%d: %s", c->name, err.line, err.column, err.message);
        if (sbuf_len(out) != strlen(c->expect) || strcmp(sbuf_data(out), c->expect) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", c->name, sbuf_data(out), c->expect);
        if (tmpl_warnings_count(warn) != c->warnings)
            fail_msg("%s: %zu warnings, want %zu (first: %s)", c->name, tmpl_warnings_count(warn),
                     c->warnings,
                     tmpl_warnings_count(warn) ? tmpl_warnings_get(warn, 0, NULL, NULL) : "-");
        if (c->warning && !strstr(tmpl_warnings_get(warn, 0, NULL, NULL), c->warning))
            fail_msg("%s: warning \"%s\", want \"%s\"", c->name,
                     tmpl_warnings_get(warn, 0, NULL, NULL), c->warning);
        tmpl_warnings_destroy(&warn);
        sbuf_destroy(&out);
        tmpl_destroy(&t);
    }
    json_decref(data);
}

/* Strict mode: same template renders as empty + warning or fails. */
typedef struct {
    const char *name;    /* what the row checks */
    const char *src;     /* template */
    int flags;           /* render flags */
    int line;            /* expected error position */
    int column;          /* ditto */
    const char *message; /* substring of the error */
} render_error_case_t;

static const render_error_case_t RENDER_ERRORS[] = {
    {"strict missing", "Dear\n  {{contact.fields.nick}}", TMPL_STRICT, 2, 3,
     "missing variable contact.fields.nick"},
    {"strict missing in text mode", "{{a.b}}", TMPL_STRICT | TMPL_TEXT, 1, 1,
     "missing variable a.b"},
    {"strict object", "x {{contact.fields.obj}}", TMPL_STRICT, 1, 3,
     "contact.fields.obj is an object"},
    {"strict each over non-array", "{{#each contact.email}}{{/each}}", TMPL_STRICT, 1, 1,
     "contact.email is not an array"},
    {"strict missing in loop", "{{#each contact.fields.tags}}{{this.x}}{{/each}}", TMPL_STRICT, 1,
     30, "missing variable this.x"},
    {"required missing, lenient", "{{contact.fields.nick | required}}", 0, 1, 1,
     "required variable contact.fields.nick is missing"},
    {"required null", "é {{contact.fields.nothing|required}}", 0, 1, 3,
     "required variable contact.fields.nothing is missing"},
};

static void test_render_errors(void **state)
{
    (void)state;
    json_t *data = s_data();
    for (size_t i = 0; i < sizeof RENDER_ERRORS / sizeof RENDER_ERRORS[0]; i++) {
        const render_error_case_t *c = &RENDER_ERRORS[i];
        tmpl_t *t = s_parse_ok(c->name, c->src);
        sbuf_t *out = sbuf_new(0);
        tmpl_warnings_t *warn = tmpl_warnings_new();
        tmpl_error_t err = {0};
        assert_int_equal(sbuf_append_str(out, "kept"), 0);
        if (tmpl_render(t, data, c->flags, out, warn, &err) == 0)
            fail_msg("%s: rendered \"%s\", want an error", c->name, sbuf_data(out));
        if (err.line != c->line || err.column != c->column || !strstr(err.message, c->message))
            fail_msg("%s: got %d:%d \"%s\", want %d:%d \"%s\"", c->name, err.line, err.column,
                     err.message, c->line, c->column, c->message);
        if (strcmp(sbuf_data(out), "kept") != 0)
            fail_msg("%s: output not rolled back: \"%s\"", c->name, sbuf_data(out));
        tmpl_warnings_destroy(&warn);
        sbuf_destroy(&out);
        tmpl_destroy(&t);
    }
    json_decref(data);
}

static void test_strict_with_default_and_required_present(void **state)
{
    (void)state;
    json_t *data = s_data();
    tmpl_t *t = s_parse_ok("strict ok", "{{contact.fields.nick | default: \"you\"}} "
                                        "{{contact.fields.first_name | required}} "
                                        "{{#if contact.fields.nope}}x{{/if}}");
    sbuf_t *out = sbuf_new(0);
    tmpl_error_t err = {0};
    assert_int_equal(tmpl_render(t, data, TMPL_STRICT, out, NULL, &err), 0);
    assert_string_equal(sbuf_data(out), "you Ada ");
    sbuf_destroy(&out);
    tmpl_destroy(&t);
    json_decref(data);
}

static void test_warning_positions_and_bound(void **state)
{
    (void)state;
    json_t *data = s_data();
    tmpl_t *t =
        s_parse_ok("positions", "line one\n\t  {{ a }} and {{ contact.fields.obj }}\n{{b}}");
    tmpl_warnings_t *warn = tmpl_warnings_new();
    sbuf_t *out = sbuf_new(0);
    int line = 0, column = 0;
    assert_int_equal(tmpl_render(t, data, 0, out, warn, NULL), 0);
    assert_int_equal(tmpl_warnings_count(warn), 3);
    assert_string_equal(tmpl_warnings_get(warn, 0, &line, &column), "missing variable a");
    assert_int_equal(line, 2);
    assert_int_equal(column, 4);
    tmpl_warnings_get(warn, 1, &line, &column);
    assert_int_equal(line, 2);
    assert_int_equal(column, 16);
    tmpl_warnings_get(warn, 2, &line, &column);
    assert_int_equal(line, 3);
    assert_int_equal(column, 1);
    assert_null(tmpl_warnings_get(warn, 3, &line, &column));
    /* A second render into the same list adds no repeats; reset empties it. */
    assert_int_equal(tmpl_render(t, data, 0, out, warn, NULL), 0);
    assert_int_equal(tmpl_warnings_count(warn), 3);
    tmpl_warnings_reset(warn);
    assert_int_equal(tmpl_warnings_count(warn), 0);
    tmpl_destroy(&t);

    /* 40 distinct missing variables: 32 kept, 8 counted. */
    sbuf_t *src = sbuf_new(0);
    for (int i = 0; i < 40; i++)
        assert_int_equal(sbuf_appendf(src, "{{v%d}}", i), 0);
    t = s_parse_ok("bound", sbuf_data(src));
    assert_int_equal(tmpl_render(t, data, 0, out, warn, NULL), 0);
    assert_int_equal(tmpl_warnings_count(warn), TMPL_MAX_WARNINGS);
    assert_int_equal(tmpl_warnings_dropped(warn), 40 - TMPL_MAX_WARNINGS);
    assert_string_equal(tmpl_warnings_get(warn, 31, NULL, NULL), "missing variable v31");

    /* NULL lists are fine everywhere. */
    assert_int_equal(tmpl_warnings_count(NULL), 0);
    assert_int_equal(tmpl_warnings_dropped(NULL), 0);
    assert_null(tmpl_warnings_get(NULL, 0, NULL, NULL));
    tmpl_warnings_reset(NULL);
    tmpl_warnings_destroy(&warn);
    tmpl_warnings_destroy(&warn);
    assert_null(warn);
    sbuf_destroy(&src);
    sbuf_destroy(&out);
    tmpl_destroy(&t);
    json_decref(data);
}

static void test_render_appends_and_reuses(void **state)
{
    (void)state;
    json_t *data = s_data();
    tmpl_t *t = s_parse_ok("reuse", "{{contact.fields.first_name}};");
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(sbuf_append_str(out, ">"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(tmpl_render(t, data, 0, out, NULL, NULL), 0);
    assert_string_equal(sbuf_data(out), ">Ada;Ada;Ada;");
    /* Non-object root data: every path is missing. */
    json_t *num = json_integer(5);
    sbuf_reset(out);
    assert_int_equal(tmpl_render(t, num, 0, out, NULL, NULL), 0);
    assert_string_equal(sbuf_data(out), ";");
    json_decref(num);
    sbuf_destroy(&out);
    tmpl_destroy(&t);
    tmpl_destroy(&t); /* idempotent */
    tmpl_destroy(NULL);
    json_decref(data);
}

/* --------------------------------------------------------------- limits -- */

static json_t *s_array_of_strings(size_t count, size_t each)
{
    char *s = malloc(each + 1);
    assert_non_null(s);
    memset(s, 'x', each);
    s[each] = '\0';
    json_t *arr = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(arr, json_string(s));
    free(s);
    return json_pack("{so}", "items", arr);
}

static void test_output_limit(void **state)
{
    (void)state;
    tmpl_t *t = s_parse_ok("limit", "{{#each items}}{{this}}{{/each}}");
    sbuf_t *out = sbuf_new(0);
    tmpl_error_t err = {0};

    /* Exactly the limit is fine. */
    json_t *data = s_array_of_strings(10, 1024 * 1024);
    assert_int_equal(tmpl_render(t, data, 0, out, NULL, &err), 0);
    assert_int_equal(sbuf_len(out), TMPL_MAX_OUTPUT);
    json_decref(data);

    /* One byte more is not, and nothing is left behind. */
    sbuf_reset(out);
    assert_int_equal(sbuf_append_str(out, "pre"), 0);
    data = s_array_of_strings(10, 1024 * 1024);
    json_array_append_new(json_object_get(data, "items"), json_string("y"));
    assert_int_equal(tmpl_render(t, data, 0, out, NULL, &err), -1);
    assert_non_null(strstr(err.message, "output larger than"));
    assert_int_equal(err.line, 1);
    assert_int_equal(err.column, 16);
    assert_string_equal(sbuf_data(out), "pre");
    json_decref(data);

    /* Escaping counts: 2 MiB of '&' become 10 MiB of "&amp;" plus a bit. */
    data = s_array_of_strings(0, 0);
    char *amp = malloc(2 * 1024 * 1024 + 2);
    assert_non_null(amp);
    memset(amp, '&', 2 * 1024 * 1024 + 1);
    amp[2 * 1024 * 1024 + 1] = '\0';
    json_array_append_new(json_object_get(data, "items"), json_string(amp));
    free(amp);
    assert_int_equal(tmpl_render(t, data, 0, out, NULL, &err), -1);
    assert_string_equal(sbuf_data(out), "pre");
    assert_int_equal(tmpl_render(t, data, TMPL_TEXT, out, NULL, &err), 0);
    json_decref(data);

    sbuf_destroy(&out);
    tmpl_destroy(&t);
}

static void test_step_limit(void **state)
{
    (void)state;
    /* 1000^3 iterations producing nothing must stop, not spin. */
    json_t *data = s_array_of_strings(1000, 1);
    tmpl_t *t = s_parse_ok("steps", "{{#each items}}{{#each items}}{{#each items}}"
                                    "{{/each}}{{/each}}{{/each}}");
    sbuf_t *out = sbuf_new(0);
    tmpl_error_t err = {0};
    assert_int_equal(tmpl_render(t, data, 0, out, NULL, &err), -1);
    assert_non_null(strstr(err.message, "steps"));
    assert_int_equal(sbuf_len(out), 0);
    sbuf_destroy(&out);
    tmpl_destroy(&t);
    json_decref(data);
}

static void test_nesting_limit(void **state)
{
    (void)state;
    sbuf_t *src = sbuf_new(0);
    for (int i = 0; i < TMPL_MAX_DEPTH; i++)
        assert_int_equal(sbuf_append_str(src, "{{#each a}}"), 0);
    assert_int_equal(sbuf_append_str(src, "{{this}}{{@index}}"), 0);
    for (int i = 0; i < TMPL_MAX_DEPTH; i++)
        assert_int_equal(sbuf_append_str(src, "{{/each}}"), 0);
    tmpl_t *t = s_parse_ok("32 deep", sbuf_data(src));
    json_t *data = json_pack("{s[[[i]]]}", "a", 7);
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(tmpl_render(t, data, 0, out, NULL, NULL), 0);
    tmpl_destroy(&t);
    json_decref(data);

    sbuf_reset(src);
    for (int i = 0; i < TMPL_MAX_DEPTH + 1; i++)
        assert_int_equal(sbuf_append_str(src, "{{#if a}}"), 0);
    tmpl_error_t err = {0};
    assert_null(tmpl_parse(sbuf_data(src), sbuf_len(src), &err));
    assert_int_equal(err.line, 1);
    assert_int_equal(err.column, 1 + TMPL_MAX_DEPTH * 9);
    assert_non_null(strstr(err.message, "nested deeper than 32"));
    sbuf_destroy(&out);
    sbuf_destroy(&src);
}

static void test_source_limit(void **state)
{
    (void)state;
    char *src = malloc(TMPL_MAX_SOURCE + 1);
    assert_non_null(src);
    memset(src, 'a', TMPL_MAX_SOURCE + 1);
    tmpl_error_t err = {0};
    assert_null(tmpl_parse(src, TMPL_MAX_SOURCE + 1, &err));
    assert_non_null(strstr(err.message, "larger than"));
    tmpl_t *t = tmpl_parse(src, TMPL_MAX_SOURCE, &err);
    assert_non_null(t);
    tmpl_destroy(&t);
    /* Not NUL-terminated input is fine: len is what counts. */
    t = tmpl_parse("{{a}}garbage", 5, &err);
    assert_non_null(t);
    sbuf_t *out = sbuf_new(0);
    json_t *data = json_pack("{ss}", "a", "ok");
    assert_int_equal(tmpl_render(t, data, 0, out, NULL, NULL), 0);
    assert_string_equal(sbuf_data(out), "ok");
    json_decref(data);
    sbuf_destroy(&out);
    tmpl_destroy(&t);
    free(src);
    /* err may be NULL. */
    assert_null(tmpl_parse("{{", 2, NULL));
}

/* -------------------------------------------------------- parse errors -- */

typedef struct {
    const char *name;    /* what the row checks */
    const char *src;     /* template */
    size_t len;          /* 0: strlen(src) */
    int line;            /* expected position */
    int column;          /* ditto */
    const char *message; /* substring of the error */
} parse_error_case_t;

static const parse_error_case_t PARSE_ERRORS[] = {
    {"lone open", "{{", 0, 1, 1, "unclosed tag"},
    {"unclosed tag", "Hello {{ name", 0, 1, 7, "unclosed tag"},
    {"unclosed tag line 2", "a\nbc {{ x }", 0, 2, 4, "unclosed tag"},
    {"tag runs into next tag", "{{ a {{ b }}", 0, 1, 1, "unclosed tag"},
    {"triple closed by double", "{{{ x }} y", 0, 1, 1, "'{{{' closed by '}}'"},
    {"unclosed comment", "x {{! never", 0, 1, 3, "unclosed comment"},
    {"unclosed long comment", "{{!-- x }}", 0, 1, 1, "unclosed comment"},
    {"empty tag", "a{{}}", 0, 1, 2, "empty expression"},
    {"blank tag", "{{   }}", 0, 1, 1, "empty expression"},
    {"empty triple", "{{{ }}}", 0, 1, 1, "empty expression"},
    {"if without path", "{{#if}}x{{/if}}", 0, 1, 1, "{{#if}} needs a path"},
    {"each without path", "{{#each  }}{{/each}}", 0, 1, 1, "{{#each}} needs a path"},
    {"hash alone", "{{#}}", 0, 1, 1, "expected a block name"},
    {"unknown helper", "{{#with a}}{{/with}}", 0, 1, 1, "unknown block helper 'with'"},
    {"block name glued", "{{#if(a)}}{{/if}}", 0, 1, 1, "unexpected '('"},
    {"mismatched close", "{{#if a}}x{{/each}}", 0, 1, 11,
     "{{/each}} closes {{#if}} opened at line 1, column 1"},
    {"mismatched close multiline", "{{#if a}}\n  {{#each b}}\n{{/if}}", 0, 3, 1,
     "{{/if}} closes {{#each}} opened at line 2, column 3"},
    {"close without open", "x{{/if}}", 0, 1, 2, "{{/if}} without a matching {{#if}}"},
    {"extra close", "{{#if a}}{{/if}}{{/if}}", 0, 1, 17, "without a matching"},
    {"unknown close", "{{/with}}", 0, 1, 1, "unknown block 'with'"},
    {"close with path", "{{#if a}}{{/if a}}", 0, 1, 10, "unexpected 'a' in a closing tag"},
    {"never closed", "ab\n {{#if a}}x", 0, 2, 2, "{{#if}} is never closed"},
    {"inner never closed", "{{#if a}}{{#unless b}}x{{/unless}}", 0, 1, 1,
     "{{#if}} is never closed"},
    {"innermost never closed", "{{#if a}}{{#each b}}x", 0, 1, 10, "{{#each}} is never closed"},
    {"else outside block", "a {{else}}", 0, 1, 3, "{{else}} outside a block"},
    {"second else", "{{#if a}}{{else}}{{else}}{{/if}}", 0, 1, 18, "second {{else}}"},
    {"unknown filter", "{{ a | shout }}", 0, 1, 1, "unknown filter 'shout'"},
    {"default without value", "{{ a | default }}", 0, 1, 1, "filter 'default' needs a value"},
    {"default bare word", "{{ a | default: there }}", 0, 1, 1, "unexpected 't'"},
    {"filter with value", "{{ a | upper: \"x\" }}", 0, 1, 1, "filter 'upper' takes no value"},
    {"pipe without filter", "{{ a | }}", 0, 1, 1, "expected a filter name"},
    {"two paths", "{{ a b }}", 0, 1, 1, "unexpected 'b' after the path"},
    {"double dot", "{{ a..b }}", 0, 1, 1, "bad path"},
    {"trailing dot", "{{ a. }}", 0, 1, 1, "bad path"},
    {"leading digit", "{{ 1a }}", 0, 1, 1, "bad path"},
    {"leading dot", "{{ .a }}", 0, 1, 1, "bad path"},
    {"dash in name", "{{ first-name }}", 0, 1, 1, "unexpected '-'"},
    {"this outside each", "{{ this }}", 0, 1, 1, "'this' is only valid inside {{#each}}"},
    {"this.x outside each", "{{#if this.x}}{{/if}}", 0, 1, 1, "'this' is only valid"},
    {"@index outside each", "{{ @index }}", 0, 1, 1, "'@index' is only valid inside {{#each}}"},
    {"unknown @ variable", "{{#each a}}{{ @foo }}{{/each}}", 0, 1, 12, "unknown variable '@foo'"},
    {"@ alone", "{{#each a}}{{@}}{{/each}}", 0, 1, 12, "expected a name after '@'"},
    {"this in each else", "{{#each a}}{{else}}{{this}}{{/each}}", 0, 1, 20, "'this' is only"},
    {"@index.x", "{{#each a}}{{ @index.x }}{{/each}}", 0, 1, 12, "has no fields"},
    {"unterminated string", "{{ a | default: \"x }}", 0, 1, 1, "unterminated string"},
    {"bad escape", "{{ a | default: \"\\n\" }}", 0, 1, 1, "bad escape"},
    {"if with two words", "{{#if a b}}{{/if}}", 0, 1, 1, "unexpected 'b'"},
    {"if with filter", "{{#if a | upper}}{{/if}}", 0, 1, 1, "unexpected '|'"},
    {"else with words", "{{#if a}}{{else if b}}{{/if}}", 0, 1, 10, "unexpected 'i'"},
    {"non-ASCII in tag", "{{ a é }}", 0, 1, 1, "unexpected 'é'"},
    {"control char in tag", "{{ a \x01 }}", 0, 1, 1, "unexpected character 0x01"},
    {"columns count characters", "éé {{", 0, 1, 4, "unclosed tag"},
    {"invalid UTF-8 byte", "ab\n c\xff", 0, 2, 3, "invalid UTF-8"},
    {"overlong encoding", "\xc0\xaf", 0, 1, 1, "invalid UTF-8"},
    {"surrogate", "é\xed\xa0\x80", 0, 1, 2, "invalid UTF-8"},
    {"truncated sequence", "a\xe2\x82", 0, 1, 2, "invalid UTF-8"},
    {"above U+10FFFF", "\xf4\x90\x80\x80", 0, 1, 1, "invalid UTF-8"},
    {"stray continuation", "ok\x80", 0, 1, 3, "invalid UTF-8"},
    {"invalid UTF-8 inside tag", "{{ a\xfe }}", 0, 1, 5, "invalid UTF-8"},
    {"NUL byte", "a\0b", 3, 1, 2, "NUL"},
};

static void test_parse_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof PARSE_ERRORS / sizeof PARSE_ERRORS[0]; i++) {
        const parse_error_case_t *c = &PARSE_ERRORS[i];
        tmpl_error_t err = {0};
        size_t len = c->len ? c->len : strlen(c->src);
        tmpl_t *t = tmpl_parse(c->src, len, &err);
        if (t) {
            tmpl_destroy(&t);
            fail_msg("%s: parsed, want an error", c->name);
        }
        if (err.line != c->line || err.column != c->column || !strstr(err.message, c->message))
            fail_msg("%s: got %d:%d \"%s\", want %d:%d \"%s\"", c->name, err.line, err.column,
                     err.message, c->line, c->column, c->message);
    }
}

/* Multi-byte characters valid in UTF-8 and tricky but legal sources. */
static void test_parse_accepts(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "\xf0\x9f\x98\x80 {{a}}", /* 4-byte emoji */
        "\xef\xbb\xbf{{a}}",      /* byte order mark is just text */
        "{{a|upper|lower|raw}}",
        "{{#if a}}{{/if}}{{#unless a}}{{else}}{{/unless}}",
        "{{#each a}}{{@first}}{{@last}}{{@index}}{{this}}{{this.b.c}}{{/each}}",
        "{{ _x.y_1.Z }}",
        "{{ else.x }}",
        "{{a}}}",
        "}}{{a}}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        tmpl_t *t = s_parse_ok(ok[i], ok[i]);
        tmpl_destroy(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_table),
        cmocka_unit_test(test_render_errors),
        cmocka_unit_test(test_strict_with_default_and_required_present),
        cmocka_unit_test(test_warning_positions_and_bound),
        cmocka_unit_test(test_render_appends_and_reuses),
        cmocka_unit_test(test_output_limit),
        cmocka_unit_test(test_step_limit),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_source_limit),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_accepts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
