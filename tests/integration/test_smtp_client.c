/*
 * test_smtp_client - the non-blocking SMTP client against real peers.
 *
 * Postfix's smtp-sink (started per test on a free port, dumping each
 * message to a directory): one message with dot-lines arrives byte for byte,
 * ten messages over one connection, with and without PIPELINING, hard and
 * soft refusals of MAIL/RCPT (-f, -r), a server that hangs up without a
 * reply (-q) or with 421 (-Q), a slow DATA reply (-w) against a short
 * timeout, TLS required where none is offered.
 *
 * The fake ESMTP server of smtp_fake_util.h (smtp-sink has no STARTTLS,
 * no AUTH and sends no malformed replies), with a self-signed certificate
 * made at start-up: garbage greeting, over-long reply line, a hang-up
 * mid-DATA, SIZE and SMTPUTF8 refused locally, STARTTLS taken
 * opportunistically, verified mode failing on a self-signed certificate
 * and passing with it as trust anchor, AUTH PLAIN and LOGIN with the
 * credentials decoded and checked by the server. Faults a real server
 * only makes when broken or hostile: a reply code the command cannot have
 * (250 to DATA, 354 to MAIL), a refusal followed by a hang-up under
 * PIPELINING, a flood while the body goes out, a 552 and a reset in the
 * middle of the body, a 220 to a STARTTLS not yet sent. 8-bit header
 * addresses on an ASCII envelope ask for SMTPUTF8.
 */
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "sbuf.h"
#include "smtp_client.h"
#include "smtp_fake_util.h"

static char s_tmp[] = "/tmp/smtp-client-test.XXXXXX"; /* certs and sink dumps */
static char s_cert[300], s_key[300];                  /* self-signed for mx.test */

static const char *S_MSG = "From: a@example.test\r\nTo: b@example.test\r\nSubject: dots\r\n\r\n"
                           "first line\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast\r\n";

/* ---- peers --------------------------------------------------------------- */

typedef struct {
    harness_proc_t *proc; /* smtp-sink */
    int port;             /* where it listens */
    char dir[400];        /* its dump directory */
} sink_t;

static int s_wait_port(int port)
{
    for (int i = 0; i < 100; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        if (rc == 0)
            return 0;
        usleep(50000);
    }
    return -1;
}

/* smtp-sink with the extra options (NULL-terminated, may be empty). */
static void s_sink_start(sink_t *s, const char *label, ...)
{
    static int seq;
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "%s/%s-%d", s_tmp, label, seq++);
    assert_int_equal(mkdir(s->dir, 0777), 0);
    chmod(s->dir, 0777);
    s->port = harness_free_port();
    char tmpl[450], listen[64];
    snprintf(tmpl, sizeof tmpl, "%s/%%M.", s->dir);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", s->port);
    char *argv[32] = {"/usr/sbin/smtp-sink", "-u", "nobody", "-d", tmpl};
    int n = 5;
    va_list ap;
    va_start(ap, label);
    for (char *a; (a = va_arg(ap, char *)) && n < 28;)
        argv[n++] = a;
    va_end(ap);
    argv[n++] = listen;
    argv[n++] = "50";
    argv[n] = NULL;
    s->proc = harness_spawn(label, argv, NULL);
    assert_non_null(s->proc);
    assert_int_equal(s_wait_port(s->port), 0);
}

static void s_sink_stop(sink_t *s)
{
    harness_stop(s->proc, 15, 2000);
}

/* How many dump files the sink wrote; the first one's content into body. */
static int s_sink_dumps(const sink_t *s, sbuf_t *body)
{
    DIR *d = opendir(s->dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        if (n++ == 0 && body) {
            char path[700];
            snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
            FILE *f = fopen(path, "r");
            assert_non_null(f);
            char buf[4096];
            size_t k;
            while ((k = fread(buf, 1, sizeof buf, f)) > 0)
                sbuf_append(body, buf, k);
            fclose(f);
        }
    }
    closedir(d);
    return n;
}

/* ---- driving a connection ------------------------------------------------ */

