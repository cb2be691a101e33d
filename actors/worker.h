/*
 * worker - the process that hosts actors: one I/O thread owns the broker
 * connection and the actor table; a pool of worker_threads runs handlers.
 */
#ifndef POSTCHI_WORKER_H
#define POSTCHI_WORKER_H

#include "config.h"

/* Run until SIGTERM or SIGINT. Returns the process exit status: 1 when
 * PostgreSQL or Redis cannot be reached at start (after startup_wait_ms). */
int worker_main(const config_t *cfg);

#endif
