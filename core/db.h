/*
 * db - PostgreSQL behind one small module (libpq stays in here).
 *
 * Queries always take parameters separately from the SQL text
 * ($1, $2, ...); there is no function that pastes values into SQL.
 * A connection is used by one thread at a time.
 */
#ifndef POSTCHI_DB_H
#define POSTCHI_DB_H

#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

typedef struct db db_t;
typedef struct db_result db_result_t;

/* Connect with a libpq conninfo string. When wait_ms > 0, retry with
 * exponential back-off (100 ms doubling, capped at 2 s) until it works or
 * wait_ms has passed (one attempt may add up to its connect_timeout, 10 s
 * unless conninfo sets one). NULL with err set on failure:
 * "cannot connect to PostgreSQL (host=H, port=P, dbname=D): reason", never
 * with the password in it. */
db_t *db_connect(const char *conninfo, int64_t wait_ms, sbuf_t *err);
void db_destroy(db_t **self_p);
/* 1 when the connection answers a trivial query, 0 otherwise (reconnects
 * once when the server went away). Queries never reconnect by themselves:
 * after a lost connection, db_ping is how a caller gets a new one (session
 * state such as an open transaction or advisory locks is then gone). */
int db_ping(db_t *self);
/* 1 when libpq still counts the connection as up, without a round trip
 * (per-request paths use this; a dropped server shows after one failed
 * statement, and the next caller reconnects). */
int db_usable(const db_t *self);
/* db_usable, and also 0 when the server has already said goodbye on an
 * idle connection (terminated by an administrator, a restart, a pooler):
 * anything waiting to be read on an idle connection says so, seen without
 * blocking and without a round trip, so a per-request path can reconnect
 * before its first statement fails. Only between statements. */
int db_alive(db_t *self);

/* Run sql with n text parameters (values may be NULL for SQL NULL).
 * Returns a result (caller frees with db_result_free) for commands and
 * queries that succeed, or NULL with err (may be NULL) set to the server's
 * message on one line, followed by " (SQLSTATE xxxxx)". */
db_result_t *db_query(db_t *self, const char *sql, int n, const char *const *values,
                      sbuf_t *err);
/* Same, through a named prepared statement made on first use on this
 * session (PostgreSQL then skips parsing and planning). Only for fixed SQL
 * text on hot paths: each distinct text stays prepared for the session. */
db_result_t *db_query_prepared(db_t *self, const char *sql, int n, const char *const *values,
                               sbuf_t *err);
/* Same, for statements whose result is not needed: 0 or -1. */
int db_exec(db_t *self, const char *sql, int n, const char *const *values, sbuf_t *err);
/* Several statements in one string, no parameters (migrations): 0 or -1. */
int db_exec_script(db_t *self, const char *sql, sbuf_t *err);
/* SQLSTATE of the last failed statement ("23505" = unique violation,
 * "40001" = serialization failure), "" after a success or when the failure
 * had none (connection lost). Valid until the next call on self. */
const char *db_sqlstate(const db_t *self);

int db_result_rows(const db_result_t *res);
int db_result_cols(const db_result_t *res);
/* Text value of row/col, or NULL for SQL NULL. Valid until the result is freed. */
const char *db_result_get(const db_result_t *res, int row, int col);
/* Rows affected by an INSERT/UPDATE/DELETE. */
long db_result_affected(const db_result_t *res);
void db_result_free(db_result_t **res_p);

/* The conninfo Postchi uses given its settings: pg_dsn when set, else built
 * from pg_host, pg_port, pg_database, pg_user, pg_password. Caller frees. */
struct config;
char *db_conninfo_from_config(const struct config *cfg);

#endif