static smtp_opts_t s_opts(void)
{
    smtp_opts_t o = {.helo_name = "client.test",
                     .connect_timeout_ms = 3000,
                     .greeting_timeout_ms = 3000,
                     .command_timeout_ms = 3000,
                     .data_timeout_ms = 3000,
                     .final_timeout_ms = 3000};
    return o;
}

static smtp_conn_t *s_connect(int port, const smtp_opts_t *o)
{
    sbuf_t *err = sbuf_new(0);
    smtp_conn_t *c = smtp_conn_new("127.0.0.1", port, o, err);
    if (!c)
        fail_msg("smtp_conn_new: %s", sbuf_data(err));
    sbuf_destroy(&err);
    return c;
}

/* Poll until step returns something other than AGAIN (10 s at most). */
static int s_drive(smtp_conn_t *c)
{
    int64_t give_up = harness_now_ms() + 10000;
    short revents = 0;
    for (;;) {
        int r = smtp_conn_step(c, revents);
        if (r != SMTP_STEP_AGAIN)
            return r;
        int64_t now = harness_now_ms(), dl = smtp_conn_deadline(c);
        assert_true(now < give_up);
        int ms = dl < 0 ? 1000 : (int)(dl > now ? dl - now : 0);
        struct pollfd p = {.fd = smtp_conn_fd(c), .events = smtp_conn_events(c)};
        assert_true(p.events != 0);
        int n = poll(&p, 1, ms);
        revents = n > 0 ? p.revents : 0;
    }
}

/* One transaction from IDLE: the result's code, *r filled (caller clears). */
static int s_send(smtp_conn_t *c, const char *const *rcpts, size_t n, const char *msg, int utf8,
                  smtp_result_t *r)
{
    int st = smtp_conn_submit(c, "sender@example.test", rcpts, n, msg, strlen(msg), utf8);
    if (st == SMTP_STEP_AGAIN)
        st = s_drive(c);
    assert_int_equal(st, SMTP_STEP_RESULT);
    assert_int_equal(smtp_conn_take_result(c, r), 0);
    assert_non_null(r->text);
    return r->code;
}

static const char *S_ONE[] = {"rcpt@example.test"};

/* Connect, reach IDLE, send one message, return its code; error text on
 * connection failure goes to *why when given. */
static int s_one_message(int port, const smtp_opts_t *o, const char *msg, smtp_result_t *r)
{
    smtp_conn_t *c = s_connect(port, o);
    int st = s_drive(c);
    if (st != SMTP_STEP_IDLE)
        fail_msg("not idle: %d %s", st, smtp_conn_error(c) ? smtp_conn_error(c) : "");
    int code = s_send(c, S_ONE, 1, msg, 0, r);
    smtp_conn_destroy(&c);
    return code;
}

/* ---- smtp-sink tests ------------------------------------------------------ */

