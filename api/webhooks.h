/*
 * webhooks - the /webhooks resource (see webhooks.c): its start-up setting.
 */
#ifndef POSTCHI_API_WEBHOOKS_H
#define POSTCHI_API_WEBHOOKS_H

#include "config.h"
#include "sbuf.h"

/* Read webhook_allow_private (URLs may then point at loopback, private,
 * link-local and other non-public addresses) into this module. Call once
 * at API start-up, before serving threads start. Returns 0. */
int webhooks_configure(const config_t *cfg, sbuf_t *err);

#endif
