/*
 * dnscheck - DNS lookups for domain verification through c-ares (see
 * dnscheck.h).
 *
 * How it works: one c-ares channel per dnscheck_t; dnscheck_run sends every
 * query at once (ares_query, no search list), then waits on the channel's
 * sockets with poll and feeds readiness to ares_process_fd until every
 * callback has fired or the deadline passes, when ares_cancel ends the
 * stragglers. ARES_FLAG_NOCHECKRESP hands SERVFAIL and REFUSED straight to
 * us instead of retrying them, so a broken server costs one round trip.
 *
 * What can go wrong: every c-ares failure becomes a status and a static
 * reason; answers are parsed by c-ares (TXT, MX) or by a bounds-checked
 * walk (CNAME), never trusted for lengths.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/nameser.h>
#include <ares.h>

#include "dnscheck.h"

struct dnscheck {
    ares_channel channel; /* the c-ares resolver state */
    int timeout_ms;       /* total budget of one run */
};

/* What a callback needs: its query, and the run's pending counter. */
typedef struct {
    dnscheck_query_t *q; /* the caller's query, filled by the callback */
    int *pending;        /* queries still waiting for their callback */
} s_slot_t;

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static int s_lib_rc = -1;

static void s_lib_init(void)
{
    s_lib_rc = ares_library_init(ARES_LIB_INIT_ALL);
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

dnscheck_t *dnscheck_new(const char *server, int timeout_ms, sbuf_t *err)
{
    pthread_once(&s_once, s_lib_init);
    if (s_lib_rc != ARES_SUCCESS) {
        sbuf_appendf(err, "dnscheck_new: c-ares: %s", ares_strerror(s_lib_rc));
        return NULL;
    }
    dnscheck_t *self = calloc(1, sizeof *self);
    if (!self) {
        sbuf_append_str(err, "dnscheck_new: out of memory");
        return NULL;
    }
    self->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    struct ares_options opt = {0};
    /* Two tries per server; c-ares doubles the wait on the second, so a
     * third of the budget each leaves room for both. */
    opt.timeout = self->timeout_ms / 3 > 100 ? self->timeout_ms / 3 : 100;
    opt.tries = 2;
    opt.flags = ARES_FLAG_NOCHECKRESP;
    int rc = ares_init_options(&self->channel, &opt,
                               ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS);
    if (rc != ARES_SUCCESS) {
        sbuf_appendf(err, "dnscheck_new: c-ares: %s", ares_strerror(rc));
        free(self);
        return NULL;
    }
    if (server && *server) {
        rc = ares_set_servers_ports_csv(self->channel, server);
        if (rc != ARES_SUCCESS || strchr(server, ',')) {
            sbuf_appendf(err,
                         "dnscheck_new: DNS server must be an address \"host:port\" (%s)",
                         rc != ARES_SUCCESS ? ares_strerror(rc) : "one server only");
            ares_destroy(self->channel);
            free(self);
            return NULL;
        }
    }
    return self;
}

void dnscheck_destroy(dnscheck_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ares_destroy((*self_p)->channel);
    free(*self_p);
    *self_p = NULL;
}

const char *dnscheck_status_name(dnscheck_status_t status)
{
    static const char *names[] = {"ok",       "nxdomain", "nodata", "timeout",
                                  "servfail", "refused",  "error"};
    return (unsigned)status < sizeof names / sizeof names[0] ? names[status] : "error";
}

static const char *s_nodata_why(dnscheck_type_t type)
{
    static const char *why[] = {"the name exists but has no TXT record",
                                "the name exists but has no CNAME record",
                                "the name exists but has no MX record",
                                "the name exists but has no A record",
                                "the name exists but has no AAAA record"};
    return why[type];
}

static void s_set(dnscheck_query_t *q, dnscheck_status_t status, const char *why)
{
    q->status = status;
    q->why = why;
}

static int s_push(dnscheck_query_t *q, const void *data, size_t len)
{
    if (sbuf_append(q->records, data, len) != 0 || sbuf_append(q->records, "", 1) != 0)
        return -1;
    q->count++;
    return 0;
}

static void s_parse_txt(dnscheck_query_t *q, const unsigned char *abuf, int alen)
{
    struct ares_txt_ext *txt = NULL;
    if (ares_parse_txt_reply_ext(abuf, alen, &txt) != ARES_SUCCESS) {
        s_set(q, DNSCHECK_ERROR, "the DNS answer could not be parsed");
        return;
    }
    /* Character-strings of one record arrive in order, the first flagged
     * record_start: join them, NUL after each record. */
    int open = 0, rc = 0;
    for (struct ares_txt_ext *t = txt; t && rc == 0; t = t->next) {
        if (t->record_start && open) {
            rc = sbuf_append(q->records, "", 1);
            q->count++;
        }
        open = 1;
        if (rc == 0)
            rc = sbuf_append(q->records, t->txt, t->length);
    }
    if (open && rc == 0) {
        rc = sbuf_append(q->records, "", 1);
        q->count++;
    }
    ares_free_data(txt);
    if (rc != 0)
        s_set(q, DNSCHECK_ERROR, "out of memory");
}

static void s_parse_mx(dnscheck_query_t *q, const unsigned char *abuf, int alen)
{
    struct ares_mx_reply *mx = NULL;
    if (ares_parse_mx_reply(abuf, alen, &mx) != ARES_SUCCESS) {
        s_set(q, DNSCHECK_ERROR, "the DNS answer could not be parsed");
        return;
    }
    int rc = 0;
    sbuf_t *one = sbuf_new(64);
    for (struct ares_mx_reply *m = mx; m && rc == 0 && one; m = m->next) {
        sbuf_reset(one);
        rc = sbuf_appendf(one, "%u %s", (unsigned)m->priority, m->host);
        if (rc == 0)
            rc = s_push(q, sbuf_data(one), sbuf_len(one));
    }
    if (rc != 0 || !one)
        s_set(q, DNSCHECK_ERROR, "out of memory");
    sbuf_destroy(&one);
    ares_free_data(mx);
}

/* A or AAAA: each address as text. */
static void s_parse_addr(dnscheck_query_t *q, const unsigned char *abuf, int alen)
{
    int rc, n = 32;
    char text[INET6_ADDRSTRLEN];
    if (q->type == DNSCHECK_A) {
        struct ares_addrttl a[32];
        rc = ares_parse_a_reply(abuf, alen, NULL, a, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++)
            if (inet_ntop(AF_INET, &a[i].ipaddr, text, sizeof text) &&
                s_push(q, text, strlen(text)) != 0)
                rc = ARES_ENOMEM;
    } else {
        struct ares_addr6ttl a[32];
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, a, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n; i++)
            if (inet_ntop(AF_INET6, &a[i].ip6addr, text, sizeof text) &&
                s_push(q, text, strlen(text)) != 0)
                rc = ARES_ENOMEM;
    }
    if (rc == ARES_ENODATA)
        s_set(q, DNSCHECK_NODATA, s_nodata_why(q->type));
    else if (rc == ARES_ENOMEM)
        s_set(q, DNSCHECK_ERROR, "out of memory");
    else if (rc != ARES_SUCCESS)
        s_set(q, DNSCHECK_ERROR, "the DNS answer could not be parsed");
}

