/*
 * migrate - applies the numbered SQL files of ops/migrations (compiled into
 * the binary) in order, each in its own transaction, recording each in
 * schema_migrations. A session advisory lock makes two `postchi migrate`
 * runs at once safe: the second waits, then finds nothing left to do.
 */
#ifndef POSTCHI_MIGRATE_H
#define POSTCHI_MIGRATE_H

#include "db.h"
#include "sbuf.h"

typedef struct {
    int version;      /* from the NNN_ prefix; 0 ends the table */
    const char *name; /* the rest of the file name */
    const char *sql;  /* the file's text */
} migration_t;

/* Generated at build time from ops/migrations/\*.sql, ended by a zero row. */
extern const migration_t migrations_embedded[];

/* Apply every migration in table not yet recorded. *applied (may be NULL)
 * gets how many ran now. 0, or -1 with err naming the failing migration;
 * a failing migration leaves no trace (its transaction is rolled back). */
int migrate_run(db_t *db, const migration_t *table, int *applied, sbuf_t *err);
/* Highest applied version (0 when none), or -1 with err. */
int migrate_current(db_t *db, sbuf_t *err);

#endif
