/*
 * delivery - the worker's SMTP engine: one thread, one poll loop over every
 * outgoing connection (no thread parked per connection), connections pooled
 * per destination and reused for several messages.
 *
 * Mailer actors hand it signed, ready-to-send jobs; it records each
 * outcome in PostgreSQL itself (sent, deferred with back-off, bounced and
 * suppressed, or failed past delivery_max_age_s), guarded by the row still
 * being 'sending', so a stale outcome never overwrites a newer one.
 */
#ifndef POSTCHI_DELIVERY_H
#define POSTCHI_DELIVERY_H

#include <stddef.h>

#include "config.h"
#include "sbuf.h"

typedef struct delivery delivery_t;

typedef struct {
    char id[40];        /* messages.id */
    char host[256];     /* numeric address to connect to */
    int port;           /* its port */
    char *mail_from;    /* envelope sender (VERP return path) */
    char *rcpt;         /* envelope recipient */
    char *data;         /* the signed message */
    size_t len;         /* its length */
    int smtputf8;       /* needs SMTPUTF8 */
} delivery_job_t;

delivery_t *delivery_start(const config_t *cfg, sbuf_t *err);
/* Stops the thread; jobs not yet sent stay 'sending' and are re-driven
 * when their lease ends. NULL-safe. */
void delivery_stop(delivery_t **self_p);
/* Queue a job; the engine owns *job_p (and its strings) afterwards and sets
 * *job_p to NULL. 0 or -1 (stopping). */
int delivery_submit(delivery_t *self, delivery_job_t **job_p);
void delivery_job_free(delivery_job_t **job_p);

/* The worker's engine, for mailer actors (set by worker_main). */
delivery_t *delivery_instance(void);
void delivery_set_instance(delivery_t *d);

#endif
