/*
 * broker - the mesh's router: one ZeroMQ ROUTER that every worker and client
 * connects to.
 *
 * It tracks live workers by heartbeat and routes each message addressed to
 * an actor ("kind/key") to the worker that owns it by rendezvous hashing
 * over live workers, and each message addressed to a process ("node/<id>")
 * straight to that process. It decodes only the envelope, never the body.
 * A message it cannot deliver is never dropped silently: while no worker is
 * live it is held in a bounded queue (broker_queue_max, broker_queue_ttl_ms);
 * past that, or when the queue is full, the sender gets an ERROR reply and
 * postchi_broker_messages_dropped_total{reason} counts it.
 */
#ifndef POSTCHI_BROKER_H
#define POSTCHI_BROKER_H

#include "config.h"

/* Run until SIGTERM or SIGINT. Returns the process exit status. */
int broker_main(const config_t *cfg);

#endif
