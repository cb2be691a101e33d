/*
 * test_inbound_report - DSN / ARF parsing against real-world-shaped samples
 * in tests/fixtures/inbound/ (found next to this file through __FILE__, which
 * CMake passes as an absolute path), hostile inputs among them.
 *
 * Every fixture's fields are asserted exactly, and every result, accepted or
 * not, is checked for the module's output promises (valid UTF-8, no control
 * characters, NUL-terminated within the field). The sanitizer build runs the
 * same cases under ASan/UBSan/LSan; inbound_report_shutdown at the end
 * releases GMime so LeakSanitizer sees nothing left.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "inbound_report.h"
#include "sbuf.h"

#define VERP_LOCAL "bounces"
#define VERP_DOMAIN "mail.postchi.test"

/* The bytes of tests/fixtures/inbound/<name>; caller frees. */
static char *s_load(const char *name, size_t *len)
{
    char path[4096];
    const char *file = __FILE__;
    const char *slash = strrchr(file, '/');
    assert_non_null(slash);
    snprintf(path, sizeof path, "%.*s/../fixtures/inbound/%s", (int)(slash - file), file, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open fixture %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* One string field must be NUL-terminated inside its array, valid UTF-8,
 * free of control characters and of leading/trailing spaces. */
static void s_check_field(const char *field, size_t size)
{
    const unsigned char *s = (const unsigned char *)field;
    size_t len = strnlen(field, size);
    assert_true(len < size);
    if (len) {
        assert_true(s[0] != ' ');
        assert_true(s[len - 1] != ' ');
    }
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        assert_true(c >= 0x20 && c != 0x7F);
        size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        assert_true(c < 0x80 || c >= 0xC2);
        assert_true(i + n <= len);
        for (size_t k = 1; k < n; k++)
            assert_true((s[i + k] & 0xC0) == 0x80);
        i += n;
    }
}

static void s_check_promises(const inbound_report_t *r)
{
    s_check_field(r->verp_token, sizeof r->verp_token);
    s_check_field(r->original_message_id, sizeof r->original_message_id);
    s_check_field(r->recipient, sizeof r->recipient);
    s_check_field(r->action, sizeof r->action);
    s_check_field(r->status, sizeof r->status);
    s_check_field(r->diagnostic, sizeof r->diagnostic);
    s_check_field(r->feedback_type, sizeof r->feedback_type);
    assert_true(r->hard == 0 || r->hard == 1);
    assert_true(r->kind == REPORT_NONE || r->kind == REPORT_DSN || r->kind == REPORT_ARF);
}

/* Parse raw with our VERP settings, check the promises, return rc. */
static int s_parse(const char *raw, size_t len, const char *envelope, inbound_report_t *r, sbuf_t *err)
{
    int rc = inbound_report_parse(raw, len, envelope, VERP_LOCAL, VERP_DOMAIN, r, err);
    s_check_promises(r);
    if (rc != 0)
        assert_int_equal(r->kind, REPORT_NONE);
    return rc;
}

typedef struct {
    const char *file;      /* fixture name */
    int rc;                /* expected return */
    const char *why;       /* expected err text when rc is -1 */
    report_kind_t kind;
    const char *token;
    const char *message_id;
    const char *recipient;
    const char *action;
    const char *status;
    const char *diagnostic;
    const char *feedback_type;
    int hard;
    int n_recipients;
    int legacy;
} s_case_t;

static const s_case_t CASES[] = {
    {"postfix_hard_511.eml", 0, "", REPORT_DSN, "m8f3k2q-9x", "0190f3a2-7c1e-7b2a-9d11-2f6c8e4a1b00@acme.test",
     "nobody@example.org", "failed", "5.1.1",
     "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table", "", 1,
     1, 0},
    {"postfix_delayed_441.eml", 0, "", REPORT_DSN, "d4lay3d", "receipt-20240116-0001@acme.test",
     "slow@example.com", "delayed", "4.4.1",
     "connect to mx.example.com[198.51.100.7]:25: Connection timed out", "", 0, 1, 0},
    {"exim_dsn.eml", 0, "", REPORT_DSN, "ex1m-42", "welcome.5521@acme.test", "jane.doe@example.co.uk", "failed",
     "5.0.0", "550 5.2.1 Mailbox disabled for this recipient", "", 1, 1, 0},
    {"gmail_dsn.eml", 0, "", REPORT_DSN, "gm41l-0007", "CAGm41l-abc123@acme.test", "no.such.user.4821@gmail.com",
     "failed", "5.1.1",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
     "recipient's email address for typos or unnecessary spaces. For more information, go to "
     "https://support.google.com/mail/?p=NoSuchUser 5b1f17b1804b1-40e6c4b2d1fsi1234567a9.8 - gsmtp",
     "", 1, 1, 0},
    /* Four blocks: delivered, delayed, failed 5.1.1 (with Original-Recipient,
     * preferred over Final-Recipient), failed 5.7.1: the first failed 5.x.x. */
    {"multi_rcpt_dsn.eml", 0, "", REPORT_DSN, "mult1-rcpt", "team-update-3@acme.test", "Carol@Example.NET",
     "failed", "5.1.1", "550 5.1.1 No such user", "", 1, 4, 0},
    {"base64_dsn.eml", 0, "", REPORT_DSN, "h0stile", "", "b64@example.org", "failed", "5.1.2",
     "550 5.1.2 Host unknown", "", 1, 1, 0},
    /* RFC 5965 appendix B.2, with our VERP address as Original-Mail-From. */
    {"arf_abuse.eml", 0, "", REPORT_ARF, "arf-0042", "8787KJKJ3K4J3K4J3K4J3.mail@example.net", "user@example.com",
     "", "", "", "abuse", 1, 0, 0},
    {"arf_headers_only.eml", 0, "", REPORT_ARF, "fbl-hdr-1", "deals-2024-01-20.8812@acme.test",
     "reader@isp.example", "", "", "", "abuse", 1, 0, 0},
    /* A person's reply mentioning an address and 5.1.1 is not a bounce. */
    {"not_report.eml", 0, "", REPORT_NONE, "n0t-a-rep0rt", "", "", "", "", "", "", 0, 0, 0},
    {"legacy_qmail.eml", 0, "", REPORT_DSN, "qm41l-1", "", "gone@old.example.com", "failed", "5.1.1",
     "<gone@old.example.com>: Remote host said: 550 5.1.1 mailbox unavailable", "", 1, 1, 1},
    /* Hostile. Cut inside "Status:": what was read stands, nothing is hard. */
    {"hostile_truncated_multipart.eml", 0, "", REPORT_DSN, "h0stile", "", "nobody@example.org", "failed", "", "",
     "", 0, 1, 0},
    {"hostile_missing_boundary.eml", 0, "", REPORT_NONE, "h0stile", "", "", "", "", "", "", 0, 0, 0},
    {"hostile_deep_nesting.eml", -1, "too many MIME parts", REPORT_NONE, "", "", "", "", "", "", "", 0, 0, 0},
    {"hostile_invalid_utf8.eml", 0, "", REPORT_DSN, "h0stile", "", "b?d@ex?ample.org", "failed", "5.1.1",
     "550 caf\xc3\xa9 ?? ??? [31mred ?end", "", 1, 1, 0},
    /* "fa\0iled" is no action, so not hard; NULs in text become spaces. */
    {"hostile_nul_bytes.eml", 0, "", REPORT_DSN, "h0stile", "", "n ul@example.org", "", "5.1.1", "550 5.1.1 a b",
     "", 0, 1, 0},
    {"hostile_base64_broken.eml", 0, "", REPORT_DSN, "h0stile", "", "", "", "", "", "", 0, 0, 0},
};

static void test_fixtures(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const s_case_t *c = &CASES[i];
        size_t len;
        char *raw = s_load(c->file, &len);
        sbuf_t *err = sbuf_new(0);
        inbound_report_t r;
        print_message("%s\n", c->file);
        assert_int_equal(s_parse(raw, len, NULL, &r, err), c->rc);
        assert_string_equal(sbuf_data(err), c->why);
        assert_int_equal(r.kind, c->kind);
        assert_string_equal(r.verp_token, c->token);
        assert_string_equal(r.original_message_id, c->message_id);
        assert_string_equal(r.recipient, c->recipient);
        assert_string_equal(r.action, c->action);
        assert_string_equal(r.status, c->status);
        assert_string_equal(r.diagnostic, c->diagnostic);
        assert_string_equal(r.feedback_type, c->feedback_type);
        assert_int_equal(r.hard, c->hard);
        assert_int_equal(r.n_recipients, c->n_recipients);
        assert_int_equal(r.legacy, c->legacy);
        sbuf_destroy(&err);
        free(raw);
    }
}

