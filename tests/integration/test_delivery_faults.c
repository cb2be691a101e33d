/*
 * test_delivery_faults - what delivery does when the next hop misbehaves.
 * One API node and worker relay to one port; each case starts smtp-sink
 * there with its fault options (or a garbage-speaking server of its own):
 *
 *   -f RCPT     hard reject: 'bounced' with the enhanced code, the contact
 *               'bounced', a suppression, and the next send suppressed
 *   -r RCPT     soft reject: 'deferred' with a back-off, then 'sent' once a
 *               good sink is back and the retry is due
 *   -q / -Q     the peer hangs up (silently, or with 421) at DATA or at the
 *               final dot: 'deferred', never lost
 *   -w 3        a slow DATA answer still ends 'sent' (there is no SMTP
 *               timeout setting yet; RFC 5321's minimums are minutes)
 *   garbage     a peer that answers nonsense, binary, or one endless line:
 *               'deferred', the worker stays up
 *   max age     a deferred message older than delivery_max_age_s: 'failed'
 *   send_at     'scheduled', then 'sent' no earlier than send_at; a
 *               scheduled message canceled by DELETE is never sent
 *
 * The worker runs with delivery_max_age_s = 60 (the minimum) so the max-age
 * case only has to backdate created_at.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "delivery_util.h"

#define FROM "\"from\":{\"email\":\"hello@send.example\"}"

static api_env_t E;
static dsink_t S;

static int s_setup(void **state)
{
    (void)state;
    setenv("POSTCHI_DELIVERY_MAX_AGE_S", "60", 1);
    return dl_env_start(&E, &S, 0);
}

static int s_teardown(void **state)
{
    (void)state;
    return dl_env_stop(&E, &S);
}

/* Every case leaves the port free for the next one. */
static int s_case_done(void **state)
{
    (void)state;
    dsink_stop(&S);
    return 0;
}

/* The worker is still up and still answering. */
static void s_assert_worker_alive(void)
{
    assert_true(harness_alive(E.mesh.workers[0]));
    assert_int_equal(harness_http_get(E.mesh.worker_metrics[0], "/healthz", NULL), 200);
}

/* Send one text message to rcpt; the row id goes to id. */
static void s_send(char *id, const char *rcpt, const char *text)
{
    int st = dl_send(&E, id, "{" FROM ",\"to\":\"%s\",\"subject\":\"fault\",\"text\":\"%s\"}",
                     rcpt, text);
    assert_int_equal(st, 202);
    assert_true(id[0] != 0);
}

static void s_expect(const char *id, const char *want, int ms)
{
    char *st = dl_wait_status(&E, id, want, ms);
    int ok = st && strcmp(st, want) == 0;
    char seen[32], resp[256];
    snprintf(seen, sizeof seen, "%s", st ? st : "(none)");
    free(st);
    if (ok)
        return;
    char *r = dl_sql(&E, "SELECT last_response FROM messages WHERE id = '%s'", id);
    snprintf(resp, sizeof resp, "%s", r ? r : "-");
    free(r);
    fail_msg("message %s is %s, expected %s (last response: %s)", id, seen, want, resp);
}

/* A deferral: backed off into the future, after exactly one attempt. */
static void s_expect_deferred(const char *id)
{
    s_expect(id, "deferred", 15000);
    char *v = dl_sql(&E,
                     "SELECT (next_attempt_at > now() + interval '30 seconds')::text || '|' ||"
                     " attempts FROM messages WHERE id = '%s'",
                     id);
    assert_non_null(v);
    assert_string_equal(v, "true|1");
    free(v);
    v = dl_sql(&E, "SELECT count(*) FROM message_events WHERE message_id = '%s' AND type = 'deferred'",
               id);
    assert_string_equal(v, "1");
    free(v);
}

/* ------------------------------------------------------------- the cases */

