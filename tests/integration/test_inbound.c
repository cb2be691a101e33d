/*
 * test_inbound - asynchronous bounces and complaints end to end: a message
 * is sent through the API to a real SMTP server (smtp-sink), then a DSN or
 * an ARF report for its VERP return path is delivered to the worker's
 * return-path listener by an independent SMTP client (python3 smtplib), and
 * the message, its contact, the suppressions and message_events show it.
 * Hostile sessions over a raw socket (garbage, non-VERP recipients,
 * oversized DATA, over-long lines, a client gone mid-DATA, a silent one)
 * get SMTP errors, and the listener keeps serving a good session after them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "delivery_util.h"
#include "inbound.h"
#include "secretbox.h"
#include "verp.h"

#define TEST_SECRET_KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define FIXTURES POSTCHI_SOURCE_DIR "/tests/fixtures/inbound/"

static api_env_t E;
static harness_proc_t *s_sink;
static int s_inbound_port;

static int s_setup(void **state)
{
    (void)state;
    int sink_port = harness_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", sink_port);
    char *argv[] = {"/usr/sbin/smtp-sink", "-u", "nobody", listen, "100", NULL};
    s_sink = harness_spawn("smtp-sink", argv, NULL);
    if (!s_sink)
        return -1;
    usleep(300 * 1000);
    s_inbound_port = harness_free_port();
    static char relay[64], port[16];
    snprintf(relay, sizeof relay, "127.0.0.1:%d", sink_port);
    snprintf(port, sizeof port, "%d", s_inbound_port);
    /* Workers inherit these (the harness passes the environment on). */
    setenv("POSTCHI_SMTP_RELAY", relay, 1);
    setenv("POSTCHI_SECRET_KEY", TEST_SECRET_KEY, 1);
    setenv("POSTCHI_INBOUND_PORT", port, 1);
    return api_env_start(&E, NULL);
}

static int s_teardown(void **state)
{
    (void)state;
    int bad = api_env_stop(&E);
    if (s_sink)
        harness_stop(s_sink, SIGTERM, 5000);
    return bad;
}

static char *s_sqlf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *s_sqlf(const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return api_sql(&E, sql);
}

/* Assert the first column of the query equals want (NULL: no row/NULL). */
#define ASSERT_SQL(want, ...)                                                                      \
    do {                                                                                           \
        char *v_ = s_sqlf(__VA_ARGS__);                                                            \
        if ((want) == NULL)                                                                        \
            assert_null(v_);                                                                       \
        else {                                                                                     \
            assert_non_null(v_);                                                                   \
            assert_string_equal(v_, (want));                                                       \
        }                                                                                          \
        free(v_);                                                                                  \
    } while (0)

static char *s_wait_sql(const char *want, int ms, const char *sql)
{
    int64_t deadline = harness_now_ms() + ms;
    char *v = NULL;
    while (harness_now_ms() < deadline) {
        free(v);
        v = api_sql(&E, sql);
        if (v && strcmp(v, want) == 0)
            break;
        usleep(100 * 1000);
    }
    return v;
}

static void s_domain_once(void)
{
    static int done;
    if (done)
        return;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/domains", E.key_full, "{\"name\":\"send.example\"}", NULL, &r);
    assert_int_equal(r.status, 201);
    api_resp_free(&r);
    free(api_sql(&E, "UPDATE domains SET status = 'verified' WHERE name = 'send.example'"));
    char *rp = api_sql(&E, "SELECT return_path FROM domains WHERE name = 'send.example'");
    assert_non_null(rp);
    assert_string_equal(rp, "bounces.send.example");
    free(rp);
    done = 1;
}

/* The VERP token the workers make for row id (under TEST_SECRET_KEY) into
 * token[64]. */
static void s_token(const char *id, char *token)
{
    unsigned char key[SECRETBOX_KEY_LEN];
    assert_int_equal(secretbox_key_parse(TEST_SECRET_KEY, key), 0);
    assert_int_equal(verp_token_make(key, id, token, 64), 0);
}

/* Make a contact, send it a message and wait for 'sent'; the message id
 * into id[64] and its VERP token into token[64]. */
static void s_sent_message(const char *to, char *id, char *token)
{
    s_domain_once();
    free(s_sqlf("INSERT INTO contacts (organization_id, email) VALUES ('%s', '%s')", E.org_id, to));
    api_resp_t r;
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{\"from\":{\"email\":\"hello@send.example\"},\"to\":[\"%s\"],"
              "\"subject\":\"Hi\",\"text\":\"Hello there\"}",
              to);
    assert_int_equal(r.status, 202);
    const char *mid = json_string_value(
        json_object_get(json_array_get(json_object_get(r.json, "messages"), 0), "id"));
    assert_non_null(mid);
    snprintf(id, 64, "%s", mid);
    api_resp_free(&r);
    s_token(id, token);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT status FROM messages WHERE id = '%s'", id);
    char *st = s_wait_sql("sent", 15000, sql);
    assert_non_null(st);
    assert_string_equal(st, "sent");
    free(st);
}

/* A fixture with every (from, to) pair replaced, written to a temp file;
 * the path into path[64]. */
