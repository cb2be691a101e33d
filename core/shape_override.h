/*
 * shape_override - per-provider delivery budgets, keyed by MX host name
 * suffix (the setting shaping_overrides).
 *
 * Every recipient domain whose MX host ends in a suffix shares that
 * provider's budget, as KumoMTA's MX rollup does: "google.com" covers
 * gmail.com and every Google Workspace domain alike. One item:
 *
 *   suffix=rate/burst[/connections[/messages_per_connection[/connection_rate]]]
 *
 * rate: messages a second (> 0, shared by all workers through Redis);
 * burst: messages at once above it (>= 1); connections: concurrent SMTP
 * connections a worker opens to one of the provider's hosts (1..1000);
 * messages_per_connection: transactions before QUIT (1..100000);
 * connection_rate: new connections a second per host and worker (> 0,
 * at most 10000). Omitted ones, or 0, take the defaults
 * (delivery_connections, delivery_messages_per_connection,
 * delivery_connection_rate). Items are separated by commas; a leading
 * dot on the suffix is ignored; the longest matching suffix wins, and a
 * suffix matches whole labels only ("le.com" does not match
 * "google.com").
 */
#ifndef POSTCHI_SHAPE_OVERRIDE_H
#define POSTCHI_SHAPE_OVERRIDE_H

#include <stddef.h>

#include "sbuf.h"

typedef struct {
    char suffix[256]; /* MX host name suffix, lower case, no leading dot */
    double rate;      /* messages per second */
    double burst;     /* burst */
    int conns;        /* concurrent connections per host and worker; 0: default */
    int per_conn;     /* messages per connection; 0: default */
    double conn_rate; /* new connections a second; 0: default */
} shape_override_t;

/* Parse text (the setting's value; "" is none) into a new array *out of
 * *n items (free() it; NULL when none). 0, or -1 with err naming the bad
 * item and what it must look like. */
int shape_overrides_parse(const char *text, shape_override_t **out, size_t *n, sbuf_t *err);

/* The override whose suffix matches the MX host name mx (longest wins), or
 * NULL. */
const shape_override_t *shape_override_match(const shape_override_t *list, size_t n,
                                             const char *mx);

#endif
