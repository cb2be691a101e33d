/*
 * test_sweeper_analyze - the sweeper renews the statistics of a table that
 * outgrew them, against a real worker and PostgreSQL.
 *
 * PostgreSQL believes a table's size from its last VACUUM or ANALYZE and
 * caches plans made on that belief (a foreign-key check's plan lives as
 * long as the connection): a table measured while nearly empty gets a
 * sequential scan per check, which a new installation's first big send
 * turns into seconds per bulk step. Autovacuum looks once a minute; the
 * sweeper's leader looks every round.
 *
 *   grown     contacts measured empty, then 2,000 rows written: within a
 *             few rounds the table has been analyzed by hand (analyze_count,
 *             which autovacuum's own runs do not count) and its statistics
 *             say 2,000 rows; the worker's counter says so too. The file
 *             grows before the INSERT commits, so a round may analyze it
 *             without those rows; the row counts, once reported, must
 *             bring the statistics right.
 *   steady    growth short of doubling (100 rows on 2,000) is left to
 *             autovacuum: no manual ANALYZE over several rounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_util.h"

static api_env_t E;

static int s_setup(void **state)
{
    (void)state;
    if (api_env_start(&E, NULL) != 0)
        return -1;
    /* Autovacuum must not be the one to measure the table: with a test
     * database per test its workers come by every few seconds, take the
     * lock the sweeper's ANALYZE then gives up on (200 ms), and leave the
     * statistics renewed without it. */
    free(api_sql(&E, "ALTER TABLE contacts SET (autovacuum_enabled = false)"));
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    return api_env_stop(&E) == 0 ? 0 : -1;
}

static long s_manual_analyzes(void)
{
    return api_sql_long(&E, "SELECT analyze_count FROM pg_stat_user_tables "
                            "WHERE relname = 'contacts' AND schemaname = current_schema()");
}

static void s_add_contacts(int from, int n)
{
    free(api_sqlf(&E,
                  "INSERT INTO contacts (organization_id, email) SELECT '%s', "
                  "'grow' || g || '@grow.example' FROM generate_series(%d, %d) g",
                  E.org_id, from, from + n - 1));
}

static void test_grown(void **state)
{
    (void)state;
    free(api_sql(&E, "VACUUM ANALYZE contacts"));
    long before = s_manual_analyzes();
    s_add_contacts(1, 2000);
    long after = before, tuples = 0;
    for (int i = 0; i < 100 && (after == before || tuples < 2000); i++) {
        usleep(200 * 1000);
        after = s_manual_analyzes();
        tuples = api_sql_long(&E, "SELECT reltuples::bigint FROM pg_class "
                                  "WHERE oid = 'contacts'::regclass");
    }
    assert_true(after > before);
    assert_true(tuples >= 2000);
    assert_true(mesh_metric(E.mesh.worker_metrics[0], "postchi_worker_tables_analyzed_total") >=
                1.0);
}

static void test_steady(void **state)
{
    (void)state;
    long before = s_manual_analyzes();
    s_add_contacts(100000, 100);
    sleep(6); /* three sweeper rounds */
    assert_int_equal(s_manual_analyzes(), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grown),
        cmocka_unit_test(test_steady),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
