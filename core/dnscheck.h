/*
 * dnscheck - ask a DNS server for TXT, CNAME and MX records, many names at
 * once, within one time budget (c-ares, non-blocking, driven with poll).
 *
 * How it is used: domain verification builds one dnscheck_t per request
 * (server from config dns_resolver, "host:port", or /etc/resolv.conf when
 * empty), runs all its queries in parallel with dnscheck_run, and reads
 * each query's status and records. The single-name calls are conveniences
 * over the same machinery.
 *
 * Records come back in an sbuf, each one followed by a NUL; a TXT record
 * made of several character-strings is concatenated into one (RFC 6376
 * 3.6.2.2); an MX record is "<preference> <host>"; an A or AAAA record
 * is the address as text; host names have no trailing dot (a null MX,
 * RFC 7505, comes back as "0 ").
 *
 * What can go wrong: the name does not exist (NXDOMAIN), exists without
 * that type (NODATA), the server fails (SERVFAIL), refuses, or does not
 * answer in time: each is a status with a one-line reason, never a hang
 * past the budget. A dnscheck_t is used by one thread at a time.
 */
#ifndef POSTCHI_DNSCHECK_H
#define POSTCHI_DNSCHECK_H

#include <stddef.h>

#include "sbuf.h"

typedef enum {
    DNSCHECK_TXT = 0,
    DNSCHECK_CNAME,
    DNSCHECK_MX,
    DNSCHECK_A,   /* records are dotted-quad strings */
    DNSCHECK_AAAA /* records are RFC 5952 IPv6 strings */
} dnscheck_type_t;

typedef enum {
    DNSCHECK_OK = 0,   /* records found (at least one) */
    DNSCHECK_NXDOMAIN, /* the name does not exist */
    DNSCHECK_NODATA,   /* the name exists, but has no record of that type */
    DNSCHECK_TIMEOUT,  /* no answer within the budget (or none reachable) */
    DNSCHECK_SERVFAIL, /* the server could not answer (SERVFAIL) */
    DNSCHECK_REFUSED,  /* the server refused the query */
    DNSCHECK_ERROR     /* anything else: bad name, malformed answer, memory */
} dnscheck_status_t;

typedef struct {
    dnscheck_type_t type;     /* in: what to ask */
    const char *name;         /* in: the name to ask about (no trailing dot needed) */
    sbuf_t *records;          /* in: where the records go (appended); out: records */
    int count;                /* out: how many records */
    dnscheck_status_t status; /* out */
    const char *why;          /* out: static one-line reason, NULL when OK */
} dnscheck_query_t;

typedef struct dnscheck dnscheck_t;

/* A resolver asking server ("host:port", "host" for port 53, "[v6]:port";
 * NULL or "" means the servers in /etc/resolv.conf), giving every run at
 * most timeout_ms in total. NULL with err set when c-ares cannot start or
 * the server is not an address. Caller destroys. */
dnscheck_t *dnscheck_new(const char *server, int timeout_ms, sbuf_t *err);
void dnscheck_destroy(dnscheck_t **self_p);

/* Run n queries in parallel; returns when all have answered or the budget
 * is spent (the rest get DNSCHECK_TIMEOUT). Fills each query's outputs.
 * Returns how many queries are DNSCHECK_OK. */
int dnscheck_run(dnscheck_t *self, dnscheck_query_t *queries, size_t n);

/* One name, one type: the status (DNSCHECK_OK = 0), records appended to
 * records, *why set to the reason (NULL when OK). */
int dnscheck_txt(dnscheck_t *self, const char *name, sbuf_t *records, const char **why);
int dnscheck_cname(dnscheck_t *self, const char *name, sbuf_t *records, const char **why);
int dnscheck_mx(dnscheck_t *self, const char *name, sbuf_t *records, const char **why);

/* "ok", "nxdomain", "nodata", "timeout", "servfail", "refused", "error". */
const char *dnscheck_status_name(dnscheck_status_t status);

#endif