static void s_fixture(const char *name, const char *const *pairs, char *path)
{
    char src[512];
    snprintf(src, sizeof src, FIXTURES "%s", name);
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    sbuf_t *b = sbuf_new(8192);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sbuf_append(b, chunk, n);
    fclose(f);
    for (int i = 0; pairs[i]; i += 2) {
        sbuf_t *o = sbuf_new(sbuf_len(b) + 256);
        const char *p = sbuf_data(b), *q;
        while ((q = strstr(p, pairs[i])) != NULL) {
            sbuf_append(o, p, (size_t)(q - p));
            sbuf_append_str(o, pairs[i + 1]);
            p = q + strlen(pairs[i]);
        }
        sbuf_append_str(o, p);
        sbuf_destroy(&b);
        b = o;
    }
    snprintf(path, 64, "/tmp/postchi-inbound-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, sbuf_data(b), sbuf_len(b)), (ssize_t)sbuf_len(b));
    close(fd);
    sbuf_destroy(&b);
}

static void test_hard_bounce(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("ada@dest.example", id, token);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           "ada@dest.example", NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    /* 250 came after the commit: no waiting needed. */
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("bounced",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = 'ada@dest.example'",
               E.org_id);
    ASSERT_SQL("bounce",
               "SELECT reason FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'ada@dest.example'",
               E.org_id);
    ASSERT_SQL("5.1.1|true",
               "SELECT (detail->>'status') || '|' || (detail->>'async')"
               " FROM message_events WHERE message_id = '%s' AND type = 'bounced'",
               id);
    char *diag = s_sqlf("SELECT detail->>'diagnostic' FROM message_events"
                        " WHERE message_id = '%s' AND type = 'bounced'",
                        id);
    assert_non_null(diag);
    assert_non_null(strstr(diag, "User unknown"));
    free(diag);

    /* The MTA retries (or sends it twice): nothing doubles. */
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    ASSERT_SQL("1",
               "SELECT count(*) FROM message_events WHERE message_id = '%s'"
               " AND type = 'bounced'",
               id);
    ASSERT_SQL("1", "SELECT count(*) FROM suppressions WHERE organization_id = '%s'", E.org_id);
    unlink(file);

    sbuf_t *m = sbuf_new(8192);
    assert_int_equal(harness_http_get(E.mesh.worker_metrics[0], "/metrics", m), 200);
    assert_non_null(strstr(sbuf_data(m), "postchi_inbound_reports_total{kind=\"dsn_hard\"} 2"));
    sbuf_destroy(&m);
}

static void test_delayed(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("slow@dest.example", id, token);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+d4lay3d@mail.postchi.test", rcpt, NULL};
    s_fixture("postfix_delayed_441.eml", pairs, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("sent", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("4.4.1|true",
               "SELECT (detail->>'status') || '|' || (detail->>'async')"
               " FROM message_events WHERE message_id = '%s' AND type = 'deferred'",
               id);
    ASSERT_SQL("subscribed",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = 'slow@dest.example'",
               E.org_id);
    ASSERT_SQL(NULL,
               "SELECT reason FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'slow@dest.example'",
               E.org_id);
}

static void test_complaint(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("bob@dest.example", id, token);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+arf-0042@mail.postchi.test", rcpt, "user@example.com",
                           "bob@dest.example", NULL};
    s_fixture("arf_abuse.eml", pairs, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    /* a repeat adds nothing */
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("sent", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("complained",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = 'bob@dest.example'",
               E.org_id);
    ASSERT_SQL("complaint",
               "SELECT reason FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'bob@dest.example'",
               E.org_id);
    ASSERT_SQL("1|abuse|true",
               "SELECT count(*) || '|' || min(detail->>'feedback_type') || '|' ||"
               " bool_and((detail->>'async')::boolean)"
               " FROM message_events WHERE message_id = '%s' AND type = 'complaint'",
               id);
}

/* A token that is ours but names no message, and a report for one
 * organization's message must not touch another organization's contact
 * with the same address. */
static void test_unknown_and_tenancy(void **state)
{
    (void)state;
    const char *other = "carol@dest.example";
    char tok2[2048], key2[160];
    assert_int_equal(api_env_other_org(&E, tok2, key2), 0);
    char *org2 = s_sqlf("SELECT id FROM organizations WHERE id <> '%s' LIMIT 1", E.org_id);
    assert_non_null(org2);
    free(s_sqlf("INSERT INTO contacts (organization_id, email) VALUES ('%s', '%s')", org2, other));

    char rcpt[160], file[64], nobody[64];
    s_token("01234567-89ab-cdef-0123-456789abcdef", nobody);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", nobody);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           other, NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
    /* accepted and dropped */
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("subscribed",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = '%s'",
               org2, other);

    /* A real message of org 1, but the report names org 2's contact. */
    char id[64], token[64];
    s_sent_message("dave@dest.example", id, token);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs2[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                            other, NULL};
    s_fixture("postfix_hard_511.eml", pairs2, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("bounced",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = 'dave@dest.example'",
               E.org_id);
    ASSERT_SQL("subscribed",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = '%s'",
               org2, other);
    ASSERT_SQL("0", "SELECT count(*) FROM suppressions WHERE organization_id = '%s'", org2);
    free(org2);
}

/* The unknown-report counter on the worker's /metrics. */
static long s_unknown_count(void)
{
    sbuf_t *m = sbuf_new(8192);
    assert_int_equal(harness_http_get(E.mesh.worker_metrics[0], "/metrics", m), 200);
    const char *k = "postchi_inbound_reports_total{kind=\"unknown\"} ";
    const char *p = strstr(sbuf_data(m), k);
    long n = p ? strtol(p + strlen(k), NULL, 10) : -1;
    sbuf_destroy(&m);
    return n;
}

/* Send the hard bounce (arf 0) or the complaint (arf 1) fixture for
 * recipient addr to the VERP address rcpt: the SMTP code of the reply. */
static int s_report(int arf, const char *rcpt, const char *addr)
{
    char file[64];
    const char *hard[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org", addr,
                          NULL};
    const char *abuse[] = {"bounces+arf-0042@mail.postchi.test", rcpt, "user@example.com", addr,
                           NULL};
    s_fixture(arf ? "arf_abuse.eml" : "postfix_hard_511.eml", arf ? abuse : hard, file);
    int code = dl_smtp_deliver(s_inbound_port, "", rcpt, file);
    unlink(file);
    return code;
}

/* src with a-f in upper case, into dst (as large as src). */
static void s_upper_hex(char *dst, const char *src)
{
    do
        *dst++ = (char)(*src >= 'a' && *src <= 'f' ? *src - 'a' + 'A' : *src);
    while (*src++);
}

/* Forged return paths: a hard bounce and a complaint for a real message,
 * sent to tokens we did not make - the bare row id (the format before
 * tokens carried a MAC), the same in upper case, the right row with a
 * MAC made under another key, the right token with one digit changed - are
 * refused at RCPT (550: unauthenticated mail never reaches the parser; the
 * answer tells a prober nothing it could use, an 80-bit MAC is not
 * guessable) and change nothing: no bounce, no complaint, no suppression. */
static void test_forged_tokens(void **state)
{
    (void)state;
    const char *addr = "frank@dest.example";
    char id[64], token[64];
    s_sent_message(addr, id, token);
    char raw[40], upper[40], other[64], flipped[64];
    size_t t = 0;
    for (const char *p = id; *p; p++)
        if (*p != '-')
            raw[t++] = *p;
    raw[t] = '\0';
    s_upper_hex(upper, raw);
    unsigned char key2[SECRETBOX_KEY_LEN];
    memset(key2, 0x5a, sizeof key2);
    assert_int_equal(verp_token_make(key2, id, other, sizeof other), 0);
    snprintf(flipped, sizeof flipped, "%s", token);
    flipped[VERP_TOKEN_LEN - 1] = flipped[VERP_TOKEN_LEN - 1] == '0' ? '1' : '0';
    const char *forged[] = {raw, upper, other, flipped};
    long before = s_unknown_count();
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        char rcpt[160];
        snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", forged[i]);
        assert_int_equal(s_report(0, rcpt, addr), 550);
        assert_int_equal(s_report(1, rcpt, addr), 550);
    }
    /* Never parsed, so not even counted as an unknown report. */
    assert_int_equal(s_unknown_count(), before);
    ASSERT_SQL("sent", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("0",
               "SELECT count(*) FROM message_events WHERE message_id = '%s'"
               " AND type IN ('bounced', 'complaint', 'deferred')",
               id);
    ASSERT_SQL("subscribed",
               "SELECT status FROM contacts WHERE organization_id = '%s' AND email = '%s'",
               E.org_id, addr);
    ASSERT_SQL("0",
               "SELECT count(*) FROM suppressions WHERE organization_id = '%s' AND email = '%s'",
               E.org_id, addr);

    /* The genuine token, in upper case as some MTAs write it, still works. */
    char rcpt[160], up[64];
    s_upper_hex(up, token);
    snprintf(rcpt, sizeof rcpt, "BOUNCES+%s@bounces.send.example", up);
    assert_int_equal(s_report(0, rcpt, addr), 250);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("bounce",
               "SELECT reason FROM suppressions WHERE organization_id = '%s' AND email = '%s'",
               E.org_id, addr);
}

/* Queue expiry: "Action: failed" with a 4.x.x status (Postfix after
 * maximal_queue_lifetime, Exchange's 4.4.7) is a final failure. The message
 * is bounced with its event, but the address is not suppressed nor the
 * contact marked: the reason was temporary. */
static void test_soft_failure(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("expired@dest.example", id, token);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           "expired@dest.example", "Status: 5.1.1", "Status: 4.4.7", NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    /* A retry adds nothing. */
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("1|4.4.7|true|true",
               "SELECT count(*) || '|' || min(detail->>'status') || '|' ||"
               " bool_and((detail->>'async')::boolean) || '|' ||"
               " bool_and((detail->>'soft')::boolean)"
               " FROM message_events WHERE message_id = '%s' AND type = 'bounced'",
               id);
    ASSERT_SQL("subscribed",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = 'expired@dest.example'",
               E.org_id);
    ASSERT_SQL("0",
               "SELECT count(*) FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'expired@dest.example'",
               E.org_id);
}

/* Feedback loops deliver to one address the sender registered, not to each
 * message's return path: an ARF report to fbl@<return path domain> whose
 * Original-Mail-From holds a forged token but whose attached original's
 * Return-Path holds a genuine one is applied by the first that verifies. A
 * report whose candidates all fail changes nothing. */
static void test_fbl_complaint(void **state)
{
    (void)state;
    const char *addr = "gina@dest.example";
    char id[64], token[64], rp[200], file[64], forged[160];
    s_sent_message(addr, id, token);
    snprintf(forged, sizeof forged, "bounces+%s@bounces.send.example", "f0rged");
    snprintf(rp, sizeof rp, "Return-Path: <bounces+%s@bounces.send.example>\nFrom: <somespammer",
             token);
    const char *bad[] = {"bounces+arf-0042@mail.postchi.test", forged, "user@example.com", addr,
                         NULL};
    s_fixture("arf_abuse.eml", bad, file);
    long before = s_unknown_count();
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", "fbl@bounces.send.example", file), 250);
    unlink(file);
    assert_int_equal(s_unknown_count(), before + 1);
    ASSERT_SQL("subscribed",
               "SELECT status FROM contacts WHERE organization_id = '%s' AND email = '%s'",
               E.org_id, addr);

    const char *good[] = {"bounces+arf-0042@mail.postchi.test", forged, "user@example.com", addr,
                          "From: <somespammer", rp, NULL};
    s_fixture("arf_abuse.eml", good, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", "fbl@bounces.send.example", file), 250);
    unlink(file);
    ASSERT_SQL("complained",
               "SELECT status FROM contacts WHERE organization_id = '%s' AND email = '%s'",
               E.org_id, addr);
    ASSERT_SQL("complaint",
               "SELECT reason FROM suppressions WHERE organization_id = '%s' AND email = '%s'",
               E.org_id, addr);
    ASSERT_SQL("1",
               "SELECT count(*) FROM message_events WHERE message_id = '%s' AND type = 'complaint'",
               id);
}

/* PostgreSQL drops the listener's connection: the report gets 451 (the
 * MTA keeps it), and the retry is recorded. Nothing is lost. */
static void test_database_lost_then_retry(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("erin@dest.example", id, token);
    free(api_sql(&E, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()"));
    usleep(500 * 1000);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           "erin@dest.example", NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 451);
    ASSERT_SQL("sent", "SELECT status FROM messages WHERE id = '%s'", id);
    int code = -1;
    int64_t deadline = harness_now_ms() + 10000;
    while (code != 250 && harness_now_ms() < deadline) {
        usleep(300 * 1000); /* the listener waits a second between connects */
        code = dl_smtp_deliver(s_inbound_port, "", rcpt, file);
    }
    assert_int_equal(code, 250);
    unlink(file);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("bounce",
               "SELECT reason FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'erin@dest.example'",
               E.org_id);
}

/* The 250 for a message was lost (a timeout after the final dot) and it
 * aged out to 'failed' before the remote's hard DSN came: the address is
 * still suppressed, the contact bounced, and the row says 'bounced'. The
 * DSN changed nothing before, since the row was not 'sent' any more. */
static void test_hard_bounce_after_failed(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("late@dest.example", id, token);
    free(s_sqlf("UPDATE messages SET status = 'failed' WHERE id = '%s'", id));
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           "late@dest.example", NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("bounce",
               "SELECT reason FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'late@dest.example'",
               E.org_id);
    ASSERT_SQL("bounced",
               "SELECT status FROM contacts WHERE organization_id = '%s'"
               " AND email = 'late@dest.example'",
               E.org_id);
}

/* The same delayed DSN three times (an MTA retrying, or a replay): one
 * note on the message, not three. */
static void test_delayed_replayed_once(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("again@dest.example", id, token);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+d4lay3d@mail.postchi.test", rcpt, NULL};
    s_fixture("postfix_delayed_441.eml", pairs, file);
    for (int i = 0; i < 3; i++)
        assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("1",
               "SELECT count(*) FROM message_events WHERE message_id = '%s'"
               " AND type = 'deferred'",
               id);
}

/* The message row is locked elsewhere (a long transaction): the report
 * gets a 451 within the listener's lock timeout, so the MTA retries,
 * instead of the listener's one thread waiting for the lock. */
static void test_locked_row_is_a_quick_451(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64], conninfo[256];
    s_sent_message("locked@dest.example", id, token);
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s user=%s dbname=%s",
             harness_server("PG_HOST"), harness_server("PG_PORT"), harness_server("PG_USER"),
             E.db);
    sbuf_t *err = sbuf_new(64);
    db_t *db = db_connect(conninfo, 0, err);
    assert_non_null(db);
    char lock[160];
    snprintf(lock, sizeof lock, "SELECT 1 FROM messages WHERE id = '%s' FOR UPDATE", id);
    assert_int_equal(db_exec(db, "BEGIN", 0, NULL, err), 0);
    assert_int_equal(db_exec(db, lock, 0, NULL, err), 0);
    snprintf(rcpt, sizeof rcpt, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           "locked@dest.example", NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
    int64_t t0 = harness_now_ms();
    int code = dl_smtp_deliver(s_inbound_port, "", rcpt, file);
    int64_t took = harness_now_ms() - t0;
    /* Let go only now: before, the listener waited for exactly this. */
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    db_destroy(&db);
    sbuf_destroy(&err);
    assert_int_equal(code, 451);
    if (took > 4000)
        fail_msg("the 451 took %lld ms", (long long)took);
    /* Retried once the lock is gone: recorded. */
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    unlink(file);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
}

/* --- raw SMTP sessions --------------------------------------------------- */

typedef struct {
    int fd;          /* socket */
    char buf[65536]; /* bytes read, not yet consumed */
    size_t len;      /* how many */
} conn_t;

/* Connect to the listener from the loopback address src (any 127/8
 * address is ours on Linux; NULL: the kernel's choice, 127.0.0.1), so tests
 * can be several clients. */
static void s_conn_from(conn_t *c, const char *src)
{
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        assert_int_equal(inet_pton(AF_INET, src, &b.sin_addr), 1);
        assert_int_equal(bind(c->fd, (struct sockaddr *)&b, sizeof b), 0);
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s_inbound_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
}

static void s_conn(conn_t *c)
{
    s_conn_from(c, NULL);
}

/* "RCPT TO:<bounces+<token>@<domain>>\r\n" for a token we made for a row
 * that need not exist (the n-th of a few fixed uuids), into line[256]. */
static void s_rcpt_line(char *line, int n, const char *domain)
{
    char id[64], token[64];
    snprintf(id, sizeof id, "01234567-89ab-cdef-0123-%012d", n);
    s_token(id, token);
    snprintf(line, 256, "RCPT TO:<bounces+%s@%s>\r\n", token, domain);
}

static void s_put(conn_t *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

static void s_puts(conn_t *c, const char *s)
{
    s_put(c, s, strlen(s));
}

/* The code of the next complete reply (its last line), or -1 on EOF or
 * after 10 s. */
static int s_reply(conn_t *c)
{
    int64_t deadline = harness_now_ms() + 10000;
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len)) != NULL) {
            size_t n = (size_t)(nl - c->buf) + 1;
            int last = n >= 4 && c->buf[3] == ' ';
            int code = atoi(c->buf);
            memmove(c->buf, c->buf + n, c->len - n);
            c->len -= n;
            if (last)
                return code;
        }
        int left = (int)(deadline - harness_now_ms());
        struct pollfd p = {c->fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n <= 0)
            return -1;
        c->len += (size_t)n;
    }
}

static int s_cmd(conn_t *c, const char *line)
{
    s_puts(c, line);
    return s_reply(c);
}

static void test_hostile_sessions(void **state)
{
    (void)state;
    conn_t *c = calloc(1, sizeof *c), *idle = calloc(1, sizeof *idle),
           *mid = calloc(1, sizeof *mid);
    assert_non_null(c);

    /* A client that connects and says nothing holds one slot, no more. */
    s_conn(idle);

    /* Garbage and protocol errors. */
    s_conn(c);
    assert_int_equal(s_reply(c), 220);
    s_put(c, "\x01\xff\x00zz\r\n", 7);
    assert_int_equal(s_reply(c), 500);
    assert_int_equal(s_cmd(c, "MAIL FROM:<>\r\n"), 503);
    assert_int_equal(s_cmd(c, "EHLO\r\n"), 501);
    assert_int_equal(s_cmd(c, "EHLO tester\r\n"), 250);
    assert_int_equal(s_cmd(c, "VRFY root\r\n"), 502);
    assert_int_equal(s_cmd(c, "RCPT TO:<bounces+abc@x.example>\r\n"), 503);
    assert_int_equal(s_cmd(c, "MAIL FROM:<> SIZE=99999999999\r\n"), 552);
    assert_int_equal(s_cmd(c, "MAIL FROM:<>\r\n"), 250);
    assert_int_equal(s_cmd(c, "RCPT TO:<postmaster@x.example>\r\n"), 550);
    assert_int_equal(s_cmd(c, "RCPT TO:<bounces@x.example>\r\n"), 550);
    assert_int_equal(s_cmd(c, "RCPT TO:<bounces+bad token@x.example>\r\n"), 550);
    assert_int_equal(s_cmd(c, "RCPT TO:bounces+abc@x.example\r\n"), 501);
    /* Our shape, but not a token we made: never reaches the parser. */
    assert_int_equal(s_cmd(c, "RCPT TO:<BOUNCES+abc@X.Example>\r\n"), 550);
    assert_int_equal(s_cmd(c, "RCPT TO:<bounces+0123456789abcdef0123456789abcdef@b.example>\r\n"),
                     550);
    char good[256];
    s_rcpt_line(good, 1, "X.Example");
    for (char *u = good + 17; *u != '@'; u++) /* a token in upper case is still ours */
        if (*u >= 'a' && *u <= 'f')
            *u = (char)(*u - 'a' + 'A');
    assert_int_equal(s_cmd(c, good), 250);
    /* An over-long command line, in pieces. */
    char big[3000];
    memset(big, 'A', sizeof big);
    s_put(c, big, sizeof big);
    s_put(c, big, sizeof big);
    s_puts(c, "\r\n");
    assert_int_equal(s_reply(c), 500);
    /* Pipelined commands get their replies in order. */
    s_puts(c, "NOOP\r\nRSET\r\nNOOP\r\n");
    assert_int_equal(s_reply(c), 250);
    assert_int_equal(s_reply(c), 250);
    assert_int_equal(s_reply(c), 250);
    assert_int_equal(s_cmd(c, "DATA\r\n"), 503); /* RSET ended the transaction */
    assert_int_equal(s_cmd(c, "MAIL FROM:<>\r\n"), 250);
    assert_int_equal(s_cmd(c, "DATA\r\n"), 554); /* no recipients */
    assert_int_equal(s_cmd(c, good), 250);
    assert_int_equal(s_cmd(c, "DATA\r\n"), 354);
    /* Over 10 MB, in long and short lines: refused at the dot. */
    char *line = malloc(65536);
    memset(line, 'x', 65534);
    line[65534] = '\r';
    line[65535] = '\n';
    for (int i = 0; i < 170; i++)
        s_put(c, line, 65536);
    for (int i = 0; i < 100; i++)
        s_puts(c, "short line\r\n");
    free(line);
    assert_int_equal(s_cmd(c, ".\r\n"), 552);
    /* The session goes on after it. */
    assert_int_equal(s_cmd(c, "NOOP\r\n"), 250);
    assert_int_equal(s_cmd(c, "QUIT\r\n"), 221);
    assert_int_equal(s_reply(c), -1); /* closed */
    close(c->fd);

    /* A client that stops mid-DATA and goes away. */
    s_conn(mid);
    assert_int_equal(s_reply(mid), 220);
    s_puts(mid, "HELO x\r\nMAIL FROM:<>\r\n");
    s_puts(mid, good);
    s_puts(mid, "DATA\r\n");
    assert_int_equal(s_reply(mid), 250);
    assert_int_equal(s_reply(mid), 250);
    assert_int_equal(s_reply(mid), 250);
    assert_int_equal(s_reply(mid), 354);
    s_puts(mid, "Subject: half\r\n\r\nsome text without an end");
    close(mid->fd);

    /* Too many errors: the server hangs up. */
    s_conn(c);
    assert_int_equal(s_reply(c), 220);
    int code = 0, i;
    for (i = 0; i < 100 && code != 421 && code != -1; i++)
        code = s_cmd(c, "WHAT\r\n");
    assert_int_equal(code, 421);
    assert_true(i <= 25);
    close(c->fd);

    /* And a good session still works: a dot-stuffed message that is not
     * a report is accepted (and dropped). */
    s_conn(c);
    assert_int_equal(s_reply(c), 220);
    assert_int_equal(s_cmd(c, "EHLO good.example\r\n"), 250);
    assert_int_equal(s_cmd(c, "MAIL FROM:<> BODY=8BITMIME SIZE=100\r\n"), 250);
    s_rcpt_line(good, 2, "b.example");
    assert_int_equal(s_cmd(c, good), 250);
    assert_int_equal(s_cmd(c, "DATA\r\n"), 354);
    assert_int_equal(s_cmd(c, "From: a@b.example\r\nSubject: hi\r\n\r\n..dot\r\n.\r\n"), 250);
    assert_int_equal(s_cmd(c, "QUIT\r\n"), 221);
    close(c->fd);

    /* The sessions above are closed; only the idle one is left open. */
    sbuf_t *m = sbuf_new(8192);
    int64_t deadline = harness_now_ms() + 5000;
    const char *want = "postchi_inbound_connections_open 1\n";
    while (harness_now_ms() < deadline) {
        sbuf_reset(m);
        assert_int_equal(harness_http_get(E.mesh.worker_metrics[0], "/metrics", m), 200);
        if (strstr(sbuf_data(m), want))
            break;
        usleep(100 * 1000);
    }
    assert_non_null(strstr(sbuf_data(m), want));
    sbuf_destroy(&m);
    close(idle->fd);
    free(c);
    free(idle);
    free(mid);
}

/* EHLO, MAIL FROM:<> and RCPT to the valid tokens 1..nrcpt on a fresh
 * session c, then DATA (354). */
static void s_open_tx(conn_t *c, const char *src, int nrcpt)
{
    s_conn_from(c, src);
    assert_int_equal(s_reply(c), 220);
    assert_int_equal(s_cmd(c, "EHLO attacker.example\r\n"), 250);
    assert_int_equal(s_cmd(c, "MAIL FROM:<>\r\n"), 250);
    for (int i = 1; i <= nrcpt; i++) {
        char rcpt[256];
        s_rcpt_line(rcpt, i, "bounces.send.example");
        assert_int_equal(s_cmd(c, rcpt), 250);
    }
    assert_int_equal(s_cmd(c, "DATA\r\n"), 354);
}

/* A good session already open, and one that connects, both answer at once
 * after the bomb. */
static void s_listener_answers(conn_t *open)
{
    int64_t t0 = harness_now_ms();
    assert_int_equal(s_cmd(open, "NOOP\r\n"), 250);
    conn_t *c = calloc(1, sizeof *c);
    s_conn(c);
    assert_int_equal(s_reply(c), 220);
    assert_int_equal(s_cmd(c, "QUIT\r\n"), 221);
    close(c->fd);
    free(c);
    assert_true(harness_now_ms() - t0 < 1000);
}

/* Parse amplification: a multipart/report of 300,000 empty parts (2 MB)
 * and one of 200,000 one-line headers, each to three genuine tokens, cost
 * GMime seconds and hundreds of MB per parse, once per recipient, on the
 * listener's only thread. Both are refused at the dot with a 5xx, at once,
 * and the listener goes on answering. */
static void test_parse_bomb(void **state)
{
    (void)state;
    conn_t *other = calloc(1, sizeof *other), *c = calloc(1, sizeof *c);
    s_conn(other);
    assert_int_equal(s_reply(other), 220);
    assert_int_equal(s_cmd(other, "EHLO legit.example\r\n"), 250);

    sbuf_t *m = sbuf_new(4 << 20);
    sbuf_append_str(m, "From: MAILER-DAEMON@x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report;"
                       " report-type=delivery-status; boundary=\"b\"\r\n\r\n");
    for (int i = 0; i < 300000; i++)
        sbuf_append_str(m, "--b\r\n\r\n");
    sbuf_append_str(m, "--b--\r\n.\r\n");
    s_open_tx(c, NULL, 3);
    s_put(c, sbuf_data(m), sbuf_len(m));
    int64_t t0 = harness_now_ms();
    int code = s_reply(c);
    int64_t took = harness_now_ms() - t0;
    print_message("parts bomb: %d after %lld ms\n", code, (long long)took);
    assert_int_equal(code / 100, 5);
    assert_true(took < 2000);
    s_listener_answers(other);
    close(c->fd);

    sbuf_reset(m);
    sbuf_append_str(m, "From: MAILER-DAEMON@x\r\n");
    for (int i = 0; i < 200000; i++)
        sbuf_append_str(m, "a:\r\n");
    sbuf_append_str(m, "\r\nbody\r\n.\r\n");
    s_open_tx(c, NULL, 3);
    s_put(c, sbuf_data(m), sbuf_len(m));
    t0 = harness_now_ms();
    code = s_reply(c);
    took = harness_now_ms() - t0;
    print_message("header bomb: %d after %lld ms\n", code, (long long)took);
    assert_int_equal(code / 100, 5);
    assert_true(took < 2000);
    s_listener_answers(other);
    close(c->fd);
    close(other->fd);
    sbuf_destroy(&m);
    free(c);
    free(other);
}

/* One client address gets INBOUND_MAX_PER_CLIENT sessions at once, then
 * 421; another address is still served. */
static void test_per_client_limit(void **state)
{
    (void)state;
    enum { N = 12 };
    conn_t *c = calloc(N + 1, sizeof *c);
    int ok = 0, busy = 0;
    for (int i = 0; i < N; i++) {
        s_conn_from(&c[i], "127.0.2.1");
        int code = s_reply(&c[i]);
        ok += code == 220;
        busy += code == 421;
    }
    print_message("from one address: %d served, %d refused\n", ok, busy);
    assert_int_equal(ok, INBOUND_MAX_PER_CLIENT);
    assert_int_equal(busy, N - INBOUND_MAX_PER_CLIENT);
    s_conn_from(&c[N], "127.0.2.2");
    assert_int_equal(s_reply(&c[N]), 220);
    for (int i = 0; i <= N; i++)
        close(c[i].fd);
    free(c);
}

/* Sessions that each hold most of a 10 MB message cannot together make
 * the listener buffer more than INBOUND_MAX_BUFFERED: those that go past
 * it get a temporary 452 at their dot, the others go through. */
static void test_buffer_budget(void **state)
{
    (void)state;
    enum { EACH = 9500 * 1000, N = INBOUND_MAX_BUFFERED / EACH + 2 };
    conn_t *c = calloc(N, sizeof *c);
    char *line = malloc(1000);
    memset(line, 'x', 998);
    line[998] = '\r', line[999] = '\n';
    for (int i = 0; i < N; i++) {
        char src[32];
        snprintf(src, sizeof src, "127.0.3.%d", i + 1);
        s_open_tx(&c[i], src, 1);
        s_puts(&c[i], "Subject: filler\r\n\r\n");
        for (int k = 0; k < EACH / 1000; k++)
            s_put(&c[i], line, 1000);
    }
    free(line);
    usleep(500 * 1000); /* let the listener read what the kernel holds */
    int ok = 0, full = 0;
    for (int i = 0; i < N; i++) {
        int code = s_cmd(&c[i], ".\r\n");
        print_message("session %d: %d\n", i, code);
        ok += code == 250;
        full += code == 452;
        close(c[i].fd);
    }
    assert_int_equal(ok + full, N);
    assert_true(ok >= 1);
    assert_true(full >= 1);
    free(c);
}

/* Random bytes on several sessions, then past the session limit: 421 at
 * once for the extra clients; a good session works afterwards. */
static void test_garbage_and_limit(void **state)
{
    (void)state;
    srand(42);
    char *junk = malloc(200000);
    for (size_t i = 0; i < 200000; i++)
        junk[i] = (rand() % 20 == 0) ? '\n' : (char)(rand() % 256);
    for (int k = 0; k < 4; k++) {
        conn_t *c = calloc(1, sizeof *c);
        s_conn(c);
        if (k % 2)
            s_puts(c, "EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<bounces+a@b.example>\r\nDATA\r\n");
        /* The server may hang up (too many errors): stop sending then. */
        for (size_t off = 0; off < 200000;) {
            ssize_t n = send(c->fd, junk + off, 200000 - off, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            off += (size_t)n;
        }
        close(c->fd);
        free(c);
    }
    free(junk);

    enum { EXTRA = 4, N = 256 + EXTRA };
    int *fds = calloc(N, sizeof *fds);
    int ok = 0, busy = 0;
    for (int i = 0; i < N; i++) {
        conn_t *c = calloc(1, sizeof *c);
        char src[32];
        /* Many clients, a few sessions each: the global limit, not the
         * per-client one, is what this counts. */
        snprintf(src, sizeof src, "127.0.1.%d", 1 + i % 64);
        s_conn_from(c, src);
        int code = s_reply(c);
        if (code == 220)
            ok++;
        else if (code == 421)
            busy++;
        fds[i] = c->fd;
        free(c);
    }
    /* One idle session from test_hostile_sessions may still be open. */
    assert_true(ok >= 255 && ok <= 256);
    assert_int_equal(ok + busy, N);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    free(fds);

    conn_t *c = calloc(1, sizeof *c);
    int64_t deadline = harness_now_ms() + 5000;
    int code = -1;
    while (code != 220 && harness_now_ms() < deadline) {
        s_conn(c);
        code = s_reply(c);
        if (code != 220) {
            close(c->fd);
            usleep(100 * 1000);
        }
    }
    assert_int_equal(code, 220);
    assert_int_equal(s_cmd(c, "EHLO good.example\r\n"), 250);
    assert_int_equal(s_cmd(c, "QUIT\r\n"), 221);
    close(c->fd);
    free(c);
}

/* --- the database thread -------------------------------------------------- */

/* The code of the next complete reply, its last line into text[size]. */
static int s_reply_text(conn_t *c, char *text, size_t size)
{
    text[0] = '\0';
    int64_t deadline = harness_now_ms() + 10000;
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len)) != NULL) {
            size_t n = (size_t)(nl - c->buf) + 1;
            int last = n >= 4 && c->buf[3] == ' ';
            int code = atoi(c->buf);
            if (last)
                snprintf(text, size, "%.*s", (int)(n > 2 ? n - 2 : 0), c->buf);
            memmove(c->buf, c->buf + n, c->len - n);
            c->len -= n;
            if (last)
                return code;
        }
        int left = (int)(deadline - harness_now_ms());
        struct pollfd p = {c->fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n <= 0)
            return -1;
        c->len += (size_t)n;
    }
}