/* Walk the answer section for CNAME records (c-ares 1.18 has no parser
 * for them). Every read is bounds-checked against alen. */
static void s_parse_cname(dnscheck_query_t *q, const unsigned char *abuf, int alen)
{
    const char *bad = "the DNS answer could not be parsed";
    if (alen < 12) {
        s_set(q, DNSCHECK_ERROR, bad);
        return;
    }
    int qd = abuf[4] << 8 | abuf[5], an = abuf[6] << 8 | abuf[7];
    const unsigned char *p = abuf + 12, *end = abuf + alen;
    char *name = NULL;
    long enclen = 0;
    for (int i = 0; i < qd; i++) {
        if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
            goto malformed;
        ares_free_string(name);
        if (end - p < enclen + 4)
            goto malformed;
        p += enclen + 4;
    }
    for (int i = 0; i < an; i++) {
        if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
            goto malformed;
        ares_free_string(name);
        if (end - p < enclen + 10)
            goto malformed;
        p += enclen;
        int type = p[0] << 8 | p[1], rdlen = p[8] << 8 | p[9];
        p += 10;
        if (end - p < rdlen)
            goto malformed;
        if (type == ns_t_cname) {
            if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
                goto malformed;
            int rc = s_push(q, name, strlen(name));
            ares_free_string(name);
            if (rc != 0) {
                s_set(q, DNSCHECK_ERROR, "out of memory");
                return;
            }
        }
        p += rdlen;
    }
    if (q->count == 0)
        s_set(q, DNSCHECK_NODATA, s_nodata_why(q->type));
    return;
malformed:
    s_set(q, DNSCHECK_ERROR, bad);
}

static void s_on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    s_slot_t *slot = arg;
    dnscheck_query_t *q = slot->q;
    (*slot->pending)--;
    switch (status) {
    case ARES_SUCCESS:
        s_set(q, DNSCHECK_OK, NULL);
        if (q->type == DNSCHECK_TXT)
            s_parse_txt(q, abuf, alen);
        else if (q->type == DNSCHECK_MX)
            s_parse_mx(q, abuf, alen);
        else if (q->type == DNSCHECK_A || q->type == DNSCHECK_AAAA)
            s_parse_addr(q, abuf, alen);
        else
            s_parse_cname(q, abuf, alen);
        if (q->status == DNSCHECK_OK && q->count == 0)
            s_set(q, DNSCHECK_NODATA, s_nodata_why(q->type));
        break;
    case ARES_ENOTFOUND:
        s_set(q, DNSCHECK_NXDOMAIN, "the name does not exist (NXDOMAIN)");
        break;
    case ARES_ENODATA:
        s_set(q, DNSCHECK_NODATA, s_nodata_why(q->type));
        break;
    case ARES_ETIMEOUT:
    case ARES_ECANCELLED:
        s_set(q, DNSCHECK_TIMEOUT, "the DNS server did not answer in time");
        break;
    case ARES_ECONNREFUSED:
        s_set(q, DNSCHECK_TIMEOUT, "the DNS server could not be reached (connection refused)");
        break;
    case ARES_ESERVFAIL:
        s_set(q, DNSCHECK_SERVFAIL, "the DNS server failed to answer (SERVFAIL)");
        break;
    case ARES_EREFUSED:
        s_set(q, DNSCHECK_REFUSED, "the DNS server refused the query (REFUSED)");
        break;
    case ARES_EBADNAME:
        s_set(q, DNSCHECK_ERROR, "not a valid DNS name");
        break;
    case ARES_EDESTRUCTION:
        s_set(q, DNSCHECK_ERROR, "the resolver was shut down");
        break;
    default:
        s_set(q, DNSCHECK_ERROR, "the DNS answer was malformed or unexpected");
        break;
    }
}

