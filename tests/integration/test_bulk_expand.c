/*
 * test_bulk_expand - a bulk send written in steps (bulk_chunk = 7 here):
 * the API writes the batch and its first step, the tenant actor the rest,
 * each step one transaction with the cursor.
 *
 * 1. A list of 60 (5 of them suppressed or unsubscribed) over two domains:
 *    the 202 says "expanding" with the first 7; the batch ends "expanded"
 *    with 60 rows, one per contact, the counts right, and every queued row
 *    reaches the real smtp-sink. Repeated "expand" announcements (sent
 *    straight to the tenant actor while it runs) write nothing twice.
 * 2. Resume: with no worker alive, a segment send gets only its first step;
 *    the broker holding its "expand" is killed (the announcement is lost),
 *    the segment is edited to match nobody, and a worker started: the
 *    sweeper announces the stalled batch again and it is finished with the
 *    rule as it was at acceptance, one row per member.
 * 3. A list larger than one step but with a future send_at: every row is
 *    'scheduled', none sent; its attachment is stored once for the send.
 * 4. Steps racing: three threads of this test run messages_expand on their
 *    own connections while the tenant actor does too (as two activations
 *    on two workers could for a moment): the batch row lock and the cursor
 *    keep every contact to one row.
 * 5. An address an earlier step wrote comes back as a new contact before a
 *    later step: written once, and the send still finishes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delivery_util.h"
#include "messages.h"

static api_env_t E;
static dsink_t S;

static int s_setup(void **state)
{
    (void)state;
    setenv("POSTCHI_BULK_CHUNK", "7", 1);
    return dl_env_start(&E, &S, 1);
}

static int s_teardown(void **state)
{
    (void)state;
    return dl_env_stop(&E, &S);
}

/* n contacts "<prefix><i>@<domain i % 2>" on a new list; returns the list id
 * (caller frees). */
static char *s_list(const char *prefix, int n)
{
    char *list = dl_sql(&E,
                        "WITH c AS (INSERT INTO contacts (organization_id, email, fields)"
                        " SELECT '%s', '%s' || i || '@' || CASE WHEN i %% 2 = 0 THEN 'even'"
                        " ELSE 'odd' END || '.example', jsonb_build_object('run', '%s')"
                        " FROM generate_series(1, %d) i RETURNING id),"
                        " l AS (INSERT INTO lists (organization_id, name) VALUES ('%s', '%s')"
                        " RETURNING id),"
                        " m AS (INSERT INTO list_members (organization_id, list_id, contact_id)"
                        " SELECT '%s', l.id, c.id FROM l, c RETURNING list_id)"
                        " SELECT DISTINCT list_id FROM m",
                        E.org_id, prefix, prefix, n, E.org_id, prefix, E.org_id);
    assert_non_null(list);
    return list;
}

/* GET the batch until its status is "expanded" or ms pass; returns the
 * last body (caller frees r). */
static void s_wait_expanded(const char *batch, int ms, api_resp_t *r)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/messages/batches/%s", batch);
    int64_t deadline = harness_now_ms() + ms;
    for (;;) {
        assert_int_equal(api_call(&E, "GET", path, E.key_read, NULL, NULL, r), 200);
        const char *st = json_string_value(json_object_get(r->json, "status"));
        if ((st && strcmp(st, "expanded") == 0) || harness_now_ms() > deadline)
            return;
        api_resp_free(r);
        usleep(100 * 1000);
    }
}

/* POST a bulk send from news@send.example to field ("to_list" or
 * "to_segment") = id with extra JSON members (",\"k\":v" or ""); expects
 * 202 "expanding" and copies batch_id (size >= 64). The body stays in r. */
static void s_post_bulk(const char *field, const char *id, const char *subject, const char *extra,
                        char *batch, api_resp_t *r)
{
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, r,
              "{\"from\":{\"email\":\"news@send.example\"},\"%s\":\"%s\",\"subject\":\"%s\","
              "\"text\":\"one of many\"%s}",
              field, id, subject, extra);
    assert_int_equal(r->status, 202);
    assert_string_equal(json_string_value(json_object_get(r->json, "status")), "expanding");
    snprintf(batch, 64, "%s", json_string_value(json_object_get(r->json, "batch_id")));
}