/* 1 when c has bytes to read (or is closed) right now. */
static int s_pending(conn_t *c)
{
    struct pollfd p = {c->fd, POLLIN, 0};
    return c->len > 0 || poll(&p, 1, 0) > 0;
}

/* The message in file, dot-stuffed with CRLF line ends, through its final
 * dot, on a session at 354; the reply is not read. */
static void s_send_body(conn_t *c, const char *file)
{
    FILE *f = fopen(file, "rb");
    assert_non_null(f);
    sbuf_t *b = sbuf_new(8192);
    char text[4096];
    while (fgets(text, sizeof text, f)) {
        size_t n = strcspn(text, "\r\n");
        if (text[0] == '.')
            sbuf_append_str(b, ".");
        sbuf_append(b, text, n);
        sbuf_append_str(b, "\r\n");
    }
    fclose(f);
    sbuf_append_str(b, ".\r\n");
    s_put(c, sbuf_data(b), sbuf_len(b));
    sbuf_destroy(&b);
}

/* A session from src (NULL: any) that sends the report in file to rcpt
 * through its final dot, without reading the reply to it. */
static void s_send_report(conn_t *c, const char *src, const char *rcpt, const char *file)
{
    char line[256];
    s_conn_from(c, src);
    assert_int_equal(s_reply(c), 220);
    assert_int_equal(s_cmd(c, "EHLO mta.example\r\n"), 250);
    assert_int_equal(s_cmd(c, "MAIL FROM:<>\r\n"), 250);
    snprintf(line, sizeof line, "RCPT TO:<%s>\r\n", rcpt);
    assert_int_equal(s_cmd(c, line), 250);
    assert_int_equal(s_cmd(c, "DATA\r\n"), 354);
    s_send_body(c, file);
}

