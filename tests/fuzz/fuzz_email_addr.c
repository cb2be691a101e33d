/*
 * libFuzzer target for core/email_addr: normalize arbitrary bytes and check
 * the module's promises on every input: a refusal comes with a reason and
 * leaves out empty; an accepted address fits EMAIL_ADDR_MAX, holds exactly
 * one '@', no control character, is valid UTF-8 (it goes into JSON and SQL
 * text as is), has a lower-case ASCII domain, and normalizes to itself.
 *
 * Build (registered by tests/fuzz/CMakeLists.txt), by hand:
 *   clang -g -fsanitize=fuzzer,address,undefined -Icore core/email_addr.c \
 *         tests/fuzz/fuzz_email_addr.c $(pkg-config --cflags --libs jansson)
 *   ./a.out tests/fuzz/corpus/email_addr
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "email_addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[EMAIL_ADDR_MAX + 1];
    const char *why = NULL;
    if (email_normalize((const char *)data, size, out, sizeof out, &why) != 0) {
        if (!why || !*why || out[0] != '\0')
            abort();
        return 0;
    }
    if (why)
        abort();
    size_t n = strlen(out);
    if (n == 0 || n > EMAIL_ADDR_MAX)
        abort();
    const char *at = strchr(out, '@');
    if (!at || strchr(at + 1, '@'))
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c < 0x20 || c == 0x7F)
            abort();
        if (out + i > at && c >= 'A' && c <= 'Z')
            abort();
    }
    json_t *s = json_stringn(out, n); /* NULL when not valid UTF-8 */
    if (!s)
        abort();
    json_decref(s);
    char again[EMAIL_ADDR_MAX + 1];
    if (email_normalize(out, n, again, sizeof again, &why) != 0 || strcmp(again, out) != 0)
        abort();
    return 0;
}
