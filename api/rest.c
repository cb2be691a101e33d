/*
 * rest - the REST framework: routing, authentication, bodies, responses,
 * validation, pagination, audit, idempotency and triggers. See rest.h.
 *
 * One civetweb handler serves everything under /api/v1. A request goes:
 * match route -> authenticate (JWT or API key) and check scope -> bound and
 * read the body -> parse JSON -> idempotency check -> handler -> send. The
 * handler only builds the response (status, body, headers); the framework
 * sends it, so it can also store it for Idempotency-Key replays and count it.
 *
 * Per-thread state (PostgreSQL and Redis connections) lives in a pthread key
 * whose destructor closes them when civetweb's threads end at shutdown.
 *
 * API key lookups are cached process-wide for KEY_CACHE_MS: at 10,000
 * requests a second a database round trip per request for the key alone
 * would halve throughput. The price is that a revoked key keeps working for
 * at most that long; docs/api/auth.md says so.
 *
 * Security: every value from the request is checked before use; SQL only
 * ever takes parameters; error responses never carry server messages.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <civetweb.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "hex.h"
#include "authn.h"
#include "dict.h"
#include "json_depth.h"
#include "json_guard.h"
#include "log.h"
#include "mesh_peer.h"
#include "metrics.h"
#include "ratelimit.h"
#include "rest.h"
#include "rest_internal.h"
#include "routes.h"

#define MAX_SEGMENTS 8
#define KEY_CACHE_MS 2000
#define LAST_USED_EVERY_MS 60000
#define PROBLEM_BASE "https://postchi.dev/problems/"

/* Optional modules: weak so the node links without them. */
extern const char api_openapi_json[] __attribute__((weak));

typedef struct {
    const api_route_t *route;       /* the row */
    char *segments[MAX_SEGMENTS];   /* literal text, or NULL for a {param} */
    char *params[MAX_SEGMENTS];     /* param name at that position, or NULL */
    int nseg;                       /* segments in the path */
    metric_t *latency;              /* handler latency histogram */
    _Atomic(metric_t *) by_status[600]; /* requests counter per status */
} route_rt_t;

typedef struct {
    char org[AUTHN_ID_MAX];  /* key's organization */
    char id[AUTHN_ID_MAX];   /* key id */
    api_scope_t scope;       /* granted scope */
    int64_t expires;         /* cache entry valid until */
    int64_t last_used_write; /* when last_used_at was last written */
} key_entry_t;

typedef struct {
    db_t *db;          /* this thread's PostgreSQL connection */
    kv_t *kv;          /* this thread's Redis connection, or NULL */
    int64_t kv_retry;  /* do not try Redis again before this */
} thread_state_t;

struct api_errors {
    json_t *list; /* [{field, message}] */
};

struct api_req {
    struct mg_connection *conn;           /* the connection */
    int db_checked;                       /* api_db looked at the connection once */
    const struct mg_request_info *ri;     /* civetweb's request view */
    route_rt_t *rt;                       /* matched route */
    char *seg_buf;                        /* decoded path segments, NUL-separated */
    const char *seg[MAX_SEGMENTS];        /* decoded segments */
    int nseg;                             /* how many */
    char *raw;                            /* body bytes, NUL-terminated */
    size_t raw_len;                       /* body length */
    json_t *body;                         /* parsed body or NULL */
    char org[AUTHN_ID_MAX];               /* caller's organization */
    char actor_type[16];                  /* "user" / "api_key" / "" */
    char actor_id[AUTHN_ID_MAX];          /* user or key id */
    api_scope_t scope;                    /* effective scope */
    struct api_errors errs;               /* field errors */
    int status;                           /* answered status, 0 until then */
    sbuf_t *resp;                         /* response body */
    const char *ctype;                    /* response content type */
    sbuf_t *headers;                      /* extra response headers */
    thread_state_t *ts;                   /* per-thread connections */
    int in_tx;                            /* a transaction is open */
    int tx_doomed;                        /* a statement in it failed unchecked: no COMMIT */
    char *cursor;                         /* decoded ?cursor= position */
};

static struct {
    route_rt_t *routes;        /* compiled route table */
    int nroutes;               /* its size */
    char *conninfo;            /* PostgreSQL connection string */
    char *redis_host;          /* Redis host */
    int redis_port;            /* Redis port */
    char *jwt_secret;          /* HS256 key */
    char *jwt_issuer;          /* required iss */
    size_t body_max;           /* api_body_max */
    size_t batch_body_max;     /* api_batch_body_max */
    rest_send_fn send;         /* mesh one-way send */
    void *send_arg;            /* its argument */
    pthread_key_t tkey;        /* thread_state_t per thread */
    pthread_mutex_t key_lock;  /* guards keys */
    dict_t *keys;              /* key hash -> key_entry_t */
    metric_t *m_unmatched;     /* requests to no route */
    metric_family_t *f_requests; /* requests by route and status */
    metric_t *m_auth_missing, *m_auth_key, *m_auth_token, *m_auth_scope;
    metric_t *m_ratelimited;   /* 429s */
    ratelimit_t *rl;           /* per-caller token buckets */
} R;

static const char *const s_scope_names[] = {"public", "read", "send", "full", "user"};

/* ------------------------------------------------------------------ setup */

static void s_thread_state_free(void *p)
{
    thread_state_t *ts = p;
    if (!ts)
        return;
    db_destroy(&ts->db);
    kv_destroy(&ts->kv);
    free(ts);
}

static metric_family_t *s_latency_family(void)
{
    static const double buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                     0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5, 10};
    static const char *const labels[] = {"route", NULL};
    return metrics_family(METRIC_HISTOGRAM, "postchi_api_request_duration_seconds",
                          "Time to answer an API request, by route.", labels, buckets,
                          sizeof buckets / sizeof buckets[0]);
}