/* A connection of our own to the test database, with the message row id
 * locked FOR UPDATE in an open transaction (ROLLBACK and destroy it to let
 * go). */
static db_t *s_lock_row(const char *id)
{
    char conninfo[256], lock[160];
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s user=%s dbname=%s",
             harness_server("PG_HOST"), harness_server("PG_PORT"), harness_server("PG_USER"),
             E.db);
    db_t *db = db_connect(conninfo, 0, NULL);
    assert_non_null(db);
    snprintf(lock, sizeof lock, "SELECT 1 FROM messages WHERE id = '%s' FOR UPDATE", id);
    assert_int_equal(db_exec(db, "BEGIN", 0, NULL, NULL), 0);
    assert_int_equal(db_exec(db, lock, 0, NULL, NULL), 0);
    return db;
}

/* The hard-bounce fixture for addr, to the return path of token: its VERP
 * address into rcpt[160], the file into file[64]. */
static void s_hard_fixture(const char *token, const char *addr, char *rcpt, char *file)
{
    snprintf(rcpt, 160, "bounces+%s@bounces.send.example", token);
    const char *pairs[] = {"bounces+m8f3k2q-9x@mail.postchi.test", rcpt, "nobody@example.org",
                           addr, NULL};
    s_fixture("postfix_hard_511.eml", pairs, file);
}

