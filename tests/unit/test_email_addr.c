/*
 * test_email_addr - email_normalize over a table of accepted addresses (with
 * their normalized form) and refused ones (with the reason), plus the
 * length limits at their exact edges, embedded NULs, a small output buffer
 * and NULL arguments.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "email_addr.h"

typedef struct {
    const char *in;   /* the input, NUL-terminated */
    const char *want; /* normalized form, or NULL when refused */
    const char *why;  /* the reason when refused */
} case_t;

static const case_t CASES[] = {
    /* accepted */
    {"ada@example.com", "ada@example.com", NULL},
    {"  Ada.Lovelace@Example.COM\t", "Ada.Lovelace@example.com", NULL},
    {"first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk", NULL},
    {"o'brien@example.ie", "o'brien@example.ie", NULL},
    {"x!#$%&'*+-/=?^_`{|}~y@example.org", "x!#$%&'*+-/=?^_`{|}~y@example.org", NULL},
    {"user@xn--bcher-kva.example", "user@xn--bcher-kva.example", NULL},
    {"user@b\xc3\xbc" "cher.example", "user@b\xc3\xbc" "cher.example", NULL},
    {"\xd9\x85\xd8\xb1\xdb\x8c\xd9\x85@\xd9\x85\xd8\xab\xd8\xa7\xd9\x84.\xd8\xa7\xdb\x8c\xd8\xb1\xd8\xa7\xd9\x86",
     "\xd9\x85\xd8\xb1\xdb\x8c\xd9\x85@\xd9\x85\xd8\xab\xd8\xa7\xd9\x84.\xd8\xa7\xdb\x8c\xd8\xb1\xd8\xa7\xd9\x86",
     NULL},
    {"a@b.c", "a@b.c", NULL},
    {"a-b@my-host.EXAMPLE", "a-b@my-host.example", NULL},
    {"1234@1.2.3.4", "1234@1.2.3.4", NULL},
    {"UPPER@UPPER.ORG", "UPPER@upper.org", NULL},
    /* refused */
    {"", NULL, "empty address"},
    {"   \t ", NULL, "empty address"},
    {"ada.example.com", NULL, "missing @"},
    {"a@b@example.com", NULL, "more than one @"},
    {"@example.com", NULL, "empty local part"},
    {"ada@", NULL, "empty domain"},
    {".ada@example.com", NULL, "local part starts with a dot"},
    {"ada.@example.com", NULL, "local part ends with a dot"},
    {"a..da@example.com", NULL, "local part has consecutive dots"},
    {"a da@example.com", NULL, "local part contains a space"},
    {"a\tda@example.com", NULL, "contains a control character"},
    {"ada\x7f@example.com", NULL, "contains a control character"},
    {"ada@example.com\r\n", NULL, "contains CR or LF"},
    {"ada@exa\nmple.com", NULL, "contains CR or LF"},
    {"ada\r@example.com", NULL, "contains CR or LF"},
    {"\"a b\"@example.com", NULL, "quoted local parts are not supported"},
    {"a(comment)@example.com", NULL, "local part has an invalid character"},
    {"a;b@example.com", NULL, "local part has an invalid character"},
    {"a<b>@example.com", NULL, "local part has an invalid character"},
    {"ada@localhost", NULL, "domain has no dot"},
    {"ada@[192.0.2.1]", NULL, "address literals are not supported"},
    {"ada@.example.com", NULL, "domain has an empty label"},
    {"ada@example.com.", NULL, "domain has an empty label"},
    {"ada@example..com", NULL, "domain has an empty label"},
    {"ada@-example.com", NULL, "domain label starts or ends with a hyphen"},
    {"ada@example-.com", NULL, "domain label starts or ends with a hyphen"},
    {"ada@exa_mple.com", NULL, "domain has an invalid character"},
    {"ada@exam ple.com", NULL, "domain has an invalid character"},
    {"ada@example.com;DROP", NULL, "domain has an invalid character"},
    {"ada@ex'ample.com", NULL, "domain has an invalid character"},
    {"ada@b\xc3" "cher.example", NULL, "invalid UTF-8"},              /* truncated */
    {"ada@b\xc0\xbc" "cher.example", NULL, "invalid UTF-8"},          /* overlong */
    {"ad\xed\xa0\x80" "a@example.com", NULL, "invalid UTF-8"},        /* surrogate */
    {"ad\xf4\x90\x80\x80" "a@example.com", NULL, "invalid UTF-8"},    /* > U+10FFFF */
    {"ad\xc2\x85" "a@example.com", NULL, "invalid UTF-8"},            /* C1 control */
    {"ad\xff" "a@example.com", NULL, "invalid UTF-8"},
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const case_t *c = &CASES[i];
        char out[EMAIL_ADDR_MAX + 1];
        const char *why = "unset";
        int rc = email_normalize(c->in, strlen(c->in), out, sizeof out, &why);
        if (c->want) {
            if (rc != 0)
                fail_msg("case %zu (%s): refused with \"%s\"", i, c->in, why);
            assert_string_equal(out, c->want);
            assert_null(why);
        } else {
            if (rc != -1)
                fail_msg("case %zu (%s): accepted as %s", i, c->in, out);
            assert_non_null(why);
            if (strcmp(why, c->why) != 0)
                fail_msg("case %zu (%s): reason \"%s\", want \"%s\"", i, c->in, why, c->why);
            assert_string_equal(out, "");
        }
    }
}