static void s_compile_route(route_rt_t *rt, const api_route_t *r)
{
    rt->route = r;
    if (r->path[0] != '/')
        log_panic("route %s %s: path must start with /", r->method, r->path);
    char *copy = strdup(r->path + 1);
    if (!copy)
        log_panic("out of memory");
    char *save = NULL;
    for (char *tok = strtok_r(copy, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
        if (rt->nseg == MAX_SEGMENTS)
            log_panic("route %s: too many segments", r->path);
        size_t n = strlen(tok);
        if (tok[0] == '{' && n > 2 && tok[n - 1] == '}')
            rt->params[rt->nseg] = strndup(tok + 1, n - 2);
        else
            rt->segments[rt->nseg] = strdup(tok);
        rt->nseg++;
    }
    free(copy);
    rt->latency = metrics_series(s_latency_family(), (const char *const[]){r->name, NULL});
}

int rest_init(const config_t *cfg, rest_send_fn send, void *send_arg, sbuf_t *err)
{
    memset(&R, 0, sizeof R);
    R.jwt_secret = strdup(config_str(cfg, "jwt_secret"));
    R.jwt_issuer = strdup(config_str(cfg, "jwt_issuer"));
    R.conninfo = db_conninfo_from_config(cfg);
    R.redis_host = strdup(config_str(cfg, "redis_host"));
    R.redis_port = (int)config_int(cfg, "redis_port");
    R.body_max = (size_t)config_int(cfg, "api_body_max");
    R.batch_body_max = (size_t)config_int(cfg, "api_batch_body_max");
    R.send = send;
    R.send_arg = send_arg;
    R.keys = dict_new();
    if (!R.jwt_secret || !R.jwt_issuer || !R.conninfo || !R.redis_host || !R.keys) {
        sbuf_appendf(err, "out of memory");
        return -1;
    }
    if (strlen(R.jwt_secret) < 32) {
        sbuf_appendf(err, "setting 'jwt_secret' must be at least 32 bytes (it is %zu); "
                          "set POSTCHI_JWT_SECRET",
                     strlen(R.jwt_secret));
        return -1;
    }
    R.rl = ratelimit_new((double)config_int(cfg, "rate_limit_rps"),
                         (double)config_int(cfg, "rate_limit_burst"));
    if (!R.rl) {
        sbuf_appendf(err, "cannot create the rate limiter");
        return -1;
    }
    pthread_key_create(&R.tkey, s_thread_state_free);
    pthread_mutex_init(&R.key_lock, NULL);

    s_latency_family(); /* exported even before the first route exists */
    const api_route_t *const *tables = api_route_tables();
    int n = 0;
    for (int t = 0; tables[t]; t++)
        for (const api_route_t *r = tables[t]; r->method; r++)
            n++;
    R.routes = calloc((size_t)n + 1, sizeof *R.routes);
    if (!R.routes) {
        sbuf_appendf(err, "out of memory");
        return -1;
    }
    for (int t = 0; tables[t]; t++)
        for (const api_route_t *r = tables[t]; r->method; r++)
            s_compile_route(&R.routes[R.nroutes++], r);

    static const char *const rs[] = {"route", "status", NULL};
    R.f_requests = metrics_family(METRIC_COUNTER, "postchi_api_requests_total",
                                  "API requests answered, by route and status.", rs, NULL, 0);
    R.m_unmatched = metrics_series(R.f_requests, (const char *const[]){"unmatched", "404", NULL});
    static const char *const reason[] = {"reason", NULL};
    metric_family_t *fa = metrics_family(METRIC_COUNTER, "postchi_api_auth_failures_total",
                                         "Requests refused for their credentials, by reason.",
                                         reason, NULL, 0);
    R.m_auth_missing = metrics_series(fa, (const char *const[]){"missing", NULL});
    R.m_auth_key = metrics_series(fa, (const char *const[]){"invalid_key", NULL});
    R.m_auth_token = metrics_series(fa, (const char *const[]){"invalid_token", NULL});
    R.m_auth_scope = metrics_series(fa, (const char *const[]){"scope", NULL});
    R.m_ratelimited = metrics_counter("postchi_api_ratelimit_refusals_total",
                                      "Requests refused by the per-key rate limit.");
    log_info("api routes=%d", R.nroutes);
    return 0;
}

static int s_free_key(void *arg, const void *key, size_t len, void *value)
{
    (void)arg;
    (void)key;
    (void)len;
    free(value);
    return 1;
}

void rest_shutdown(void)
{
    for (int i = 0; i < R.nroutes; i++)
        for (int s = 0; s < R.routes[i].nseg; s++) {
            free(R.routes[i].segments[s]);
            free(R.routes[i].params[s]);
        }
    free(R.routes);
    ratelimit_destroy(&R.rl);
    if (R.keys) {
        size_t cursor = 0;
        dict_sweep(R.keys, &cursor, dict_size(R.keys) + 16, s_free_key, NULL);
        dict_destroy(&R.keys);
    }
    /* The thread that runs shutdown may own state too (tests call handlers
     * directly); civetweb's threads freed theirs when they ended. */
    s_thread_state_free(pthread_getspecific(R.tkey));
    pthread_setspecific(R.tkey, NULL);
    pthread_key_delete(R.tkey);
    pthread_mutex_destroy(&R.key_lock);
    if (R.jwt_secret)
        OPENSSL_cleanse(R.jwt_secret, strlen(R.jwt_secret));
    free(R.jwt_secret);
    free(R.jwt_issuer);
    free(R.conninfo);
    free(R.redis_host);
    memset(&R, 0, sizeof R);
}

/* -------------------------------------------------------------- responses */

static void s_set(api_req_t *req, int status, const char *ctype)
{
    req->status = status;
    req->ctype = ctype;
}

int api_json(api_req_t *req, int status, json_t *body)
{
    sbuf_reset(req->resp);
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(body);
    if (!text) {
        log_error("cannot encode response");
        return api_problem(req, 500, "Internal Server Error", "the response could not be built");
    }
    sbuf_append_str(req->resp, text);
    free(text);
    s_set(req, status, "application/json");
    return status;
}

int api_text(api_req_t *req, int status, const char *content_type, const char *body)
{
    sbuf_reset(req->resp);
    sbuf_append_str(req->resp, body);
    s_set(req, status, content_type);
    return status;
}

int api_no_content(api_req_t *req)
{
    sbuf_reset(req->resp);
    s_set(req, 204, NULL);
    return 204;
}

static void s_slug(const char *title, char *out, size_t size)
{
    size_t j = 0;
    for (size_t i = 0; title[i] && j + 1 < size; i++) {
        unsigned char c = (unsigned char)title[i];
        out[j++] = isalnum(c) ? (char)tolower(c) : '-';
    }
    out[j] = 0;
}

static int s_problem_json(api_req_t *req, int status, const char *title, const char *detail,
                          json_t *errors)
{
    char slug[64];
    s_slug(title, slug, sizeof slug);
    char type[128];
    snprintf(type, sizeof type, PROBLEM_BASE "%s", slug);
    json_t *p = json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", title, "status", status,
                          "detail", detail ? detail : title);
    if (p && errors)
        json_object_set(p, "errors", errors);
    sbuf_reset(req->resp);
    char *text = p ? json_dumps(p, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(p);
    if (text)
        sbuf_append_str(req->resp, text);
    else
        sbuf_append_str(req->resp, "{\"title\":\"Internal Server Error\",\"status\":500}");
    free(text);
    s_set(req, status, "application/problem+json");
    return status;
}

int api_problem(api_req_t *req, int status, const char *title, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return s_problem_json(req, status, title, detail, NULL);
}

int api_not_found(api_req_t *req, const char *what)
{
    return api_problem(req, 404, "Not Found", "no such %s", what);
}

int api_db_error(api_req_t *req, const char *sqlstate, const char *message)
{
    const char *st = sqlstate ? sqlstate : "";
    if (strcmp(st, "23505") == 0)
        return api_problem(req, 409, "Conflict", "a resource with these values already exists");
    if (strncmp(st, "23", 2) == 0 || strcmp(st, "22P02") == 0 || strcmp(st, "22007") == 0 ||
        strcmp(st, "22008") == 0 || strcmp(st, "22003") == 0 ||
        /* bytes that are not UTF-8 (22021) or have no mapping (22P05):
         * a value the caller sent, never a server fault */
        strcmp(st, "22021") == 0 || strcmp(st, "22P05") == 0)
        return api_problem(req, 422, "Unprocessable Content",
                           "the request conflicts with the data it refers to");
    if (strcmp(st, "57014") == 0)
        return api_problem(req, 503, "Service Unavailable", "the query took too long");
    char safe[256];
    log_error("database error route=%s sqlstate=%s: %s", req->rt ? req->rt->route->name : "-", st,
              log_printable(safe, sizeof safe, message ? message : "", message ? strlen(message) : 0));
    return api_problem(req, 500, "Internal Server Error", "the request could not be completed");
}

void api_set_header(api_req_t *req, const char *name, const char *value)
{
    /* Names are ours; values are checked so a header can never be split. */
    for (const char *p = value; *p; p++)
        if (*p == '\r' || *p == '\n')
            return;
    sbuf_appendf(req->headers, "%s: %s\r\n", name, value);
}

/* ------------------------------------------------------------- validation */

api_errors_t *api_errors(api_req_t *req)
{
    return &req->errs;
}

void api_error_add(api_errors_t *errs, const char *field, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!errs->list)
        errs->list = json_array();
    /* Field names may echo client keys (unknown fields): keep them valid
     * text for JSON, bounded. */
    char safe[160];
    log_printable(safe, sizeof safe, field, strlen(field));
    json_array_append_new(errs->list, json_pack("{s:s, s:s}", "field", safe, "message", msg));
}