/* A 100 KB Diagnostic-Code is cut to the field, whole characters only. */
static void test_huge_header(void **state)
{
    (void)state;
    size_t len;
    char *raw = s_load("hostile_huge_header.eml", &len);
    inbound_report_t r;
    assert_int_equal(s_parse(raw, len, NULL, &r, NULL), 0);
    assert_int_equal(r.kind, REPORT_DSN);
    assert_string_equal(r.recipient, "big@example.org");
    assert_string_equal(r.status, "5.3.4");
    assert_int_equal(r.hard, 1);
    assert_int_equal(strlen(r.diagnostic), sizeof r.diagnostic - 1);
    assert_memory_equal(r.diagnostic, "552 5.3.4 AAAA", 14);
    free(raw);
}

/* The envelope recipient wins over the report's own addresses; one that is
 * not our VERP shape falls back to them. */
static void test_verp_sources(void **state)
{
    (void)state;
    size_t len;
    char *raw = s_load("postfix_hard_511.eml", &len);
    inbound_report_t r;
    static const struct {
        const char *envelope;
        const char *token;
    } V[] = {
        {"<bounces+env-Tok-1@MAIL.Postchi.TEST>", "env-Tok-1"},
        {" bounces+abc@mail.postchi.test ", "abc"},
        {"bounces+m@mail.postchi.test", "m"},
        /* Not ours or not the shape: the To: header's token is used. */
        {"bounces+tok@other.test", "m8f3k2q-9x"},
        {"other+tok@mail.postchi.test", "m8f3k2q-9x"},
        {"bounces@mail.postchi.test", "m8f3k2q-9x"},
        {"bounces+@mail.postchi.test", "m8f3k2q-9x"},
        {"bounces+a_b@mail.postchi.test", "a_b"}, /* mime_verp_parse's charset */
        {"bounces+a.b@mail.postchi.test", "m8f3k2q-9x"},
        {"bounces+a@b@mail.postchi.test", "m8f3k2q-9x"},
        {"bounces+tok@mail.postchi.test.evil", "m8f3k2q-9x"},
        {"bouncesX+tok@mail.postchi.test", "m8f3k2q-9x"},
        {"<>", "m8f3k2q-9x"},
        {"", "m8f3k2q-9x"},
        {"bounces+0123456789012345678901234567890123456789012345678901234567890123@mail.postchi.test",
         "0123456789012345678901234567890123456789012345678901234567890123"},
        {"bounces+01234567890123456789012345678901234567890123456789012345678901234@mail.postchi.test",
         "m8f3k2q-9x"},
    };
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
        print_message("%s\n", V[i].envelope);
        assert_int_equal(s_parse(raw, len, V[i].envelope, &r, NULL), 0);
        assert_string_equal(r.verp_token, V[i].token);
        assert_int_equal(r.kind, REPORT_DSN);
    }
    /* NULL local and domain match any. */
    assert_int_equal(inbound_report_parse(raw, len, "x+any-1@anywhere.example", NULL, NULL, &r, NULL), 0);
    assert_string_equal(r.verp_token, "any-1");
    static const struct {
        const char *envelope;
        const char *token;
    } A[] = {
        {" <X+Any-2@Anywhere.Example> ", "Any-2"},
        /* Not the shape with any local or domain: the To: header's token. */
        {"a@b+tok@anywhere.example", "m8f3k2q-9x"},
        {"x+tok@", "m8f3k2q-9x"},
        {"+tok@anywhere.example", "m8f3k2q-9x"},
        {"x+a+b@anywhere.example", "m8f3k2q-9x"},
        {"x+a@b@anywhere.example", "m8f3k2q-9x"},
    };
    for (size_t i = 0; i < sizeof A / sizeof A[0]; i++) {
        print_message("%s\n", A[i].envelope);
        assert_int_equal(inbound_report_parse(raw, len, A[i].envelope, NULL, NULL, &r, NULL), 0);
        assert_string_equal(r.verp_token, A[i].token);
    }
    /* No candidate matches: empty token, the report still reads. */
    assert_int_equal(inbound_report_parse(raw, len, NULL, "returns", VERP_DOMAIN, &r, NULL), 0);
    assert_string_equal(r.verp_token, "");
    assert_string_equal(r.status, "5.1.1");
    free(raw);
}

