/*
 * actor - what an actor kind implements, and what a handler may do.
 *
 * Actors are virtual: addressed "kind/key", activated on the owning worker
 * when their first message arrives, passivated after actor_idle_ms without
 * one. A worker runs one message at a time per actor and many actors in
 * parallel on its thread pool. Handlers run on pool threads: they may block
 * briefly on PostgreSQL, never on the network for long.
 *
 * Kinds are rows in actor_kinds (kinds.c): adding a kind is adding a row.
 */
#ifndef POSTCHI_ACTOR_H
#define POSTCHI_ACTOR_H

#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "envelope.h"

typedef struct actor_ctx actor_ctx_t;

typedef struct {
    const char *name; /* the kind in "kind/key" */
    /* Build the actor's state before its first message: *state_p is the
     * actor's to own until passivate. 0, or -1 (the message that caused the
     * activation gets an ERROR reply "activation_failed"). May be NULL. */
    int (*activate)(actor_ctx_t *ctx, void **state_p);
    /* Handle one message. Return 0, or -1 to have a request that was not
     * yet answered get an ERROR reply "handler_failed". */
    int (*receive)(actor_ctx_t *ctx, void *state, const envelope_t *msg);
    /* Free the state; the actor has been idle for actor_idle_ms. Must be
     * quick: durable state is already committed by then. May be NULL. */
    void (*passivate)(void *state);
} actor_kind_t;

/* The kinds table, ended by NULL. */
extern const actor_kind_t *const actor_kinds[];

/* The actor's key (NUL-terminated) and this worker's node id. */
const char *actor_key(const actor_ctx_t *ctx);
const char *actor_node_id(const actor_ctx_t *ctx);

/* This pool thread's PostgreSQL connection (connected on first use, and
 * again after a failure), or NULL when PostgreSQL is unreachable: the
 * handler then returns -1 and the message's sender or the sweeper retries. */
db_t *actor_db(actor_ctx_t *ctx);

/* Answer the message being handled (its sender, its correlation id).
 * 0, or -1 when the message was one-way or the frame cannot be built. */
int actor_reply(actor_ctx_t *ctx, const void *body, size_t len);
/* One-way message to any address ("kind/key" or "node/<id>"). 0 or -1. */
int actor_send(actor_ctx_t *ctx, const char *target, const char *name, const void *body,
               size_t len);

/* Register the tenant actor's metrics (bulk expansion); once per process,
 * at worker start, so /metrics shows them before the first bulk send. */
void actor_tenant_metrics(void);

#endif
