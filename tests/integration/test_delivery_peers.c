/*
 * test_delivery_peers - what a refusal from the next hop does to the
 * outbox and the audience, against the test's ESMTP server (smtp_fake_util:
 * smtp-sink can neither refuse with a reply of the test's choosing nor cap
 * concurrent connections). The worker relays to the fake; each case
 * restarts the worker towards a fake configured for it.
 *
 *   policy   RCPT answered "554 5.7.1 ... blocked": the message is
 *            'bounced' (permanent), but the refusal says nothing about the
 *            address (a blocklisted sender, a DMARC failure), so the
 *            contact stays subscribed and nothing is suppressed; the
 *            event says so. A 5.1.1 still suppresses (and smtp-sink's
 *            5.3.0 in test_delivery_faults).
 *   capped   a relay that takes one connection from us at a time and
 *            answers the others "421 too many connections" at the
 *            greeting: every message is sent over the connection it
 *            takes, none deferred (the refusal used to defer the whole
 *            queue while the one connection worked).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delivery_util.h"
#include "smtp_fake_util.h"

#define FROM "\"from\":{\"email\":\"hello@send.example\"}"

static api_env_t E;
static dsink_t S; /* unused (the fake is the relay): dl_env_stop's cleanup takes it */
static smtp_fake_t F;

/* Point the worker at f: stop it, set the relay, start it again. */
static void s_worker_to(smtp_fake_t *f)
{
    char relay[64];
    snprintf(relay, sizeof relay, "127.0.0.1:%d", f->port);
    setenv("POSTCHI_SMTP_RELAY", relay, 1);
    if (E.mesh.workers[0]) {
        assert_int_equal(harness_stop(E.mesh.workers[0], 15, 10000), 0);
        E.mesh.workers[0] = NULL;
    }
    assert_int_equal(mesh_start_worker(&E.mesh, 0), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, 1, 10000), 0);
}

static int s_setup(void **state)
{
    (void)state;
    setenv("POSTCHI_SMTP_RELAY", "127.0.0.1:1", 1); /* until a case starts its fake */
    return dl_env_start_api(&E);
}

static int s_teardown(void **state)
{
    (void)state;
    return dl_env_stop(&E, &S);
}

static int s_case_done(void **state)
{
    (void)state;
    smtp_fake_stop(&F);
    memset(&F, 0, sizeof F);
    return 0;
}

static void test_policy_refusal_bounces_without_suppressing(void **state)
{
    (void)state;
    F.mode = SMTP_FAKE_REPLY;
    F.odd_at = "RCPT";
    F.odd_reply = "554 5.7.1 Service unavailable; client host blocked using a list\r\n";
    assert_int_equal(smtp_fake_start(&F), 0);
    s_worker_to(&F);
    free(dl_sql(&E, "INSERT INTO contacts (organization_id, email) VALUES ('%s',"
                    " 'kept@policy.example')", E.org_id));
    char id[64];
    assert_int_equal(dl_send(&E, id, "{" FROM ",\"to\":\"kept@policy.example\","
                                     "\"subject\":\"policy\",\"text\":\"x\"}"),
                     202);
    char *st = dl_wait_status(&E, id, "bounced", 15000);
    assert_string_equal(st, "bounced");
    free(st);
    assert_int_equal(api_sql_long(&E, "SELECT count(*) FROM suppressions WHERE organization_id ="
                                      " '%s' AND lower(email) = 'kept@policy.example'",
                                  E.org_id),
                     0);
    char *cs = dl_sql(&E, "SELECT status FROM contacts WHERE organization_id = '%s'"
                          " AND email = 'kept@policy.example'", E.org_id);
    assert_string_equal(cs, "subscribed");
    free(cs);
    char *ev = dl_sql(&E, "SELECT detail->>'enhanced' || ' ' || (detail->>'suppressed')"
                          " FROM message_events WHERE message_id = '%s' AND type = 'bounced'", id);
    assert_string_equal(ev, "5.7.1 false");
    free(ev);
    /* The next send to the address is not held back: it is tried (and
     * refused again), not 'suppressed'. */
    char again[64];
    assert_int_equal(dl_send(&E, again, "{" FROM ",\"to\":\"kept@policy.example\","
                                        "\"subject\":\"policy again\",\"text\":\"x\"}"),
                     202);
    st = dl_wait_status(&E, again, "bounced", 15000);
    assert_string_equal(st, "bounced");
    free(st);
}

static void test_address_refusal_still_suppresses(void **state)
{
    (void)state;
    F.mode = SMTP_FAKE_REPLY;
    F.odd_at = "RCPT";
    F.odd_reply = "550 5.1.1 <gone@policy.example>: Recipient address rejected\r\n";
    assert_int_equal(smtp_fake_start(&F), 0);
    s_worker_to(&F);
    char id[64];
    assert_int_equal(dl_send(&E, id, "{" FROM ",\"to\":\"gone@policy.example\","
                                     "\"subject\":\"gone\",\"text\":\"x\"}"),
                     202);
    char *st = dl_wait_status(&E, id, "bounced", 15000);
    assert_string_equal(st, "bounced");
    free(st);
    assert_int_equal(api_sql_long(&E, "SELECT count(*) FROM suppressions WHERE organization_id ="
                                      " '%s' AND lower(email) = 'gone@policy.example'",
                                  E.org_id),
                     1);
}

static void test_capped_peer_keeps_the_queue(void **state)
{
    (void)state;
    F.max_sessions = 1;
    assert_int_equal(smtp_fake_start(&F), 0);
    s_worker_to(&F);
    /* Eight recipients in one send: the engine opens its four connections
     * at once, and the fake refuses three of them. */
    char body[1024];
    int off = snprintf(body, sizeof body, "{" FROM ",\"to\":[");
    for (int i = 0; i < 8; i++)
        off += snprintf(body + off, sizeof body - (size_t)off, "%s\"r%d@capped.example\"",
                        i ? "," : "", i);
    snprintf(body + off, sizeof body - (size_t)off, "],\"subject\":\"capped\",\"text\":\"x\"}");
    char id[64];
    assert_int_equal(dl_send(&E, id, "%s", body), 202);
    long sent = 0;
    for (int tries = 0; tries < 150 && sent < 8; tries++) {
        usleep(100 * 1000);
        sent = api_sql_long(&E, "SELECT count(*) FROM messages WHERE subject = 'capped'"
                                " AND status = 'sent'");
    }
    assert_int_equal(sent, 8);
    assert_true(smtp_fake_get(&F, &F.refused) >= 1); /* the cap was met */
    assert_int_equal(smtp_fake_get(&F, &F.max_active), 1);
    assert_int_equal(api_sql_long(&E, "SELECT count(*) FROM message_events e JOIN messages m"
                                      " ON m.id = e.message_id WHERE m.subject = 'capped'"
                                      " AND e.type = 'deferred'"),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_policy_refusal_bounces_without_suppressing, s_case_done),
        cmocka_unit_test_teardown(test_address_refusal_still_suppresses, s_case_done),
        cmocka_unit_test_teardown(test_capped_peer_keeps_the_queue, s_case_done),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
