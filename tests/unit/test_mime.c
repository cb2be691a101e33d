/*
 * test_mime - mime_build output read back by an independent parser
 * (python3's email package, policy.default): every body structure (text,
 * html, alternative, related, mixed, attachments only), decoded Subject and
 * display names, part types, transfer encodings, dispositions, filenames
 * (RFC 2231), Content-IDs and content bytes (sha256 equal), List-Unsubscribe
 * headers, and no parser defects. Every output is also checked raw: CRLF
 * only, lines <= 998, 7-bit. CR/LF in every header input is refused and
 * leaves the output untouched; the other refusals, the header checks, the
 * encoded-word and folding limits, a 5 MB attachment and VERP; attachment
 * content types with RFC 2045 parameters (what parses, and the part's
 * Content-Type carrying them as given).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "mime.h"
#include "sbuf.h"

/* Prints "defects N", the named headers decoded (addresses as name|addr),
 * then the part tree: one line per part with type, transfer encoding,
 * disposition, filename, Content-ID and sha256 of the decoded content. */
static const char DESC_PY[] =
    "import email, sys, hashlib\n"
    "from email import policy\n"
    "m = email.message_from_binary_file(open(sys.argv[1], \"rb\"), policy=policy.default)\n"
    "o = []\n"
    "def defects(p):\n"
    "    return len(p.defects) + sum(defects(s) for s in p.iter_parts()) if p.is_multipart() else "
    "len(p.defects)\n"
    "o.append(\"defects %d\" % defects(m))\n"
    "for k in [\"Subject\", \"From\", \"To\", \"Cc\", \"Reply-To\"] + sys.argv[2:]:\n"
    "    for v in m.get_all(k) or []:\n"
    "        if k in (\"From\", \"To\", \"Cc\", \"Reply-To\"):\n"
    "            o.append(\"%s: %s\" % (k, \"; \".join(\"%s|%s\" % (a.display_name, a.addr_spec) "
    "for a in v.addresses)))\n"
    "        else:\n"
    "            o.append(\"%s: %s\" % (k, str(v)))\n"
    "def walk(p, d):\n"
    "    line = \"  \" * d + p.get_content_type()\n"
    "    if p.is_multipart():\n"
    "        o.append(line)\n"
    "        for s in p.iter_parts():\n"
    "            walk(s, d + 1)\n"
    "        return\n"
    "    c = p.get_content()\n"
    "    if isinstance(c, str):\n"
    "        c = c.encode(\"utf-8\")\n"
    "    o.append(\"%s %s %s %s %s %s\" % (line, p[\"Content-Transfer-Encoding\"], "
    "p.get_content_disposition() or \"-\",\n"
    "             p.get_filename() or \"-\", p[\"Content-ID\"] or \"-\", "
    "hashlib.sha256(c).hexdigest()))\n"
    "walk(m, 0)\n"
    "sys.stdout.buffer.write((\"\\n\".join(o) + \"\\n\").encode(\"utf-8\"))\n";

static const char *const TO1[] = {"Ada Lovelace <ada@example.com>"};
static const char TEXT[] = "Hello Ada,\nthis is the text part.\n";
static const char HTML[] =
    "<html><body><p>Hello <b>Ada</b></p><img src=\"cid:logo@x\"></body></html>\n";
static const unsigned char PNG[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a,
                                    '\n', 0,   0,   0,   13,   'I',  'H'};
static const char PDF[] = "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n";

/* A message with the fields every test needs. */
static mime_msg_t s_base(void)
{
    mime_msg_t m = {0};
    m.from_name = "Postchi";
    m.from_addr = "news@example.org";
    m.to = TO1;
    m.nto = 1;
    m.subject = "Hello";
    m.text = TEXT;
    m.message_id_domain = "example.org";
    m.date = 1700000000;
    return m;
}

static void s_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(data, len, md, &n, EVP_sha256(), NULL), 1);
    for (unsigned i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

/* The line desc.py prints for a leaf. */
static void s_leaf(sbuf_t *want, int depth, const char *ct, const char *cte, const char *disp,
                   const char *fn, const char *cid, const void *data, size_t len)
{
    char sha[65];
    s_sha256_hex(data, len, sha);
    sbuf_appendf(want, "%*s%s %s %s %s %s %s\n", 2 * depth, "", ct, cte, disp, fn, cid, sha);
}

/* CRLF only, no line over 998 octets, 7-bit, no NUL; and with hdr_max,
 * every header line within it. */
static void s_check_raw(const sbuf_t *msg, size_t hdr_max)
{
    const char *s = sbuf_data(msg);
    size_t len = sbuf_len(msg), line = 0;
    int in_hdrs = 1;
    assert_true(len >= 2 && s[len - 2] == '\r' && s[len - 1] == '\n');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        assert_true(c > 0 && c < 128);
        if (c == '\r') {
            assert_true(i + 1 < len && s[i + 1] == '\n');
            if (in_hdrs && hdr_max)
                assert_true(line <= hdr_max);
            if (line == 0)
                in_hdrs = 0;
            line = 0;
            i++;
            continue;
        }
        assert_true(c != '\n');
        line++;
        assert_true(line <= 998);
    }
}

/* Run desc.py over msg (asking also for the extra header names) and return
 * what it printed; the parser must find no defects. Caller frees. */
