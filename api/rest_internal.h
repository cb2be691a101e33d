/*
 * rest_internal - how the API node starts the framework (api_node.c only).
 */
#ifndef POSTCHI_REST_INTERNAL_H
#define POSTCHI_REST_INTERNAL_H

#include "config.h"
#include "sbuf.h"

struct mg_connection;

/* Sends a one-way mesh message (target, name, body); thread-safe. 0 or -1. */
typedef int (*rest_send_fn)(void *arg, const char *target, const char *name, const void *body,
                            size_t len);

/* Read settings, compile the route tables, register metrics. 0, or -1 with
 * err set (a route table that does not parse is a programmer error: panic). */
int rest_init(const config_t *cfg, rest_send_fn send, void *send_arg, sbuf_t *err);
/* The civetweb handler to mount at /api/v1. */
int rest_handle(struct mg_connection *conn, void *cbdata);
/* Free what rest_init made (after the HTTP server stopped). */
void rest_shutdown(void);

#endif