/* Wait (at most ms) until the listener's database session waits for a
 * lock: the report was handed over and is blocked on our row. */
static void s_wait_db_blocked(int ms)
{
    char *v = s_wait_sql("1", ms,
                         "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                         " AND query LIKE '%bounced%'");
    assert_non_null(v);
    assert_string_equal(v, "1");
    free(v);
}

/* A report whose rows are locked elsewhere waits for the database off the
 * poll thread: meanwhile another client is greeted and its EHLO, MAIL and
 * RCPT answered at once, the waiting session gets no reply before the
 * commit, and once the lock goes it gets its 250 with the bounce recorded,
 * then the reply to the NOOP it pipelined after the dot. (With the
 * database work on the poll thread, the greeting waited for the lock.) */
static void test_locked_report_does_not_stall(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64], good[256];
    s_sent_message("held@dest.example", id, token);
    s_hard_fixture(token, "held@dest.example", rcpt, file);
    db_t *db = s_lock_row(id);
    conn_t *c = calloc(1, sizeof *c), *other = calloc(1, sizeof *other);
    s_send_report(c, NULL, rcpt, file);
    s_puts(c, "NOOP\r\n"); /* pipelined after the dot: answered after it */
    s_wait_db_blocked(1500);

    int64_t t0 = harness_now_ms();
    s_conn_from(other, "127.0.5.1");
    int greeting = s_reply(other);
    int ehlo = s_cmd(other, "EHLO other.example\r\n");
    int mail = s_cmd(other, "MAIL FROM:<>\r\n");
    s_rcpt_line(good, 3, "bounces.send.example");
    int rcpt_code = s_cmd(other, good);
    int64_t took = harness_now_ms() - t0;
    int early = s_pending(c);
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    db_destroy(&db);
    print_message("greeting, EHLO, MAIL, RCPT while the report waits: %lld ms\n", (long long)took);
    assert_int_equal(greeting, 220);
    assert_int_equal(ehlo, 250);
    assert_int_equal(mail, 250);
    assert_int_equal(rcpt_code, 250);
    if (took >= 500)
        fail_msg("the other session waited %lld ms", (long long)took);
    assert_false(early); /* no reply before the commit */

    char text[256];
    assert_int_equal(s_reply_text(c, text, sizeof text), 250);
    assert_non_null(strstr(text, "report received"));
    assert_int_equal(s_reply_text(c, text, sizeof text), 250);
    assert_string_equal(text, "250 2.0.0 Ok");
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    ASSERT_SQL("bounce",
               "SELECT reason FROM suppressions WHERE organization_id = '%s'"
               " AND email = 'held@dest.example'",
               E.org_id);
    /* Both sessions go on. */
    assert_int_equal(s_cmd(c, "NOOP\r\n"), 250);
    assert_int_equal(s_cmd(other, "QUIT\r\n"), 221);
    assert_int_equal(s_cmd(c, "QUIT\r\n"), 221);
    close(c->fd);
    close(other->fd);
    unlink(file);
    free(c);
    free(other);
}