static void test_one_message_exact(void **state)
{
    (void)state;
    sink_t s;
    s_sink_start(&s, "sink-one", NULL);
    smtp_opts_t o = s_opts();
    smtp_conn_t *c = s_connect(s.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    assert_int_equal(smtp_conn_tls_active(c), 0); /* opportunistic, nothing offered */
    smtp_result_t r;
    assert_int_equal(s_send(c, S_ONE, 1, S_MSG, 0, &r), 250);
    assert_string_equal(r.enhanced, "2.0.0");
    assert_int_equal(r.nrcpt, 1);
    assert_int_equal(r.rcpt_codes[0], 250);
    assert_int_equal(r.local, 0);
    smtp_result_clear(&r);
    smtp_result_clear(&r);
    assert_int_equal(smtp_conn_step(c, 0), SMTP_STEP_IDLE);
    smtp_conn_quit(c);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_null(smtp_conn_error(c));
    smtp_conn_destroy(&c);
    smtp_conn_destroy(&c);

    /* the dump holds sink headers, then our message with LF line ends */
    sbuf_t *body = sbuf_new(0);
    assert_int_equal(s_sink_dumps(&s, body), 1);
    const char *p = strstr(sbuf_data(body), "From: a@example.test\n");
    assert_non_null(p);
    assert_non_null(strstr(sbuf_data(body), "X-Helo-Args: client.test\n"));
    assert_non_null(strstr(sbuf_data(body), "X-Mail-Args: <sender@example.test>"));
    assert_string_equal(p, "From: a@example.test\nTo: b@example.test\nSubject: dots\n\n"
                           "first line\n.starts with a dot\n..two dots\n.\nlast\n\n");
    sbuf_destroy(&body);
    s_sink_stop(&s);
}

static void s_ten(const char *label, int pipelining)
{
    sink_t s;
    if (pipelining)
        s_sink_start(&s, label, NULL);
    else
        s_sink_start(&s, label, "-p", NULL);
    smtp_opts_t o = s_opts();
    o.max_messages = 10;
    smtp_conn_t *c = s_connect(s.port, &o);
    const char *rcpts[] = {"one@example.test", "two@example.test", "three@example.test"};
    for (int i = 0; i < 10; i++) {
        assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
        smtp_result_t r;
        assert_int_equal(s_send(c, rcpts, 3, "Subject: x\r\n\r\nbody\n", 0, &r), 250);
        assert_int_equal(r.nrcpt, 3);
        for (int k = 0; k < 3; k++)
            assert_int_equal(r.rcpt_codes[k], 250);
        smtp_result_clear(&r);
    }
    /* max_messages reached: QUIT and a clean close */
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_null(smtp_conn_error(c));
    assert_int_equal(smtp_conn_messages(c), 10);
    smtp_conn_destroy(&c);
    assert_int_equal(s_sink_dumps(&s, NULL), 10);
    s_sink_stop(&s);
}

static void test_ten_pipelined(void **state)
{
    (void)state;
    s_ten("sink-ten", 1);
}

static void test_ten_lockstep(void **state)
{
    (void)state;
    s_ten("sink-ten-p", 0);
}

static void test_rejections(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_result_t r;
    sink_t s;

    /* hard RCPT refusal, then the same connection still delivers after RSET */
    s_sink_start(&s, "sink-f-rcpt", "-f", "RCPT", NULL);
    smtp_conn_t *c = s_connect(s.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    int code = s_send(c, S_ONE, 1, S_MSG, 0, &r);
    assert_true(code >= 500 && code < 600);
    assert_true(r.rcpt_codes[0] >= 500);
    assert_true(strchr(r.text, '\n') == NULL);
    smtp_result_clear(&r);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE); /* after RSET */
    smtp_conn_destroy(&c);
    assert_int_equal(s_sink_dumps(&s, NULL), 0);
    s_sink_stop(&s);

    /* hard MAIL refusal */
    s_sink_start(&s, "sink-f-mail", "-f", "MAIL", NULL);
    code = s_one_message(s.port, &o, S_MSG, &r);
    assert_true(code >= 500 && code < 600);
    assert_int_equal(r.rcpt_codes[0], 0); /* never asked */
    smtp_result_clear(&r);
    s_sink_stop(&s);

    /* soft RCPT refusal */
    s_sink_start(&s, "sink-r-rcpt", "-r", "RCPT", NULL);
    code = s_one_message(s.port, &o, S_MSG, &r);
    assert_true(code >= 400 && code < 500);
    smtp_result_clear(&r);
    s_sink_stop(&s);

    /* soft refusal of the final dot */
    s_sink_start(&s, "sink-r-dot", "-r", ".", NULL);
    code = s_one_message(s.port, &o, S_MSG, &r);
    assert_true(code >= 400 && code < 500);
    assert_int_equal(r.rcpt_codes[0], 250);
    smtp_result_clear(&r);
    s_sink_stop(&s);
}

static void test_disconnects(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_result_t r;
    sink_t s;

    /* hang-up without a reply after DATA: connection-level, code 0 */
    s_sink_start(&s, "sink-q-data", "-q", "DATA", NULL);
    smtp_conn_t *c = s_connect(s.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    assert_int_equal(s_send(c, S_ONE, 1, S_MSG, 0, &r), 0);
    assert_non_null(strstr(r.text, "closed"));
    smtp_result_clear(&r);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(smtp_conn_error(c));
    smtp_conn_destroy(&c);
    s_sink_stop(&s);

    /* 421 and hang-up after RCPT: deferred with the server's code */
    s_sink_start(&s, "sink-Q-rcpt", "-Q", "RCPT", NULL);
    assert_int_equal(s_one_message(s.port, &o, S_MSG, &r), 421);
    smtp_result_clear(&r);
    s_sink_stop(&s);

    /* slow DATA reply against a short timeout: code 0, says timeout */
    /* lock-step (-p): with PIPELINING the sink holds back every reply */
    s_sink_start(&s, "sink-w", "-p", "-w", "3", NULL);
    o.data_timeout_ms = 300;
    int64_t t0 = harness_now_ms();
    assert_int_equal(s_one_message(s.port, &o, S_MSG, &r), 0);
    assert_true(harness_now_ms() - t0 < 2500);
    assert_non_null(strstr(r.text, "timeout"));
    smtp_result_clear(&r);
    s_sink_stop(&s);

    /* nobody listening */
    int port = harness_free_port();
    o = s_opts();
    c = s_connect(port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(strstr(smtp_conn_error(c), "connect"));
    assert_int_equal(smtp_conn_events(c), 0);
    smtp_conn_destroy(&c);
}

static void test_tls_required_not_offered(void **state)
{
    (void)state;
    sink_t s;
    s_sink_start(&s, "sink-tls", NULL);
    smtp_opts_t o = s_opts();
    o.tls = SMTP_TLS_REQUIRED;
    smtp_conn_t *c = s_connect(s.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(strstr(smtp_conn_error(c), "STARTTLS"));
    smtp_conn_destroy(&c);
    s_sink_stop(&s);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    sbuf_t *err = sbuf_new(0);
    smtp_opts_t o = s_opts();
    assert_null(smtp_conn_new("mx.example.test", 25, &o, err));
    assert_non_null(strstr(sbuf_data(err), "numeric"));
    assert_null(smtp_conn_new("127.0.0.1", 0, &o, err));
    o.helo_name = "bad\r\nname";
    assert_null(smtp_conn_new("127.0.0.1", 25, &o, err));
    sbuf_destroy(&err);
    smtp_conn_destroy(NULL);
    smtp_result_clear(NULL);
}

/* ---- fake server tests (smtp_fake_util.h) -------------------------------- */

/* Start the fake with the test certificate for STARTTLS. */
static void s_fake_start(smtp_fake_t *fk)
{
    fk->cert = s_cert;
    fk->key = s_key;
    assert_int_equal(smtp_fake_start(fk), 0);
}

/* A text the fake recorded holds part (whole: is exactly part); read
 * before the fake stops, which frees it. */
static void s_fake_saw(smtp_fake_t *fk, sbuf_t *const *field, const char *part, int whole)
{
    char *text = smtp_fake_text(fk, field);
    assert_non_null(text);
    int ok = whole ? strcmp(text, part) == 0 : strstr(text, part) != NULL;
    if (!ok)
        print_message("fake saw \"%s\", wanted %s\"%s\"\n", text, whole ? "" : "a part ", part);
    free(text);
    assert_true(ok);
}

static void test_fake_garbage_and_long_lines(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.mode = SMTP_FAKE_GARBAGE};
    s_fake_start(&fk);
    smtp_conn_t *c = s_connect(fk.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(strstr(smtp_conn_error(c), "malformed reply"));
    for (const char *p = smtp_conn_error(c); *p; p++) /* sanitized */
        assert_true(*p >= 0x20 && *p < 0x7f);
    smtp_conn_destroy(&c);
    smtp_fake_stop(&fk);

    smtp_fake_t fl = {.mode = SMTP_FAKE_LONG_LINE};
    s_fake_start(&fl);
    c = s_connect(fl.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(strstr(smtp_conn_error(c), "longer than"));
    smtp_conn_destroy(&c);
    smtp_fake_stop(&fl);
}

static void test_fake_drop_mid_data(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.mode = SMTP_FAKE_DROP_DATA};
    s_fake_start(&fk);
    /* big enough that the hang-up lands while we still write */
    sbuf_t *msg = sbuf_new(0);
    sbuf_append_str(msg, "Subject: big\r\n\r\n");
    for (int i = 0; i < 40000; i++)
        sbuf_append_str(msg, "a line of the message body to fill the socket buffers\r\n");
    smtp_result_t r;
    assert_int_equal(s_one_message(fk.port, &o, sbuf_data(msg), &r), 0);
    assert_true(strlen(r.text) > 0);
    smtp_result_clear(&r);
    sbuf_destroy(&msg);
    smtp_fake_stop(&fk);
    assert_int_equal(fk.messages, 0); /* every connection has ended */
}

static void test_fake_local_refusals(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.ehlo_extra = "250-SIZE 100\r\n"};
    s_fake_start(&fk);
    smtp_conn_t *c = s_connect(fk.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    smtp_result_t r;
    /* over SIZE: refused without asking, still IDLE */
    assert_int_equal(s_send(c, S_ONE, 1, S_MSG, 0, &r), 552);
    assert_string_equal(r.enhanced, "5.3.4");
    assert_int_equal(r.local, 1);
    smtp_result_clear(&r);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    /* an 8-bit address needs SMTPUTF8, which is not offered */
    const char *utf[] = {"J\xc3\xb6rg@example.test"};
    assert_int_equal(s_send(c, utf, 1, "x\r\n", 0, &r), 550);
    assert_string_equal(r.enhanced, "5.6.7");
    smtp_result_clear(&r);
    /* CR/LF in an address never reaches the wire */
    const char *inj[] = {"a@b>\r\nRCPT TO:<c@d"};
    assert_int_equal(s_send(c, inj, 1, "x\r\n", 0, &r), 553);
    smtp_result_clear(&r);
    /* an 8-bit header (a raw UTF-8 To: address) needs it just the same */
    assert_int_equal(s_send(c, S_ONE, 1, "To: j\xc3\xbcrgen@example.test\r\n\r\nb\r\n", 0, &r),
                     550);
    assert_string_equal(r.enhanced, "5.6.7");
    assert_int_equal(r.local, 1);
    smtp_result_clear(&r);
    /* a small message 8-bit in its body goes with BODY=8BITMIME and SIZE */
    assert_int_equal(s_send(c, S_ONE, 1, "S: x\r\n\r\n\xc3\xa9\r\n", 0, &r), 250);
    smtp_result_clear(&r);
    smtp_conn_quit(c);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    smtp_conn_destroy(&c);
    s_fake_saw(&fk, &fk.mail, "BODY=8BITMIME", 0);
    s_fake_saw(&fk, &fk.mail, "SIZE=", 0);
    smtp_fake_stop(&fk);
    /* not submitting when not IDLE is a programmer error, reported as -1 */
    assert_int_equal(smtp_conn_submit(c, "a", S_ONE, 1, "x", 1, 0), -1);
}

/* Mail from a caller is 7-bit in its body but may hold raw UTF-8
 * addresses in To/Cc/From: the envelope can be all ASCII and SMTPUTF8 is
 * still needed (RFC 6532), else the 8-bit header goes out unannounced. */
static void test_fake_header_smtputf8(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.ehlo_extra = "250-SMTPUTF8\r\n"};
    s_fake_start(&fk);
    smtp_conn_t *c = s_connect(fk.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    smtp_result_t r;
    const char *hdr8 = "From: a@example.test\r\n"
                       "To: b@example.test, j\xc3\xbcrgen@b\xc3\xbc"
                       "cher.test\r\n\r\nbody\r\n";
    assert_int_equal(s_send(c, S_ONE, 1, hdr8, 0, &r), 250);
    smtp_result_clear(&r);
    s_fake_saw(&fk, &fk.mail, " SMTPUTF8", 0);
    /* 8-bit only after the empty line (LF line ends): not a header matter */
    assert_int_equal(s_send(c, S_ONE, 1, "Subject: plain\n\n\xc3\xa9t\xc3\xa9\n", 0, &r), 250);
    smtp_result_clear(&r);
    s_fake_saw(&fk, &fk.mail, "MAIL FROM:<sender@example.test> BODY=8BITMIME", 1);
    smtp_conn_quit(c);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    smtp_conn_destroy(&c);
    smtp_fake_stop(&fk);
}

/* A code the command cannot have answered with is a broken or hostile
 * peer: a protocol error (code 0, deferred), never the result. A 250 to
 * DATA used to be reported as sent with no byte of the body written. */
static void test_fake_odd_replies(void **state)
{
    (void)state;
    static const struct {
        const char *at, *reply;
    } cases[] = {
        {"DATA", "250 2.0.0 whatever\r\n"},
        {"DATA", "221 2.0.0 bye\r\n"},
        {"MAIL", "354 go on\r\n"},
        {"RCPT", "334 what\r\n"},
        {".", "354 again\r\n"},
    };
    smtp_opts_t o = s_opts();
    int bad = 0; /* every case is tried, each wrong one shown */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        smtp_fake_t fk = {
            .mode = SMTP_FAKE_REPLY, .odd_at = cases[i].at, .odd_reply = cases[i].reply};
        s_fake_start(&fk);
        smtp_result_t r;
        int code = s_one_message(fk.port, &o, S_MSG, &r);
        if (code != 0 || !strstr(r.text, "unexpected reply")) {
            print_message("%s answered %.*s: result %d %s\n", cases[i].at,
                          (int)strcspn(cases[i].reply, "\r"), cases[i].reply, code, r.text);
            bad++;
        }
        smtp_result_clear(&r);
        smtp_fake_stop(&fk);
        assert_int_equal(fk.messages, 0);
    }
    assert_int_equal(bad, 0);
}

/* With PIPELINING a server that refuses MAIL (or the only RCPT) and hangs
 * up has still answered: the refusal stands, it is not a connection
 * failure to retry until the message expires. */
static void test_fake_refusal_then_hangup(void **state)
{
    (void)state;
    static const struct {
        const char *at, *reply;
        size_t nrcpt;
        int code;
        const char *why; /* the server's reason, kept in the result */
    } cases[] = {
        {"MAIL", "554 5.7.1 sender blocked\r\n", 1, 554, "sender blocked"},
        {"RCPT", "550 5.1.1 no such user\r\n", 1, 550, "no such user"},
        /* the second recipient was never answered: defer */
        {"RCPT", "550 5.1.1 no such user\r\n", 2, 0, ""},
    };
    const char *rcpts[] = {"one@example.test", "two@example.test"};
    smtp_opts_t o = s_opts();
    int bad = 0; /* every case is tried, each wrong one shown */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        smtp_fake_t fk = {.mode = SMTP_FAKE_REPLY,
                          .odd_at = cases[i].at,
                          .odd_reply = cases[i].reply,
                          .odd_close = 1};
        s_fake_start(&fk);
        smtp_conn_t *c = s_connect(fk.port, &o);
        assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
        smtp_result_t r;
        int code = s_send(c, rcpts, cases[i].nrcpt, S_MSG, 0, &r);
        int ok = code == cases[i].code && strstr(r.text, cases[i].why);
        if (!ok) {
            print_message("%s refused, %zu rcpt: result %d %s\n", cases[i].at, cases[i].nrcpt, code,
                          r.text);
            bad++;
        }
        smtp_result_clear(&r);
        smtp_conn_destroy(&c);
        smtp_fake_stop(&fk);
    }
    assert_int_equal(bad, 0);
}

/* A message too big for the socket buffers, so the client is still
 * writing it when something happens. */
static sbuf_t *s_big_message(int lines)
{
    sbuf_t *msg = sbuf_new(0);
    assert_non_null(msg);
    sbuf_append_str(msg, "Subject: big\r\n\r\n");
    for (int i = 0; i < lines; i++)
        sbuf_append_str(msg, "a line of the message body to fill the socket buffers\r\n");
    return msg;
}

/* A server that answers 354, never reads the body and floods: what the
 * client keeps of it is bounded, the connection fails (code 0) well
 * before the 64 MiB the server would send. */
static void test_fake_flood_after_354(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.mode = SMTP_FAKE_FLOOD_BODY};
    s_fake_start(&fk);
    sbuf_t *msg = s_big_message(300000); /* 16 MB */
    smtp_result_t r;
    assert_int_equal(s_one_message(fk.port, &o, sbuf_data(msg), &r), 0);
    if (!strstr(r.text, "more than"))
        print_message("result: %s\n", r.text);
    assert_non_null(strstr(r.text, "more than"));
    smtp_result_clear(&r);
    sbuf_destroy(&msg);
    smtp_fake_stop(&fk);
    assert_true(fk.flooded < 64LL << 20); /* the client hung up on it */
}

/* 552 in the middle of the body, then a reset: the reply was there before
 * the write failed, so it is the answer (a bounce, not a retry). */
static void test_fake_early_552(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.mode = SMTP_FAKE_EARLY_552};
    s_fake_start(&fk);
    sbuf_t *msg = s_big_message(300000); /* 16 MB */
    smtp_result_t r;
    int code = s_one_message(fk.port, &o, sbuf_data(msg), &r);
    if (code != 552)
        print_message("result: %d %s\n", code, r.text);
    assert_int_equal(code, 552);
    assert_string_equal(r.enhanced, "5.3.4");
    smtp_result_clear(&r);
    sbuf_destroy(&msg);
    smtp_fake_stop(&fk);
    assert_int_equal(fk.messages, 0);
}

