/*
 * api - the API node: the REST front door (civetweb), stateless, any number
 * of them behind a balancer. It serves /healthz, /readyz (PostgreSQL, Redis
 * and broker reachable) and /metrics beside the REST routes.
 */
#ifndef POSTCHI_API_H
#define POSTCHI_API_H

#include "config.h"

/* Run until SIGTERM or SIGINT. Returns the process exit status: 1 when
 * PostgreSQL or Redis cannot be reached at start (after startup_wait_ms) or
 * the port cannot be bound. */
int api_main(const config_t *cfg);

#endif
