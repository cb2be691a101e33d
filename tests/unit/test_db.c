/*
 * test_db - the parts of db that need no server: the conninfo built from
 * settings. Values are checked by handing the result to libpq's own
 * parser, so quoting is judged by the reader that matters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "config.h"
#include "db.h"
#include "sbuf.h"

/* Value of keyword in conninfo as libpq reads it (NULL when unset); the
 * result is a copy the caller frees. Fails the test if it does not parse. */
static char *s_parsed(const char *conninfo, const char *keyword)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts)
        fail_msg("libpq cannot parse '%s': %s", conninfo, perr ? perr : "?");
    char *out = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, keyword) == 0 && o->val)
            out = strdup(o->val);
    PQconninfoFree(opts);
    return out;
}

static void s_set(config_t *cfg, const char *name, const char *value)
{
    sbuf_t *err = sbuf_new(64);
    if (config_set(cfg, name, value, err) != 0)
        fail_msg("config_set %s: %s", name, sbuf_data(err));
    sbuf_destroy(&err);
}

static void s_assert_parsed(const char *conninfo, const char *keyword, const char *expected)
{
    char *v = s_parsed(conninfo, keyword);
    if (!expected) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    assert_string_equal(v, expected);
    free(v);
}

static void test_built_from_parts_with_hostile_values(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    assert_non_null(cfg);
    s_set(cfg, "pg_host", "db.example.com");
    s_set(cfg, "pg_port", "6543");
    s_set(cfg, "pg_database", "my db");
    s_set(cfg, "pg_user", "o'brien");
    s_set(cfg, "pg_password", "p a\\ss' host=evil.example.com");
    char *ci = db_conninfo_from_config(cfg);
    assert_non_null(ci);
    s_assert_parsed(ci, "host", "db.example.com");
    s_assert_parsed(ci, "port", "6543");
    s_assert_parsed(ci, "dbname", "my db");
    s_assert_parsed(ci, "user", "o'brien");
    s_assert_parsed(ci, "password", "p a\\ss' host=evil.example.com");
    free(ci);
    config_destroy(&cfg);
}

static void test_empty_password_is_left_out(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    assert_non_null(cfg);
    s_set(cfg, "pg_password", "");
    char *ci = db_conninfo_from_config(cfg);
    assert_non_null(ci);
    assert_null(strstr(ci, "password"));
    s_assert_parsed(ci, "password", NULL);
    free(ci);
    config_destroy(&cfg);
}

static void test_dsn_wins(void **state)
{
    (void)state;
    config_t *cfg = config_new();
    assert_non_null(cfg);
    s_set(cfg, "pg_host", "ignored.example.com");
    s_set(cfg, "pg_dsn", "postgresql://u@h:7/d");
    char *ci = db_conninfo_from_config(cfg);
    assert_non_null(ci);
    assert_string_equal(ci, "postgresql://u@h:7/d");
    free(ci);
    config_destroy(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_built_from_parts_with_hostile_values),
        cmocka_unit_test(test_empty_password_is_left_out),
        cmocka_unit_test(test_dsn_wins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
