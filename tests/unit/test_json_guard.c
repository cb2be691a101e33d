/*
 * test_json_guard - bodies parsed as the framework parses them
 * (JSON_REJECT_DUPLICATES), then checked: each limit at its edge (exactly
 * at it passes, one over fails naming the JSON Pointer), the defaults, key
 * escaping and cutting in pointers, non-finite reals in built values, and
 * what the parser itself already refuses (so json_guard may rely on it).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "json_guard.h"
#include "sbuf.h"

static json_t *s_parse(const char *text)
{
    json_error_t e;
    json_t *v = json_loadb(text, strlen(text), JSON_REJECT_DUPLICATES, &e);
    if (!v)
        fail_msg("json_loadb(%s): %s", text, e.text);
    return v;
}

/* Check text against lim: NULL expect means it must pass, else the error
 * must equal expect. */
static void s_expect(const char *text, const json_guard_limits_t *lim, const char *expect)
{
    json_t *v = s_parse(text);
    sbuf_t *err = sbuf_new(64);
    sbuf_append_str(err, "stale");
    int rc = json_guard_check(v, lim, err);
    if (!expect) {
        if (rc != 0)
            fail_msg("%s refused: %s", text, sbuf_data(err));
        assert_string_equal(sbuf_data(err), "");
    } else {
        assert_int_equal(rc, -1);
        assert_string_equal(sbuf_data(err), expect);
    }
    sbuf_destroy(&err);
    json_decref(v);
}

static const json_guard_limits_t s_small = {
    .max_depth = 3, .max_string = 5, .max_array = 3, .max_object = 2, .max_nodes = 0};