/* The report's own fallbacks: the original's Return-Path beats To:. */
static void test_verp_return_path(void **state)
{
    (void)state;
    static const char RAW[] =
        "From: MAILER-DAEMON@x.example\n"
        "To: someone-else@acme.test\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
        "--b\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; x.example\n\nFinal-Recipient: rfc822; u@example.org\n"
        "Action: failed\nStatus: 5.1.1\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n"
        "Return-Path: <bounces+rp-7@mail.postchi.test>\nMessage-ID: <orig@acme.test>\n\n"
        "--b--\n";
    inbound_report_t r;
    assert_int_equal(s_parse(RAW, sizeof RAW - 1, NULL, &r, NULL), 0);
    assert_int_equal(r.kind, REPORT_DSN);
    assert_string_equal(r.verp_token, "rp-7");
    assert_string_equal(r.original_message_id, "orig@acme.test");
}

/* Input refused before GMime: too large, a line too long, no message. */
static void test_refusals(void **state)
{
    (void)state;
    inbound_report_t r;
    sbuf_t *err = sbuf_new(0);

    size_t big = INBOUND_REPORT_MAX_BYTES + 1;
    char *raw = malloc(big);
    assert_non_null(raw);
    memset(raw, 'a', big);
    memcpy(raw, "Subject: x\n\n", 12);
    for (size_t i = 100; i < big; i += 100)
        raw[i] = '\n';
    assert_int_equal(s_parse(raw, big, NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "message too large");

    /* One byte less is accepted: a plain message, kind NONE. */
    assert_int_equal(s_parse(raw, big - 1, NULL, &r, NULL), 0);
    assert_int_equal(r.kind, REPORT_NONE);

    size_t line = INBOUND_REPORT_MAX_LINE + 20;
    memset(raw, 'x', line);
    memcpy(raw, "Subject: ", 9);
    sbuf_reset(err);
    assert_int_equal(s_parse(raw, line, NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "line too long");
    free(raw);

    sbuf_reset(err);
    assert_int_equal(s_parse("", 0, NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "not a message");
    sbuf_reset(err);
    assert_int_equal(s_parse(NULL, 0, NULL, &r, err), -1);
    sbuf_reset(err);
    static const char BIN[] = "\x00\x01\x02\xff garbage without a header";
    assert_int_equal(s_parse(BIN, sizeof BIN - 1, NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "not a message");
    sbuf_destroy(&err);
}

/* Exactly INBOUND_REPORT_MAX_HEADERS Content-Type headers pass, one more
 * does not (case and white space before the colon do not hide one). */
static void test_header_cap(void **state)
{
    (void)state;
    sbuf_t *raw = sbuf_new(0);
    assert_int_equal(sbuf_append_str(raw, "Content-Type: multipart/mixed; boundary=b\n\n"), 0);
    for (int i = 1; i < INBOUND_REPORT_MAX_HEADERS; i++)
        assert_int_equal(sbuf_appendf(raw, "--b\n%s: text/plain\n\npart %d\n", i % 2 ? "CONTENT-type" : "content-type \t",
                                      i), 0);
    sbuf_t *ok = sbuf_new(0);
    assert_int_equal(sbuf_appendf(ok, "%s--b--\n", sbuf_data(raw)), 0);
    inbound_report_t r;
    sbuf_t *err = sbuf_new(0);
    assert_int_equal(s_parse(sbuf_data(ok), sbuf_len(ok), NULL, &r, err), 0);
    assert_int_equal(r.kind, REPORT_NONE);
    assert_int_equal(sbuf_append_str(raw, "--b\nContent-Type: text/plain\n\nlast\n--b--\n"), 0);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "too many MIME parts");
    sbuf_destroy(&err);
    sbuf_destroy(&ok);
    sbuf_destroy(&raw);
}

/* Deep nesting under the header cap, then megabytes of "--x" lines that
 * GMime would compare with every open boundary: refused up front (as too
 * many parts, whatever the nesting). The same nesting with few such lines
 * reads. */
static void test_boundary_work(void **state)
{
    (void)state;
    sbuf_t *raw = sbuf_new(0);
    assert_int_equal(sbuf_append_str(raw, "Content-Type: multipart/mixed; boundary=b0\n\n"), 0);
    for (int i = 1; i < 200; i++)
        assert_int_equal(sbuf_appendf(raw, "--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n", i - 1, i), 0);
    inbound_report_t r;
    sbuf_t *err = sbuf_new(0);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), 0);
    assert_int_equal(r.kind, REPORT_NONE);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(sbuf_append_str(raw, "--x\n"), 0);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "too many MIME parts");
    sbuf_destroy(&err);
    sbuf_destroy(&raw);
}

