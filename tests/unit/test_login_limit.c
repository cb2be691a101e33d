/*
 * test_login_limit - the in-process fallback that keeps the failed-login
 * limit when Redis is unreachable (kv NULL): counting to the limit, keys
 * independent of each other, reset, and a full table staying bounded.
 * (The Redis path is covered by test_kv and the API integration test.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "login_limit.h"

static void test_counts_to_the_limit(void **state)
{
    (void)state;
    login_limit_t *l = login_limit_new(3, 900, 64, "test");
    assert_non_null(l);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(login_limit_check(l, NULL, "acct", "a@example.com"), 0);
        login_limit_fail(l, NULL, "acct", "a@example.com");
    }
    int64_t wait = login_limit_check(l, NULL, "acct", "a@example.com");
    assert_true(wait >= 1 && wait <= 900);
    /* Other keys and other kinds with the same value are not affected. */
    assert_int_equal(login_limit_check(l, NULL, "acct", "b@example.com"), 0);
    assert_int_equal(login_limit_check(l, NULL, "addr", "a@example.com"), 0);
    /* Reset opens it again. */
    login_limit_reset(l, NULL, "acct", "a@example.com");
    assert_int_equal(login_limit_check(l, NULL, "acct", "a@example.com"), 0);
    login_limit_destroy(&l);
    assert_null(l);
    login_limit_destroy(&l);
}

static void test_table_is_bounded(void **state)
{
    (void)state;
    login_limit_t *l = login_limit_new(1, 900, 8, "test");
    char v[32];
    for (int i = 0; i < 100; i++) {
        snprintf(v, sizeof v, "10.0.0.%d", i);
        login_limit_fail(l, NULL, "addr", v);
    }
    /* The last ones are still counted; the table did not grow (ASan/LSan
     * would see the leak of a lost entry). */
    for (int i = 92; i < 100; i++) {
        snprintf(v, sizeof v, "10.0.0.%d", i);
        assert_true(login_limit_check(l, NULL, "addr", v) >= 1);
    }
    int refused = 0;
    for (int i = 0; i < 100; i++) {
        snprintf(v, sizeof v, "10.0.0.%d", i);
        refused += login_limit_check(l, NULL, "addr", v) > 0;
    }
    assert_int_equal(refused, 8);
    login_limit_destroy(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_to_the_limit),
        cmocka_unit_test(test_table_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