static long s_count(const char *batch, const char *cond)
{
    return api_sql_long(&E, "SELECT count(*) FROM messages WHERE batch_id = '%s' AND %s", batch,
                        cond);
}

/* Contacts of the batch with more than one row. */
static long s_doubles(const char *batch)
{
    return api_sql_long(&E,
                        "SELECT count(*) FROM (SELECT contact_id FROM messages WHERE batch_id ="
                        " '%s' GROUP BY contact_id HAVING count(*) > 1) d",
                        batch);
}

static void test_list_expands_in_steps_and_delivers(void **state)
{
    (void)state;
    char *list = s_list("step", 60);
    /* Three unsubscribed contacts and two suppressions: 5 rows suppressed. */
    free(dl_sql(&E,
                "UPDATE contacts SET status = 'unsubscribed' WHERE organization_id = '%s'"
                " AND email IN ('step1@odd.example', 'step30@even.example',"
                " 'step59@odd.example') RETURNING 1",
                E.org_id));
    free(dl_sql(&E,
                "INSERT INTO suppressions (organization_id, email, reason) VALUES"
                " ('%s', 'step2@even.example', 'complaint'), ('%s', 'STEP44@even.example',"
                " 'manual') RETURNING 1",
                E.org_id, E.org_id));
    api_resp_t r = {0};
    char batch[64];
    s_post_bulk("to_list", list, "Steps", "", batch, &r);
    free(list);
    assert_int_equal(json_integer_value(json_object_get(r.json, "total")), 7);
    api_resp_free(&r);

    /* Extra announcements while it runs: each one is a step at most, and
     * a step past the end writes nothing. */
    char body[96], addr[96];
    snprintf(body, sizeof body, "{\"batch_id\":\"%s\"}", batch);
    snprintf(addr, sizeof addr, "tenant/%s", E.org_id);
    mesh_client_t *c = mesh_client(&E.mesh);
    assert_non_null(c);
    for (int i = 0; i < 5; i++)
        assert_int_equal(mesh_client_send(c, addr, "expand", body, strlen(body)), 0);

    s_wait_expanded(batch, 20000, &r);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "expanded");
    assert_int_equal(json_integer_value(json_object_get(r.json, "total")), 60);
    json_t *counts = json_object_get(r.json, "counts");
    assert_int_equal(json_integer_value(json_object_get(counts, "suppressed")), 5);
    api_resp_free(&r);
    assert_int_equal(s_count(batch, "true"), 60);
    assert_int_equal(api_sql_long(&E, "SELECT count(DISTINCT contact_id) FROM messages WHERE"
                                      " batch_id = '%s'", batch), 60);
    assert_int_equal(s_doubles(batch), 0);
    /* The worker wrote all but the API's first step, and counted them. */
    assert_true(mesh_metric(E.mesh.worker_metrics[0], "postchi_worker_bulk_rows_written_total") ==
                53.0);
    assert_int_equal(s_count(batch, "status = 'suppressed' AND recipient IN ('step1@odd.example',"
                                    " 'step30@even.example', 'step59@odd.example',"
                                    " 'step2@even.example', 'step44@even.example')"), 5);
    /* Every row has its first event, once. */
    assert_int_equal(api_sql_long(&E,
                                  "SELECT count(*) FROM message_events e JOIN messages m ON"
                                  " m.id = e.message_id WHERE m.batch_id = '%s' AND e.type IN"
                                  " ('accepted', 'suppressed')", batch), 60);

    /* The 55 others are delivered, each once, to the real sink. */
    int64_t deadline = harness_now_ms() + 30000;
    while (s_count(batch, "status = 'sent'") < 55 && harness_now_ms() < deadline)
        usleep(100 * 1000);
    assert_int_equal(s_count(batch, "status = 'sent'"), 55);
    assert_int_equal(dsink_count(&S, "Subject: Steps"), 55);
    mesh_client_destroy(&c);
}