/* A flat report of empty parts, or of one-line headers, under one
 * Content-Type: GMime builds every part and header before anything is
 * walked (2 M empty parts in 10 MB took it 10 s and 2 GB), so the count of
 * boundary-like and header-like lines is capped on its own: exactly the
 * cap passes, one more is refused, by the parse and by the check alone. */
static void test_part_and_field_caps(void **state)
{
    (void)state;
    static const char HEAD[] = "From: MAILER-DAEMON@x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report;"
                               " report-type=delivery-status; boundary=\"b\"\r\n\r\n";
    sbuf_t *raw = sbuf_new(0);
    sbuf_t *err = sbuf_new(0);
    inbound_report_t r;
    assert_int_equal(sbuf_append_str(raw, HEAD), 0);
    for (int i = 0; i < INBOUND_REPORT_MAX_DASH_LINES - 1; i++)
        assert_int_equal(sbuf_append_str(raw, "--b\r\n\r\n"), 0);
    assert_int_equal(sbuf_append_str(raw, "--b--\r\n"), 0);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), 0);
    assert_int_equal(sbuf_append_str(raw, "--b--\r\n"), 0);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "too many MIME parts");
    sbuf_reset(err);
    assert_int_equal(inbound_report_check(sbuf_data(raw), sbuf_len(raw), err), -1);
    assert_string_equal(sbuf_data(err), "too many MIME parts");

    /* Header-like: "Name:" at a line start, the name printable and short. */
    sbuf_reset(raw);
    for (int i = 0; i < INBOUND_REPORT_MAX_FIELD_LINES; i++)
        assert_int_equal(sbuf_append_str(raw, i % 3 == 0 ? "a:\r\n" : i % 3 == 1 ? "X-H: v\r\n" : "b :\r\n"), 0);
    /* Not header-like: continuation, no colon, a name too long to be one. */
    assert_int_equal(sbuf_append_str(raw, " c:\r\nno colon\r\n"), 0);
    for (int i = 0; i < 80; i++)
        assert_int_equal(sbuf_append_str(raw, "n"), 0);
    assert_int_equal(sbuf_append_str(raw, ": v\r\n\r\nbody\r\n"), 0);
    sbuf_reset(err);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), 0);
    assert_int_equal(sbuf_append_str(raw, "http://example.org/ counts too\r\n"), 0);
    assert_int_equal(s_parse(sbuf_data(raw), sbuf_len(raw), NULL, &r, err), -1);
    assert_string_equal(sbuf_data(err), "too many header lines");
    sbuf_destroy(&err);
    sbuf_destroy(&raw);
}

