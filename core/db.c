/*
 * db - PostgreSQL through libpq, kept behind db.h so PGconn and PGresult
 * never leak into the rest of the code.
 *
 * How it is used: db_connect once per thread (a connection is not shared),
 * then db_query / db_exec with $n parameters sent separately from the SQL
 * text (PQexecParams, text format), so no value is ever pasted into SQL.
 * db_exec_script runs several statements at once (migrations only).
 *
 * What can go wrong: the server is down or restarting (db_connect retries
 * for as long as the caller allows; db_ping reconnects once), a statement
 * fails (err gets the server's one-line message and SQLSTATE). A failed
 * query does not reconnect by itself: after a lost connection the caller
 * decides, via db_ping, because a silent reconnect inside a transaction
 * would run the next statements outside it.
 *
 * Security: error messages name host, port and database, never the
 * password; a conninfo string that does not parse is not echoed because
 * libpq's parse errors quote fragments of it.
 */
#include <assert.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "backoff.h"
#include "config.h"
#include "dict.h"
#include "hashring.h"
#include "log.h"
#include "db.h"

/* libpq waits forever for an unreachable host unless told otherwise; this
 * applies only when the conninfo sets no connect_timeout of its own. */
#define DB_CONNECT_TIMEOUT_S "10"

struct db {
    PGconn *conn;     /* the libpq connection; never NULL while the db_t lives */
    char sqlstate[6]; /* SQLSTATE of the last failed statement, "" if none */
    dict_t *prepared; /* statement names prepared on this session */
};

struct db_result {
    PGresult *res; /* the libpq result, owned here */
};

/* Append msg to err as one line: runs of whitespace (libpq's messages end
 * in newlines and carry tab-indented hints) become one space, and the ends
 * are trimmed. */
static void s_append_line(sbuf_t *err, const char *msg)
{
    int pending_space = 0;
    int any = 0;
    for (const char *p = msg ? msg : ""; *p; p++) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
            pending_space = any;
            continue;
        }
        if (pending_space)
            sbuf_append(err, " ", 1);
        sbuf_append(err, p, 1);
        pending_space = 0;
        any = 1;
    }
}

/* Server warnings (not the NOTICE chatter of IF NOT EXISTS) are worth a line
 * in the log; libpq's default would print them raw on stderr. */
static void s_notice(void *arg, const PGresult *res)
{
    (void)arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (!severity || strcmp(severity, "WARNING") != 0)
        return;
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    char printable[256];
    msg = msg ? msg : "";
    log_warn("server warning: %s", log_printable(printable, sizeof printable, msg, strlen(msg)));
}

/* A string that libpq would read as a keyword=value list or URI, as opposed
 * to a bare database name. */
static int s_is_conninfo(const char *conninfo)
{
    return strchr(conninfo, '=') || strncmp(conninfo, "postgresql://", 13) == 0 ||
           strncmp(conninfo, "postgres://", 11) == 0;
}

static void s_connect_error(sbuf_t *err, PGconn *conn)
{
    const char *host = PQhost(conn);
    const char *port = PQport(conn);
    const char *dbname = PQdb(conn);
    sbuf_reset(err);
    sbuf_appendf(err, "cannot connect to PostgreSQL (host=%s, port=%s, dbname=%s): ",
                 host && *host ? host : "(default)", port && *port ? port : "(default)",
                 dbname && *dbname ? dbname : "(default)");
    s_append_line(err, PQerrorMessage(conn));
}