static void test_stalled_segment_send_resumes_with_its_rule(void **state)
{
    (void)state;
    char *list = s_list("seg", 40);
    free(list);
    api_resp_t r = {0};
    assert_int_equal(
        api_call(&E, "POST", "/api/v1/segments", E.key_full,
                 "{\"name\":\"seg run\",\"rule\":{\"field\":\"fields.run\",\"op\":\"eq\","
                 "\"value\":\"seg\"}}",
                 NULL, &r),
        201);
    char seg[64];
    snprintf(seg, sizeof seg, "%s", json_string_value(json_object_get(r.json, "id")));
    api_resp_free(&r);

    /* No worker: nothing but the first step can be written. */
    harness_kill9(E.mesh.workers[0]);
    E.mesh.workers[0] = NULL;
    char batch[64];
    s_post_bulk("to_segment", seg, "Resumed", "", batch, &r);
    api_resp_free(&r);
    usleep(500 * 1000);
    assert_int_equal(s_count(batch, "true"), 7);
    /* The segment now matches nobody: the send keeps its rule. */
    char path[128];
    snprintf(path, sizeof path, "/api/v1/segments/%s", seg);
    assert_int_equal(api_call(&E, "PATCH", path, E.key_full,
                              "{\"rule\":{\"field\":\"fields.run\",\"op\":\"eq\","
                              "\"value\":\"nobody\"}}",
                              NULL, &r),
                     200);
    api_resp_free(&r);

    /* The API's "expand" waits in the broker for a worker: a broker crash
     * loses it, so only the sweeper can finish this send. */
    harness_kill9(E.mesh.broker);
    E.mesh.broker = NULL;
    assert_int_equal(mesh_start_broker(&E.mesh), 0);
    int64_t restarted = harness_now_ms();
    assert_int_equal(mesh_start_worker(&E.mesh, 0), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, 1, 10000), 0);
    /* The sweeper re-announces batches idle for 5 s. */
    s_wait_expanded(batch, 40000, &r);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "expanded");
    assert_int_equal(json_integer_value(json_object_get(r.json, "total")), 40);
    api_resp_free(&r);
    printf("stalled segment send finished %.1f s after the broker restart\n",
           (double)(harness_now_ms() - restarted) / 1000.0);
    assert_int_equal(s_count(batch, "true"), 40);
    assert_int_equal(s_doubles(batch), 0);
    assert_int_equal(api_sql_long(&E,
                                  "SELECT count(*) FROM messages m JOIN contacts c ON"
                                  " c.id = m.contact_id WHERE m.batch_id = '%s' AND"
                                  " c.fields->>'run' = 'seg'", batch), 40);
}

static void test_scheduled_bulk_send_is_scheduled_in_every_step(void **state)
{
    (void)state;
    char *list = s_list("later", 20);
    api_resp_t r = {0};
    char batch[64];
    s_post_bulk("to_list", list, "Later",
                ",\"send_at\":\"2099-01-01T00:00:00Z\",\"attachments\":[{\"filename\":"
                "\"a.txt\",\"content_type\":\"text/plain\",\"content\":\"aGVsbG8=\"}]",
                batch, &r);
    free(list);
    assert_int_equal(json_integer_value(json_object_get(r.json, "scheduled")), 7);
    api_resp_free(&r);
    s_wait_expanded(batch, 20000, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "total")), 20);
    api_resp_free(&r);
    assert_int_equal(s_count(batch, "status = 'scheduled' AND send_at = '2099-01-01T00:00:00Z'"),
                     20);
    /* The attachment is stored once for the whole send. */
    assert_int_equal(api_sql_long(&E,
                                  "SELECT count(*) FROM message_attachments a JOIN batches b ON"
                                  " b.send_id = a.send_id WHERE b.id = '%s' AND"
                                  " a.data = 'hello'::bytea", batch), 1);
}

typedef struct {
    const char *batch; /* the batch to expand */
    long steps;        /* steps that wrote rows */
    int failed;        /* a step failed */
} racer_t;

static void *s_racer(void *arg)
{
    racer_t *r = arg;
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s user=%s dbname=%s",
             harness_server("PG_HOST"), harness_server("PG_PORT"), harness_server("PG_USER"),
             E.db);
    sbuf_t *err = sbuf_new(64);
    db_t *db = err ? db_connect(conninfo, 0, err) : NULL;
    r->failed = !db;
    for (int i = 0; db && i < 1000; i++) {
        messages_step_t step = {0};
        if (db_exec(db, "BEGIN", 0, NULL, err) != 0 ||
            messages_expand(db, E.org_id, r->batch, &step, err) != 0 ||
            db_exec(db, "COMMIT", 0, NULL, err) != 0) {
            db_exec(db, "ROLLBACK", 0, NULL, NULL);
            fprintf(stderr, "racer: %s\n", sbuf_data(err));
            r->failed = 1;
            messages_step_clear(&step);
            break;
        }
        int done = step.done;
        r->steps += step.written > 0;
        messages_step_clear(&step);
        if (done)
            break;
    }
    db_destroy(&db);
    sbuf_destroy(&err);
    return NULL;
}

