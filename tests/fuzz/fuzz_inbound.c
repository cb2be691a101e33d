/*
 * libFuzzer target for core/inbound_report: parse arbitrary bytes as a
 * message from the return path and check the module's promises on every
 * input: a refusal comes with a reason and leaves kind NONE; every string
 * field is NUL-terminated inside its array, holds no control character and
 * is valid UTF-8 (it goes to logs, JSON and SQL text as is); hard is 0 or 1
 * and only set for a DSN or an ARF report. The input is also given as the
 * envelope recipient (cut at the first NUL) so the VERP parser gets fuzzed.
 *
 * Build (registered by tests/fuzz/CMakeLists.txt), by hand:
 *   clang -g -fsanitize=fuzzer,address,undefined -Icore core/inbound_report.c \
 *         core/mime.c core/email_addr.c core/sbuf.c tests/fuzz/fuzz_inbound.c \
 *         $(pkg-config --cflags --libs gmime-3.0 jansson)
 *   ./a.out tests/fuzz/corpus/inbound
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "inbound_report.h"
#include "sbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void s_check(const char *field, size_t cap)
{
    size_t n = strnlen(field, cap);
    if (n == cap)
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)field[i];
        if (c < 0x20 || c == 0x7F)
            abort();
    }
    json_t *s = json_stringn(field, n); /* NULL when not valid UTF-8 */
    if (!s)
        abort();
    json_decref(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char envelope[256];
    size_t elen = strnlen((const char *)data, size < sizeof envelope - 1 ? size : sizeof envelope - 1);
    memcpy(envelope, data, elen);
    envelope[elen] = '\0';

    sbuf_t *err = sbuf_new(0);
    if (!err)
        return 0;
    inbound_report_t r;
    int rc = inbound_report_parse((const char *)data, size, envelope, "bounces", NULL, &r, err);
    if (rc != 0 && (rc != -1 || sbuf_len(err) == 0 || r.kind != REPORT_NONE))
        abort();
    if (rc == 0 && sbuf_len(err) != 0)
        abort();
    s_check(r.verp_token, sizeof r.verp_token);
    s_check(r.original_message_id, sizeof r.original_message_id);
    s_check(r.recipient, sizeof r.recipient);
    s_check(r.action, sizeof r.action);
    s_check(r.status, sizeof r.status);
    s_check(r.diagnostic, sizeof r.diagnostic);
    s_check(r.feedback_type, sizeof r.feedback_type);
    if (r.n_candidates < 0 || r.n_candidates > INBOUND_REPORT_MAX_CANDIDATES)
        abort();
    for (int i = 0; i < INBOUND_REPORT_MAX_CANDIDATES; i++)
        s_check(r.verp_candidates[i], sizeof r.verp_candidates[i]);
    if (strcmp(r.verp_token, r.n_candidates ? r.verp_candidates[0] : "") != 0)
        abort();
    /* Whatever the parse accepted, the cheap check accepted first. */
    if (rc == 0 && inbound_report_check((const char *)data, size, NULL) != 0)
        abort();
    if (r.hard != 0 && (r.hard != 1 || r.kind == REPORT_NONE))
        abort();
    if (r.hard && r.kind == REPORT_DSN && (strcmp(r.action, "failed") != 0 || r.status[0] != '5'))
        abort();
    sbuf_destroy(&err);
    return 0;
}
