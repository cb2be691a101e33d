/*
 * mx - MX resolution with A/AAAA fallback and null MX (see mx.h).
 *
 * How it works: one dnscheck run asks for MX; NODATA means "use the domain
 * itself" (RFC 5321 5.1), NXDOMAIN means the domain does not exist. The
 * hosts are sorted by preference (stable), cut to max, and a second run asks
 * A and AAAA for all of them at once.
 *
 * What can go wrong: every DNS status maps to MX_TEMPFAIL or MX_PERMFAIL
 * with a reason; names from the answer longer than a DNS name can be are
 * refused rather than cut.
 */
#include <stdlib.h>
#include <string.h>

#include "dnscheck.h"
#include "mx.h"

/* NXDOMAIN and bad names are the domain's fault; the rest is the resolver's. */
static int s_status(dnscheck_status_t st)
{
    return st == DNSCHECK_NXDOMAIN || st == DNSCHECK_ERROR ? MX_PERMFAIL : MX_TEMPFAIL;
}

static int s_by_pref(const void *a, const void *b)
{
    const mx_host_t *x = a, *y = b;
    if (x->preference != y->preference)
        return x->preference < y->preference ? -1 : 1;
    return x < y ? -1 : x > y; /* stable: keep the server's order */
}

/* Parse the MX records into hosts (up to cap). -1 on a null MX. */
static int s_parse_mx(const sbuf_t *rec, int count, mx_host_t *h, size_t cap, size_t *nh)
{
    const char *p = sbuf_data(rec);
    *nh = 0;
    for (int i = 0; i < count; i++, p += strlen(p) + 1) {
        char *end;
        long pref = strtol(p, &end, 10);
        const char *name = *end == ' ' ? end + 1 : end;
        if (*name == 0 || strcmp(name, ".") == 0) {
            if (count == 1)
                return -1; /* RFC 7505: the only MX is "." */
            continue;      /* a "." among real MXs: ignore it */
        }
        if (*nh >= cap || strlen(name) >= sizeof h[0].name)
            continue;
        memset(&h[*nh], 0, sizeof h[0]);
        strcpy(h[*nh].name, name);
        h[*nh].preference = (int)pref;
        (*nh)++;
    }
    return 0;
}

int mx_resolve(const char *domain, const char *resolver, int timeout_ms, mx_host_t *out, size_t max,
               size_t *n, sbuf_t *err)
{
    *n = 0;
    if (!domain || !*domain || strlen(domain) > 253 || max == 0) {
        sbuf_append_str(err, "mx_resolve: not a valid domain name");
        return MX_PERMFAIL;
    }
    dnscheck_t *dns = dnscheck_new(resolver, timeout_ms, err);
    if (!dns)
        return MX_TEMPFAIL;
    int rc = MX_OK;
    size_t nh = 0, cap = max < 64 ? max : 64;
    mx_host_t *hosts = calloc(64, sizeof *hosts);
    sbuf_t *rec = sbuf_new(256);
    dnscheck_query_t *q = calloc(128, sizeof *q);
    if (!hosts || !rec || !q) {
        sbuf_append_str(err, "mx_resolve: out of memory");
        rc = MX_TEMPFAIL;
        goto out;
    }
    dnscheck_query_t mx = {.type = DNSCHECK_MX, .name = domain, .records = rec};
    dnscheck_run(dns, &mx, 1);
    if (mx.status == DNSCHECK_OK) {
        /* parse all (up to 64) before sorting, then keep the best max */
        if (s_parse_mx(rec, mx.count, hosts, 64, &nh) != 0) {
            sbuf_appendf(err, "mx_resolve: %s has a null MX (RFC 7505): it accepts no mail",
                         domain);
            rc = MX_PERMFAIL;
            goto out;
        }
        qsort(hosts, nh, sizeof *hosts, s_by_pref);
        if (nh > cap)
            nh = cap;
    } else if (mx.status == DNSCHECK_NODATA) {
        /* RFC 5321 5.1: no MX, the domain itself is the host */
        memset(&hosts[0], 0, sizeof hosts[0]);
        strcpy(hosts[0].name, domain);
        nh = 1;
    } else {
        sbuf_appendf(err, "mx_resolve: MX lookup for %s: %s", domain, mx.why);
        rc = s_status(mx.status);
        goto out;
    }
    if (nh == 0) {
        sbuf_appendf(err, "mx_resolve: %s has no usable MX host", domain);
        rc = MX_TEMPFAIL;
        goto out;
    }
    /* A and AAAA of every host in one run */
    for (size_t i = 0; i < nh; i++) {
        for (int k = 0; k < 2; k++) {
            dnscheck_query_t *x = &q[2 * i + (size_t)k];
            x->type = k == 0 ? DNSCHECK_A : DNSCHECK_AAAA;
            x->name = hosts[i].name;
            x->records = sbuf_new(64);
            if (!x->records) {
                sbuf_append_str(err, "mx_resolve: out of memory");
                rc = MX_TEMPFAIL;
                goto out;
            }
        }
    }
    dnscheck_run(dns, q, 2 * nh);
    int temp = 0;
    for (size_t i = 0; i < nh; i++) {
        mx_host_t h = hosts[i];
        for (int k = 0; k < 2; k++) {
            dnscheck_query_t *x = &q[2 * i + (size_t)k];
            temp |= x->status == DNSCHECK_TIMEOUT || x->status == DNSCHECK_SERVFAIL ||
                    x->status == DNSCHECK_REFUSED;
            const char *p = sbuf_data(x->records);
            for (int j = 0; x->status == DNSCHECK_OK && j < x->count; j++, p += strlen(p) + 1)
                if (h.naddrs < MX_MAX_ADDRS && strlen(p) < sizeof h.addrs[0])
                    strcpy(h.addrs[h.naddrs++], p);
        }
        if (h.naddrs > 0)
            out[(*n)++] = h;
    }
    if (*n == 0) {
        int implicit = mx.status == DNSCHECK_NODATA;
        sbuf_appendf(err, "mx_resolve: %s: %s", domain,
                     implicit ? "no MX and no A/AAAA address" : "no MX host has an address");
        /* a domain with neither MX nor address cannot take mail; hosts that
         * do not resolve may be a transient fault, as is a resolver failing */
        rc = implicit && !temp ? MX_PERMFAIL : MX_TEMPFAIL;
    }
out:
    if (q)
        for (size_t i = 0; i < 128; i++)
            sbuf_destroy(&q[i].records);
    free(q);
    free(hosts);
    sbuf_destroy(&rec);
    dnscheck_destroy(&dns);
    return rc;
}