static void test_racing_steps_write_each_member_once(void **state)
{
    (void)state;
    char *list = s_list("race", 300);
    api_resp_t r = {0};
    char batch[64];
    s_post_bulk("to_list", list, "Race", ",\"send_at\":\"2099-01-01T00:00:00Z\"", batch, &r);
    free(list);
    api_resp_free(&r);
    racer_t racers[3] = {{batch, 0, 0}, {batch, 0, 0}, {batch, 0, 0}};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, s_racer, &racers[i]), 0);
    long by_racers = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        assert_false(racers[i].failed);
        by_racers += racers[i].steps;
    }
    /* The race happened: the test's threads wrote some of the steps. */
    assert_true(by_racers > 0);
    s_wait_expanded(batch, 20000, &r);
    assert_int_equal(json_integer_value(json_object_get(r.json, "total")), 300);
    api_resp_free(&r);
    assert_int_equal(s_count(batch, "true"), 300);
    assert_int_equal(s_doubles(batch), 0);
    printf("racing steps: %ld of the 43 written by the test's threads\n", by_racers);
}

/* An address written by an earlier step comes back as another contact
 * (deleted and created again by a CRM sync, or another contact given the
 * address) before a later step: the later step skips it. It used to fail
 * on the send's one-row-per-recipient index, roll back, and be tried again
 * every 5 s forever, with the rest of the list never written. */
static void test_address_recreated_mid_expansion_is_written_once(void **state)
{
    (void)state;
    char *list = s_list("again", 20);
    api_resp_t r = {0};
    /* No worker: the API writes the first step only. */
    harness_kill9(E.mesh.workers[0]);
    E.mesh.workers[0] = NULL;
    char batch[64];
    s_post_bulk("to_list", list, "Again", ",\"send_at\":\"2099-01-01T00:00:00Z\"", batch, &r);
    api_resp_free(&r);
    assert_int_equal(s_count(batch, "true"), 7);
    /* A contact of that first step goes, and its address comes back as a
     * new contact on the list, after the cursor. */
    char *first = dl_sql(&E, "SELECT recipient FROM messages WHERE batch_id = '%s'"
                             " ORDER BY recipient LIMIT 1", batch);
    assert_non_null(first);
    free(dl_sql(&E, "DELETE FROM contacts WHERE organization_id = '%s' AND email = '%s'",
                E.org_id, first));
    free(dl_sql(&E,
                "WITH c AS (INSERT INTO contacts (organization_id, email) VALUES ('%s', '%s')"
                " RETURNING id) INSERT INTO list_members (organization_id, list_id, contact_id)"
                " SELECT '%s', '%s', id FROM c",
                E.org_id, first, E.org_id, list));
    racer_t one = {batch, 0, 0};
    s_racer(&one);
    assert_false(one.failed);
    s_wait_expanded(batch, 5000, &r);
    assert_string_equal(json_string_value(json_object_get(r.json, "status")), "expanded");
    /* 20 members then 20 again, the returning one written once. */
    assert_int_equal(json_integer_value(json_object_get(r.json, "total")), 20);
    api_resp_free(&r);
    assert_int_equal(s_count(batch, "true"), 20);
    assert_int_equal(api_sql_long(&E, "SELECT count(*) FROM messages WHERE batch_id = '%s'"
                                      " AND lower(recipient) = lower('%s')", batch, first),
                     1);
    free(first);
    free(list);
    assert_int_equal(mesh_start_worker(&E.mesh, 0), 0);
    assert_int_equal(mesh_wait_live(&E.mesh, 1, 10000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_expands_in_steps_and_delivers),
        cmocka_unit_test(test_stalled_segment_send_resumes_with_its_rule),
        cmocka_unit_test(test_scheduled_bulk_send_is_scheduled_in_every_step),
        cmocka_unit_test(test_racing_steps_write_each_member_once),
        cmocka_unit_test(test_address_recreated_mid_expansion_is_written_once),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