/* A 220 read with the EHLO reply answers a STARTTLS still unsent: a
 * protocol error at once, not a handshake started with the command
 * pending (that spun at full CPU until the command timeout). */
static void test_fake_early_220(void **state)
{
    (void)state;
    smtp_opts_t o = s_opts();
    smtp_fake_t fk = {.mode = SMTP_FAKE_EARLY_220};
    s_fake_start(&fk);
    int64_t t0 = harness_now_ms();
    smtp_conn_t *c = s_connect(fk.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    const char *why = smtp_conn_error(c);
    if (!strstr(why, "before"))
        print_message("error: %s\n", why);
    assert_non_null(strstr(why, "before"));
    assert_true(harness_now_ms() - t0 < 1500);
    smtp_conn_destroy(&c);
    smtp_fake_stop(&fk);
}

static void test_fake_starttls_auth(void **state)
{
    (void)state;
    /* opportunistic: upgrades, says EHLO again, authenticates, delivers */
    smtp_fake_t fk = {.offer_tls = 1, .user = "relayuser", .pass = "s3cret"};
    s_fake_start(&fk);
    smtp_opts_t o = s_opts();
    o.auth_user = "relayuser";
    o.auth_pass = "s3cret";
    smtp_conn_t *c = s_connect(fk.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    assert_int_equal(smtp_conn_tls_active(c), 1);
    smtp_result_t r;
    assert_int_equal(s_send(c, S_ONE, 1, S_MSG, 0, &r), 250);
    smtp_result_clear(&r);
    smtp_conn_quit(c);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    smtp_conn_destroy(&c);
    assert_int_equal(smtp_fake_get(&fk, &fk.tls_ok), 1);
    assert_int_equal(smtp_fake_get(&fk, &fk.ehlo_tls), 1);
    s_fake_saw(&fk, &fk.auth, ":relayuser:s3cret", 1);
    assert_int_equal(smtp_fake_get(&fk, &fk.auth_ok), 1);
    assert_int_equal(smtp_fake_get(&fk, &fk.messages), 1);
    smtp_fake_stop(&fk);

    /* verified mode: the self-signed certificate is not trusted */
    smtp_fake_t fv = {.offer_tls = 1};
    s_fake_start(&fv);
    o = s_opts();
    o.tls_verify = 1;
    o.tls_name = "mx.test";
    c = s_connect(fv.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(strstr(smtp_conn_error(c), "verif"));
    smtp_conn_destroy(&c);
    smtp_fake_stop(&fv);

    /* verified mode with it as trust anchor: passes for its name only */
    const char *names[] = {"mx.test", "other.test"};
    for (int i = 0; i < 2; i++) {
        smtp_fake_t ft = {.offer_tls = 1};
        s_fake_start(&ft);
        o.tls_ca_file = s_cert;
        o.tls_name = names[i];
        c = s_connect(ft.port, &o);
        assert_int_equal(s_drive(c), i == 0 ? SMTP_STEP_IDLE : SMTP_STEP_CLOSED);
        if (i == 0)
            smtp_conn_quit(c);
        s_drive(c);
        smtp_conn_destroy(&c);
        smtp_fake_stop(&ft);
    }

    /* AUTH LOGIN when PLAIN is not wanted: only over TLS, or allowed plain */
    smtp_fake_t fp = {.user = "u", .pass = "p"};
    s_fake_start(&fp);
    o = s_opts();
    o.auth_user = "u";
    o.auth_pass = "p";
    c = s_connect(fp.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    assert_non_null(strstr(smtp_conn_error(c), "without TLS"));
    smtp_conn_destroy(&c);
    smtp_fake_stop(&fp);
    assert_int_equal(fp.auth_tries, 0); /* nothing sent in the clear */
}

static void test_fake_auth_login_plaintext(void **state)
{
    (void)state;
    smtp_fake_t fk = {.ehlo_auth = "250-AUTH=LOGIN\r\n", .user = "luser", .pass = "lpass"};
    s_fake_start(&fk);
    smtp_opts_t o = s_opts();
    o.auth_user = "luser";
    o.auth_pass = "lpass";
    o.auth_plaintext = 1;
    smtp_conn_t *c = s_connect(fk.port, &o);
    assert_int_equal(s_drive(c), SMTP_STEP_IDLE);
    smtp_conn_quit(c);
    assert_int_equal(s_drive(c), SMTP_STEP_CLOSED);
    smtp_conn_destroy(&c);
    /* only LOGIN offered (old "AUTH=" form): the prompts were answered */
    s_fake_saw(&fk, &fk.auth, "login:luser:lpass", 1);
    assert_int_equal(smtp_fake_get(&fk, &fk.auth_ok), 1);
    smtp_fake_stop(&fk);
}

static int s_setup(void **state)
{
    (void)state;
    if (!mkdtemp(s_tmp))
        return -1;
    chmod(s_tmp, 0777);
    snprintf(s_cert, sizeof s_cert, "%s/cert.pem", s_tmp);
    snprintf(s_key, sizeof s_key, "%s/key.pem", s_tmp);
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-subj /CN=mx.test -addext subjectAltName=DNS:mx.test -days 2 "
             "-keyout %s -out %s 2>/dev/null",
             s_key, s_cert);
    return system(cmd) == 0 ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_one_message_exact),
        cmocka_unit_test(test_ten_pipelined),
        cmocka_unit_test(test_ten_lockstep),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_disconnects),
        cmocka_unit_test(test_tls_required_not_offered),
        cmocka_unit_test(test_fake_garbage_and_long_lines),
        cmocka_unit_test(test_fake_drop_mid_data),
        cmocka_unit_test(test_fake_local_refusals),
        cmocka_unit_test(test_fake_header_smtputf8),
        cmocka_unit_test(test_fake_odd_replies),
        cmocka_unit_test(test_fake_refusal_then_hangup),
        cmocka_unit_test(test_fake_flood_after_354),
        cmocka_unit_test(test_fake_early_552),
        cmocka_unit_test(test_fake_early_220),
        cmocka_unit_test(test_fake_starttls_auth),
        cmocka_unit_test(test_fake_auth_login_plaintext),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
