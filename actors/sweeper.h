/*
 * sweeper - the outbox sweeper that makes triggers durable: a thread in
 * each worker that re-sends events whose trigger message never arrived.
 *
 * An API handler commits an events row and only then sends its trigger; a
 * crash or a lost message in between leaves the row with dispatched_at
 * NULL. Every SWEEPER_INTERVAL_MS the sweeper holding the PostgreSQL
 * advisory lock re-sends such rows (older than 3 s) to tenant/<org>; the
 * tenant actor marks them. One worker in the mesh holds the lock at a time;
 * the others stand by and take over when its session ends.
 */
#ifndef POSTCHI_SWEEPER_H
#define POSTCHI_SWEEPER_H

#include "config.h"
#include "sbuf.h"

/* Time between two sweeps. */
#define SWEEPER_INTERVAL_MS 2000

typedef struct sweeper sweeper_t;

/* Register the sweeper's metrics, connect its own mesh client (node id
 * "<node_id>-sweeper") with cfg's mesh settings, and start its thread; the
 * thread connects to PostgreSQL (cfg's pg_* settings) on its own and keeps
 * retrying while it cannot. NULL with err set when the client or the thread
 * cannot be made. Caller stops it with sweeper_stop. */
sweeper_t *sweeper_start(const config_t *cfg, const char *node_id, sbuf_t *err);
/* Stop the thread (waits for a sweep in progress), release the lock and
 * free everything. NULL-safe, idempotent, sets *self_p to NULL. */
void sweeper_stop(sweeper_t **self_p);

#endif