/* Every candidate token is kept in order (envelope, ARF Original-Mail-From,
 * the original's Return-Path, one from To:), so a caller can use the first
 * that verifies when an earlier one does not. */
static void test_verp_candidates(void **state)
{
    (void)state;
    static const char RAW[] =
        "From: fbl@isp.example\n"
        "To: <bounces+to-4@mail.postchi.test>, <bounces+to-5@mail.postchi.test>\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n"
        "--b\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nOriginal-Mail-From: <bounces+mf-2@mail.postchi.test>\n\n"
        "--b\nContent-Type: text/rfc822-headers\n\n"
        "Return-Path: <bounces+rp-3@mail.postchi.test>\nMessage-ID: <orig@acme.test>\n\n"
        "--b--\n";
    inbound_report_t r;
    assert_int_equal(s_parse(RAW, sizeof RAW - 1, "bounces+env-1@mail.postchi.test", &r, NULL), 0);
    assert_int_equal(r.kind, REPORT_ARF);
    assert_int_equal(r.n_candidates, 4);
    assert_string_equal(r.verp_token, "env-1");
    assert_string_equal(r.verp_candidates[0], "env-1");
    assert_string_equal(r.verp_candidates[1], "mf-2");
    assert_string_equal(r.verp_candidates[2], "rp-3");
    assert_string_equal(r.verp_candidates[3], "to-4");
    /* An envelope that is not ours (a feedback loop's fixed address) adds
     * nothing; the report's own candidates remain. */
    assert_int_equal(s_parse(RAW, sizeof RAW - 1, "fbl@mail.postchi.test", &r, NULL), 0);
    assert_int_equal(r.n_candidates, 3);
    assert_string_equal(r.verp_token, "mf-2");
    assert_string_equal(r.verp_candidates[2], "to-4");
    assert_string_equal(r.verp_candidates[3], "");
}

/* Every prefix of a real DSN: never a crash, promises always hold. */
static void test_every_prefix(void **state)
{
    (void)state;
    size_t len;
    char *raw = s_load("multi_rcpt_dsn.eml", &len);
    inbound_report_t r;
    for (size_t n = 0; n <= len; n += 7)
        (void)s_parse(raw, n, NULL, &r, NULL);
    assert_int_equal(s_parse(raw, len, NULL, &r, NULL), 0);
    assert_int_equal(r.n_recipients, 4);
    free(raw);
}

static int s_teardown(void **state)
{
    (void)state;
    inbound_report_shutdown();
    inbound_report_shutdown(); /* idempotent */
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),     cmocka_unit_test(test_huge_header),
        cmocka_unit_test(test_verp_sources), cmocka_unit_test(test_verp_return_path),
        cmocka_unit_test(test_refusals),     cmocka_unit_test(test_header_cap),
        cmocka_unit_test(test_boundary_work), cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_part_and_field_caps), cmocka_unit_test(test_verp_candidates),
    };
    return cmocka_run_group_tests(tests, NULL, s_teardown);
}