static void test_ordinary_bodies_pass(void **state)
{
    (void)state;
    const char *ok[] = {
        "{}", "[]", "[null,true,0,\"\"]", "[-9223372036854775808,9223372036854775807]",
        "[1.5e308,-2.5e-308]",
        "{\"email\":\"a@b.c\",\"fields\":{\"plan\":\"pro\",\"n\":[1,2.5,null,false]}}",
        "{\"name\":\"O'Brien; DROP TABLE contacts;--\",\"x\":\"\\u00e9\\ud83d\\ude00\"}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        s_expect(ok[i], json_guard_defaults(), NULL);
}

static void test_depth(void **state)
{
    (void)state;
    s_expect("[[[1]]]", &s_small, NULL);
    s_expect("{\"a\":{\"b\":[]}}", &s_small, NULL);
    s_expect("[[[[1]]]]", &s_small, "/0/0/0: nested deeper than 3 levels");
    s_expect("{\"a\":{\"b\":[{}]}}", &s_small, "/a/b/0: nested deeper than 3 levels");

    /* The default (32) against 32 and 33 levels. */
    char deep[80];
    memset(deep, '[', 32);
    memset(deep + 32, ']', 32);
    deep[64] = '\0';
    s_expect(deep, json_guard_defaults(), NULL);
    memset(deep, '[', 33);
    memset(deep + 33, ']', 33);
    deep[66] = '\0';
    json_t *v = s_parse(deep);
    sbuf_t *err = sbuf_new(64);
    assert_int_equal(json_guard_check(v, json_guard_defaults(), err), -1);
    assert_non_null(strstr(sbuf_data(err), "nested deeper than 32 levels"));
    sbuf_destroy(&err);
    json_decref(v);
}

static void test_strings_and_keys(void **state)
{
    (void)state;
    s_expect("[\"abcde\"]", &s_small, NULL);
    s_expect("[\"abcdef\"]", &s_small, "/0: string is longer than 5 bytes");
    /* Bytes, not characters: "é" is two bytes, so three of them are six. */
    s_expect("[\"\\u00e9\\u00e9\\u00e9\"]", &s_small, "/0: string is longer than 5 bytes");
    s_expect("{\"abcde\":1}", &s_small, NULL);
    s_expect("{\"abcdef\":1}", &s_small, "/abcdef: member name is longer than 5 bytes");
    /* RFC 6901 escaping of ~ and / in the pointer. */
    s_expect("{\"a/b\":{\"~c\":\"toolong\"}}", &s_small, "/a~1b/~0c: string is longer than 5 bytes");
}

static void test_long_key_is_cut_in_pointer(void **state)
{
    (void)state;
    /* A 200-byte key of two-byte characters: the pointer shows at most 64
     * bytes, cut between characters, then "...". */
    sbuf_t *text = sbuf_new(512);
    sbuf_append_str(text, "{\"");
    for (int i = 0; i < 100; i++)
        sbuf_append_str(text, "\xc3\xa9");
    sbuf_append_str(text, "\":1}");
    json_t *v = s_parse(sbuf_data(text));
    json_guard_limits_t lim = *json_guard_defaults();
    lim.max_string = 10;
    sbuf_t *err = sbuf_new(64);
    assert_int_equal(json_guard_check(v, &lim, err), -1);
    sbuf_t *expect = sbuf_new(256);
    sbuf_append_str(expect, "/");
    for (int i = 0; i < 32; i++)
        sbuf_append_str(expect, "\xc3\xa9");
    sbuf_append_str(expect, "...: member name is longer than 10 bytes");
    assert_string_equal(sbuf_data(err), sbuf_data(expect));
    sbuf_destroy(&expect);
    sbuf_destroy(&err);
    sbuf_destroy(&text);
    json_decref(v);

    /* Odd cut point: one ASCII byte first, so byte 64 is mid-character. */
    text = sbuf_new(512);
    sbuf_append_str(text, "{\"x");
    for (int i = 0; i < 100; i++)
        sbuf_append_str(text, "\xc3\xa9");
    sbuf_append_str(text, "\":1}");
    v = s_parse(sbuf_data(text));
    err = sbuf_new(64);
    assert_int_equal(json_guard_check(v, &lim, err), -1);
    /* "/" + "x" + 31 characters (63 bytes) + "..." */
    assert_int_equal(strstr(sbuf_data(err), "...") - sbuf_data(err), 1 + 1 + 62);
    sbuf_destroy(&err);
    sbuf_destroy(&text);
    json_decref(v);
}

static void test_array_and_object_sizes(void **state)
{
    (void)state;
    s_expect("[1,2,3]", &s_small, NULL);
    s_expect("[1,2,3,4]", &s_small, "/: array has more than 3 elements");
    s_expect("{\"a\":[[1,2,3,4]]}", &s_small, "/a/0: array has more than 3 elements");
    s_expect("{\"a\":1,\"b\":2}", &s_small, NULL);
    s_expect("{\"a\":1,\"b\":2,\"c\":3}", &s_small, "/: object has more than 2 members");
    s_expect("[{},{\"x\":{\"a\":1,\"b\":2,\"c\":3}}]", &s_small,
             "/1/x: object has more than 2 members");
}

static void test_node_count(void **state)
{
    (void)state;
    json_guard_limits_t lim = *json_guard_defaults();
    lim.max_nodes = 4;
    s_expect("[1,2,3]", &lim, NULL);        /* 4 values: the array and three */
    s_expect("[1,[2],3]", &lim, "/2: document has more than 4 values");
    lim.max_nodes = 0; /* no limit */
    s_expect("[1,[2],3,4,5,6,7]", &lim, NULL);
}

static void test_first_error_wins_and_err_is_reset(void **state)
{
    (void)state;
    s_expect("[\"abcdefg\",[1,2,3,4]]", &s_small, "/0: string is longer than 5 bytes");
}

static void test_built_values(void **state)
{
    (void)state;
    sbuf_t *err = sbuf_new(64);
    /* jansson refuses to build a non-finite real... */
    assert_null(json_real(NAN));
    assert_null(json_real(INFINITY));
    /* ...and a NULL value is refused, not dereferenced. */
    assert_int_equal(json_guard_check(NULL, json_guard_defaults(), err), -1);
    assert_string_equal(sbuf_data(err), "/: missing value");
    /* A string with a NUL in it can be built, never parsed: refused. */
    json_t *v = json_pack("{s:o}", "s", json_stringn("a\0b", 3));
    assert_int_equal(json_guard_check(v, json_guard_defaults(), err), -1);
    assert_string_equal(sbuf_data(err), "/s: string contains a NUL character");
    json_decref(v);
    sbuf_destroy(&err);
}

/* What json_guard leaves to the parser: these never reach it. */
static void test_parser_refusals(void **state)
{
    (void)state;
    const char *bad[] = {
        "{\"a\":1,\"a\":2}",        /* duplicate key */
        "9223372036854775808",      /* beyond int64 */
        "-9223372036854775809",
        "1e400",                    /* real overflow */
        "[\"a\\u0000b\"]",          /* NUL in a string */
        "{\"a\\u0000\":1}",         /* NUL in a key */
        "\"\xff\"",                 /* invalid UTF-8 */
        "\"\\ud800\"",              /* lone surrogate */
        "NaN", "Infinity", "[1,]", "{\"a\":1} x", "",
        "null", "1", "\"text\"",  /* a body is an object or an array */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_error_t e;
        json_t *v = json_loadb(bad[i], strlen(bad[i]), JSON_REJECT_DUPLICATES, &e);
        if (v)
            fail_msg("parser accepted %s", bad[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ordinary_bodies_pass),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_strings_and_keys),
        cmocka_unit_test(test_long_key_is_cut_in_pointer),
        cmocka_unit_test(test_array_and_object_sizes),
        cmocka_unit_test(test_node_count),
        cmocka_unit_test(test_first_error_wins_and_err_is_reset),
        cmocka_unit_test(test_built_values),
        cmocka_unit_test(test_parser_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
