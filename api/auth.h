/*
 * auth - the account routes (register, login, whoami) and their settings.
 *
 * The REST framework gives handlers no configuration, so the API node calls
 * auth_configure once at start-up, before the HTTP server starts, and
 * auth_shutdown after it stopped.
 */
#ifndef POSTCHI_AUTH_H
#define POSTCHI_AUTH_H

#include "config.h"
#include "rest.h"
#include "sbuf.h"

/* Copy jwt_secret, jwt_issuer, jwt_ttl_s and login_max_failures from cfg
 * (and derive the Redis key namespace for login counters from the
 * database identity). Not thread-safe: call before serving. 0, or -1 with
 * err set (jwt_secret empty, out of memory); until it succeeds, register
 * and login answer 503. Calling it again replaces the settings (and
 * restarts the local failure counters). */
int auth_configure(const config_t *cfg, sbuf_t *err);
/* Wipe and free what auth_configure kept. Idempotent. */
void auth_shutdown(void);

extern const api_route_t api_routes_auth[];

#endif