db_t *db_connect(const char *conninfo, int64_t wait_ms, sbuf_t *err)
{
    assert(conninfo && err);
    if (s_is_conninfo(conninfo)) {
        char *parse_err = NULL;
        PQconninfoOption *opts = PQconninfoParse(conninfo, &parse_err);
        if (!opts) {
            PQfreemem(parse_err);
            sbuf_reset(err);
            sbuf_append_str(err, "cannot connect to PostgreSQL: the connection string does "
                                 "not parse (not shown: it may hold a password)");
            return NULL;
        }
        PQconninfoFree(opts);
    }
    db_t *self = calloc(1, sizeof *self);
    if (!self) {
        sbuf_reset(err);
        sbuf_append_str(err, "cannot connect to PostgreSQL: out of memory");
        return NULL;
    }
    /* connect_timeout comes first so a value in conninfo (expanded from
     * dbname) overrides it. */
    const char *const keys[] = {"connect_timeout", "dbname", NULL};
    const char *const values[] = {DB_CONNECT_TIMEOUT_S, conninfo, NULL};
    backoff_t backoff;
    backoff_start(&backoff, wait_ms);
    for (;;) {
        self->conn = PQconnectdbParams(keys, values, 1);
        if (self->conn && PQstatus(self->conn) == CONNECTION_OK)
            break;
        if (!self->conn) {
            sbuf_reset(err);
            sbuf_append_str(err, "cannot connect to PostgreSQL: out of memory");
            free(self);
            return NULL;
        }
        s_connect_error(err, self->conn);
        PQfinish(self->conn);
        self->conn = NULL;
        if (!backoff_wait(&backoff)) {
            free(self);
            return NULL;
        }
    }
    PQsetNoticeReceiver(self->conn, s_notice, NULL);
    return self;
}

void db_destroy(db_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    PQfinish((*self_p)->conn);
    dict_destroy(&(*self_p)->prepared);
    free(*self_p);
    *self_p = NULL;
}

/* Did a statement (result may be NULL) succeed? Otherwise fill err with the
 * server's primary message and SQLSTATE, or the connection's error when
 * there is no server message (connection lost, out of memory). */
static int s_check(db_t *self, PGresult *res, sbuf_t *err)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
        self->sqlstate[0] = '\0';
        return 0;
    }
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!msg)
        msg = res && *PQresultErrorMessage(res) ? PQresultErrorMessage(res)
                                                : PQerrorMessage(self->conn);
    snprintf(self->sqlstate, sizeof self->sqlstate, "%s", state ? state : "");
    if (err) {
        sbuf_reset(err);
        s_append_line(err, msg);
        if (sbuf_len(err) == 0)
            sbuf_append_str(err, "statement failed");
        if (state)
            sbuf_appendf(err, " (SQLSTATE %s)", state);
    }
    return -1;
}

db_result_t *db_query(db_t *self, const char *sql, int n, const char *const *values, sbuf_t *err)
{
    assert(self && sql && n >= 0 && (n == 0 || values));
    PGresult *res = PQexecParams(self->conn, sql, n, NULL, values, NULL, NULL, 0);
    if (s_check(self, res, err) != 0) {
        PQclear(res);
        return NULL;
    }
    db_result_t *out = malloc(sizeof *out);
    if (!out) {
        PQclear(res);
        if (err) {
            sbuf_reset(err);
            sbuf_append_str(err, "out of memory");
        }
        return NULL;
    }
    out->res = res;
    return out;
}

db_result_t *db_query_prepared(db_t *self, const char *sql, int n, const char *const *values,
                               sbuf_t *err)
{
    assert(self && sql && n >= 0 && (n == 0 || values));
    char name[24];
    snprintf(name, sizeof name, "p%016llx",
             (unsigned long long)hashring_hash(sql, strlen(sql), 0x706f73746368ULL));
    if (!self->prepared)
        self->prepared = dict_new();
    if (!self->prepared || !dict_get(self->prepared, name, strlen(name))) {
        PGresult *prep = PQprepare(self->conn, name, sql, n, NULL);
        int rc = s_check(self, prep, err);
        PQclear(prep);
        if (rc != 0)
            return NULL;
        if (self->prepared)
            dict_put(self->prepared, name, strlen(name), (void *)1);
    }
    PGresult *res = PQexecPrepared(self->conn, name, n, values, NULL, NULL, 0);
    if (s_check(self, res, err) != 0) {
        PQclear(res);
        return NULL;
    }
    db_result_t *out = malloc(sizeof *out);
    if (!out) {
        PQclear(res);
        if (err) {
            sbuf_reset(err);
            sbuf_append_str(err, "out of memory");
        }
        return NULL;
    }
    out->res = res;
    return out;
}

int db_exec(db_t *self, const char *sql, int n, const char *const *values, sbuf_t *err)
{
    db_result_t *res = db_query(self, sql, n, values, err);
    if (!res)
        return -1;
    db_result_free(&res);
    return 0;
}

int db_exec_script(db_t *self, const char *sql, sbuf_t *err)
{
    assert(self && sql);
    /* PQexec (not PQexecParams) because only the simple query protocol
     * accepts several statements; it stops at the first failing one. */
    PGresult *res = PQexec(self->conn, sql);
    int rc = s_check(self, res, err);
    PQclear(res);
    return rc;
}

