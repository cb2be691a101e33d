/*
 * mx - where to deliver mail for a domain (RFC 5321 5.1): its MX hosts in
 * preference order, each resolved to its IPv4 and IPv6 addresses; the
 * domain's own A/AAAA when it has no MX; a null MX (RFC 7505, "0 .")
 * meaning the domain accepts no mail.
 *
 * How it is used: the mailer for a destination calls mx_resolve, then
 * connects (smtp_client) to the addresses of the first host, falling back
 * host by host. The lookups go through dnscheck (c-ares), all the A/AAAA
 * queries of one domain in parallel.
 *
 * What can go wrong: the domain does not exist or has a null MX (permanent:
 * bounce), the resolver fails or is slow, or no MX host has an address
 * (temporary: defer). Each comes back as a status with a one-line reason.
 * Hosts with equal preference keep the order the server gave (no
 * shuffling: the caller spreads load if it wants to).
 */
#ifndef POSTCHI_MX_H
#define POSTCHI_MX_H

#include <stddef.h>

#include "sbuf.h"

#define MX_MAX_ADDRS 8 /* addresses kept per host (IPv4 first, then IPv6) */

typedef struct {
    char name[256];               /* host name (no trailing dot) */
    int preference;               /* MX preference; 0 for the implicit A/AAAA fallback */
    char addrs[MX_MAX_ADDRS][46]; /* numeric addresses, for smtp_conn_new */
    size_t naddrs;                /* how many (>= 1 for every host returned) */
} mx_host_t;

typedef enum {
    MX_OK = 0,        /* *n >= 1 hosts with addresses */
    MX_TEMPFAIL = -1, /* resolver trouble or no MX host has an address: retry later */
    MX_PERMFAIL = -2  /* no such domain, bad name, or null MX: the mail cannot go */
} mx_status_t;

/* Resolve domain through resolver ("host:port", NULL or "" for
 * /etc/resolv.conf), each of the two rounds (MX, then addresses) within
 * timeout_ms. Fills out[0..*n) (at most max hosts) by preference; hosts
 * without any address are left out. Returns an mx_status_t; err gets the
 * reason when not MX_OK. */
int mx_resolve(const char *domain, const char *resolver, int timeout_ms, mx_host_t *out, size_t max,
               size_t *n, sbuf_t *err);

#endif