int api_errors_count(const api_errors_t *errs)
{
    return errs->list ? (int)json_array_size(errs->list) : 0;
}

int api_invalid(api_req_t *req)
{
    int n = api_errors_count(&req->errs);
    return s_problem_json(req, 422, "Unprocessable Content",
                          n == 1 ? "a field is invalid" : "some fields are invalid",
                          req->errs.list ? req->errs.list : json_array());
}

static json_t *s_field(api_req_t *req, json_t *obj, const char *field, int required, int *rc)
{
    json_t *v = obj && json_is_object(obj) ? json_object_get(obj, field) : NULL;
    if (!v) {
        if (required) {
            api_error_add(&req->errs, field, "is required");
            *rc = -1;
        } else {
            *rc = 1;
        }
        return NULL;
    }
    *rc = 0;
    return v;
}

int api_field_string(api_req_t *req, json_t *obj, const char *field, int required,
                     size_t max_len, const char **out)
{
    int rc;
    json_t *v = s_field(req, obj, field, required, &rc);
    if (!v)
        return rc;
    if (!json_is_string(v)) {
        api_error_add(&req->errs, field, "must be a string");
        return -1;
    }
    size_t len = json_string_length(v);
    if (len > max_len) {
        api_error_add(&req->errs, field, "must be at most %zu bytes long", max_len);
        return -1;
    }
    if (memchr(json_string_value(v), 0, len)) {
        api_error_add(&req->errs, field, "must not contain NUL characters");
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

int api_field_int(api_req_t *req, json_t *obj, const char *field, int required, int64_t min,
                  int64_t max, int64_t *out)
{
    int rc;
    json_t *v = s_field(req, obj, field, required, &rc);
    if (!v)
        return rc;
    if (!json_is_integer(v)) {
        api_error_add(&req->errs, field, "must be a whole number");
        return -1;
    }
    json_int_t i = json_integer_value(v);
    if (i < min || i > max) {
        api_error_add(&req->errs, field, "must be between %lld and %lld", (long long)min,
                      (long long)max);
        return -1;
    }
    *out = i;
    return 0;
}

int api_field_bool(api_req_t *req, json_t *obj, const char *field, int required, int *out)
{
    int rc;
    json_t *v = s_field(req, obj, field, required, &rc);
    if (!v)
        return rc;
    if (!json_is_boolean(v)) {
        api_error_add(&req->errs, field, "must be true or false");
        return -1;
    }
    *out = json_is_true(v);
    return 0;
}

int api_field_enum(api_req_t *req, json_t *obj, const char *field, int required,
                   const char *const *words, const char **out)
{
    const char *s;
    int rc = api_field_string(req, obj, field, required, 64, &s);
    if (rc != 0)
        return rc;
    for (int i = 0; words[i]; i++)
        if (strcmp(words[i], s) == 0) {
            *out = words[i];
            return 0;
        }
    char list[256] = "";
    for (int i = 0; words[i]; i++) {
        strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
        strncat(list, words[i], sizeof list - strlen(list) - 1);
    }
    api_error_add(&req->errs, field, "must be one of %s", list);
    return -1;
}

void api_field_only(api_req_t *req, json_t *obj, const char *const *allowed)
{
    if (!obj || !json_is_object(obj))
        return;
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++)
            ok = strcmp(allowed[i], key) == 0;
        if (!ok)
            api_error_add(&req->errs, key, "is not a known field");
    }
}