static void test_hard_reject_bounces_and_suppresses(void **state)
{
    (void)state;
    const char *opts[] = {"-f", "RCPT", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    free(dl_sql(&E,
                "INSERT INTO contacts (organization_id, email) VALUES ('%s', 'hard@dest.example')",
                E.org_id));
    char id[64];
    s_send(id, "hard@dest.example", "hard reject body");
    s_expect(id, "bounced", 15000);

    char *v = dl_sql(&E,
                     "SELECT detail->>'enhanced' FROM message_events WHERE message_id = '%s'"
                     " AND type = 'bounced'",
                     id);
    assert_non_null(v);
    assert_true(v[0] == '5' && v[1] == '.'); /* smtp-sink: 550 5.x.x */
    free(v);
    v = dl_sql(&E, "SELECT last_response FROM messages WHERE id = '%s'", id);
    assert_non_null(v);
    assert_true(strncmp(v, "5", 1) == 0);
    free(v);
    v = dl_sql(&E, "SELECT status FROM contacts WHERE organization_id = '%s'"
                   " AND email = 'hard@dest.example'",
               E.org_id);
    assert_string_equal(v, "bounced");
    free(v);
    v = dl_sql(&E, "SELECT reason FROM suppressions WHERE organization_id = '%s'"
                   " AND lower(email) = 'hard@dest.example'",
               E.org_id);
    assert_string_equal(v, "bounce");
    free(v);
    assert_int_equal(dsink_count(&S, "hard reject body"), 0);

    /* The next send to that address is skipped, never attempted. */
    char id2[64];
    s_send(id2, "hard@dest.example", "after the bounce");
    char *st = dl_status(&E, id2);
    assert_string_equal(st, "suppressed");
    free(st);
    s_assert_worker_alive();
}

static void test_soft_reject_defers_then_delivers(void **state)
{
    (void)state;
    const char *opts[] = {"-r", "RCPT", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char id[64];
    s_send(id, "soft@dest.example", "soft reject body");
    s_expect_deferred(id);
    char *v = dl_sql(&E, "SELECT last_response FROM messages WHERE id = '%s'", id);
    assert_non_null(v);
    assert_true(v[0] == '4');
    free(v);

    /* A good sink on the same address; make the retry due now. */
    dsink_stop(&S);
    assert_int_equal(dsink_start(&S, NULL), 0);
    free(dl_sql(&E, "UPDATE messages SET next_attempt_at = now() WHERE id = '%s'", id));
    s_expect(id, "sent", 20000);
    v = dl_sql(&E, "SELECT attempts || '|' || (SELECT string_agg(type, ',' ORDER BY id)"
                   " FROM message_events WHERE message_id = m.id) FROM messages m WHERE id = '%s'",
               id);
    assert_non_null(v);
    assert_non_null(strstr(v, "deferred"));
    assert_non_null(strstr(v, "sent"));
    assert_true(strncmp(v, "2|", 2) == 0);
    free(v);
    assert_int_equal(dsink_count(&S, "soft reject body"), 1);
}

/* The sink hangs up with the given option at the given command. */
static void s_hangup_case(const char *opt, const char *cmd, const char *rcpt)
{
    const char *opts[] = {opt, cmd, NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char id[64];
    s_send(id, rcpt, "hang up body");
    s_expect_deferred(id);
    dsink_stop(&S);
    s_assert_worker_alive();
}

static void test_disconnect_at_data_defers(void **state)
{
    (void)state;
    s_hangup_case("-q", "DATA", "q-data@dest.example");
}

static void test_421_at_data_defers(void **state)
{
    (void)state;
    s_hangup_case("-Q", "DATA", "bigq-data@dest.example");
    char *v = dl_sql(&E, "SELECT last_response FROM messages WHERE recipient = 'bigq-data@dest.example'");
    assert_non_null(v);
    assert_true(strncmp(v, "421", 3) == 0);
    free(v);
}

static void test_disconnect_after_dot_defers(void **state)
{
    (void)state;
    /* The whole message went over but no answer came: it may have been
     * taken, yet only a retry is safe. */
    s_hangup_case("-q", ".", "q-dot@dest.example");
}

static void test_slow_data_answer_still_sent(void **state)
{
    (void)state;
    const char *opts[] = {"-w", "3", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char id[64];
    int64_t t0 = harness_now_ms();
    s_send(id, "slow@dest.example", "slow peer body");
    s_expect(id, "sent", 20000);
    assert_true(harness_now_ms() - t0 >= 3000); /* the sink did make us wait */
    assert_int_equal(dsink_count(&S, "slow peer body"), 1);
}

/* ------------------------------------------------------- a garbage peer */

typedef enum { G_BANNER, G_CODES, G_BINARY, G_ENDLESS } garbage_t;

static struct {
    int fd;                /* listening socket */
    atomic_int mode;       /* garbage_t */
    atomic_int stop;       /* set to end the thread */
    atomic_int accepted;   /* connections served */
    pthread_t thread;
} G;

static void s_write_all(int fd, const void *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

/* Read whatever the client sends for up to ms (or until it closes). */
static int s_drain(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    char buf[4096];
    if (poll(&p, 1, ms) <= 0)
        return 0;
    return recv(fd, buf, sizeof buf, 0) > 0;
}

static void s_serve(int c)
{
    switch ((garbage_t)atomic_load(&G.mode)) {
    case G_BANNER: /* not SMTP at all */
        s_write_all(c, "HTTP/1.1 200 OK\r\nhello there\r\n\r\n", 33);
        while (s_drain(c, 500))
            ;
        break;
    case G_CODES: /* a valid banner, then codes that mean nothing */
        s_write_all(c, "220 ok\r\n", 8);
        for (int i = 0; i < 20 && s_drain(c, 1000); i++)
            s_write_all(c, "999-what\r\n2x0 \r\n\r\n-\r\n", 22);
        break;
    case G_BINARY: {
        unsigned char junk[512];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (unsigned char)(i * 37 + 11);
        junk[0] = '2', junk[1] = '2', junk[2] = '0', junk[3] = 0;
        s_write_all(c, junk, sizeof junk);
        while (s_drain(c, 500))
            ;
        break;
    }
    case G_ENDLESS: { /* a banner line that never ends (4 MB, then close) */
        char *big = malloc(65536);
        if (big) {
            memset(big, 'A', 65536);
            memcpy(big, "220 ", 4);
            for (int i = 0; i < 64; i++)
                s_write_all(c, big, 65536);
            free(big);
        }
        break;
    }
    }
}

static void *s_garbage_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&G.stop)) {
        struct pollfd p = {G.fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int c = accept(G.fd, NULL, NULL);
        if (c < 0)
            continue;
        atomic_fetch_add(&G.accepted, 1);
        s_serve(c);
        close(c);
    }
    return NULL;
}

static void s_garbage_start(void)
{
    G.fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(G.fd >= 0);
    int one = 1;
    setsockopt(G.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)S.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(G.fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(G.fd, 16), 0);
    atomic_store(&G.stop, 0);
    atomic_store(&G.accepted, 0);
    assert_int_equal(pthread_create(&G.thread, NULL, s_garbage_thread, NULL), 0);
}

/* Also the case's teardown, so a failed assertion stops the thread too. */
static int s_garbage_stop(void **state)
{
    (void)state;
    if (G.fd <= 0)
        return 0;
    atomic_store(&G.stop, 1);
    pthread_join(G.thread, NULL);
    close(G.fd);
    G.fd = 0;
    return 0;
}

static void test_garbage_peer_defers(void **state)
{
    (void)state;
    s_garbage_start();
    const char *names[] = {"banner", "codes", "binary", "endless"};
    for (int m = G_BANNER; m <= G_ENDLESS; m++) {
        atomic_store(&G.mode, m);
        int before = atomic_load(&G.accepted);
        char id[64], rcpt[64];
        snprintf(rcpt, sizeof rcpt, "garbage-%s@dest.example", names[m]);
        s_send(id, rcpt, "garbage body");
        s_expect_deferred(id);
        assert_true(atomic_load(&G.accepted) > before); /* it did talk to us */
        s_assert_worker_alive();
    }
    s_garbage_stop(NULL);
}

/* ------------------------------------------------------------ max age */

static void test_deferred_past_max_age_fails(void **state)
{
    (void)state;
    const char *opts[] = {"-r", "RCPT", NULL};
    assert_int_equal(dsink_start(&S, opts), 0);
    char id[64];
    s_send(id, "old@dest.example", "too old body");
    s_expect_deferred(id);
    /* Two minutes old with a 60 s maximum, and due again now. */
    free(dl_sql(&E,
                "UPDATE messages SET created_at = now() - interval '2 minutes',"
                " next_attempt_at = now() WHERE id = '%s'",
                id));
    s_expect(id, "failed", 20000);
    char *v = dl_sql(&E, "SELECT attempts || '|' || (SELECT string_agg(type, ',' ORDER BY id)"
                         " FROM message_events WHERE message_id = m.id) FROM messages m"
                         " WHERE id = '%s'",
                     id);
    assert_non_null(v);
    assert_true(strncmp(v, "2|", 2) == 0);
    assert_non_null(strstr(v, "failed"));
    free(v);
    /* Failed is final: no later sweep picks it up again. */
    sleep(3);
    char *st = dl_status(&E, id);
    assert_string_equal(st, "failed");
    free(st);
}

/* ----------------------------------------------------------- scheduling */

static void s_rfc3339(time_t t, char *out, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void test_send_at_then_sent_and_cancel(void **state)
{
    (void)state;
    assert_int_equal(dsink_start(&S, NULL), 0);
    char at[40];
    s_rfc3339(time(NULL) + 4, at, sizeof at);
    char id[64], id2[64];
    int st = dl_send(&E, id,
                     "{" FROM ",\"to\":\"later@dest.example\",\"subject\":\"later\","
                     "\"text\":\"scheduled body\",\"send_at\":\"%s\"}",
                     at);
    assert_int_equal(st, 202);
    st = dl_send(&E, id2,
                 "{" FROM ",\"to\":\"never@dest.example\",\"subject\":\"never\","
                 "\"text\":\"canceled body\",\"send_at\":\"%s\"}",
                 at);
    assert_int_equal(st, 202);
    char *v = dl_status(&E, id);
    assert_string_equal(v, "scheduled");
    free(v);

    /* Cancel the second while it is still scheduled. */
    api_resp_t r;
    char path[128];
    snprintf(path, sizeof path, "/api/v1/messages/%s", id2);
    api_call(&E, "DELETE", path, E.key_full, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);
    v = dl_status(&E, id2);
    assert_string_equal(v, "canceled");
    free(v);

    /* Not early: still scheduled a moment before send_at. */
    usleep(1500 * 1000);
    v = dl_status(&E, id);
    assert_string_equal(v, "scheduled");
    free(v);
    s_expect(id, "sent", 15000);
    v = dl_sql(&E, "SELECT (e.created_at >= m.send_at)::text FROM message_events e"
                   " JOIN messages m ON m.id = e.message_id WHERE m.id = '%s' AND e.type = 'sent'",
               id);
    assert_string_equal(v, "true");
    free(v);
    assert_int_equal(dsink_count(&S, "scheduled body"), 1);

    /* Another sweep later, the canceled one is still canceled and unsent;
     * canceling the sent one is a conflict. */
    sleep(3);
    v = dl_status(&E, id2);
    assert_string_equal(v, "canceled");
    free(v);
    assert_int_equal(dsink_count(&S, "canceled body"), 0);
    snprintf(path, sizeof path, "/api/v1/messages/%s", id);
    api_call(&E, "DELETE", path, E.key_full, NULL, NULL, &r);
    assert_int_equal(r.status, 409);
    api_resp_free(&r);
}

/* The mailer cannot read a message's content (the table renamed away: a
 * real PostgreSQL error on the read, as a failing disk or a half-applied
 * migration would give): the message is deferred, not failed and not sent
 * half-built; once reads work again it goes out. */
static void test_content_read_failure_defers(void **state)
{
    (void)state;
    assert_int_equal(dsink_start(&S, NULL), 0);
    char at[40];
    s_rfc3339(time(NULL) + 3, at, sizeof at);
    char id[64];
    int st = dl_send(&E, id,
                     "{" FROM ",\"to\":\"unread@dest.example\",\"subject\":\"unread\","
                     "\"text\":\"unreadable body\",\"send_at\":\"%s\"}",
                     at);
    assert_int_equal(st, 202);
    /* The table is out of the mailer's reach under its name (a fresh
     * worker, so no statement on it is prepared yet). */
    free(dl_sql(&E, "ALTER TABLE message_contents RENAME TO message_contents_hidden"));
    char *v = dl_sql(&E, "SELECT count(*) FROM pg_class WHERE relname = 'message_contents'");
    assert_non_null(v);
    assert_string_equal(v, "0");
    free(v);
    assert_int_equal(harness_stop(E.mesh.workers[0], SIGTERM, 10000), 0);
    E.mesh.workers[0] = NULL;
    assert_int_equal(mesh_start_worker(&E.mesh, 0), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, 1, 10000), 0);
    s_expect(id, "deferred", 15000);
    v = dl_sql(&E, "SELECT last_response FROM messages WHERE id = '%s'", id);
    assert_non_null(v);
    assert_non_null(strstr(v, "could not be read"));
    free(v);
    free(dl_sql(&E, "ALTER TABLE message_contents_hidden RENAME TO message_contents"));
    v = dl_sql(&E, "SELECT count(*) FROM pg_class WHERE relname = 'message_contents'");
    assert_string_equal(v, "1");
    free(v);
    assert_int_equal(dsink_count(&S, "unreadable body"), 0);
    /* Due again now: sent once, whole. */
    v = dl_sql(&E, "UPDATE messages SET next_attempt_at = now() WHERE id = '%s' RETURNING 'ok'",
               id);
    free(v);
    s_expect(id, "sent", 20000);
    assert_int_equal(dsink_count(&S, "unreadable body"), 1);
    v = dl_sql(&E, "SELECT count(*) FROM message_events WHERE message_id = '%s' AND type = 'failed'",
               id);
    assert_string_equal(v, "0");
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_content_read_failure_defers, s_case_done),
        cmocka_unit_test_teardown(test_hard_reject_bounces_and_suppresses, s_case_done),
        cmocka_unit_test_teardown(test_soft_reject_defers_then_delivers, s_case_done),
        cmocka_unit_test_teardown(test_disconnect_at_data_defers, s_case_done),
        cmocka_unit_test_teardown(test_421_at_data_defers, s_case_done),
        cmocka_unit_test_teardown(test_disconnect_after_dot_defers, s_case_done),
        cmocka_unit_test_teardown(test_slow_data_answer_still_sent, s_case_done),
        cmocka_unit_test_teardown(test_deferred_past_max_age_fails, s_case_done),
        cmocka_unit_test_teardown(test_send_at_then_sent_and_cancel, s_case_done),
        cmocka_unit_test_teardown(test_garbage_peer_defers, s_garbage_stop),
    };
    /* DL_TESTS / DL_SKIP=glob run only / skip the matching cases (while
     * debugging one). */
    if (getenv("DL_TESTS"))
        cmocka_set_test_filter(getenv("DL_TESTS"));
    if (getenv("DL_SKIP"))
        cmocka_set_skip_filter(getenv("DL_SKIP"));
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
