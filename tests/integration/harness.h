/*
 * harness - what integration tests need to run real processes safely.
 *
 * The "servers" ctest fixture (servers.sh) starts PostgreSQL, Redis and
 * smtp-sink on free ports once per test run and writes SERVERS_ENV
 * (KEY=VALUE lines: PG_HOST, PG_PORT, PG_USER, PG_DATABASE, REDIS_HOST,
 * REDIS_PORT, SMTP_HOST, SMTP_PORT, SMTP_DIR). Tests read it here.
 *
 * Every process started with harness_spawn is remembered and killed (its
 * whole process group) at exit, on SIGINT/SIGTERM and on a failed assertion,
 * so a failing test never leaves servers behind. Each process's stdout and
 * stderr go to a log file in the build tree (path printed on failure).
 */
#ifndef POSTCHI_HARNESS_H
#define POSTCHI_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

#include "sbuf.h"

typedef struct harness_proc harness_proc_t;

/* Value from SERVERS_ENV, or NULL (the fixture did not run). */
const char *harness_server(const char *key);
/* Environment strings for a postchi process that point it at the fixture's
 * servers: POSTCHI_PG_HOST, POSTCHI_PG_PORT, POSTCHI_PG_USER,
 * POSTCHI_PG_DATABASE (= database, or the fixture's when NULL),
 * POSTCHI_REDIS_HOST, POSTCHI_REDIS_PORT. Static storage; NULL-terminated. */
char *const *harness_server_env(const char *database);

/* A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read,
 * close); ports handed out are remembered so one test never gets one twice. */
int harness_free_port(void);

/* Create a fresh database named after the test and pid in the fixture's
 * cluster; its name is written to name (size >= 64). 0 or -1. Dropped at exit. */
int harness_create_database(char *name, size_t size);

/* Start argv[0] (a path) with the current environment plus env (NULL or a
 * NULL-terminated list of "KEY=VALUE", which win). label names the log
 * file. NULL on failure. */
harness_proc_t *harness_spawn(const char *label, char *const argv[], char *const env[]);
/* Convenience: start POSTCHI_BIN with one subcommand ("broker", "worker", ...). */
harness_proc_t *harness_spawn_postchi(const char *label, const char *subcommand,
                                      char *const env[]);
pid_t harness_pid(const harness_proc_t *p);
/* Send sig, wait up to timeout_ms for exit, then SIGKILL. Returns the exit
 * status as from waitpid's WEXITSTATUS (0 = clean), 128+signal when it died of
 * a signal, or -1. Frees p. */
int harness_stop(harness_proc_t *p, int sig, int timeout_ms);
/* SIGKILL and reap; frees p. */
void harness_kill9(harness_proc_t *p);
/* 1 while the process has not exited. */
int harness_alive(harness_proc_t *p);
/* Path of the process's log file. */
const char *harness_log_path(const harness_proc_t *p);

/* GET http://127.0.0.1:port/path; returns the HTTP status (body appended to
 * body when not NULL) or -1 when the connection fails. */
int harness_http_get(int port, const char *path, sbuf_t *body);
/* Poll until GET returns 200 or timeout_ms passes: 0 or -1. */
int harness_wait_http(int port, const char *path, int timeout_ms);

/* Milliseconds on a monotonic clock. */
int64_t harness_now_ms(void);

#endif