/* The client hangs up while its report waits for the database, and a new
 * client takes its slot: the report, once handed over, is still applied
 * (the sender saw no 250 and will retry: the retry changes nothing), the
 * result lands on nobody (the new session gets no stray reply), and the
 * listener goes on. */
static void test_client_gone_while_waiting(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("gone@dest.example", id, token);
    s_hard_fixture(token, "gone@dest.example", rcpt, file);
    db_t *db = s_lock_row(id);
    conn_t *c = calloc(1, sizeof *c), *next = calloc(1, sizeof *next);
    s_send_report(c, NULL, rcpt, file);
    s_wait_db_blocked(1500);
    close(c->fd);
    usleep(200 * 1000); /* the listener sees the close and frees the session */
    s_conn(next);
    assert_int_equal(s_reply(next), 220);
    assert_int_equal(s_cmd(next, "EHLO next.example\r\n"), 250);
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    db_destroy(&db);

    char sql[160];
    snprintf(sql, sizeof sql, "SELECT status FROM messages WHERE id = '%s'", id);
    char *st = s_wait_sql("bounced", 5000, sql);
    assert_non_null(st);
    assert_string_equal(st, "bounced");
    free(st);
    usleep(200 * 1000);
    assert_false(s_pending(next));
    assert_int_equal(s_cmd(next, "VRFY x\r\n"), 502);
    assert_int_equal(s_cmd(next, "QUIT\r\n"), 221);
    close(next->fd);
    /* The sender's retry is answered and doubles nothing. */
    assert_int_equal(dl_smtp_deliver(s_inbound_port, "", rcpt, file), 250);
    ASSERT_SQL("1",
               "SELECT count(*) FROM message_events WHERE message_id = '%s'"
               " AND type = 'bounced'",
               id);
    unlink(file);
    free(c);
    free(next);
}

