/*
 * test_sbuf - the growable string: appends, formatting, binary data,
 * growth across many reallocs, overflow refusal, detach/reset/truncate.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sbuf.h"

static void test_new_is_empty(void **state)
{
    (void)state;
    size_t hints[] = {0, 1, 16, 1000};
    for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++) {
        sbuf_t *b = sbuf_new(hints[i]);
        assert_non_null(b);
        assert_int_equal(sbuf_len(b), 0);
        assert_non_null(sbuf_data(b));
        assert_string_equal(sbuf_data(b), "");
        sbuf_destroy(&b);
        assert_null(b);
        sbuf_destroy(&b); /* idempotent */
    }
    sbuf_destroy(NULL);
}

static void test_append_and_format(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    assert_int_equal(sbuf_append_str(b, "hello"), 0);
    assert_int_equal(sbuf_append(b, ", ", 2), 0);
    assert_int_equal(sbuf_appendf(b, "%s %d%c", "world", 42, '!'), 0);
    assert_int_equal(sbuf_append(b, NULL, 0), 0);
    assert_string_equal(sbuf_data(b), "hello, world 42!");
    assert_int_equal(sbuf_len(b), 16);
    sbuf_destroy(&b);
}

static void test_binary_safe(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(4);
    const char bytes[] = {'a', '\0', 'b', '\0', (char)0xff};
    assert_int_equal(sbuf_append(b, bytes, sizeof bytes), 0);
    assert_int_equal(sbuf_len(b), sizeof bytes);
    assert_memory_equal(sbuf_data(b), bytes, sizeof bytes);
    assert_int_equal(sbuf_data(b)[sizeof bytes], '\0');
    sbuf_destroy(&b);
}

/* Many small appends cross many growth steps; every byte must survive and
 * the terminator must always be there. */
static void test_growth_keeps_content(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(sbuf_appendf(b, "%04d", i % 10000), 0);
        assert_int_equal(sbuf_data(b)[sbuf_len(b)], '\0');
    }
    assert_int_equal(sbuf_len(b), 40000);
    char want[5];
    for (int i = 0; i < 10000; i += 997) {
        snprintf(want, sizeof want, "%04d", i);
        assert_memory_equal(sbuf_data(b) + i * 4, want, 4);
    }
    sbuf_destroy(&b);
}

/* A formatted string longer than the spare room takes the second path. */
static void test_appendf_long(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(1);
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(sbuf_appendf(b, "<%s>", big), 0);
    assert_int_equal(sbuf_len(b), sizeof big + 1);
    assert_int_equal(sbuf_data(b)[0], '<');
    assert_int_equal(sbuf_data(b)[sizeof big], '>');
    assert_int_equal(sbuf_data(b)[sizeof big + 1], '\0');
    sbuf_destroy(&b);
}

static void test_self_append(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    sbuf_append_str(b, "abc");
    for (int i = 0; i < 6; i++) /* grows while reading its own bytes */
        assert_int_equal(sbuf_append(b, sbuf_data(b), sbuf_len(b)), 0);
    assert_int_equal(sbuf_len(b), 3 * 64);
    for (size_t i = 0; i < sbuf_len(b); i += 3)
        assert_memory_equal(sbuf_data(b) + i, "abc", 3);
    sbuf_destroy(&b);
}

/* Sizes that would wrap size_t are refused and leave the buffer as it was. */
static void test_overflow_refused(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    sbuf_append_str(b, "keep");
    size_t huge[] = {SIZE_MAX,     SIZE_MAX - 1, SIZE_MAX - 4,
                     SIZE_MAX - 5, SIZE_MAX / 2, SIZE_MAX / 2 - 4};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        assert_int_equal(sbuf_reserve(b, huge[i]), -1);
        assert_int_equal(sbuf_append(b, "x", huge[i]), -1);
        assert_string_equal(sbuf_data(b), "keep");
        assert_int_equal(sbuf_len(b), 4);
    }
    assert_null(sbuf_new(SIZE_MAX));
    sbuf_destroy(&b);
}

static void test_reserve(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    sbuf_append_str(b, "ab");
    assert_int_equal(sbuf_reserve(b, 1 << 20), 0);
    assert_int_equal(sbuf_len(b), 2);
    assert_string_equal(sbuf_data(b), "ab");
    sbuf_destroy(&b);
}

static void test_reset_truncate(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    sbuf_append_str(b, "hello world");
    sbuf_truncate(b, 100); /* longer: no-op */
    assert_string_equal(sbuf_data(b), "hello world");
    sbuf_truncate(b, 11);
    assert_string_equal(sbuf_data(b), "hello world");
    sbuf_truncate(b, 5);
    assert_string_equal(sbuf_data(b), "hello");
    assert_int_equal(sbuf_len(b), 5);
    sbuf_reset(b);
    assert_string_equal(sbuf_data(b), "");
    assert_int_equal(sbuf_len(b), 0);
    sbuf_append_str(b, "again");
    assert_string_equal(sbuf_data(b), "again");
    sbuf_destroy(&b);
}

/* Consuming the front keeps the rest, NULs included, NUL-terminated. */
static void test_consume(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    sbuf_append(b, "line\r\nre\0st", 12);
    sbuf_consume(b, 0);
    assert_int_equal(sbuf_len(b), 12);
    sbuf_consume(b, 6);
    assert_int_equal(sbuf_len(b), 6);
    assert_memory_equal(sbuf_data(b), "re\0st", 6);
    assert_int_equal(sbuf_data(b)[6], '\0');
    sbuf_consume(b, 100); /* more than there is: empty */
    assert_int_equal(sbuf_len(b), 0);
    assert_string_equal(sbuf_data(b), "");
    sbuf_append_str(b, "again");
    assert_string_equal(sbuf_data(b), "again");
    free(sbuf_detach(b, NULL));
    sbuf_consume(b, 1); /* detached: nothing to move */
    assert_int_equal(sbuf_len(b), 0);
    sbuf_destroy(&b);
}

static void test_detach(void **state)
{
    (void)state;
    sbuf_t *b = sbuf_new(0);
    sbuf_append(b, "a\0b", 3);
    size_t len = 0;
    char *out = sbuf_detach(b, &len);
    assert_non_null(out);
    assert_int_equal(len, 3);
    assert_memory_equal(out, "a\0b", 4);
    free(out);

    /* Empty after detach, and usable again. */
    assert_int_equal(sbuf_len(b), 0);
    assert_string_equal(sbuf_data(b), "");
    out = sbuf_detach(b, NULL); /* detach of the empty buffer: "" */
    assert_non_null(out);
    assert_string_equal(out, "");
    free(out);
    sbuf_truncate(b, 0);
    sbuf_reset(b);
    assert_int_equal(sbuf_appendf(b, "%d", 7), 0);
    assert_string_equal(sbuf_data(b), "7");
    sbuf_destroy(&b);

    b = sbuf_new(8); /* never appended to */
    out = sbuf_detach(b, &len);
    assert_non_null(out);
    assert_int_equal(len, 0);
    assert_string_equal(out, "");
    free(out);
    sbuf_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_is_empty),     cmocka_unit_test(test_append_and_format),
        cmocka_unit_test(test_binary_safe),      cmocka_unit_test(test_growth_keeps_content),
        cmocka_unit_test(test_appendf_long),     cmocka_unit_test(test_self_append),
        cmocka_unit_test(test_overflow_refused), cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_reset_truncate),   cmocka_unit_test(test_detach),
        cmocka_unit_test(test_consume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