/* Build local@domain with the local part and domain of the given sizes. */
static void s_build(char *buf, size_t local, size_t label, size_t labels)
{
    size_t n = 0;
    memset(buf, 'l', local);
    n = local;
    buf[n++] = '@';
    for (size_t i = 0; i < labels; i++) {
        if (i)
            buf[n++] = '.';
        memset(buf + n, 'd', label);
        n += label;
    }
    buf[n] = '\0';
}

static void test_limits(void **state)
{
    (void)state;
    char in[1024], out[EMAIL_ADDR_MAX + 1];
    const char *why = NULL;

    s_build(in, 64, 10, 2);
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), 0);
    s_build(in, 65, 10, 2);
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), -1);
    assert_string_equal(why, "local part longer than 64 bytes");

    s_build(in, 5, 63, 2);
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), 0);
    s_build(in, 5, 64, 2);
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), -1);
    assert_string_equal(why, "domain label longer than 63 bytes");

    /* 64 + 1 + (62 + 1 + 62 + 1 + 63) = 254 bytes exactly. */
    s_build(in, 64, 62, 3);
    strcat(in, "a");
    assert_int_equal(strlen(in), EMAIL_ADDR_MAX);
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), 0);
    assert_string_equal(out, in);
    s_build(in, 64, 62, 3);
    strcat(in, "ab");
    assert_int_equal(strlen(in), EMAIL_ADDR_MAX + 1);
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), -1);
    assert_string_equal(why, "address longer than 254 bytes");

    /* Surrounding whitespace does not count towards the limit. */
    s_build(in + 10, 64, 62, 3);
    memset(in, ' ', 10);
    strcat(in, "a  \t ");
    assert_int_equal(email_normalize(in, strlen(in), out, sizeof out, &why), 0);
}

static void test_embedded_nul_and_length(void **state)
{
    (void)state;
    char out[EMAIL_ADDR_MAX + 1];
    const char *why = NULL;
    const char with_nul[] = "ada@exam\0ple.com";
    assert_int_equal(email_normalize(with_nul, sizeof with_nul - 1, out, sizeof out, &why), -1);
    assert_string_equal(why, "contains a control character");
    /* len bounds the input: the tail after it is not read. */
    const char *s = "ada@example.comXYZ";
    assert_int_equal(email_normalize(s, 15, out, sizeof out, &why), 0);
    assert_string_equal(out, "ada@example.com");
}

static void test_small_output_and_nulls(void **state)
{
    (void)state;
    char out[8];
    const char *why = NULL;
    assert_int_equal(email_normalize("ada@example.com", 15, out, sizeof out, &why), -1);
    assert_string_equal(why, "output buffer too small");
    assert_string_equal(out, "");
    char big[EMAIL_ADDR_MAX + 1];
    assert_int_equal(email_normalize(NULL, 0, big, sizeof big, &why), -1);
    assert_string_equal(why, "empty address");
    /* why may be NULL. */
    assert_int_equal(email_normalize("x@y.z", 5, big, sizeof big, NULL), 0);
    assert_int_equal(email_normalize("xy.z", 4, big, sizeof big, NULL), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_embedded_nul_and_length),
        cmocka_unit_test(test_small_output_and_nulls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