/* The database session dies while a report waits on a lock: that session
 * gets 451 4.3.0 (the sender keeps the report), the row is unchanged, and
 * a retry once the listener has reconnected is recorded. */
static void test_database_dies_while_waiting(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64], text[256];
    s_sent_message("dies@dest.example", id, token);
    s_hard_fixture(token, "dies@dest.example", rcpt, file);
    db_t *db = s_lock_row(id);
    conn_t *c = calloc(1, sizeof *c);
    s_send_report(c, NULL, rcpt, file);
    s_wait_db_blocked(1500);
    free(api_sql(&E, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                     " WHERE wait_event_type = 'Lock' AND query LIKE '%bounced%'"));
    int64_t t0 = harness_now_ms();
    int code = s_reply_text(c, text, sizeof text);
    int64_t took = harness_now_ms() - t0;
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    db_destroy(&db);
    print_message("after the backend died: %s (%lld ms)\n", text, (long long)took);
    assert_int_equal(code, 451);
    assert_non_null(strstr(text, "4.3.0"));
    ASSERT_SQL("sent", "SELECT status FROM messages WHERE id = '%s'", id);
    /* The sender retries. */
    int64_t deadline = harness_now_ms() + 10000;
    code = -1;
    while (code != 250 && harness_now_ms() < deadline) {
        usleep(300 * 1000); /* the listener waits a second between connects */
        code = dl_smtp_deliver(s_inbound_port, "", rcpt, file);
    }
    assert_int_equal(code, 250);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    close(c->fd);
    unlink(file);
    free(c);
}

