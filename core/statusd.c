/*
 * statusd - the operators' HTTP endpoint of every process, on civetweb.
 *
 * How: statusd_start starts a civetweb context with a few worker threads
 * listening on bind:port and mounts /metrics, /healthz and /readyz. Each
 * answers GET on exactly its path (other methods get 405 with "Allow: GET");
 * other URIs, "/metrics/x" included, get civetweb's own 404 because no document_root is configured,
 * so no file is ever served. Port 0 works as the kernel's "pick a free port": civetweb 1.15 reads
 * the bound address back after bind, and statusd_port returns what mg_get_server_ports reports.
 *
 * civetweb's library state (mg_init_library / mg_exit_library) is reference
 * counted; each statusd takes one reference and drops it in statusd_stop,
 * under s_lib_lock because the first initialisation is not thread-safe.
 *
 * The bind address must be numeric IPv4 or IPv6 ("127.0.0.1", "0.0.0.0",
 * "::1"); host names are refused.
 *
 * What can go wrong: the address is in use or invalid (statusd_start returns
 * NULL and says why in err); rendering runs out of memory (500). civetweb's
 * own log messages may quote request data, so they go through
 * log_printable before reaching the log.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <civetweb.h>

#include "log.h"
#include "metrics.h"
#include "statusd.h"

struct statusd {
    struct mg_context *ctx; /* the civetweb server, NULL once stopped */
    int port;               /* the port actually bound */
    statusd_ready_fn ready; /* readiness check, NULL means always ready */
    void *arg;              /* passed to ready */
};

static pthread_mutex_t s_lib_lock = PTHREAD_MUTEX_INITIALIZER;

/* Write a complete response. Connection: close because the server has few
 * threads and civetweb holds one per open connection. Returns status, which
 * is what a civetweb request handler returns for "handled". */
static int s_reply(struct mg_connection *conn, int status, const char *ctype,
                   const char *extra_headers, const char *body, size_t len)
{
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\n"
              "Content-Type: %s\r\n"
              "Content-Length: %zu\r\n"
              "Cache-Control: no-store\r\n"
              "%s"
              "Connection: close\r\n\r\n",
              status, mg_get_response_code_text(conn, status), ctype, len,
              extra_headers ? extra_headers : "");
    if (len > 0)
        mg_write(conn, body, len);
    return status;
}

/* Whether a handler should answer: civetweb also routes "path/anything" to
 * the handler of "path", and those get 0 (not handled: civetweb's 404);
 * a method other than GET gets 405 with "Allow: GET". Returns that status,
 * or -1 when the handler should go on. */
static int s_gate(struct mg_connection *conn, const char *path)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (!ri || !ri->local_uri || strcmp(ri->local_uri, path) != 0)
        return 0;
    if (ri->request_method && strcmp(ri->request_method, "GET") == 0)
        return -1;
    static const char body[] = "method not allowed\n";
    return s_reply(conn, 405, "text/plain; charset=utf-8", "Allow: GET\r\n", body, sizeof body - 1);
}

static int s_not_found(struct mg_connection *conn, void *cbdata)
{
    (void)cbdata;
    static const char body[] = "{\"type\":\"https://postchi.dev/problems/not-found\","
                               "\"title\":\"Not Found\",\"status\":404,"
                               "\"detail\":\"no such resource\"}";
    return s_reply(conn, 404, "application/problem+json", NULL, body, sizeof body - 1);
}

static int s_metrics(struct mg_connection *conn, void *cbdata)
{
    (void)cbdata;
    int status = s_gate(conn, "/metrics");
    if (status >= 0)
        return status;
    sbuf_t *out = sbuf_new(16384);
    if (!out || metrics_render(out) != 0) {
        sbuf_destroy(&out);
        static const char body[] = "out of memory\n";
        return s_reply(conn, 500, "text/plain; charset=utf-8", NULL, body, sizeof body - 1);
    }
    status = s_reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, sbuf_data(out),
                     sbuf_len(out));
    sbuf_destroy(&out);
    return status;
}

static int s_healthz(struct mg_connection *conn, void *cbdata)
{
    (void)cbdata;
    int status = s_gate(conn, "/healthz");
    if (status >= 0)
        return status;
    return s_reply(conn, 200, "text/plain; charset=utf-8", NULL, "ok\n", 3);
}

static int s_readyz(struct mg_connection *conn, void *cbdata)
{
    const statusd_t *self = cbdata;
    int status = s_gate(conn, "/readyz");
    if (status >= 0)
        return status;
    sbuf_t *body = sbuf_new(256);
    if (!body) {
        static const char oom[] = "{\"ready\":false,\"error\":\"out of memory\"}";
        return s_reply(conn, 503, "application/json", NULL, oom, sizeof oom - 1);
    }
    int ready = self->ready ? self->ready(self->arg, body) : 1;
    /* A check that says nothing still gets a valid JSON body. */
    if (sbuf_len(body) == 0 &&
        sbuf_append_str(body, ready ? "{\"ready\":true}" : "{\"ready\":false}") != 0)
        ready = 0;
    status =
        s_reply(conn, ready ? 200 : 503, "application/json", NULL, sbuf_data(body), sbuf_len(body));
    sbuf_destroy(&body);
    return status;
}

