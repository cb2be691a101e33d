/*
 * delivery - the worker's SMTP engine: one thread, one poll loop over every
 * outgoing connection (no thread parked per connection), connections pooled
 * per destination and reused for several messages.
 *
 * Mailer actors hand it signed, ready-to-send jobs; it records each
 * outcome in PostgreSQL itself (sent, deferred with back-off, bounced and
 * suppressed, or failed past delivery_max_age_s), guarded by the row still
 * being 'sending', so a stale outcome never overwrites a newer one.
 *
 * Shaping: every job names its shaping key (the MX rollup: jobs with the
 * same key share one budget whatever their domain) and that key's budget.
 * Before a job goes on a connection the engine takes a token from the
 * key's bucket in Redis, shared by every worker; with Redis down each
 * worker uses a local bucket at half the budget. A refused job waits in its
 * destination's queue (never dropped); one held longer than half the lease
 * goes back to the outbox as 'queued' so its lease never runs out under it.
 * Per destination (an address and its MX host name) and worker: at most
 * delivery_connections connections, delivery_connection_rate new ones a
 * second (burst: the pool size) and delivery_messages_per_connection
 * messages on each; a provider's shaping_overrides item may set all three
 * for its hosts (the job carries them; the destination follows its latest
 * job).
 *
 * Fallback: a destination that refuses or drops every connection before
 * its first message (down, firewalled, not speaking SMTP) hands each
 * waiting job to the job's next address (alt, in MX preference order)
 * instead of deferring it; a job whose addresses are used up is deferred.
 */
#ifndef POSTCHI_DELIVERY_H
#define POSTCHI_DELIVERY_H

#include <stddef.h>

#include "config.h"
#include "sbuf.h"

typedef struct delivery delivery_t;

/* Other addresses a job may fall back to (the MX host's other addresses,
 * then the next MX hosts') when its destination cannot be reached. */
#define DELIVERY_MAX_ALTS 4

typedef struct {
    char id[40];        /* messages.id */
    int attempt;        /* the claim's attempts: outcomes apply to this claim only */
    char host[256];     /* numeric address to connect to */
    int port;           /* its port */
    char *mail_from;    /* envelope sender (VERP return path) */
    char *rcpt;         /* envelope recipient */
    char *data;         /* the signed message */
    size_t len;         /* its length */
    int smtputf8;       /* needs SMTPUTF8 */
    char shape_key[300]; /* shaping budget key (MX rollup); "": host:port */
    double shape_rate;  /* its messages per second; <= 0: shaping_rate */
    double shape_burst; /* its burst; <= 0: shaping_burst */
    int max_conns;      /* its destination's connections; 0: delivery_connections */
    int max_per_conn;   /* messages per connection; 0: delivery_messages_per_connection */
    double conn_rate;   /* new connections a second; 0: delivery_connection_rate */
    char tls_name[256]; /* MX host name the certificate must match (smtp_tls=verified); "": host */
    char alt[DELIVERY_MAX_ALTS][46]; /* addresses to try next, in MX preference order */
    char alt_name[DELIVERY_MAX_ALTS][256]; /* the MX host name of each */
    int nalt;           /* entries in alt */
    int alt_next;       /* the next one to try */
    char domain[256];   /* recipient domain (the mailer's): backlog accounting */
} delivery_job_t;

/* Backpressure: a worker holds at most delivery_backlog jobs (and this
 * many bytes) of one recipient domain between a mailer's claim and the
 * outcome's commit; mailers then stop claiming and are woken at half of
 * each. This bounds memory, keeps rows' leases from running out while they
 * wait in the engine, and bounds what a killed worker can have sent
 * without the outcome being written. */
#define DELIVERY_BACKLOG_BYTES ((size_t)128 << 20)

/* node_id names the engine's own mesh connection (for wake-ups). */
delivery_t *delivery_start(const config_t *cfg, const char *node_id, sbuf_t *err);
/* Stops the thread; jobs not yet sent stay 'sending' and are re-driven
 * when their lease ends. NULL-safe. */
void delivery_stop(delivery_t **self_p);
/* Queue a job; the engine owns *job_p (and its strings) afterwards and sets
 * *job_p to NULL. 0 or -1 (stopping). */
int delivery_submit(delivery_t *self, delivery_job_t **job_p);
void delivery_job_free(delivery_job_t **job_p);
/* How many rows of domain may the mailer at address
 * ("mailer/<domain>#<shard>") claim now? > 0: that many (the room left
 * under delivery_backlog). 0: the engine holds enough of that domain's
 * mail; address gets a "wake" message once the backlog is down to half
 * (and the sweeper's re-drive is the backstop should that message be
 * lost). Thread-safe. */
int delivery_admit(delivery_t *self, const char *domain, const char *address);

/* The worker's engine, for mailer actors (set by worker_main). */
delivery_t *delivery_instance(void);
void delivery_set_instance(delivery_t *d);

#endif