/* Drive the channel until nothing is pending or the deadline passes. */
static void s_wait(dnscheck_t *self, int *pending, int64_t deadline)
{
    while (*pending > 0) {
        int64_t left = deadline - s_now_ms();
        if (left <= 0) {
            ares_cancel(self->channel); /* fires the callbacks: ECANCELLED */
            return;
        }
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        /* ares.h's ARES_GETSOCK_WRITABLE shifts a signed 1 into the sign
         * bit for the last socket (undefined behaviour): test bits unsigned. */
        unsigned bits = (unsigned)ares_getsock(self->channel, socks, ARES_GETSOCK_MAXNUM);
        struct pollfd fds[ARES_GETSOCK_MAXNUM];
        nfds_t nfds = 0;
        for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
            short ev = 0;
            if ((bits >> i) & 1u)
                ev |= POLLIN;
            if ((bits >> (i + ARES_GETSOCK_MAXNUM)) & 1u)
                ev |= POLLOUT;
            if (!ev)
                continue;
            fds[nfds].fd = socks[i];
            fds[nfds].events = ev;
            fds[nfds].revents = 0;
            nfds++;
        }
        struct timeval max = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000}, tv;
        struct timeval *tvp = ares_timeout(self->channel, &max, &tv);
        int ms = (int)(tvp->tv_sec * 1000 + (tvp->tv_usec + 999) / 1000);
        int n = poll(fds, nfds, ms);
        if (n < 0 && errno != EINTR) {
            ares_cancel(self->channel);
            return;
        }
        if (n <= 0) {
            ares_process_fd(self->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
            continue;
        }
        for (nfds_t i = 0; i < nfds; i++) {
            short re = fds[i].revents;
            if (!re)
                continue;
            ares_process_fd(self->channel,
                            re & (POLLIN | POLLERR | POLLHUP) ? fds[i].fd : ARES_SOCKET_BAD,
                            re & POLLOUT ? fds[i].fd : ARES_SOCKET_BAD);
        }
    }
}

int dnscheck_run(dnscheck_t *self, dnscheck_query_t *queries, size_t n)
{
    static const int types[] = {ns_t_txt, ns_t_cname, ns_t_mx, ns_t_a, ns_t_aaaa};
    if (n == 0)
        return 0;
    s_slot_t *slots = calloc(n, sizeof *slots);
    int pending = 0, ok = 0;
    for (size_t i = 0; i < n; i++) {
        queries[i].count = 0;
        s_set(&queries[i], DNSCHECK_ERROR, "out of memory");
    }
    if (!slots)
        return 0;
    int64_t deadline = s_now_ms() + self->timeout_ms;
    for (size_t i = 0; i < n; i++) {
        slots[i].q = &queries[i];
        slots[i].pending = &pending;
        if (!queries[i].name || !*queries[i].name) {
            s_set(&queries[i], DNSCHECK_ERROR, "not a valid DNS name");
            continue;
        }
        pending++;
        /* May call back at once (bad name, no servers): pending drops then. */
        ares_query(self->channel, queries[i].name, ns_c_in, types[queries[i].type], s_on_answer,
                   &slots[i]);
    }
    s_wait(self, &pending, deadline);
    free(slots);
    for (size_t i = 0; i < n; i++)
        ok += queries[i].status == DNSCHECK_OK;
    return ok;
}

static int s_one(dnscheck_t *self, dnscheck_type_t type, const char *name, sbuf_t *records,
                 const char **why)
{
    dnscheck_query_t q = {.type = type, .name = name, .records = records};
    dnscheck_run(self, &q, 1);
    if (why)
        *why = q.why;
    return (int)q.status;
}

int dnscheck_txt(dnscheck_t *self, const char *name, sbuf_t *records, const char **why)
{
    return s_one(self, DNSCHECK_TXT, name, records, why);
}

int dnscheck_cname(dnscheck_t *self, const char *name, sbuf_t *records, const char **why)
{
    return s_one(self, DNSCHECK_CNAME, name, records, why);
}

int dnscheck_mx(dnscheck_t *self, const char *name, sbuf_t *records, const char **why)
{
    return s_one(self, DNSCHECK_MX, name, records, why);
}
