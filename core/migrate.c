/*
 * migrate - brings a database up to the schema this binary was built with.
 *
 * How: under a session-level advisory lock (so concurrent `postchi migrate`
 * runs queue up instead of racing), make sure schema_migrations exists, then
 * for each migration of the table not yet recorded there: BEGIN, run its
 * SQL, record it, COMMIT. The lock is released at the end, also on error
 * (and PostgreSQL drops it anyway if the connection dies).
 *
 * What can go wrong: a migration's SQL fails; its transaction is rolled back
 * so neither its objects nor its schema_migrations row remain, and err names
 * it ("migration 002_contacts: <server message>"). Migrations applied
 * before it in the same run stay applied. A migration must therefore not
 * contain its own BEGIN/COMMIT, nor statements that cannot run inside a
 * transaction (CREATE INDEX CONCURRENTLY, ALTER TYPE ... ADD VALUE on old
 * servers). A table that is not in strictly ascending version order is a
 * programmer error reported through err before anything runs.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "migrate.h"

/* The advisory lock key: "postchiM" in ASCII, so it is recognisable in
 * pg_locks and unlikely to collide with another application's key. */
#define MIGRATE_LOCK_KEY "8101821198383999309"

static const char s_create_table[] = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                     " version int PRIMARY KEY,"
                                     " name text NOT NULL,"
                                     " applied_at timestamptz NOT NULL DEFAULT now())";

/* Versions must be positive and strictly ascending, every row complete. */
static int s_check_table(const migration_t *table, sbuf_t *err)
{
    int prev = 0;
    for (const migration_t *m = table; m->version != 0; m++) {
        if (m->version < 0 || !m->name || !m->sql) {
            sbuf_appendf(err, "migration table: row for version %d is malformed", m->version);
            return -1;
        }
        if (m->version <= prev) {
            sbuf_appendf(err,
                         "migration table: version %d (%s) follows version %d: versions must "
                         "be unique and ascending",
                         m->version, m->name, prev);
            return -1;
        }
        prev = m->version;
    }
    return 0;
}

/* 1 when version is recorded, 0 when not, -1 on error. */
static int s_is_applied(db_t *db, int version, sbuf_t *err)
{
    char v[16];
    snprintf(v, sizeof v, "%d", version);
    const char *params[] = {v};
    db_result_t *res =
        db_query(db, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, params, err);
    if (!res)
        return -1;
    int found = db_result_rows(res) > 0;
    db_result_free(&res);
    return found;
}

/* Apply one migration in its own transaction: 0, or -1 with err set to the
 * server's message and the transaction rolled back. */
static int s_apply(db_t *db, const migration_t *m, sbuf_t *err)
{
    if (db_exec(db, "BEGIN", 0, NULL, err) != 0)
        return -1;
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[] = {v, m->name};
    if (db_exec_script(db, m->sql, err) == 0 &&
        db_exec(db, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, params,
                err) == 0 &&
        db_exec(db, "COMMIT", 0, NULL, err) == 0)
        return 0;
    /* err already holds the reason; ROLLBACK's own failure (lost
     * connection) adds nothing and the server discards the work anyway. */
    db_exec(db, "ROLLBACK", 0, NULL, NULL);
    return -1;
}

/* Everything migrate_run does once it holds the lock; why is scratch space
 * for the server's message. */
static int s_run_locked(db_t *db, const migration_t *table, int *applied, sbuf_t *why, sbuf_t *err)
{
    if (db_exec(db, s_create_table, 0, NULL, why) != 0) {
        sbuf_appendf(err, "migrate: cannot create schema_migrations: %s", sbuf_data(why));
        return -1;
    }
    for (const migration_t *m = table; m->version != 0; m++) {
        int done = s_is_applied(db, m->version, why);
        if (done == 1)
            continue;
        if (done < 0 || s_apply(db, m, why) != 0) {
            sbuf_appendf(err, "migration %03d_%s: %s", m->version, m->name, sbuf_data(why));
            return -1;
        }
        if (applied)
            (*applied)++;
    }
    return 0;
}

int migrate_run(db_t *db, const migration_t *table, int *applied, sbuf_t *err)
{
    assert(db && table && err);
    if (applied)
        *applied = 0;
    sbuf_reset(err);
    if (s_check_table(table, err) != 0)
        return -1;
    sbuf_t *why = sbuf_new(128);
    if (!why) {
        sbuf_append_str(err, "migrate: out of memory");
        return -1;
    }
    const char *key[] = {MIGRATE_LOCK_KEY};
    int rc = -1;
    if (db_exec(db, "SELECT pg_advisory_lock($1::bigint)", 1, key, why) != 0) {
        sbuf_appendf(err, "migrate: cannot take the migration lock: %s", sbuf_data(why));
    } else {
        rc = s_run_locked(db, table, applied, why, err);
        /* On a lost connection this fails, but then the server has
         * released the session lock already. */
        db_exec(db, "SELECT pg_advisory_unlock($1::bigint)", 1, key, NULL);
    }
    sbuf_destroy(&why);
    return rc;
}

int migrate_current(db_t *db, sbuf_t *err)
{
    assert(db && err);
    /* Asking first keeps "never migrated" (0) apart from a real error. */
    db_result_t *res =
        db_query(db, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL, err);
    if (!res)
        return -1;
    int exists = db_result_get(res, 0, 0)[0] == 't';
    db_result_free(&res);
    if (!exists)
        return 0;
    res = db_query(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL, err);
    if (!res)
        return -1;
    int version = atoi(db_result_get(res, 0, 0));
    db_result_free(&res);
    return version;
}