/* civetweb's diagnostics (bad requests, socket errors) into our log. */
static int s_log_message(const struct mg_connection *conn, const char *message)
{
    (void)conn;
    char safe[512];
    log_warn("civetweb: %s", log_printable(safe, sizeof safe, message, strlen(message)));
    return 1; /* handled: civetweb writes nothing itself */
}

statusd_t *statusd_start(const char *bind, int port, statusd_ready_fn ready, void *arg, sbuf_t *err)
{
    statusd_opts_t o = {4, 10000, 0, 0};
    return statusd_start_opts(bind, port, &o, ready, arg, err);
}

statusd_t *statusd_start_opts(const char *bind, int port, const statusd_opts_t *opts,
                              statusd_ready_fn ready, void *arg, sbuf_t *err)
{
    /* Only a numeric address: civetweb 1.15 does not resolve names and
     * half-parses malformed addresses instead of refusing them (it accepted
     * "999.0.0.1"), and its option is a list we must not let a comma extend. */
    unsigned char addr[sizeof(struct in6_addr)];
    if (!bind || (inet_pton(AF_INET, bind, addr) != 1 && inet_pton(AF_INET6, bind, addr) != 1) ||
        port < 0 || port > 65535) {
        if (err)
            sbuf_appendf(err, "statusd: invalid listen address %s port %d", bind ? bind : "(null)",
                         port);
        return NULL;
    }
    char ports[128];
    int n = snprintf(ports, sizeof ports, strchr(bind, ':') ? "[%s]:%d" : "%s:%d", bind, port);
    if (n < 0 || (size_t)n >= sizeof ports) {
        if (err)
            sbuf_appendf(err, "statusd: listen address too long");
        return NULL;
    }

    statusd_t *self = calloc(1, sizeof *self);
    if (!self) {
        if (err)
            sbuf_appendf(err, "statusd: out of memory");
        return NULL;
    }
    self->ready = ready;
    self->arg = arg;

    /* The result is the subset of the requested features, so with none
     * requested it is 0 even on success; a real failure shows in mg_start2. */
    pthread_mutex_lock(&s_lib_lock);
    (void)mg_init_library(0);
    pthread_mutex_unlock(&s_lib_lock);

    char threads[16], timeout[16];
    snprintf(threads, sizeof threads, "%d", opts->threads > 0 ? opts->threads : 4);
    snprintf(timeout, sizeof timeout, "%d", opts->timeout_ms > 0 ? opts->timeout_ms : 10000);
    const char *options[] = {"listening_ports",
                             ports,
                             "num_threads",
                             threads,
                             "request_timeout_ms",
                             timeout,
                             "enable_keep_alive",
                             opts->keep_alive ? "yes" : "no",
                             "keep_alive_timeout_ms",
                             "30000",
                             "tcp_nodelay",
                             "1",
                             "decode_url",
                             opts->raw_urls ? "no" : "yes",
                             NULL};
    struct mg_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.log_message = s_log_message;
    struct mg_init_data init = {&callbacks, self, options};
    char text[256] = "";
    unsigned code = 0;
    struct mg_error_data error = {&code, text, sizeof text};

    self->ctx = mg_start2(&init, &error);
    struct mg_server_port bound;
    if (self->ctx && mg_get_server_ports(self->ctx, 1, &bound) == 1 && bound.port > 0)
        self->port = bound.port;
    if (!self->port) {
        if (err)
            sbuf_appendf(err, "statusd: cannot listen on %s: %s", ports,
                         text[0] ? text : "no port bound");
        statusd_stop(&self);
        return NULL;
    }

    /* Everything no handler claims (including paths civetweb folded, such
     * as "/a/../b") gets a JSON 404 from us, never civetweb's own page. */
    mg_set_request_handler(self->ctx, "/", s_not_found, self);
    mg_set_request_handler(self->ctx, "/metrics", s_metrics, self);
    mg_set_request_handler(self->ctx, "/healthz", s_healthz, self);
    mg_set_request_handler(self->ctx, "/readyz", s_readyz, self);
    return self;
}

int statusd_port(const statusd_t *self)
{
    return self ? self->port : -1;
}

void statusd_stop(statusd_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    statusd_t *self = *self_p;
    /* mg_stop joins civetweb's threads, so no handler runs after this. */
    if (self->ctx)
        mg_stop(self->ctx);
    pthread_mutex_lock(&s_lib_lock);
    mg_exit_library();
    pthread_mutex_unlock(&s_lib_lock);
    free(self);
    *self_p = NULL;
}

void statusd_handle(statusd_t *self, const char *uri,
                    int (*handler)(struct mg_connection *, void *), void *cbdata)
{
    if (!self || !self->ctx || !uri)
        return;
    mg_set_request_handler(self->ctx, uri, handler, cbdata);
}
