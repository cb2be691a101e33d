/*
 * test_delivery_kill - kill -9 of a worker in the middle of a bulk send.
 *
 * Two workers relay to one dumping smtp-sink; a list of N contacts spread
 * over eight recipient domains (so both workers run mailer actors) gets one
 * POST /messages with to_list. Once about a fifth is sent, worker 1 gets
 * SIGKILL. Its leased rows come back when their lease (5 s here) runs out
 * and the surviving worker's sweeper re-drives them: every row must end
 * 'sent', in bounded time, and the sink must hold every recipient at least
 * once. Duplicates are counted from the sink's dump files (one file per
 * transaction, X-Rcpt-Args) and printed; they may only come from
 * transactions in flight at the kill, so there can be no more than the rows
 * that were 'sending' at that moment.
 *
 * N is 3,000 to keep the suite fast; the 100,000-message run belongs
 * to tests/bench.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delivery_util.h"
#include "dict.h"

#define N_CONTACTS 3000
#define N_DOMAINS 8
/* The body's last line: a dump file without it is a transaction cut short. */
#define END_MARK "END-OF-BULK-BODY"

static api_env_t E;
static dsink_t S;

static int s_setup(void **state)
{
    (void)state;
    setenv("POSTCHI_DELIVERY_LEASE_S", "5", 1);
    if (dl_env_start(&E, &S, 1) != 0 || mesh_start_worker(&E.mesh, 1) != 0)
        return -1;
    return mesh_wait_live(&E.mesh, 2, 10000);
}

static int s_teardown(void **state)
{
    (void)state;
    return dl_env_stop(&E, &S);
}

/* The count of the org's messages in status (NULL: all of them). */
static long s_count(const char *status)
{
    char *v = status ? dl_sql(&E,
                              "SELECT count(*) FROM messages WHERE organization_id = '%s'"
                              " AND status = '%s'",
                              E.org_id, status)
                     : dl_sql(&E, "SELECT count(*) FROM messages WHERE organization_id = '%s'",
                              E.org_id);
    long n = v ? strtol(v, NULL, 10) : -1;
    free(v);
    return n;
}

typedef struct {
    dict_t *seen;    /* recipient -> count (as a pointer-sized integer) */
    long complete;   /* dump files with the whole message */
    long partial;    /* dump files cut short */
    long dups;       /* complete copies beyond the first per recipient */
} tally_t;

static void s_tally(const char *text, void *arg)
{
    tally_t *t = arg;
    const char *r = strstr(text, "X-Rcpt-Args: ");
    if (!r || !strstr(text, END_MARK)) {
        t->partial++;
        return;
    }
    r += strlen("X-Rcpt-Args: ");
    size_t n = strcspn(r, "\r\n");
    t->complete++;
    uintptr_t c = (uintptr_t)dict_get(t->seen, r, n);
    if (c > 0)
        t->dups++;
    dict_put(t->seen, r, n, (void *)(c + 1));
}

static void test_kill9_mid_bulk_every_row_sent(void **state)
{
    (void)state;
    /* N contacts over N_DOMAINS domains, all on one list. */
    char *list = dl_sql(&E,
                        "WITH c AS (INSERT INTO contacts (organization_id, email)"
                        " SELECT '%s', 'k' || i || '@d' || (i %% %d) || '.example'"
                        " FROM generate_series(1, %d) i RETURNING id),"
                        " l AS (INSERT INTO lists (organization_id, name) VALUES ('%s', 'bulk')"
                        " RETURNING id),"
                        " m AS (INSERT INTO list_members (organization_id, list_id, contact_id)"
                        " SELECT '%s', l.id, c.id FROM l, c RETURNING list_id)"
                        " SELECT DISTINCT list_id FROM m",
                        E.org_id, N_DOMAINS, N_CONTACTS, E.org_id, E.org_id);
    assert_non_null(list);
    api_resp_t r;
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{\"from\":{\"email\":\"bulk@send.example\"},\"to_list\":\"%s\","
              "\"subject\":\"bulk\",\"text\":\"Hello from the bulk run.\\n" END_MARK "\"}",
              list);
    free(list);
    assert_int_equal(r.status, 202);
    api_resp_free(&r);
    long total = s_count(NULL);
    assert_int_equal(total, N_CONTACTS);

    /* Kill worker 1 once about a fifth is sent. */
    int64_t t0 = harness_now_ms(), deadline = t0 + 60000;
    long sent = 0;
    while (harness_now_ms() < deadline) {
        sent = s_count("sent");
        if (sent >= N_CONTACTS / 5)
            break;
        usleep(20 * 1000);
    }
    assert_true(sent >= N_CONTACTS / 5);
    assert_true(sent < N_CONTACTS); /* still mid-run: the kill must hit in-flight work */
    long before = s_count("sending");
    harness_kill9(E.mesh.workers[1]);
    E.mesh.workers[1] = NULL;
    /* Rows the dead worker held stay 'sending' until their lease ends, so
     * this count is an upper bound on what was in flight at the kill. */
    long after = s_count("sending");
    long sent_at_kill = s_count("sent");

    /* Every row ends 'sent', within a bound: the lease, a few sweeps, and
     * the rest of the run. */
    deadline = harness_now_ms() + 90000;
    long done = 0;
    while (harness_now_ms() < deadline) {
        done = s_count("sent");
        if (done == N_CONTACTS)
            break;
        usleep(200 * 1000);
    }
    int64_t elapsed = harness_now_ms() - t0;
    char *left = dl_sql(&E,
                        "SELECT string_agg(status || '=' || n, ',') FROM (SELECT status, count(*) n"
                        " FROM messages WHERE organization_id = '%s' AND status <> 'sent'"
                        " GROUP BY status) s",
                        E.org_id);
    if (done != N_CONTACTS)
        fail_msg("%ld of %d rows sent after the kill; the rest: %s", done, N_CONTACTS,
                 left ? left : "-");
    free(left);
    assert_true(harness_alive(E.mesh.workers[0]));

    /* What the sink got: every recipient, duplicates counted. */
    tally_t t = {dict_new(), 0, 0, 0};
    assert_non_null(t.seen);
    dsink_each(&S, s_tally, &t);
    long distinct = (long)dict_size(t.seen);
    printf("kill -9 mid-bulk: %d messages, %ld sent at the kill, %ld 'sending' just before and"
           " %ld just after it; sink: %ld complete transactions, %ld distinct recipients,"
           " %ld duplicates, %ld cut short; all sent %.1f s after the send\n",
           N_CONTACTS, sent_at_kill, before, after, t.complete, distinct, t.dups, t.partial,
           (double)elapsed / 1000.0);
    dict_destroy(&t.seen);
    assert_int_equal(distinct, N_CONTACTS);
    assert_true(t.dups <= (before > after ? before : after));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill9_mid_bulk_every_row_sent),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