int api_utf8_ok(const char *s)
{
    /* jansson's decoder is the one every JSON string already went through,
     * so query text and body text are held to the same rule. */
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

int api_is_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------- pagination */

static const char s_b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *api_cursor_make(const char *position)
{
    size_t n = strlen(position) + 3;
    char *in = malloc(n + 1);
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (!in || !out) {
        free(in);
        free(out);
        return NULL;
    }
    snprintf(in, n + 1, "v1|%s", position);
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)in[i + 2];
        out[j++] = s_b64url[(v >> 18) & 63];
        out[j++] = s_b64url[(v >> 12) & 63];
        if (i + 1 < n)
            out[j++] = s_b64url[(v >> 6) & 63];
        if (i + 2 < n)
            out[j++] = s_b64url[v & 63];
    }
    out[j] = 0;
    free(in);
    return out;
}

/* Decode a cursor into out (size >= strlen(c)); NULL when it is not ours. */
static const char *s_cursor_read(const char *c, char *out, size_t size)
{
    size_t n = strlen(c), j = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (n == 0 || n > 1024)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *p = strchr(s_b64url, c[i]);
        if (!p || !c[i])
            return NULL;
        acc = (acc << 6) | (uint32_t)(p - s_b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (j + 1 >= size)
                return NULL;
            out[j++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[j] = 0;
    if (j < 3 || memcmp(out, "v1|", 3) != 0)
        return NULL;
    for (size_t i = 3; i < j; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
            return NULL;
    return out + 3;
}

int api_page(api_req_t *req, int def, int max, int *limit, const char **cursor)
{
    int rc = 0;
    *limit = def;
    *cursor = NULL;
    const char *l = api_query(req, "limit");
    if (l) {
        char *end;
        long v = strtol(l, &end, 10);
        if (!*l || *end || v < 1 || v > max || !isdigit((unsigned char)l[0])) {
            api_error_add(&req->errs, "limit", "must be a whole number from 1 to %d", max);
            rc = -1;
        } else {
            *limit = (int)v;
        }
    }
    const char *c = api_query(req, "cursor");
    if (c) {
        size_t size = strlen(c) + 1;
        char *buf = malloc(size);
        /* Kept on the request so the caller's pointer stays valid. */
        const char *pos = buf ? s_cursor_read(c, buf, size) : NULL;
        if (!pos) {
            free(buf);
            api_error_add(&req->errs, "cursor", "is not a cursor this API issued");
            rc = -1;
        } else {
            memmove(buf, pos, strlen(pos) + 1);
            free(req->cursor);
            req->cursor = buf;
            *cursor = buf;
        }
    }
    return rc;
}

int api_page_json(api_req_t *req, json_t *data, char *next_cursor)
{
    json_t *o = json_object();
    json_object_set_new(o, "data", data ? data : json_array());
    json_object_set_new(o, "next_cursor", next_cursor ? json_string(next_cursor) : json_null());
    free(next_cursor);
    return api_json(req, 200, o);
}

/* --------------------------------------------------------------- requests */

const char *api_param(const api_req_t *req, const char *name)
{
    for (int i = 0; i < req->rt->nseg; i++)
        if (req->rt->params[i] && strcmp(req->rt->params[i], name) == 0)
            return req->seg[i];
    log_panic("route %s has no parameter %s", req->rt->route->path, name);
    return NULL;
}

const char *api_query(const api_req_t *req, const char *name)
{
    /* civetweb decodes into a caller buffer; keep one per request name in
     * a small ring so several values can be held at once. */
    static __thread char ring[8][1024];
    static __thread int next;
    const char *qs = req->ri->query_string;
    if (!qs)
        return NULL;
    char *buf = ring[next];
    int n = mg_get_var(qs, strlen(qs), name, buf, sizeof ring[0]);
    if (n < 0)
        return NULL; /* absent (-1) or too long (-2): treat both as absent */
    next = (next + 1) % 8;
    return buf;
}

const char *api_header(const api_req_t *req, const char *name)
{
    return mg_get_header(req->conn, name);
}

json_t *api_body(const api_req_t *req)
{
    return req->body;
}

const char *api_raw_body(const api_req_t *req, size_t *len)
{
    *len = req->raw_len;
    return req->raw ? req->raw : "";
}

const char *api_org(const api_req_t *req)
{
    return req->org[0] ? req->org : NULL;
}

const char *api_actor_type(const api_req_t *req)
{
    return req->actor_type[0] ? req->actor_type : NULL;
}

const char *api_actor_id(const api_req_t *req)
{
    return req->actor_id[0] ? req->actor_id : NULL;
}

api_scope_t api_scope(const api_req_t *req)
{
    return req->scope;
}

const char *api_remote_addr(const api_req_t *req)
{
    return req->ri->remote_addr;
}

static thread_state_t *s_ts(void)
{
    thread_state_t *ts = pthread_getspecific(R.tkey);
    if (!ts) {
        ts = calloc(1, sizeof *ts);
        if (ts)
            pthread_setspecific(R.tkey, ts);
    }
    return ts;
}

db_t *api_db(api_req_t *req)
{
    thread_state_t *ts = req->ts;
    /* Checked once per request, before its first statement: a connection
     * the server dropped while it was idle is replaced now, not found out
     * by a failed statement and a 503. */
    int fresh = !req->db_checked;
    req->db_checked = 1;
    if (fresh ? db_alive(ts->db) : db_usable(ts->db))
        return ts->db;
    db_destroy(&ts->db);
    sbuf_t *err = sbuf_new(64);
    ts->db = db_connect(R.conninfo, 0, err);
    if (!ts->db && log_should("api-db", 6, 10000))
        log_error("%s", err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    return ts->db;
}

kv_t *api_kv(api_req_t *req)
{
    thread_state_t *ts = req->ts;
    if (ts->kv)
        return ts->kv;
    int64_t now = mesh_now_ms();
    if (now < ts->kv_retry)
        return NULL;
    sbuf_t *err = sbuf_new(64);
    ts->kv = kv_connect(R.redis_host, R.redis_port, 200, 0, err);
    if (!ts->kv) {
        ts->kv_retry = now + 1000;
        if (log_should("api-kv", 6, 10000))
            log_warn("%s; using local limits", err ? sbuf_data(err) : "out of memory");
    }
    sbuf_destroy(&err);
    return ts->kv;
}

int api_tx_begin(api_req_t *req)
{
    if (db_exec(api_db(req), "BEGIN", 0, NULL, NULL) != 0)
        return -1;
    req->in_tx = 1;
    req->tx_doomed = 0;
    return 0;
}

int api_tx_commit(api_req_t *req)
{
    /* PostgreSQL answers COMMIT of an aborted transaction with a ROLLBACK
     * and no error: without this check a failed audit row turned the whole
     * change into a silent rollback answered as a success. */
    if (req->tx_doomed) {
        api_tx_rollback(req);
        req->tx_doomed = 0;
        return -1;
    }
    req->in_tx = 0;
    return db_exec(api_db(req), "COMMIT", 0, NULL, NULL);
}

void api_tx_rollback(api_req_t *req)
{
    if (req->in_tx)
        db_exec(api_db(req), "ROLLBACK", 0, NULL, NULL);
    req->in_tx = 0;
}

void api_audit(api_req_t *req, const char *action, const char *resource_type,
               const char *resource_id, json_t *detail)
{
    if (!detail)
        detail = json_object();
    json_object_set_new(detail, "ip", json_string(req->ri->remote_addr));
    char *text = json_dumps(detail, JSON_COMPACT);
    json_decref(detail);
    const char *p[] = {req->org, req->actor_type[0] ? req->actor_type : "system",
                       req->actor_id[0] ? req->actor_id : NULL, action, resource_type, resource_id,
                       text ? text : "{}"};
    sbuf_t *err = sbuf_new(64);
    if (db_exec(api_db(req),
                "INSERT INTO audit_log (organization_id, actor_type, actor_id, action, "
                "resource_type, resource_id, detail) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
                7, p, err) != 0) {
        log_error("audit row not written action=%s: %s", action, err ? sbuf_data(err) : "");
        /* The change and its audit row are kept together or not at all. */
        if (req->in_tx)
            req->tx_doomed = 1;
    }
    sbuf_destroy(&err);
    free(text);
}

int api_trigger(api_req_t *req, const char *name, json_t *body)
{
    char target[96];
    snprintf(target, sizeof target, "tenant/%s", req->org);
    return api_mesh_send(req, target, name, body);
}

int api_mesh_send(api_req_t *req, const char *target, const char *name, json_t *body)
{
    (void)req;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    int rc = -1;
    if (text && R.send)
        rc = R.send(R.send_arg, target, name, text, strlen(text));
    if (rc != 0 && log_should("api-mesh-send", 13, 10000))
        log_warn("%s to %s not sent now; its rows will be re-driven", name, target);
    free(text);
    return rc;
}

/* ---------------------------------------------------------- authentication */

static int s_scope_allows(api_scope_t have, api_scope_t need, int is_user)
{
    if (need == API_SCOPE_USER)
        return is_user;
    return have >= need;
}

/* 0 when the caller is known (req filled), else the status answered. */
static int s_authenticate(api_req_t *req)
{
    api_scope_t need = req->rt->route->scope;
    if (need == API_SCOPE_PUBLIC)
        return 0;
    const char *h = mg_get_header(req->conn, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) {
        metric_inc(R.m_auth_missing);
        api_set_header(req, "WWW-Authenticate", "Bearer");
        return api_problem(req, 401, "Unauthorized",
                           "send 'Authorization: Bearer <API key or login token>'");
    }
    const char *token = h + 7;
    char prefix[AUTHN_PREFIX_LEN + 1], hash[AUTHN_HASH_HEX];
    if (authn_key_parse(token, prefix, hash) == 0) {
        int64_t now = mesh_now_ms();
        key_entry_t cached = {0};
        int hit = 0, write_last_used = 0;
        pthread_mutex_lock(&R.key_lock);
        key_entry_t *e = dict_get(R.keys, hash, strlen(hash));
        if (e && e->expires > now) {
            cached = *e;
            hit = 1;
        }
        pthread_mutex_unlock(&R.key_lock);
        if (!hit) {
            const char *p[] = {prefix, hash};
            db_result_t *res = db_query_prepared(api_db(req),
                                        "SELECT id, organization_id, scope FROM api_keys "
                                        "WHERE prefix = $1 AND secret_hash = $2 "
                                        "AND revoked_at IS NULL",
                                        2, p, NULL);
            if (!res)
                return api_problem(req, 503, "Service Unavailable", "credentials cannot be checked now");
            if (db_result_rows(res) == 1) {
                snprintf(cached.id, sizeof cached.id, "%s", db_result_get(res, 0, 0));
                snprintf(cached.org, sizeof cached.org, "%s", db_result_get(res, 0, 1));
                const char *sc = db_result_get(res, 0, 2);
                cached.scope = strcmp(sc, "full") == 0   ? API_SCOPE_FULL
                               : strcmp(sc, "send") == 0 ? API_SCOPE_SEND
                                                         : API_SCOPE_READ;
                cached.expires = now + KEY_CACHE_MS;
                hit = 1;
            }
            db_result_free(&res);
            pthread_mutex_lock(&R.key_lock);
            key_entry_t *old = dict_get(R.keys, hash, strlen(hash));
            if (hit) {
                cached.last_used_write = old ? old->last_used_write : 0;
                if (now - cached.last_used_write >= LAST_USED_EVERY_MS) {
                    cached.last_used_write = now;
                    write_last_used = 1;
                }
                if (old) {
                    *old = cached;
                } else {
                    key_entry_t *n = malloc(sizeof *n);
                    if (n) {
                        *n = cached;
                        if (dict_put(R.keys, hash, strlen(hash), n) != 0)
                            free(n);
                    }
                }
            } else if (old) {
                free(dict_remove(R.keys, hash, strlen(hash)));
            }
            pthread_mutex_unlock(&R.key_lock);
        }
        if (!hit) {
            metric_inc(R.m_auth_key);
            return api_problem(req, 401, "Unauthorized", "the API key is not valid or was revoked");
        }
        if (write_last_used) {
            const char *p[] = {cached.id};
            db_exec(api_db(req), "UPDATE api_keys SET last_used_at = now() WHERE id = $1", 1, p,
                    NULL);
        }
        snprintf(req->org, sizeof req->org, "%s", cached.org);
        snprintf(req->actor_id, sizeof req->actor_id, "%s", cached.id);
        snprintf(req->actor_type, sizeof req->actor_type, "api_key");
        req->scope = cached.scope;
        if (!s_scope_allows(req->scope, need, 0)) {
            metric_inc(R.m_auth_scope);
            return api_problem(req, 403, "Forbidden", "this API key's scope (%s) does not allow this call; it needs %s",
                               s_scope_names[req->scope], need == API_SCOPE_USER ? "a logged-in user" : s_scope_names[need]);
        }
        return 0;
    }
    const char *why = NULL;
    if (authn_jwt_verify(R.jwt_secret, R.jwt_issuer, token, req->actor_id, req->org, &why) != 0) {
        metric_inc(R.m_auth_token);
        api_set_header(req, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        return api_problem(req, 401, "Unauthorized", "the login token is not valid: %s",
                           why ? why : "rejected");
    }
    if (!api_is_uuid(req->org) || !api_is_uuid(req->actor_id)) {
        metric_inc(R.m_auth_token);
        return api_problem(req, 401, "Unauthorized", "the login token is not valid: bad subject");
    }
    snprintf(req->actor_type, sizeof req->actor_type, "user");
    req->scope = API_SCOPE_FULL;
    return 0;
}

/* ------------------------------------------------------------------ bodies */

/* 0 when the body is read (and parsed unless the route takes raw), else the
 * status answered. */
static int s_read_body(api_req_t *req)
{
    const char *m = req->ri->request_method;
    int has_body = strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0 ||
                   strcmp(m, "DELETE") == 0;
    if (!has_body)
        return 0;
    size_t max = (req->rt->route->flags & API_BATCH) ? R.batch_body_max : R.body_max;
    long long declared = req->ri->content_length;
    if (declared > (long long)max)
        return api_problem(req, 413, "Content Too Large", "the body may be at most %zu bytes", max);
    /* A client that asked to be told before sending a large body waits for
     * this; civetweb does not send it for request handlers. */
    const char *expect = mg_get_header(req->conn, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0)
        mg_printf(req->conn, "HTTP/1.1 100 Continue\r\n\r\n");
    size_t cap = declared >= 0 ? (size_t)declared : 65536;
    req->raw = malloc(cap + 1);
    if (!req->raw)
        return api_problem(req, 503, "Service Unavailable", "out of memory");
    size_t len = 0;
    for (;;) {
        if (len == cap) {
            if (declared >= 0)
                break;
            if (cap >= max + 1)
                break;
            size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            char *n = realloc(req->raw, ncap + 1);
            if (!n)
                return api_problem(req, 503, "Service Unavailable", "out of memory");
            req->raw = n;
            cap = ncap;
        }
        int r = mg_read(req->conn, req->raw + len, cap - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    req->raw[len] = 0;
    req->raw_len = len;
    if (len > max)
        return api_problem(req, 413, "Content Too Large", "the body may be at most %zu bytes", max);
    if (declared >= 0 && len < (size_t)declared)
        return api_problem(req, 400, "Bad Request", "the body ended before its Content-Length");
    if (len == 0 || (req->rt->route->flags & API_RAW_BODY))
        return 0;
    const char *ct = mg_get_header(req->conn, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';'))
        return api_problem(req, 415, "Unsupported Media Type",
                           "send the body as Content-Type: application/json");
    /* Before the parser: its recursion would overflow this thread's stack
     * long before the guard below could see the depth. */
    if (!json_depth_ok(req->raw, len, json_guard_defaults()->max_depth))
        return api_problem(req, 400, "Bad Request",
                           "the body is too large in shape: it nests deeper than %d levels",
                           json_guard_defaults()->max_depth);
    json_error_t jerr;
    req->body = json_loadb(req->raw, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req->body)
        return api_problem(req, 400, "Bad Request", "the body is not valid JSON (line %d, column %d): %s",
                           jerr.line, jerr.column, jerr.text);
    if (!json_is_object(req->body))
        return api_problem(req, 400, "Bad Request", "the body must be a JSON object");
    /* Batch calls take longer arrays than the guard's default so their
     * handlers can answer an oversized batch precisely (422 on the field). */
    json_guard_limits_t lim = *json_guard_defaults();
    if (req->rt->route->flags & API_BATCH) {
        lim.max_array *= 10;
        lim.max_string = R.batch_body_max; /* a base64 attachment is one string */
    }
    sbuf_t *why = sbuf_new(64);
    int rc = why ? json_guard_check(req->body, &lim, why) : -1;
    if (rc != 0)
        api_problem(req, 400, "Bad Request", "the body is too large in shape: %s",
                    why ? sbuf_data(why) : "out of memory");
    sbuf_destroy(&why);
    return rc == 0 ? 0 : 400;
}

/* 0 when the caller may go on, else the status answered (429). Sets the
 * RateLimit-* headers either way. Redis down: the limiter's local share
 * decides, so requests still succeed within it. */
static int s_rate_limit(api_req_t *req)
{
    if (!req->actor_id[0])
        return 0;
    char key[96];
    snprintf(key, sizeof key, "%s:%s", req->actor_type, req->actor_id);
    ratelimit_result_t r;
    ratelimit_take(R.rl, api_kv(req), key, &r);
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)r.limit);
    api_set_header(req, "RateLimit-Limit", v);
    snprintf(v, sizeof v, "%lld", (long long)r.remaining);
    api_set_header(req, "RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%lld", (long long)r.reset_s);
    api_set_header(req, "RateLimit-Reset", v);
    if (r.allowed)
        return 0;
    metric_inc(R.m_ratelimited);
    snprintf(v, sizeof v, "%lld", (long long)r.retry_after_s);
    api_set_header(req, "Retry-After", v);
    return api_problem(req, 429, "Too Many Requests",
                       "this caller's rate limit is spent; retry after %lld s",
                       (long long)r.retry_after_s);
}

/* ------------------------------------------------------------ idempotency */

typedef enum { IDEM_NONE, IDEM_OWNED, IDEM_ANSWERED } idem_t;

/* A record past its 24 hours, or a claim (status 0) no answer replaced in
 * 5 minutes: its node died between the handler's commit and storing the
 * answer. Either is removed and the key claimed afresh, so a crash cannot
 * leave a key answering "in progress" for a day. */
#define IDEM_STALE                                                                                 \
    "(created_at < now() - interval '24 hours' OR "                                                \
    "(status = 0 AND created_at < now() - interval '5 minutes'))"

static void s_request_hash(api_req_t *req, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 0;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, req->ri->request_method, strlen(req->ri->request_method));
    EVP_DigestUpdate(c, " ", 1);
    EVP_DigestUpdate(c, req->ri->local_uri, strlen(req->ri->local_uri));
    EVP_DigestUpdate(c, "\n", 1);
    if (req->raw)
        EVP_DigestUpdate(c, req->raw, req->raw_len);
    EVP_DigestFinal_ex(c, md, &n);
    EVP_MD_CTX_free(c);
    for (unsigned i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

/* Claim the key (IDEM_OWNED: run the handler, then s_idem_finish), replay a
 * stored answer (IDEM_ANSWERED), or IDEM_NONE when there is no key. */
static idem_t s_idem_begin(api_req_t *req, const char *key, char hash[65])
{
    size_t n = strlen(key);
    int ok = n >= 1 && n <= 255;
    for (size_t i = 0; ok && i < n; i++)
        ok = key[i] > 0x20 && key[i] < 0x7f;
    if (!ok) {
        api_problem(req, 400, "Bad Request",
                    "Idempotency-Key must be 1 to 255 printable ASCII characters");
        return IDEM_ANSWERED;
    }
    s_request_hash(req, hash);
    db_t *db = api_db(req);
    for (int attempt = 0; attempt < 2; attempt++) {
        const char *p[] = {req->org, key, req->rt->route->name, hash};
        db_result_t *res = db_query(db,
                                    "INSERT INTO idempotency_keys (organization_id, key, route, "
                                    "request_hash, status, response) VALUES ($1, $2, $3, $4, 0, '') "
                                    "ON CONFLICT (organization_id, key) DO NOTHING RETURNING 1",
                                    4, p, NULL);
        if (!res) {
            api_problem(req, 503, "Service Unavailable", "the request cannot be recorded now");
            return IDEM_ANSWERED;
        }
        int claimed = db_result_rows(res) == 1;
        db_result_free(&res);
        if (claimed)
            return IDEM_OWNED;
        const char *q[] = {req->org, key};
        res = db_query(db,
                       "SELECT request_hash, status, response, " IDEM_STALE
                       " FROM idempotency_keys WHERE organization_id = $1 AND key = $2",
                       2, q, NULL);
        if (!res) {
            api_problem(req, 503, "Service Unavailable", "the request cannot be recorded now");
            return IDEM_ANSWERED;
        }
        if (db_result_rows(res) == 0) {
            db_result_free(&res);
            continue; /* removed between our two statements: claim again */
        }
        if (strcmp(db_result_get(res, 0, 3), "t") == 0) {
            db_result_free(&res);
            db_exec(db, "DELETE FROM idempotency_keys WHERE organization_id = $1 AND key = $2 "
                        "AND " IDEM_STALE, 2, q, NULL);
            continue;
        }
        int status = atoi(db_result_get(res, 0, 1));
        if (strcmp(db_result_get(res, 0, 0), hash) != 0) {
            api_problem(req, 422, "Unprocessable Content",
                        "this Idempotency-Key was used for a different request");
        } else if (status == 0) {
            api_problem(req, 409, "Conflict",
                        "a request with this Idempotency-Key is still in progress");
        } else {
            sbuf_reset(req->resp);
            sbuf_append_str(req->resp, db_result_get(res, 0, 2));
            s_set(req, status, status == 204 ? NULL
                               : status >= 400 ? "application/problem+json"
                                               : "application/json");
            api_set_header(req, "Idempotent-Replayed", "true");
        }
        db_result_free(&res);
        return IDEM_ANSWERED;
    }
    api_problem(req, 409, "Conflict", "the Idempotency-Key is contended; retry");
    return IDEM_ANSWERED;
}

static void s_idem_finish(api_req_t *req, const char *key)
{
    db_t *db = api_db(req);
    char status[16];
    snprintf(status, sizeof status, "%d", req->status);
    const char *p[] = {req->org, key, status, sbuf_data(req->resp)};
    /* A server-side failure is not an answer, and neither is a refusal of
     * the request as it stood (a 422 on a domain not yet verified, a 404
     * for something not made yet): the client fixes the cause and retries
     * with the same key, and that retry must run. Free the key for both.
     * A 409 is kept: it reports the outcome against existing state. */
    if (req->status >= 500 || (req->status >= 400 && req->status != 409))
        db_exec(db, "DELETE FROM idempotency_keys WHERE organization_id = $1 AND key = $2", 2, p,
                NULL);
    else
        db_exec(db, "UPDATE idempotency_keys SET status = $3::int, response = $4 "
                    "WHERE organization_id = $1 AND key = $2", 4, p, NULL);
}

/* ---------------------------------------------------------------- dispatch */

/* Split the path after /api/v1 into decoded segments. 0 or -1 (too many,
 * bad escapes, or a decoded NUL or slash: never valid in an id). */
static int s_split(api_req_t *req, const char *path)
{
    size_t n = strlen(path);
    req->seg_buf = malloc(n + 1);
    if (!req->seg_buf)
        return -1;
    char *o = req->seg_buf;
    req->nseg = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        if (req->nseg == MAX_SEGMENTS)
            return -1;
        req->seg[req->nseg++] = o;
        for (; *p && *p != '/'; p++) {
            char c = *p;
            if (c == '%') {
                int hi = hex_digit(p[1]), lo = hi >= 0 ? hex_digit(p[2]) : -1;
                if (lo < 0)
                    return -1;
                c = (char)(hi * 16 + lo);
                if (c == 0 || c == '/')
                    return -1;
                p += 2;
            }
            *o++ = c;
        }
        *o++ = 0;
        const char *seg = req->seg[req->nseg - 1];
        if (strcmp(seg, ".") == 0 || strcmp(seg, "..") == 0)
            return -1;
    }
    return 0;
}

static route_rt_t *s_match(api_req_t *req, int *path_matched)
{
    *path_matched = 0;
    for (int i = 0; i < R.nroutes; i++) {
        route_rt_t *rt = &R.routes[i];
        if (rt->nseg != req->nseg)
            continue;
        int ok = 1;
        for (int s = 0; ok && s < rt->nseg; s++)
            ok = !rt->segments[s] || strcmp(rt->segments[s], req->seg[s]) == 0;
        if (!ok)
            continue;
        *path_matched = 1;
        if (strcmp(rt->route->method, req->ri->request_method) == 0)
            return rt;
    }
    return NULL;
}

static void s_send(api_req_t *req)
{
    struct mg_connection *c = req->conn;
    const char *text = mg_get_response_code_text(c, req->status);
    size_t len = sbuf_len(req->resp);
    sbuf_t *h = sbuf_new(256);
    if (!h)
        return;
    sbuf_appendf(h, "HTTP/1.1 %d %s\r\nCache-Control: no-store\r\n", req->status, text);
    if (req->status != 204) {
        sbuf_appendf(h, "Content-Type: %s\r\nContent-Length: %zu\r\n",
                     req->ctype ? req->ctype : "application/json", len);
    }
    sbuf_append(h, sbuf_data(req->headers), sbuf_len(req->headers));
    sbuf_append_str(h, "\r\n");
    /* One write: headers and body split over two would let TCP hold the
     * body back on a keep-alive connection (Nagle waiting for an ACK). */
    if (req->status != 204 && len)
        sbuf_append(h, sbuf_data(req->resp), len);
    mg_write(c, sbuf_data(h), sbuf_len(h));
    sbuf_destroy(&h);
}

static void s_count(api_req_t *req)
{
    if (!req->rt) {
        metric_inc(R.m_unmatched);
        return;
    }
    int st = req->status >= 100 && req->status < 600 ? req->status : 500;
    metric_t *m = atomic_load(&req->rt->by_status[st]);
    if (!m) {
        char code[8];
        snprintf(code, sizeof code, "%d", st);
        m = metrics_series(R.f_requests, (const char *const[]){req->rt->route->name, code, NULL});
        atomic_store(&req->rt->by_status[st], m);
    }
    metric_inc(m);
}

static void s_serve_openapi(api_req_t *req)
{
    if (!api_openapi_json) {
        api_problem(req, 404, "Not Found", "no OpenAPI document is built in");
        return;
    }
    sbuf_reset(req->resp);
    sbuf_append_str(req->resp, api_openapi_json);
    s_set(req, 200, "application/json");
}

static void s_run(api_req_t *req)
{
    /* request_uri is the path as sent (the server runs with decode_url=no
     * and we decode per segment); civetweb's local_uri has had "." and ".."
     * folded, which would let a traversal reach another route's shape. */
    const char *path = req->ri->request_uri;
    if (!path || strncmp(path, "/api/v1", 7) != 0 || (path[7] && path[7] != '/')) {
        api_problem(req, 404, "Not Found", "no such resource");
        return;
    }
    if (strcmp(path + 7, "/openapi.json") == 0 && strcmp(req->ri->request_method, "GET") == 0) {
        s_serve_openapi(req);
        return;
    }
    if (s_split(req, path + 7) != 0) {
        api_problem(req, 404, "Not Found", "no such resource");
        return;
    }
    int path_matched;
    req->rt = s_match(req, &path_matched);
    if (!req->rt) {
        if (path_matched) {
            char allow[128] = "";
            for (int i = 0; i < R.nroutes; i++) {
                route_rt_t *rt = &R.routes[i];
                if (rt->nseg != req->nseg)
                    continue;
                int ok = 1;
                for (int s = 0; ok && s < rt->nseg; s++)
                    ok = !rt->segments[s] || strcmp(rt->segments[s], req->seg[s]) == 0;
                if (ok && strlen(allow) + strlen(rt->route->method) + 3 < sizeof allow) {
                    if (allow[0])
                        strcat(allow, ", ");
                    strcat(allow, rt->route->method);
                }
            }
            api_set_header(req, "Allow", allow);
            api_problem(req, 405, "Method Not Allowed", "this resource allows %s", allow);
        } else {
            api_problem(req, 404, "Not Found", "no such resource");
        }
        return;
    }
    if (!api_db(req)) {
        api_problem(req, 503, "Service Unavailable", "the database is unreachable; retry shortly");
        return;
    }
    if (s_authenticate(req) != 0)
        return;
    if (s_rate_limit(req) != 0)
        return;
    if (s_read_body(req) != 0)
        return;
    const char *idem_key = NULL;
    char hash[65];
    if ((req->rt->route->flags & API_IDEMPOTENT) && req->org[0])
        idem_key = mg_get_header(req->conn, "Idempotency-Key");
    if (idem_key && s_idem_begin(req, idem_key, hash) == IDEM_ANSWERED)
        return;
    int st = req->rt->route->handler(req);
    if (req->in_tx) {
        log_error("handler left a transaction open route=%s; rolled back", req->rt->route->name);
        api_tx_rollback(req);
        if (st < 500)
            api_problem(req, 500, "Internal Server Error", "the request could not be completed");
    }
    if (req->status == 0)
        api_problem(req, 500, "Internal Server Error", "the request was not answered");
    if (idem_key)
        s_idem_finish(req, idem_key);
}

int rest_handle(struct mg_connection *conn, void *cbdata)
{
    (void)cbdata;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    api_req_t req = {0};
    req.conn = conn;
    req.ri = mg_get_request_info(conn);
    req.resp = sbuf_new(1024);
    req.headers = sbuf_new(128);
    req.ts = s_ts();
    if (!req.resp || !req.headers || !req.ts) {
        mg_send_http_error(conn, 503, "out of memory");
        sbuf_destroy(&req.resp);
        sbuf_destroy(&req.headers);
        return 503;
    }
    s_run(&req);
    s_send(&req);
    s_count(&req);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (req.rt)
        metric_observe(req.rt->latency, (double)(t1.tv_sec - t0.tv_sec) +
                                            (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    if (req.status >= 500 && log_should("api-5xx", 7, 1000))
        log_error("request failed route=%s status=%d", req.rt ? req.rt->route->name : "-",
                  req.status);
    int status = req.status;
    json_decref(req.body);
    json_decref(req.errs.list);
    free(req.raw);
    free(req.seg_buf);
    free(req.cursor);
    sbuf_destroy(&req.resp);
    sbuf_destroy(&req.headers);
    return status;
}