/* The database thread is held by a locked row while INBOUND_DB_QUEUE
 * reports wait behind it: the next report is answered 451 4.3.2 at once
 * instead of joining them, and once the lock goes every queued one gets
 * its 250. */
static void test_queue_full_is_a_quick_451(void **state)
{
    (void)state;
    enum { N = INBOUND_DB_QUEUE + 2 };
    char id[64], token[64], rcpt[160], file[64], text[256];
    s_sent_message("queued@dest.example", id, token);
    s_hard_fixture(token, "queued@dest.example", rcpt, file);
    conn_t *c = calloc(N, sizeof *c);
    /* Every session at its DATA first, so the queue fills fast. */
    for (int i = 1; i < N; i++) {
        char src[32];
        snprintf(src, sizeof src, "127.0.6.%d", 1 + i / INBOUND_MAX_PER_CLIENT);
        s_open_tx(&c[i], src, 1);
    }
    db_t *db = s_lock_row(id);
    s_send_report(&c[0], NULL, rcpt, file); /* the job the thread is stuck in */
    s_wait_db_blocked(1500);
    for (int i = 1; i < N - 1; i++)
        s_send_body(&c[i], file);
    usleep(200 * 1000); /* the listener queues them */
    int64_t t0 = harness_now_ms();
    s_send_body(&c[N - 1], file);
    int code = s_reply_text(&c[N - 1], text, sizeof text);
    int64_t took = harness_now_ms() - t0;
    double queued = mesh_metric(E.mesh.worker_metrics[0], "postchi_inbound_db_queue");
    double busy = mesh_metric(E.mesh.worker_metrics[0], "postchi_inbound_db_busy_total");
    int early = 0;
    for (int i = 0; i < N - 1; i++)
        early += s_pending(&c[i]);
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    db_destroy(&db);
    print_message("the report past the queue: %s (%lld ms)\n", text, (long long)took);
    assert_int_equal(code, 451);
    assert_non_null(strstr(text, "4.3.2"));
    assert_true(took < 500);
    assert_int_equal(early, 0);
    assert_true(queued == (double)INBOUND_DB_QUEUE); /* the stuck one runs, the rest wait */
    assert_true(busy >= 1.0);
    for (int i = 0; i < N - 1; i++)
        assert_int_equal(s_reply(&c[i]), 250);
    assert_true(mesh_metric(E.mesh.worker_metrics[0], "postchi_inbound_db_queue") == 0.0);
    ASSERT_SQL("bounced", "SELECT status FROM messages WHERE id = '%s'", id);
    for (int i = 0; i < N; i++)
        close(c[i].fd);
    unlink(file);
    free(c);
}

/* The worker stops while one report's job is stuck on a lock and another
 * waits in the queue: it exits cleanly (under ASan, LeakSanitizer would
 * fail the exit status on a job or session left behind), the running job
 * ends at its lock timeout, and both clients see the connection close
 * without a 250, so their MTAs retry. The worker is started again for
 * whatever runs next. */
static void test_stop_with_reports_waiting(void **state)
{
    (void)state;
    char id[64], token[64], rcpt[160], file[64];
    s_sent_message("stopping@dest.example", id, token);
    s_hard_fixture(token, "stopping@dest.example", rcpt, file);
    conn_t *c = calloc(2, sizeof *c);
    s_open_tx(&c[1], "127.0.7.1", 1);
    db_t *db = s_lock_row(id);
    s_send_report(&c[0], NULL, rcpt, file);
    s_wait_db_blocked(1500);
    s_send_body(&c[1], file);
    usleep(200 * 1000); /* queued behind the stuck one */
    int64_t t0 = harness_now_ms();
    harness_proc_t *w = E.mesh.workers[0];
    E.mesh.workers[0] = NULL;
    const char *log = harness_log_path(w);
    char log_path[512];
    snprintf(log_path, sizeof log_path, "%s", log);
    int rc = harness_stop(w, SIGTERM, 15000);
    int64_t took = harness_now_ms() - t0;
    int r0 = s_reply(&c[0]), r1 = s_reply(&c[1]);
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    db_destroy(&db);
    print_message("worker stopped in %lld ms with status %d (log %s)\n", (long long)took, rc,
                  log_path);
    assert_int_equal(rc, 0);
    assert_int_equal(r0, -1);
    assert_int_equal(r1, -1);
    ASSERT_SQL("sent", "SELECT status FROM messages WHERE id = '%s'", id);
    close(c[0].fd);
    close(c[1].fd);
    free(c);
    unlink(file);
    assert_int_equal(mesh_start_worker(&E.mesh, 0), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, E.mesh.nworkers, 15000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hard_bounce),
        cmocka_unit_test(test_delayed),
        cmocka_unit_test(test_complaint),
        cmocka_unit_test(test_unknown_and_tenancy),
        cmocka_unit_test(test_forged_tokens),
        cmocka_unit_test(test_hostile_sessions),
        cmocka_unit_test(test_garbage_and_limit),
        cmocka_unit_test(test_parse_bomb),
        cmocka_unit_test(test_per_client_limit),
        cmocka_unit_test(test_buffer_budget),
        cmocka_unit_test(test_soft_failure),
        cmocka_unit_test(test_fbl_complaint),
        cmocka_unit_test(test_hard_bounce_after_failed),
        cmocka_unit_test(test_delayed_replayed_once),
        cmocka_unit_test(test_locked_row_is_a_quick_451),
        cmocka_unit_test(test_locked_report_does_not_stall),
        cmocka_unit_test(test_client_gone_while_waiting),
        cmocka_unit_test(test_database_dies_while_waiting),
        cmocka_unit_test(test_queue_full_is_a_quick_451),
        cmocka_unit_test(test_database_lost_then_retry),
        cmocka_unit_test(test_stop_with_reports_waiting),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