static char *s_describe(const sbuf_t *msg, const char *const *extra)
{
    char path[] = "/tmp/test_mime_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, sbuf_data(msg), sbuf_len(msg)), (ssize_t)sbuf_len(msg));
    close(fd);
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const char *argv[16] = {"python3", "-c", DESC_PY, path};
        size_t n = 4;
        for (size_t i = 0; extra && extra[i] && n < 15; i++)
            argv[n++] = extra[i];
        argv[n] = NULL;
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        close(pipefd[1]);
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    close(pipefd[1]);
    sbuf_t *out = sbuf_new(256);
    char buf[4096];
    ssize_t r;
    while ((r = read(pipefd[0], buf, sizeof buf)) > 0)
        sbuf_append(out, buf, (size_t)r);
    close(pipefd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    unlink(path);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *desc = sbuf_detach(out, NULL);
    sbuf_destroy(&out);
    assert_non_null(desc);
    assert_true(strncmp(desc, "defects 0\n", 10) == 0);
    return desc;
}

/* Build m (must succeed), check it raw, describe it and compare with want
 * (which starts after the "defects 0" line). */
static void s_expect(const mime_msg_t *m, const sbuf_t *want)
{
    sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
    char mid[MIME_MESSAGE_ID_MAX];
    if (mime_build(m, out, mid, err) != 0)
        fail_msg("mime_build: %s", sbuf_data(err));
    s_check_raw(out, 78);
    char *desc = s_describe(out, NULL);
    if (strcmp(desc + 10, sbuf_data(want)) != 0)
        fail_msg("got:\n%s\nwant:\n%s\nmessage:\n%s", desc + 10, sbuf_data(want), sbuf_data(out));
    free(desc);
    sbuf_destroy(&out);
    sbuf_destroy(&err);
}

static void s_want_headers(sbuf_t *want, const char *subject)
{
    sbuf_appendf(want,
                 "Subject: %s\nFrom: Postchi|news@example.org\nTo: Ada Lovelace|ada@example.com\n",
                 subject);
}

static void test_text_only(void **state)
{
    (void)state;
    mime_msg_t m = s_base();
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    s_leaf(want, 0, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
    s_expect(&m, want);
    sbuf_destroy(&want);
}

static void test_html_only(void **state)
{
    (void)state;
    mime_msg_t m = s_base();
    m.text = NULL;
    m.html = HTML;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    s_leaf(want, 0, "text/html", "7bit", "-", "-", "-", HTML, strlen(HTML));
    s_expect(&m, want);
    sbuf_destroy(&want);
}

static void test_alternative(void **state)
{
    (void)state;
    mime_msg_t m = s_base();
    m.html = HTML;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    sbuf_append_str(want, "multipart/alternative\n");
    s_leaf(want, 1, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
    s_leaf(want, 1, "text/html", "7bit", "-", "-", "-", HTML, strlen(HTML));
    s_expect(&m, want);
    sbuf_destroy(&want);
}

static void test_related(void **state)
{
    (void)state;
    mime_msg_t m = s_base();
    m.text = NULL;
    m.html = HTML;
    mime_part_t img = {"logo.png", "image/png", PNG, sizeof PNG, "logo@x"};
    m.attachments = &img;
    m.nattachments = 1;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    sbuf_append_str(want, "multipart/related\n");
    s_leaf(want, 1, "text/html", "7bit", "-", "-", "-", HTML, strlen(HTML));
    s_leaf(want, 1, "image/png", "base64", "inline", "logo.png", "<logo@x>", PNG, sizeof PNG);
    s_expect(&m, want);
    sbuf_destroy(&want);
}

/* Everything at once: mixed[alternative[text, related[html, img]], pdf, bin]
 * with a non-ASCII and a long filename. */
static void test_full_tree(void **state)
{
    (void)state;
    mime_msg_t m = s_base();
    m.html = HTML;
    static const char LONG_NAME[] =
        "a-very-long-report-name-that-goes-on-and-on-past-the-folding-limit-2024-q4-final-v2.pdf";
    static const char FA_NAME[] =
        "\xda\xaf\xd8\xb2\xd8\xa7\xd8\xb1\xd8\xb4 \xd9\x85\xd8\xa7\xd9\x87"
        "\xd8\xa7\xd9\x86\xd9\x87 \"q\" \xf0\x9f\x93\x8a.bin";
    unsigned char bin[1000];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 7);
    mime_part_t parts[] = {
        {"report.pdf", "application/pdf", PDF, sizeof PDF - 1, NULL},
        {"logo.png", "image/png", PNG, sizeof PNG, "logo@x"},
        {FA_NAME, NULL, bin, sizeof bin, NULL},
        {LONG_NAME, "application/pdf", PDF, 3, NULL},
        {NULL, "application/zip", "", 0, NULL},
    };
    m.attachments = parts;
    m.nattachments = 5;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    sbuf_append_str(want, "multipart/mixed\n  multipart/alternative\n");
    s_leaf(want, 2, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
    sbuf_append_str(want, "    multipart/related\n");
    s_leaf(want, 3, "text/html", "7bit", "-", "-", "-", HTML, strlen(HTML));
    s_leaf(want, 3, "image/png", "base64", "inline", "logo.png", "<logo@x>", PNG, sizeof PNG);
    s_leaf(want, 1, "application/pdf", "base64", "attachment", "report.pdf", "-", PDF,
           sizeof PDF - 1);
    s_leaf(want, 1, "application/octet-stream", "base64", "attachment", FA_NAME, "-", bin,
           sizeof bin);
    s_leaf(want, 1, "application/pdf", "base64", "attachment", LONG_NAME, "-", PDF, 3);
    s_leaf(want, 1, "application/zip", "base64", "attachment", "-", "-", "", 0);
    s_expect(&m, want);
    sbuf_destroy(&want);
}

/* The longest Content-ID and content type accepted, and one byte more. */
static void test_part_limits(void **state)
{
    (void)state;
    char cid[202], ct[258];
    memset(cid, 'c', 200);
    cid[200] = '\0';
    memset(ct, 't', 255);
    memcpy(ct, "application/x-", 14);
    ct[255] = '\0';
    mime_part_t img = {"i.png", ct, PNG, sizeof PNG, cid};
    mime_msg_t m = s_base();
    m.html = HTML;
    m.attachments = &img;
    m.nattachments = 1;
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(mime_build(&m, out, NULL, NULL), 0);
    s_check_raw(out, 0);
    char *desc = s_describe(out, NULL);
    sbuf_t *want = sbuf_new(0);
    sbuf_appendf(want, "  %s base64 inline i.png <%s> ", ct, cid);
    assert_non_null(strstr(desc, sbuf_data(want)));
    free(desc);
    sbuf_destroy(&want);
    cid[200] = 'c';
    cid[201] = '\0';
    assert_int_equal(mime_build(&m, out, NULL, NULL), -1);
    cid[200] = '\0';
    ct[255] = 't';
    ct[256] = '\0';
    assert_int_equal(mime_build(&m, out, NULL, NULL), -1);
    sbuf_destroy(&out);
}

static void test_attachment_only(void **state)
{
    (void)state;
    mime_msg_t m = s_base();
    m.text = NULL;
    mime_part_t pdf = {"report.pdf", "application/pdf", PDF, sizeof PDF - 1, NULL};
    m.attachments = &pdf;
    m.nattachments = 1;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    sbuf_append_str(want, "multipart/mixed\n");
    s_leaf(want, 1, "application/pdf", "base64", "attachment", "report.pdf", "-", PDF,
           sizeof PDF - 1);
    s_expect(&m, want);
    sbuf_destroy(&want);
}

/* Content types with parameters (RFC 2045): what is taken and what is not. */
static void test_content_type_syntax(void **state)
{
    (void)state;
    static const char *const GOOD[] = {
        "text/csv",
        "text/csv; charset=utf-8",
        "text/csv;charset=utf-8",
        "text/csv ; charset = utf-8 ",
        "text/plain; charset=\"us-ascii\"; format=flowed",
        "application/pdf; name=\"a b.pdf\"",
        "a/b; x=\"\"",
        "a/b; x=\"say \\\"hi\\\" \\\\ (;=)\"",
        "a/b; name*=utf-8''r%C3%A9sum%C3%A9.pdf",
        "a/b; name*0=\"one\"; name*1=\"two\"",
        "a/b;\tx=y",
        "IMAGE/PNG; X-DPI=72",
    };
    static const char *const BAD[] = {
        "",
        "text",
        "text/",
        "/csv",
        "text/csv/x",
        " text/csv",
        "text /csv",
        "text/ csv",
        "text/csv;",
        "text/csv; ",
        "text/csv;; a=b",
        "text/csv; a=b;",
        "text/csv; charset",
        "text/csv; charset=",
        "text/csv; =utf-8",
        "text/csv; a b=c",
        "text/csv; a=b c",
        "text/csv; a=\"b",
        "text/csv; a=\"b\\\"",
        "text/csv; a=\"b\"c",
        "text/csv; a=b; A=c",
        "text/csv (comment)",
        "text/csv; a=\"\xc3\xa9\"",
        "text/csv; a=\xc3\xa9",
        "text/csv; a=\"x\r\ny\"",
        "text/csv; a=\"x\ny\"",
        "text/csv\r\n",
        "text/csv; a=\"\\\x01\"",
        "text/csv; a=\"\x7f\"",
        "text/csv; a=[b]",
        "multipart/mixed; boundary=x",
        "Message/rfc822",
    };
    for (size_t i = 0; i < sizeof GOOD / sizeof GOOD[0]; i++)
        if (!mime_attachment_type_ok(GOOD[i]))
            fail_msg("refused: %s", GOOD[i]);
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++)
        if (mime_attachment_type_ok(BAD[i]))
            fail_msg("taken: %s", BAD[i]);
    assert_false(mime_attachment_type_ok(NULL));

    /* 255 bytes with parameters is the most; and 50 parameters fit. */
    char ct[300];
    size_t n = (size_t)snprintf(ct, sizeof ct, "application/x; p=\"");
    memset(ct + n, 'v', 255 - n - 1);
    ct[254] = '"';
    ct[255] = '\0';
    assert_true(mime_attachment_type_ok(ct));
    ct[254] = 'v';
    ct[255] = '"';
    ct[256] = '\0';
    assert_false(mime_attachment_type_ok(ct));
    char many[300] = "a/b";
    n = 3;
    for (int i = 0; i < 50; i++)
        n += (size_t)snprintf(many + n, sizeof many - n, ";%c%c=1", 'a' + i / 26, 'a' + i % 26);
    assert_true(n <= 255);
    assert_true(mime_attachment_type_ok(many));
}

/* The Content-Type field, unfolded, of the one base64 part of msg (the
 * attachment: the bodies here are 7bit), copied to out. */
static void s_part_ct(const sbuf_t *msg, char *out, size_t size)
{
    const char *s = sbuf_data(msg), *p = strstr(s, "\r\nContent-Transfer-Encoding: base64");
    assert_non_null(p);
    assert_null(strstr(p + 2, "\r\nContent-Transfer-Encoding: base64"));
    while (p > s && strncmp(p, "\r\nContent-Type: ", 16) != 0)
        p--;
    assert_true(p > s);
    p += 2;
    size_t n = 0;
    for (; *p && n + 1 < size; p++) {
        if (p[0] == '\r' && p[1] == '\n') {
            if (p[2] != ' ' && p[2] != '\t')
                break;
            p++; /* unfold: CRLF goes, the blank stays */
            continue;
        }
        out[n++] = *p;
    }
    out[n] = '\0';
}

/* Parameters reach the part as given, the builder's name only when the
 * user gave none, no second charset; every output parses without defects
 * and the filename reads back. */
static void test_content_type_params_built(void **state)
{
    (void)state;
    static const struct {
        const char *ct;       /* given */
        const char *filename; /* given */
        const char *cid;      /* given (inline image) */
        const char *want;     /* the part's Content-Type field, unfolded */
        const char *py_type;  /* what python reads as the content type */
    } CASES[] = {
        {"text/csv; charset=utf-8", "data.csv", NULL,
         "Content-Type: text/csv; charset=utf-8; name=\"data.csv\"", "text/csv"},
        {"application/pdf; name=\"a b.pdf\"", "a b.pdf", NULL,
         "Content-Type: application/pdf; name=\"a b.pdf\"", "application/pdf"},
        {"text/plain;charset=\"us-ascii\" ;  format=flowed", "n.txt", NULL,
         "Content-Type: text/plain; charset=\"us-ascii\"; format=flowed; name=\"n.txt\"",
         "text/plain"},
        {"application/x-y; title=\"say \\\"hi\\\"\"", NULL, NULL,
         "Content-Type: application/x-y; title=\"say \\\"hi\\\"\"", "application/x-y"},
        {"application/pdf; NAME*=utf-8''r%C3%A9sum%C3%A9.pdf", "r\xc3\xa9sum\xc3\xa9.pdf", NULL,
         "Content-Type: application/pdf; NAME*=utf-8''r%C3%A9sum%C3%A9.pdf", "application/pdf"},
        {"image/png; x-dpi=72", "i.png", "logo@x",
         "Content-Type: image/png; x-dpi=72; name=\"i.png\"", "image/png"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        mime_part_t a = {CASES[i].filename, CASES[i].ct, PDF, sizeof PDF - 1, CASES[i].cid};
        mime_msg_t m = s_base();
        m.html = HTML;
        m.attachments = &a;
        m.nattachments = 1;
        sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
        if (mime_build(&m, out, NULL, err) != 0)
            fail_msg("%s: %s", CASES[i].ct, sbuf_data(err));
        s_check_raw(out, 78);
        char got[600];
        s_part_ct(out, got, sizeof got);
        if (strcmp(got, CASES[i].want) != 0)
            fail_msg("got  %s\nwant %s", got, CASES[i].want);
        /* one charset, the user's: the builder adds none to an attachment */
        const char *cs = strstr(got, "charset=");
        assert_true(strstr(CASES[i].ct, "charset=") ? cs && !strstr(cs + 8, "charset=") : !cs);
        char *desc = s_describe(out, NULL);
        sbuf_t *want = sbuf_new(0);
        sbuf_appendf(want, "%s base64 %s %s %s", CASES[i].py_type,
                     CASES[i].cid ? "inline" : "attachment",
                     CASES[i].filename ? CASES[i].filename : "-", CASES[i].cid ? "<logo@x>" : "-");
        if (!strstr(desc, sbuf_data(want)))
            fail_msg("want %s in:\n%s", sbuf_data(want), desc);
        free(desc);
        sbuf_destroy(&want);
        sbuf_destroy(&out);
        sbuf_destroy(&err);
    }

    /* The longest content type: one line (a parameter is never split),
     * within 998. */
    char ct[256];
    int n = snprintf(ct, sizeof ct, "application/x; p=\"");
    memset(ct + n, 'v', 255 - (size_t)n - 1);
    ct[254] = '"';
    ct[255] = '\0';
    mime_part_t a = {"f.bin", ct, PDF, 4, NULL};
    mime_msg_t m = s_base();
    m.attachments = &a;
    m.nattachments = 1;
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(mime_build(&m, out, NULL, NULL), 0);
    s_check_raw(out, 0);
    char got[600], want[600];
    s_part_ct(out, got, sizeof got);
    snprintf(want, sizeof want, "Content-Type: %s; name=\"f.bin\"", ct);
    assert_string_equal(got, want);
    free(s_describe(out, NULL));
    sbuf_destroy(&out);
}

/* 7bit when ASCII with short lines, QP for mostly-Latin text or long lines,
 * base64 when QP would be bigger (Persian); bare CR and LF become CRLF. */
static void test_transfer_encodings(void **state)
{
    (void)state;
    static const struct {
        const char *text; /* the text part */
        const char *want; /* its decoded form (line ends normalized) */
        const char *cte;  /* expected encoding */
    } CASES[] = {
        {"plain ascii\n", "plain ascii\n", "7bit"},
        /* base64 would be a little shorter; QP stays readable */
        {"hi Gr\xc3\xbc\xc3\x9f"
         "e\n",
         "hi Gr\xc3\xbc\xc3\x9f"
         "e\n",
         "quoted-printable"},
        {"cr\rlf\ncrlf\r\n", "cr\nlf\ncrlf\n", "7bit"},
        {"Gr\xc3\xbc\xc3\x9f"
         "e aus K\xc3\xb6ln, trailing space \nand = sign\n",
         "Gr\xc3\xbc\xc3\x9f"
         "e aus K\xc3\xb6ln, trailing space \nand = sign\n",
         "quoted-printable"},
        {"\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85 \xd8\xaf\xd9\x86\xdb\x8c\xd8\xa7 "
         "\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85\n",
         /* base64 carries the canonical CRLF form, which python keeps */
         "\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85 \xd8\xaf\xd9\x86\xdb\x8c\xd8\xa7 "
         "\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85\r\n",
         "base64"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        mime_msg_t m = s_base();
        m.text = CASES[i].text;
        sbuf_t *want = sbuf_new(0);
        s_want_headers(want, "Hello");
        s_leaf(want, 0, "text/plain", CASES[i].cte, "-", "-", "-", CASES[i].want,
               strlen(CASES[i].want));
        s_expect(&m, want);
        sbuf_destroy(&want);
    }
    /* one 5000-char ASCII line: over 998, so QP soft breaks */
    char *line = malloc(5002);
    memset(line, 'x', 5000);
    memcpy(line + 5000, "\n", 2);
    mime_msg_t m = s_base();
    m.text = line;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    s_leaf(want, 0, "text/plain", "quoted-printable", "-", "-", "-", line, 5001);
    s_expect(&m, want);
    sbuf_destroy(&want);
    free(line);
}

/* Subjects: long ASCII folds at blanks, non-ASCII (2-, 3- and 4-byte
 * sequences), lookalike encoded words and very long words are encoded; every
 * encoded word is <= 75 chars and every header line <= 78 (s_expect). */
static void test_subjects(void **state)
{
    (void)state;
    sbuf_t *fa = sbuf_new(0), *emoji = sbuf_new(0), *ascii = sbuf_new(0), *word = sbuf_new(0);
    for (int i = 0; i < 40; i++) {
        sbuf_append_str(fa, "\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85 \xd8\xaf\xd9\x86\xdb\x8c\xd8\xa7 ");
        sbuf_append_str(emoji, "\xf0\x9f\x93\xac\xe2\x82\xac\xc3\xa9x");
        sbuf_append_str(ascii, "the quick brown fox ");
    }
    sbuf_append_str(fa, "end");
    sbuf_append_str(ascii, "end");
    for (int i = 0; i < 1200; i++)
        sbuf_append_str(word, "w");
    const char *subjects[] = {
        "Hello",          sbuf_data(fa),
        sbuf_data(emoji), sbuf_data(ascii),
        sbuf_data(word),  "looks like =?UTF-8?B?aGk=?= but is not",
        "tab\tinside",    "Caf\xc3\xa9 \"quoted\" _under_ =?",
    };
    for (size_t i = 0; i < sizeof subjects / sizeof subjects[0]; i++) {
        mime_msg_t m = s_base();
        m.subject = subjects[i];
        sbuf_t *want = sbuf_new(0);
        s_want_headers(want, subjects[i]);
        s_leaf(want, 0, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
        s_expect(&m, want);
        /* encoded words never pass 75 chars */
        sbuf_t *out = sbuf_new(0);
        assert_int_equal(mime_build(&m, out, NULL, NULL), 0);
        for (const char *p = sbuf_data(out); (p = strstr(p, "=?UTF-8?")) != NULL; p++) {
            const char *e = strstr(p + 10, "?=");
            assert_non_null(e);
            assert_true(e + 2 - p <= 75);
        }
        sbuf_destroy(&out);
        sbuf_destroy(&want);
    }
    sbuf_destroy(&fa);
    sbuf_destroy(&emoji);
    sbuf_destroy(&ascii);
    sbuf_destroy(&word);
}

/* Display names: atoms, specials (quoted), quotes and backslashes, already
 * quoted input, non-ASCII (encoded), long names; bare addresses; Cc and
 * Reply-To. */
static void test_addresses(void **state)
{
    (void)state;
    const char *to[] = {
        "plain@example.com",
        "<angle@example.com>",
        "Doe, John <john@example.com>",
        "\"Quoted \\\"Q\\\" Name\" <q@example.com>",
        "Back\\slash <bs@example.com>",
        "\xd9\x85\xd8\xb1\xdb\x8c\xd9\x85 \xd8\xb1\xd8\xb6\xd8\xa7\xdb\x8c\xdb\x8c "
        "<maryam@example.ir>",
        "J. R. \"Bob\" Dobbs <bob@example.com>",
    };
    const char *cc[] = {"Zo\xc3\xab <zoe@example.com>", "x@example.net"};
    mime_msg_t m = s_base();
    m.to = to;
    m.nto = sizeof to / sizeof to[0];
    m.cc = cc;
    m.ncc = 2;
    m.reply_to = "Support Team <support@example.org>";
    m.from_name = "\xd9\xbe\xd8\xb3\xd8\xaa\xda\x86\xdb\x8c, Inc.";
    sbuf_t *want = sbuf_new(0);
    sbuf_append_str(want, "Subject: Hello\n"
                          "From: \xd9\xbe\xd8\xb3\xd8\xaa\xda\x86\xdb\x8c, Inc.|news@example.org\n"
                          "To: |plain@example.com; |angle@example.com; Doe, John|john@example.com; "
                          "Quoted \"Q\" Name|q@example.com; Back\\slash|bs@example.com; "
                          "\xd9\x85\xd8\xb1\xdb\x8c\xd9\x85 "
                          "\xd8\xb1\xd8\xb6\xd8\xa7\xdb\x8c\xdb\x8c|maryam@example.ir; "
                          "J. R. \"Bob\" Dobbs|bob@example.com\n"
                          "Cc: Zo\xc3\xab|zoe@example.com; |x@example.net\n"
                          "Reply-To: Support Team|support@example.org\n");
    s_leaf(want, 0, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
    s_expect(&m, want);
    sbuf_destroy(&want);

    /* a UTF-8 address is written as given (SMTPUTF8 is the client's job) */
    const char *utf8[] = {"\xd9\x85\xd8\xb1\xdb\x8c\xd9\x85@\xd9\x85\xd8\xab\xd8\xa7\xd9\x84."
                          "\xd8\xa7\xdb\x8c\xd8\xb1\xd8\xa7\xd9\x86"};
    m = s_base();
    m.to = utf8;
    sbuf_t *raw = sbuf_new(0);
    assert_int_equal(mime_build(&m, raw, NULL, NULL), 0);
    sbuf_t *line = sbuf_new(0);
    sbuf_appendf(line, "\r\nTo: %s\r\n", utf8[0]);
    assert_non_null(strstr(sbuf_data(raw), sbuf_data(line)));
    sbuf_destroy(&line);
    sbuf_destroy(&raw);

    /* 1000 recipients fold into many short lines and all come back */
    const char **many = calloc(1000, sizeof *many);
    char(*addrs)[40] = calloc(1000, sizeof *addrs);
    for (int i = 0; i < 1000; i++) {
        snprintf(addrs[i], sizeof addrs[i], "User %d <u%d@example.com>", i, i);
        many[i] = addrs[i];
    }
    m = s_base();
    m.to = many;
    m.nto = 1000;
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(mime_build(&m, out, NULL, NULL), 0);
    s_check_raw(out, 78);
    char *desc = s_describe(out, NULL);
    assert_non_null(strstr(desc, "; User 999|u999@example.com\n"));
    assert_non_null(strstr(desc, "To: User 0|u0@example.com; User 1|u1@example.com;"));
    free(desc);
    sbuf_destroy(&out);
    free(many);
    free(addrs);
}

/* Long runs of blanks between words (a Subject of "a", 1,500 spaces and
 * "b"; a custom value of "x", 2,046 tabs and "y") used to be written whole
 * as one fold's whitespace: lines of 1,501 and 2,048 octets. Every line now
 * stays within 998 and the values read back unchanged. */
static void test_blank_runs_stay_under_998(void **state)
{
    (void)state;
    char subject[1503], value[2049], edge[70];
    subject[0] = 'a';
    memset(subject + 1, ' ', 1500);
    strcpy(subject + 1501, "b");
    value[0] = 'x';
    memset(value + 1, '\t', 2046);
    strcpy(value + 2047, "y");
    /* at the limit: written literally, one fold's whitespace */
    edge[0] = 'e';
    memset(edge + 1, ' ', 64);
    strcpy(edge + 65, "f");
    const char *subjects[] = {subject, edge, "a" "\t \t \t" "b"};
    for (size_t i = 0; i < sizeof subjects / sizeof subjects[0]; i++) {
        mime_header_t hdr = {"X-Blanks", value};
        mime_msg_t m = s_base();
        m.subject = subjects[i];
        m.headers = &hdr;
        m.nheaders = 1;
        sbuf_t *out = sbuf_new(0);
        assert_int_equal(mime_build(&m, out, NULL, NULL), 0);
        s_check_raw(out, 998);
        const char *extra[] = {"X-Blanks", NULL};
        char *desc = s_describe(out, extra);
        sbuf_t *want = sbuf_new(0);
        sbuf_appendf(want, "Subject: %s\n", subjects[i]);
        if (!strstr(desc, sbuf_data(want)))
            fail_msg("subject %zu not read back:\n%s", i, desc);
        sbuf_reset(want);
        sbuf_appendf(want, "X-Blanks: %s\n", value);
        assert_non_null(strstr(desc, sbuf_data(want)));
        free(desc);
        sbuf_destroy(&want);
        sbuf_destroy(&out);
    }
}

/* With no message_id_domain the Message-ID takes From's domain; a UTF-8
 * (IDN) domain used to fail the build ("must be an ASCII host name"). Its
 * punycode form is used: RFC 3492 and IDNA test vectors. */
static void test_idn_from_message_id(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"news@b\xc3\xbc" "cher.de", "xn--bcher-kva.de"},
        {"a@M\xc3\xbcnchen.DE", "xn--mnchen-3ya.de"},
        {"a@\xe4\xbe\x8b\xe3\x81\x88.\xe3\x83\x86\xe3\x82\xb9\xe3\x83\x88",
         "xn--r8jz45g.xn--zckzah"},
        {"a@\xd9\x85\xd8\xab\xd8\xa7\xd9\x84.\xd8\xa7\xdb\x8c\xd8\xb1\xd8\xa7\xd9\x86",
         "xn--mgbh0fb.xn--mgba3a4f16a"},
        {"a@example.org", "example.org"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mime_msg_t m = s_base();
        m.from_addr = cases[i][0];
        m.message_id_domain = NULL;
        sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
        char mid[MIME_MESSAGE_ID_MAX];
        if (mime_build(&m, out, mid, err) != 0)
            fail_msg("case %zu: %s", i, sbuf_data(err));
        const char *at = strchr(mid, '@');
        assert_non_null(at);
        if (strlen(at + 1) != strlen(cases[i][1]) + 1 ||
            strncmp(at + 1, cases[i][1], strlen(cases[i][1])) != 0)
            fail_msg("case %zu: %s, want @%s>", i, mid, cases[i][1]);
        sbuf_destroy(&out);
        sbuf_destroy(&err);
    }
    /* a caller's own message_id_domain is still held to ASCII */
    mime_msg_t m = s_base();
    m.message_id_domain = "b\xc3\xbc" "cher.de";
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(mime_build(&m, out, NULL, NULL), -1);
    sbuf_destroy(&out);
}

/* Reply-To with several addresses writes every one (the API takes up to
 * 10; only the first used to be sent); giving both forms is refused. */
static void test_reply_to_list(void **state)
{
    (void)state;
    const char *rt[] = {"r1@example.org", "R Two <r2@example.org>", "r3@example.net"};
    mime_msg_t m = s_base();
    m.reply_to_list = rt;
    m.nreply_to = 3;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    sbuf_append_str(want, "Reply-To: |r1@example.org; R Two|r2@example.org; |r3@example.net\n");
    s_leaf(want, 0, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
    s_expect(&m, want);
    sbuf_destroy(&want);
    m.reply_to = "r@example.org";
    sbuf_t *out = sbuf_new(0);
    assert_int_equal(mime_build(&m, out, NULL, NULL), -1);
    assert_int_equal(sbuf_len(out), 0);
    sbuf_destroy(&out);
}

static void test_headers_and_unsubscribe(void **state)
{
    (void)state;
    sbuf_t *longval = sbuf_new(0);
    for (int i = 0; i < 950; i++)
        sbuf_append_str(longval, "v");
    mime_header_t hdrs[] = {
        {"X-Campaign",
         "spring sale 2024 with a value long enough to need folding past the 78 column"},
        {"X-Entity-Ref-ID", "abc-123"},
        {"X-Long", sbuf_data(longval)},
        {"X-Utf8", "\xc3\xa9t\xc3\xa9"},
        {"In-Reply-To", "<a@b.example>"},
    };
    mime_msg_t m = s_base();
    m.headers = hdrs;
    m.nheaders = sizeof hdrs / sizeof hdrs[0];
    m.list_unsubscribe_mailto = "unsub+abc@example.org?subject=unsubscribe";
    m.list_unsubscribe_url = "https://example.org/u/abc?t=1&x=%2C";
    m.message_id = "<given-1@example.org>";
    sbuf_t *out = sbuf_new(0);
    char mid[MIME_MESSAGE_ID_MAX];
    assert_int_equal(mime_build(&m, out, mid, NULL), 0);
    assert_string_equal(mid, "<given-1@example.org>");
    s_check_raw(out, 78);
    const char *extra[] = {"X-Campaign",
                           "X-Entity-Ref-ID",
                           "X-Long",
                           "X-Utf8",
                           "In-Reply-To",
                           "List-Unsubscribe",
                           "List-Unsubscribe-Post",
                           "Message-ID",
                           "Date",
                           "MIME-Version",
                           NULL};
    char *desc = s_describe(out, extra);
    sbuf_t *want = sbuf_new(0);
    sbuf_appendf(want,
                 "X-Campaign: %s\nX-Entity-Ref-ID: abc-123\nX-Long: %s\nX-Utf8: \xc3\xa9t\xc3\xa9\n"
                 "In-Reply-To: <a@b.example>\n"
                 "List-Unsubscribe: <mailto:unsub+abc@example.org?subject=unsubscribe>, "
                 "<https://example.org/u/abc?t=1&x=%%2C>\n"
                 "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
                 "Message-ID: <given-1@example.org>\n"
                 "Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
                 "MIME-Version: 1.0\n",
                 hdrs[0].value, sbuf_data(longval));
    if (!strstr(desc, sbuf_data(want)))
        fail_msg("got:\n%s\nwant:\n%s", desc, sbuf_data(want));
    free(desc);

    /* mailto only: no List-Unsubscribe-Post; generated Message-ID */
    m.list_unsubscribe_url = NULL;
    m.list_unsubscribe_mailto = "mailto:u@example.org";
    m.message_id = NULL;
    sbuf_reset(out);
    assert_int_equal(mime_build(&m, out, mid, NULL), 0);
    assert_non_null(strstr(sbuf_data(out), "\r\nList-Unsubscribe: <mailto:u@example.org>\r\n"));
    assert_null(strstr(sbuf_data(out), "List-Unsubscribe-Post"));
    assert_int_equal(strlen(mid), 1 + 32 + 1 + strlen("example.org") + 1);
    assert_true(mid[0] == '<' && mid[33] == '@' && strcmp(mid + 34, "example.org>") == 0);
    char line[300];
    snprintf(line, sizeof line, "\r\nMessage-ID: %s\r\n", mid);
    assert_non_null(strstr(sbuf_data(out), line));
    /* two builds, two ids */
    char mid2[MIME_MESSAGE_ID_MAX];
    assert_int_equal(mime_build(&m, out, mid2, NULL), 0);
    assert_string_not_equal(mid, mid2);
    /* no message_id_domain: From's domain */
    m.message_id_domain = NULL;
    assert_int_equal(mime_build(&m, out, mid, NULL), 0);
    assert_non_null(strstr(mid, "@example.org>"));
    sbuf_destroy(&want);
    sbuf_destroy(&out);
    sbuf_destroy(&longval);
}

/* Which message field a CR/LF injection goes into. */
typedef enum {
    F_FROM_NAME,
    F_FROM_ADDR,
    F_TO,
    F_CC,
    F_REPLY_TO,
    F_SUBJECT,
    F_HDR_NAME,
    F_HDR_VALUE,
    F_FILENAME,
    F_CTYPE,
    F_CID,
    F_MSGID,
    F_MSGID_DOMAIN,
    F_MAILTO,
    F_URL,
    F_COUNT
} field_t;

/* Build a full message with bad put into field f; must fail, say why and
 * leave out as it was. With f == F_COUNT nothing is poisoned and the build
 * must succeed. */
static void s_refused(field_t f, const char *bad)
{
    const char *to[] = {"a@example.com", "B <b@example.com>"};
    const char *cc[] = {"c@example.com"};
    mime_header_t hdr = {"X-Tag", "v"};
    mime_part_t parts[] = {{"a.pdf", "application/pdf", PDF, 4, NULL},
                           {"i.png", "image/png", PNG, sizeof PNG, "i@x"}};
    mime_msg_t m = s_base();
    m.to = to;
    m.nto = 2;
    m.cc = cc;
    m.ncc = 1;
    m.reply_to = "r@example.com";
    m.html = HTML;
    m.headers = &hdr;
    m.nheaders = 1;
    m.attachments = parts;
    m.nattachments = 2;
    m.list_unsubscribe_mailto = "u@example.org";
    m.list_unsubscribe_url = "https://example.org/u";
    /* where each field_t lives in this message */
    const char **slot[F_COUNT] = {
        &m.from_name,
        &m.from_addr,
        &to[1],
        &cc[0],
        &m.reply_to,
        &m.subject,
        &hdr.name,
        &hdr.value,
        &parts[0].filename,
        &parts[0].content_type,
        &parts[1].content_id,
        &m.message_id,
        &m.message_id_domain,
        &m.list_unsubscribe_mailto,
        &m.list_unsubscribe_url,
    };
    if (f < F_COUNT)
        *slot[f] = bad;
    sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
    sbuf_append_str(out, "PREFIX");
    char mid[MIME_MESSAGE_ID_MAX] = "junk";
    if (f == F_COUNT) {
        if (mime_build(&m, out, mid, err) != 0)
            fail_msg("base message refused: %s", sbuf_data(err));
        sbuf_destroy(&out);
        sbuf_destroy(&err);
        return;
    }
    if (mime_build(&m, out, mid, err) != -1)
        fail_msg("field %d accepted %s", (int)f, bad);
    assert_true(sbuf_len(err) > 0);
    assert_string_equal(sbuf_data(out), "PREFIX");
    assert_string_equal(mid, "");
    /* the reason never echoes the input */
    assert_null(strchr(sbuf_data(err), '\r'));
    assert_null(strchr(sbuf_data(err), '\n'));
    sbuf_destroy(&out);
    sbuf_destroy(&err);
}

static void test_injection_refused_every_field(void **state)
{
    (void)state;
    static const char *const BAD[] = {
        "x\r\nBcc: victim@example.com",
        "x\nBcc: v@example.com",
        "x\rBcc: v@example.com",
        "x\r\n",
        "\r\nx",
        "x\n\nbody",
    };
    static const char *const GOOD[F_COUNT] = {
        "Name",    "a@example.com",   "b@example.com", "c@example.com", "r@example.com",
        "Subject", "X-Tag",           "value",         "a.pdf",         "application/pdf",
        "i@x",     "<m@example.org>", "example.org",   "u@example.org", "https://example.org/u",
    };
    for (int f = 0; f < F_COUNT; f++) {
        for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
            char v[128];
            /* the poison inside an otherwise valid value */
            snprintf(v, sizeof v, "%s%s", GOOD[f], BAD[i]);
            s_refused((field_t)f, v);
            snprintf(v, sizeof v, "%.*s\n%s", 1, GOOD[f], GOOD[f] + 1);
            s_refused((field_t)f, v);
        }
    }
}

/* The full message of s_refused, unpoisoned, builds: so each refusal there
 * is down to the one bad field. */
static void test_refused_base_builds(void **state)
{
    (void)state;
    s_refused(F_COUNT, NULL);
}

static void test_other_refusals(void **state)
{
    (void)state;
    static const struct {
        field_t f;       /* where */
        const char *bad; /* what */
    } CASES[] = {
        {F_HDR_NAME, "From"},
        {F_HDR_NAME, "to"},
        {F_HDR_NAME, "BCC"},
        {F_HDR_NAME, "Subject"},
        {F_HDR_NAME, "Date"},
        {F_HDR_NAME, "Message-ID"},
        {F_HDR_NAME, "MIME-Version"},
        {F_HDR_NAME, "Content-Type"},
        {F_HDR_NAME, "content-transfer-encoding"},
        {F_HDR_NAME, "DKIM-Signature"},
        {F_HDR_NAME, "Return-Path"},
        {F_HDR_NAME, "Received"},
        {F_HDR_NAME, "List-Unsubscribe"},
        {F_HDR_NAME, "List-Unsubscribe-Post"},
        {F_HDR_NAME, "X Space"},
        {F_HDR_NAME, "X:Colon"},
        {F_HDR_NAME, ""},
        {F_HDR_NAME, "X-\xc3\xa9"},
        {F_CTYPE, "application"},
        {F_CTYPE, "application/"},
        {F_CTYPE, "/pdf"},
        {F_CTYPE, "text/plain; charset"},
        {F_CTYPE, "text/plain; charset=\"utf-8"},
        {F_CTYPE, "a/b/c"},
        {F_CTYPE, "multipart/mixed"},
        {F_CTYPE, "message/rfc822"},
        {F_CTYPE, "text/pl ain"},
        {F_CID, ""},
        {F_CID, "<id@x>"},
        {F_CID, "a b"},
        {F_MSGID, "no-brackets@x"},
        {F_MSGID, "<no-at>"},
        {F_MSGID, "<a@b@c>"},
        {F_MSGID, "<a b@c>"},
        {F_MSGID_DOMAIN, "bad domain"},
        {F_MSGID_DOMAIN, "b\xc3\xbc"
                         "cher.example"},
        {F_MSGID_DOMAIN, "a..b"},
        {F_URL, "http://example.org/u"},
        {F_URL, "https://example.org/a b"},
        {F_URL, "https://example.org/a,b"},
        {F_URL, "https://"},
        {F_URL, "https://x/\xc3\xa9"},
        {F_MAILTO, "no-at"},
        {F_MAILTO, "a@b>"},
        {F_FROM_ADDR, "not an address"},
        {F_FROM_ADDR, "Name <a@example.com>"},
        {F_TO, "a@"},
        {F_TO, "Name <a@example.com"},
        {F_TO, "Name a@example.com>"},
        {F_CC, ""},
        {F_REPLY_TO, "<>"},
        {F_SUBJECT, "bad utf8 \xc3"},
        {F_SUBJECT, "overlong \xc0\xaf"},
        {F_FROM_NAME, "surrogate \xed\xa0\x80"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        s_refused(CASES[i].f, CASES[i].bad);

    /* structural refusals */
    mime_msg_t m = s_base();
    sbuf_t *out = sbuf_new(0), *err = sbuf_new(0);
    m.text = NULL;
    assert_int_equal(mime_build(&m, out, NULL, err), -1); /* no body */
    m.text = "";
    m.html = "";
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    m = s_base();
    m.text = "bad \xff utf-8";
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    m = s_base();
    mime_part_t img = {"i.png", "image/png", PNG, sizeof PNG, "i@x"};
    m.attachments = &img;
    m.nattachments = 1;
    assert_int_equal(mime_build(&m, out, NULL, err), -1); /* inline image, no html */
    mime_part_t nodata = {"a", "application/pdf", NULL, 10, NULL};
    m.attachments = &nodata;
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    char *longname = malloc(300);
    memset(longname, 'n', 299);
    longname[299] = '\0';
    mime_part_t lname = {longname, "application/pdf", PDF, 4, NULL};
    m.attachments = &lname;
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    free(longname);
    m = s_base();
    m.date = -1;
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    m.date = INT64_MAX;
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    /* recipients: 1000 is fine, 1001 is not */
    const char **many = calloc(1001, sizeof *many);
    for (int i = 0; i < 1001; i++)
        many[i] = "a@example.com";
    m = s_base();
    m.to = many;
    m.nto = 600;
    m.cc = many;
    m.ncc = 400;
    assert_int_equal(mime_build(&m, out, NULL, err), 0);
    m.ncc = 401;
    sbuf_reset(out);
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    assert_int_equal(sbuf_len(out), 0);
    free(many);
    /* a value just over MIME_HEADER_VALUE_MAX */
    char *big = malloc(MIME_HEADER_VALUE_MAX + 2);
    memset(big, 's', MIME_HEADER_VALUE_MAX + 1);
    big[MIME_HEADER_VALUE_MAX + 1] = '\0';
    m = s_base();
    m.subject = big;
    assert_int_equal(mime_build(&m, out, NULL, err), -1);
    big[MIME_HEADER_VALUE_MAX] = '\0';
    assert_int_equal(mime_build(&m, out, NULL, err), 0);
    s_check_raw(out, 78);
    free(big);
    sbuf_destroy(&out);
    sbuf_destroy(&err);
}

static void test_header_checks(void **state)
{
    (void)state;
    assert_int_equal(mime_header_value_ok("plain"), 1);
    assert_int_equal(mime_header_value_ok(""), 1);
    assert_int_equal(mime_header_value_ok("tab\tok"), 1);
    assert_int_equal(mime_header_value_ok("\xe2\x82\xac"), 1);
    assert_int_equal(mime_header_value_ok(NULL), 0);
    assert_int_equal(mime_header_value_ok("a\rb"), 0);
    assert_int_equal(mime_header_value_ok("a\nb"), 0);
    assert_int_equal(mime_header_value_ok("\xe2\x82"), 0);
    assert_int_equal(mime_header_value_ok("\xf4\x90\x80\x80"), 0); /* past U+10FFFF */
    assert_int_equal(mime_custom_header_ok("X-Mailer"), 1);
    assert_int_equal(mime_custom_header_ok("References"), 1);
    assert_int_equal(mime_custom_header_ok("x-!#$%&'*+-.^_`|~"), 1);
    assert_int_equal(mime_custom_header_ok("Content-Disposition"), 0);
    assert_int_equal(mime_custom_header_ok("list-unsubscribe-post"), 0);
    assert_int_equal(mime_custom_header_ok("Reply-To"), 0);
    assert_int_equal(mime_custom_header_ok("Resent-From"), 0);
    assert_int_equal(mime_custom_header_ok(NULL), 0);
    assert_int_equal(mime_custom_header_ok("X-\x7f"), 0);
}

/* 5 MB of random bytes: decodes to the same sha256; lines within 76. */
static void test_big_attachment(void **state)
{
    (void)state;
    size_t len = 5 * 1024 * 1024 + 1;
    unsigned char *data = malloc(len);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        data[i] = (unsigned char)x;
    }
    mime_part_t big = {"big.bin", "application/octet-stream", data, len, NULL};
    mime_msg_t m = s_base();
    m.html = HTML;
    m.attachments = &big;
    m.nattachments = 1;
    sbuf_t *want = sbuf_new(0);
    s_want_headers(want, "Hello");
    sbuf_append_str(want, "multipart/mixed\n  multipart/alternative\n");
    s_leaf(want, 2, "text/plain", "7bit", "-", "-", "-", TEXT, strlen(TEXT));
    s_leaf(want, 2, "text/html", "7bit", "-", "-", "-", HTML, strlen(HTML));
    s_leaf(want, 1, "application/octet-stream", "base64", "attachment", "big.bin", "-", data, len);
    s_expect(&m, want);
    sbuf_destroy(&want);
    free(data);
}

static void test_verp(void **state)
{
    (void)state;
    char *a = mime_verp("bounces", "0a1b2c3d", "mail.example.org");
    assert_non_null(a);
    assert_string_equal(a, "bounces+0a1b2c3d@mail.example.org");
    char tok[64];
    assert_int_equal(mime_verp_parse(a, "bounces", "mail.example.org", tok, sizeof tok), 0);
    assert_string_equal(tok, "0a1b2c3d");
    free(a);
    assert_int_equal(mime_verp_parse("<BOUNCES+ff00@Mail.Example.ORG>", "bounces",
                                     "mail.example.org", tok, sizeof tok),
                     0);
    assert_string_equal(tok, "ff00");
    /* not ours, malformed, or too small a buffer */
    assert_int_equal(mime_verp_parse("other+ff@mail.example.org", "bounces", "mail.example.org",
                                     tok, sizeof tok),
                     -1);
    assert_string_equal(tok, "");
    assert_int_equal(
        mime_verp_parse("bounces+ff@evil.example", "bounces", "mail.example.org", tok, sizeof tok),
        -1);
    assert_int_equal(mime_verp_parse("bounces+@mail.example.org", "bounces", "mail.example.org",
                                     tok, sizeof tok),
                     -1);
    assert_int_equal(mime_verp_parse("bounces+a@b@mail.example.org", "bounces", "mail.example.org",
                                     tok, sizeof tok),
                     -1);
    assert_int_equal(mime_verp_parse("bounces+a+b@mail.example.org", "bounces", "mail.example.org",
                                     tok, sizeof tok),
                     -1);
    assert_int_equal(
        mime_verp_parse("bounces@mail.example.org", "bounces", "mail.example.org", tok, sizeof tok),
        -1);
    assert_int_equal(
        mime_verp_parse("bounces+abcdef@mail.example.org", "bounces", "mail.example.org", tok, 6),
        -1);
    assert_int_equal(
        mime_verp_parse("bounces+abcdef@mail.example.org", "bounces", "mail.example.org", tok, 7),
        0);
    assert_null(mime_verp("bounces", "a@b", "example.org"));
    assert_null(mime_verp("bounces", "a+b", "example.org"));
    assert_null(mime_verp("bounces", "", "example.org"));
    assert_null(mime_verp("a@b", "ff", "example.org"));
    assert_null(mime_verp("bounces", "ff", "bad domain"));
    assert_null(mime_verp(NULL, "ff", "example.org"));
    char longtok[80];
    memset(longtok, 'f', 70);
    longtok[70] = '\0';
    assert_null(mime_verp("bounces", longtok, "example.org")); /* local part over 64 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_only),
        cmocka_unit_test(test_html_only),
        cmocka_unit_test(test_alternative),
        cmocka_unit_test(test_related),
        cmocka_unit_test(test_full_tree),
        cmocka_unit_test(test_attachment_only),
        cmocka_unit_test(test_content_type_syntax),
        cmocka_unit_test(test_content_type_params_built),
        cmocka_unit_test(test_part_limits),
        cmocka_unit_test(test_transfer_encodings),
        cmocka_unit_test(test_subjects),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_headers_and_unsubscribe),
        cmocka_unit_test(test_refused_base_builds),
        cmocka_unit_test(test_injection_refused_every_field),
        cmocka_unit_test(test_other_refusals),
        cmocka_unit_test(test_header_checks),
        cmocka_unit_test(test_big_attachment),
        cmocka_unit_test(test_verp),
        cmocka_unit_test(test_blank_runs_stay_under_998),
        cmocka_unit_test(test_idn_from_message_id),
        cmocka_unit_test(test_reply_to_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
