/*
 * delivery_util - what the delivery integration tests share on top of
 * api_util: a dumping smtp-sink on a fixed port (restartable with other
 * fault options, so the worker's relay setting never changes), a verified
 * sending domain made by SQL, sends that return the first row's id, and
 * waits on a row's status.
 */
#ifndef POSTCHI_TEST_DELIVERY_UTIL_H
#define POSTCHI_TEST_DELIVERY_UTIL_H

#include "api_util.h"

typedef struct {
    int port;                /* 127.0.0.1 port the sink listens on */
    char dir[64];            /* dump directory (one file per transaction) */
    harness_proc_t *proc;    /* running smtp-sink, or NULL */
} dsink_t;

/* Pick a port and make the dump directory. Starts nothing. 0 or -1. */
int dsink_init(dsink_t *s);
/* Start smtp-sink with extra options (NULL or NULL-terminated, e.g.
 * {"-f", "RCPT", NULL}) and wait until it accepts connections. 0 or -1. */
int dsink_start(dsink_t *s, const char *const *opts);
/* Stop the sink (when running) and wait for it to exit. */
void dsink_stop(dsink_t *s);
/* Stop it and remove the dump directory. */
void dsink_destroy(dsink_t *s);
/* How many dump files contain needle. */
int dsink_count(const dsink_t *s, const char *needle);
/* Call fn for every dump file's text (LF line ends kept as read). */
void dsink_each(const dsink_t *s, void (*fn)(const char *text, void *arg), void *arg);

/* The usual start: init the sink (and start it plainly when start_sink),
 * point workers at it (POSTCHI_SMTP_RELAY) with the test secret key, start
 * the API node and its worker, and make send.example a verified domain.
 * Other worker settings go in the environment (setenv) before this. 0 or -1. */
int dl_env_start(api_env_t *e, dsink_t *s, int start_sink);
/* Start the API node and its worker with the test secret key and make
 * send.example a verified domain (the part of dl_env_start after the sink,
 * for tests that route mail their own way). 0 or -1. */
int dl_env_start_api(api_env_t *e);
/* Deliver the message in file to rcpt on 127.0.0.1:port with python3's
 * smtplib, reverse path from ("" for a null one, as MTAs send bounces).
 * The SMTP code of the final reply (250 when accepted), or -1. */
int dl_smtp_deliver(int port, const char *from, const char *rcpt, const char *file);
/* Stop everything and remove the dumps; how many processes did not exit
 * cleanly. */
int dl_env_stop(api_env_t *e, dsink_t *s);

/* Make domain a verified sending domain of e's organization; returns its id
 * (caller frees) or NULL. */
char *dl_verified_domain(api_env_t *e, const char *domain);
/* POST /api/v1/messages with body (printf-style); expects 202 and copies
 * the first row's id into id (size >= 64). Returns the HTTP status. */
int dl_send(api_env_t *e, char *id, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The row's status (caller frees) or NULL. */
char *dl_status(api_env_t *e, const char *id);
/* Poll until the row's status is want or ms pass; returns the last status
 * seen (caller frees). */
char *dl_wait_status(api_env_t *e, const char *id, const char *want, int ms);
/* api_sql with printf formatting (caller frees). */
char *dl_sql(api_env_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Both DKIM signatures (Ed25519 and RSA) of msg, a delivered message that
 * starts at its first DKIM-Signature field, verify with dkimpy against the
 * keys domain (of e's organization) publishes. Fails the test otherwise. */
void dl_dkim_verify_both(api_env_t *e, const char *domain, const char *msg);

#endif
