/*
 * shape_override - see shape_override.h.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "shape_override.h"

/* The number at *p up to the next '/' or the end: into *v, *p past it and
 * its '/'. 0, or -1 when there is no number there or it is not in range
 * (lo exclusive when lo_open). A field that is present must be valid. */
static int s_field(const char **p, const char *end, double lo, int lo_open, double hi,
                   int whole, double *v)
{
    char num[32], *stop;
    const char *slash = memchr(*p, '/', (size_t)(end - *p));
    const char *e = slash ? slash : end;
    size_t len = (size_t)(e - *p);
    if (len == 0 || len >= sizeof num)
        return -1;
    memcpy(num, *p, len);
    num[len] = 0;
    *v = strtod(num, &stop);
    if (stop == num || *stop || !isfinite(*v) || *v > hi || (lo_open ? *v <= lo : *v < lo) ||
        (whole && *v != floor(*v)))
        return -1;
    *p = slash ? slash + 1 : end;
    return slash && *p == end ? -1 : 0; /* a trailing '/' promises a field */
}

/* One item p..e (trimmed, non-empty) into o. 0 or -1. */
static int s_item(const char *p, const char *e, shape_override_t *o)
{
    const char *eq = memchr(p, '=', (size_t)(e - p));
    while (p < e && *p == '.')
        p++;
    if (!eq || eq <= p || (size_t)(eq - p) >= sizeof o->suffix || eq[-1] == '.')
        return -1;
    for (const char *c = p; c < eq; c++) {
        if (isspace((unsigned char)*c))
            return -1;
        o->suffix[c - p] = (char)tolower((unsigned char)*c);
    }
    const char *q = eq + 1;
    double conns = 0, per_conn = 0;
    if (s_field(&q, e, 0, 1, 1e6, 0, &o->rate) != 0 || q == e ||
        s_field(&q, e, 1, 0, 1e7, 0, &o->burst) != 0)
        return -1;
    if (q < e && s_field(&q, e, 0, 0, 1000, 1, &conns) != 0)
        return -1;
    if (q < e && s_field(&q, e, 0, 0, 100000, 1, &per_conn) != 0)
        return -1;
    if (q < e && (s_field(&q, e, 0, 0, 10000, 0, &o->conn_rate) != 0 || q < e))
        return -1;
    o->conns = (int)conns;
    o->per_conn = (int)per_conn;
    return 0;
}

int shape_overrides_parse(const char *text, shape_override_t **out, size_t *n, sbuf_t *err)
{
    *out = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = text; *p; p++)
        cap += *p == ',';
    shape_override_t *list = calloc(cap, sizeof *list);
    if (!list) {
        sbuf_appendf(err, "setting 'shaping_overrides': out of memory");
        return -1;
    }
    const char *p = text;
    while (*p) {
        const char *end = p + strcspn(p, ",");
        const char *e = end;
        while (p < e && isspace((unsigned char)*p))
            p++;
        while (e > p && isspace((unsigned char)e[-1]))
            e--;
        if (e > p && s_item(p, e, &list[*n]) != 0) {
            sbuf_appendf(err,
                         "setting 'shaping_overrides': '%.*s' is not "
                         "mx-host-suffix=rate/burst[/connections[/messages_per_connection"
                         "[/connection_rate]]] (rate > 0, burst >= 1, connections 1 to 1000, "
                         "messages_per_connection 1 to 100000, connection_rate > 0; 0 or "
                         "omitted: the default)",
                         (int)(e - p), p);
            free(list);
            *n = 0;
            return -1;
        }
        if (e > p)
            (*n)++;
        p = *end ? end + 1 : end;
    }
    if (*n == 0) {
        free(list);
        list = NULL;
    }
    *out = list;
    return 0;
}

const shape_override_t *shape_override_match(const shape_override_t *list, size_t n,
                                             const char *mx)
{
    const shape_override_t *best = NULL;
    size_t len = strlen(mx), bestlen = 0;
    while (len > 0 && mx[len - 1] == '.') /* a fully qualified name's root dot */
        len--;
    for (size_t i = 0; i < n; i++) {
        size_t sl = strlen(list[i].suffix);
        if (sl > len || sl <= bestlen || strncasecmp(mx + len - sl, list[i].suffix, sl) != 0)
            continue;
        if (sl == len || mx[len - sl - 1] == '.') {
            best = &list[i];
            bestlen = sl;
        }
    }
    return best;
}