int db_usable(const db_t *self)
{
    return self && self->conn && PQstatus(self->conn) == CONNECTION_OK;
}

int db_alive(db_t *self)
{
    if (!db_usable(self))
        return 0;
    /* An idle session gets nothing from the server unless it is going
     * away (a FATAL notice, then the close): Postchi never LISTENs, so
     * anything to read means a new connection is due. (libpq itself would
     * read the notice and still call the connection fine until the next
     * statement failed.) */
    struct pollfd p = {.fd = PQsocket(self->conn), .events = POLLIN};
    if (p.fd < 0 || poll(&p, 1, 0) < 0)
        return 0;
    return p.revents == 0;
}

int db_ping(db_t *self)
{
    assert(self);
    int reset = 0;
    for (;;) {
        if (PQstatus(self->conn) != CONNECTION_OK) {
            if (reset)
                return 0;
            PQreset(self->conn);
            dict_destroy(&self->prepared); /* a new session has none */
            reset = 1;
            if (PQstatus(self->conn) != CONNECTION_OK)
                return 0;
        }
        PGresult *res = PQexec(self->conn, "SELECT 1");
        int ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
        PQclear(res);
        if (ok)
            return 1;
        /* A server that dropped us leaves the status OK until the first
         * statement fails; only a broken connection earns the reconnect
         * (an error such as "transaction aborted" would not be cured). */
        if (PQstatus(self->conn) == CONNECTION_OK || reset)
            return 0;
    }
}

const char *db_sqlstate(const db_t *self)
{
    assert(self);
    return self->sqlstate;
}

int db_result_rows(const db_result_t *res)
{
    assert(res);
    return PQntuples(res->res);
}

int db_result_cols(const db_result_t *res)
{
    assert(res);
    return PQnfields(res->res);
}

const char *db_result_get(const db_result_t *res, int row, int col)
{
    assert(res);
    assert(row >= 0 && row < PQntuples(res->res) && col >= 0 && col < PQnfields(res->res));
    if (PQgetisnull(res->res, row, col))
        return NULL;
    return PQgetvalue(res->res, row, col);
}

long db_result_affected(const db_result_t *res)
{
    assert(res);
    const char *n = PQcmdTuples(res->res);
    return *n ? strtol(n, NULL, 10) : 0;
}

void db_result_free(db_result_t **res_p)
{
    if (!res_p || !*res_p)
        return;
    PQclear((*res_p)->res);
    free(*res_p);
    *res_p = NULL;
}

/* Append key='value' with libpq's quoting: single quotes around the value,
 * backslash and single quote escaped by a backslash. */
static int s_append_kv(sbuf_t *out, const char *key, const char *value)
{
    int rc = 0;
    if (sbuf_len(out) > 0)
        rc |= sbuf_append(out, " ", 1);
    rc |= sbuf_appendf(out, "%s='", key);
    for (const char *p = value ? value : ""; *p; p++) {
        if (*p == '\\' || *p == '\'')
            rc |= sbuf_append(out, "\\", 1);
        rc |= sbuf_append(out, p, 1);
    }
    rc |= sbuf_append(out, "'", 1);
    return rc;
}

char *db_conninfo_from_config(const struct config *cfg)
{
    assert(cfg);
    const char *dsn = config_str(cfg, "pg_dsn");
    if (dsn && *dsn)
        return strdup(dsn);
    sbuf_t *out = sbuf_new(128);
    if (!out)
        return NULL;
    char port[32];
    snprintf(port, sizeof port, "%lld", (long long)config_int(cfg, "pg_port"));
    int rc = s_append_kv(out, "host", config_str(cfg, "pg_host"));
    rc |= s_append_kv(out, "port", port);
    rc |= s_append_kv(out, "dbname", config_str(cfg, "pg_database"));
    rc |= s_append_kv(out, "user", config_str(cfg, "pg_user"));
    const char *password = config_str(cfg, "pg_password");
    if (password && *password)
        rc |= s_append_kv(out, "password", password);
    /* A half-built conninfo would connect somewhere unintended. */
    char *conninfo = rc == 0 ? sbuf_detach(out, NULL) : NULL;
    sbuf_destroy(&out);
    return conninfo;
}
