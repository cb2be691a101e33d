/*
 * test_json_depth - nesting counted from the bytes: the limit itself, one
 * past it, brackets in strings and after escapes, and text the parser
 * would refuse (never a reason to overread or to call it deep).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json_depth.h"

static int s_ok(const char *text, int max)
{
    return json_depth_ok(text, strlen(text), max);
}

static void test_limit(void **state)
{
    (void)state;
    assert_true(s_ok("1", 0));
    assert_false(s_ok("[]", 0));
    assert_true(s_ok("[]", 1));
    assert_true(s_ok("[[1]]", 2));
    assert_false(s_ok("[[1]]", 1));
    assert_true(s_ok("{\"a\":[{\"b\":1}]}", 3));
    assert_false(s_ok("{\"a\":[{\"b\":1}]}", 2));
    /* siblings do not add up */
    assert_true(s_ok("[[1],[2],[3],{\"x\":1}]", 2));
}

static void test_strings(void **state)
{
    (void)state;
    assert_true(s_ok("{\"a\":\"[[[[[[[[[{{{{{{{{\"}", 1));
    /* an escaped quote does not end the string */
    assert_true(s_ok("[\"\\\"[[[[[[\"]", 1));
    /* an escaped backslash does: the bracket after it counts */
    assert_false(s_ok("[\"\\\\\",[[1]]]", 2));
    assert_true(s_ok("[\"\\\\\",[[1]]]", 3));
}

static void test_hostile(void **state)
{
    (void)state;
    char *deep = malloc(100001);
    memset(deep, '[', 100000);
    deep[100000] = 0;
    assert_false(s_ok(deep, 32));
    assert_true(s_ok(deep, 100000));
    /* closers without openers, a lone backslash at the end, length 0 */
    assert_true(s_ok("]]]]}}}", 1));
    assert_true(json_depth_ok("\"\\", 2, 1));
    assert_true(json_depth_ok(deep, 0, 0));
    /* the length is honoured: the bytes after it are not read */
    assert_true(json_depth_ok(deep, 32, 32));
    assert_false(json_depth_ok(deep, 33, 32));
    free(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
