/*
 * test_shape_override - the shaping_overrides setting: the short form
 * (rate/burst) and every optional field, defaults as 0, spaces and a
 * leading dot, and every malformed item refused with a message naming it
 * (and nothing returned); matching by whole labels, the longest suffix
 * winning, any letter case and a root dot.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shape_override.h"

static void test_fields_and_defaults(void **state)
{
    (void)state;
    shape_override_t *o = NULL;
    size_t n = 0;
    sbuf_t *err = sbuf_new(64);
    assert_int_equal(shape_overrides_parse(" Google.com=100/200 , .outlook.com=20/40/2/50/1.5,"
                                           "yahoo.net=5/5/3, aol.com=1/1/0/7 ,",
                                           &o, &n, err),
                     0);
    assert_int_equal(n, 4);
    assert_string_equal(o[0].suffix, "google.com");
    assert_true(o[0].rate == 100 && o[0].burst == 200);
    assert_true(o[0].conns == 0 && o[0].per_conn == 0 && o[0].conn_rate == 0);
    assert_string_equal(o[1].suffix, "outlook.com");
    assert_true(o[1].rate == 20 && o[1].burst == 40);
    assert_true(o[1].conns == 2 && o[1].per_conn == 50 && o[1].conn_rate == 1.5);
    assert_true(o[2].conns == 3 && o[2].per_conn == 0 && o[2].conn_rate == 0);
    assert_true(o[3].conns == 0 && o[3].per_conn == 7);
    assert_int_equal(sbuf_len(err), 0);
    free(o);
    /* Nothing configured: no list. */
    assert_int_equal(shape_overrides_parse("  ", &o, &n, err), 0);
    assert_null(o);
    assert_int_equal(n, 0);
    sbuf_destroy(&err);
}

static void test_bad_items_are_named(void **state)
{
    (void)state;
    const char *bad[] = {
        "google.com",                   /* no budget */
        "google.com=",                  /* empty budget */
        "=1/1",                         /* no suffix */
        ".=1/1",                        /* only a dot */
        "google.=1/1",                  /* ends in a dot */
        "goo gle.com=1/1",              /* a space inside */
        "google.com=100",               /* no burst */
        "google.com=100/",              /* empty burst */
        "google.com=0/10",              /* rate must be > 0 */
        "google.com=-1/10",             /* negative */
        "google.com=10/0.5",            /* burst >= 1 */
        "google.com=10/10/1001",        /* connections <= 1000 */
        "google.com=10/10/1.5",         /* connections whole */
        "google.com=10/10/2/0.5",       /* messages per connection whole */
        "google.com=10/10/2/100001",    /* at most 100000 */
        "google.com=10/10/2/5/-1",      /* connection rate >= 0 */
        "google.com=10/10/2/5/1/9",     /* a sixth field */
        "google.com=10/10/",            /* a trailing slash */
        "google.com=10/10/x",           /* not a number */
        "google.com=nan/10",            /* not finite */
        "google.com=10/inf",            /* not finite */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "ok.example=1/1, %s", bad[i]);
        shape_override_t *o = (shape_override_t *)1;
        size_t n = 99;
        sbuf_t *err = sbuf_new(64);
        assert_int_equal(shape_overrides_parse(text, &o, &n, err), -1);
        assert_null(o);
        assert_int_equal(n, 0);
        char quoted[160];
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        if (!strstr(sbuf_data(err), quoted) || !strstr(sbuf_data(err), "shaping_overrides"))
            fail_msg("item %zu (%s): %s", i, bad[i], sbuf_data(err));
        sbuf_destroy(&err);
    }
}

static void test_match_whole_labels_longest_first(void **state)
{
    (void)state;
    shape_override_t *o = NULL;
    size_t n = 0;
    sbuf_t *err = sbuf_new(64);
    assert_int_equal(shape_overrides_parse("google.com=100/200,smtp.google.com=5/5,le.com=1/1", &o,
                                           &n, err),
                     0);
    const shape_override_t *m = shape_override_match(o, n, "aspmx.l.GOOGLE.com");
    assert_non_null(m);
    assert_string_equal(m->suffix, "google.com");
    m = shape_override_match(o, n, "alt1.smtp.google.com.");
    assert_non_null(m);
    assert_string_equal(m->suffix, "smtp.google.com"); /* the longer suffix */
    m = shape_override_match(o, n, "google.com");
    assert_non_null(m);
    assert_string_equal(m->suffix, "google.com"); /* the whole name */
    assert_null(shape_override_match(o, n, "notgoogle.com.example"));
    assert_null(shape_override_match(o, n, "mx.example.org"));
    m = shape_override_match(o, n, "mail.le.com");
    assert_non_null(m);
    assert_string_equal(m->suffix, "le.com");
    assert_null(shape_override_match(o, n, "xgoogle.com")); /* labels, not characters */
    assert_null(shape_override_match(NULL, 0, "aspmx.l.google.com"));
    free(o);
    sbuf_destroy(&err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields_and_defaults),
        cmocka_unit_test(test_bad_items_are_named),
        cmocka_unit_test(test_match_whole_labels_longest_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
