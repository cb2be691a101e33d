/*
 * domains - sending domains: the REST routes (api_routes_domains) and
 * their start-up configuration.
 */
#ifndef POSTCHI_API_DOMAINS_H
#define POSTCHI_API_DOMAINS_H

#include "config.h"
#include "sbuf.h"

/* Read secret_key (64 hex digits: the key that seals DKIM private keys)
 * and dns_resolver ("host:port" or empty for /etc/resolv.conf) into this
 * module. Call once at API start-up, before serving threads start. 0, or
 * -1 with the reason in err when secret_key is missing or malformed or
 * dns_resolver is not an address: the API must not start then. Until it
 * succeeds, the domain routes that need it answer 503. */
int domains_configure(const config_t *cfg, sbuf_t *err);

#endif
