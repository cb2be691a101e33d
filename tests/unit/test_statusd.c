/*
 * test_statusd - the status HTTP server over real loopback TCP.
 *
 * A plain socket client sends raw HTTP/1.1 requests and reads until the
 * server closes, so what is checked is exactly what a scraper or load
 * balancer would see on the wire.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <civetweb.h>
#include <cmocka.h>

#include "metrics.h"
#include "sbuf.h"
#include "statusd.h"

typedef struct {
    int status; /* HTTP status code, -1 when the response did not parse */
    char *head; /* status line and headers, NUL-terminated, owned */
    char *body; /* body, NUL-terminated, owned */
} s_response_t;

static void s_response_free(s_response_t *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Send "METHOD uri" to 127.0.0.1:port and read the whole response. */
static s_response_t s_request(int port, const char *method, const char *uri)
{
    s_response_t r = {-1, NULL, NULL};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    /* Give the request a timeout so a hung server fails the test. */
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    sbuf_t *req = sbuf_new(0);
    assert_int_equal(sbuf_appendf(req,
                                  "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Content-Length: 0\r\nConnection: close\r\n\r\n",
                                  method, uri),
                     0);
    assert_int_equal(write(fd, sbuf_data(req), sbuf_len(req)), (ssize_t)sbuf_len(req));
    sbuf_destroy(&req);

    sbuf_t *in = sbuf_new(0);
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        assert_int_equal(sbuf_append(in, buf, (size_t)n), 0);
    assert_true(n == 0);
    close(fd);

    const char *data = sbuf_data(in);
    const char *split = strstr(data, "\r\n\r\n");
    if (split && sscanf(data, "HTTP/1.1 %d", &r.status) == 1) {
        r.head = strndup(data, (size_t)(split - data + 2));
        r.body = strdup(split + 4);
    }
    sbuf_destroy(&in);
    return r;
}

/* Case-insensitive search for a header line "name: value" in head. */
static int s_has_header(const char *head, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = strstr(head, "\r\n"); p; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, line, len) == 0 && p[2 + len] == '\r')
            return 1;
    return 0;
}

static atomic_int s_ready_flag;

static int s_ready(void *arg, sbuf_t *body)
{
    assert_ptr_equal(arg, &s_ready_flag);
    int ready = atomic_load(&s_ready_flag);
    sbuf_appendf(body, "{\"ready\":%s,\"db\":\"%s\"}", ready ? "true" : "false",
                 ready ? "ok" : "down");
    return ready;
}

static int s_hello(struct mg_connection *conn, void *cbdata)
{
    const char *text = cbdata;
    mg_printf(conn,
              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
              "Connection: close\r\n\r\n%s",
              strlen(text), text);
    return 200;
}

static void test_endpoints(void **state)
{
    (void)state;
    metric_inc(metrics_counter("postchi_test_requests_total", "Requests."));
    sbuf_t *err = sbuf_new(0);
    statusd_t *sd = statusd_start("127.0.0.1", 0, s_ready, &s_ready_flag, err);
    if (!sd)
        fail_msg("statusd_start: %s", sbuf_data(err));
    int port = statusd_port(sd);
    assert_true(port > 0 && port < 65536);

    s_response_t r = s_request(port, "GET", "/healthz");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    s_response_free(&r);

    r = s_request(port, "GET", "/metrics");
    assert_int_equal(r.status, 200);
    assert_true(s_has_header(r.head, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    assert_non_null(strstr(r.body, "\npostchi_test_requests_total 1\n"));
    assert_non_null(strstr(r.body, "# TYPE postchi_process_open_fds gauge\n"));
    s_response_free(&r);

    static const struct {
        int ready;
        int status;
        const char *body;
    } readyz[] = {{1, 200, "{\"ready\":true,\"db\":\"ok\"}"},
                  {0, 503, "{\"ready\":false,\"db\":\"down\"}"}};
    for (size_t i = 0; i < 2; i++) {
        atomic_store(&s_ready_flag, readyz[i].ready);
        r = s_request(port, "GET", "/readyz");
        assert_int_equal(r.status, readyz[i].status);
        assert_true(s_has_header(r.head, "Content-Type: application/json"));
        assert_string_equal(r.body, readyz[i].body);
        s_response_free(&r);
    }

    static const char *const methods[] = {"POST", "PUT", "DELETE"};
    static const char *const uris[] = {"/metrics", "/healthz", "/readyz"};
    for (size_t m = 0; m < 3; m++) {
        for (size_t u = 0; u < 3; u++) {
            r = s_request(port, methods[m], uris[u]);
            if (r.status != 405)
                fail_msg("%s %s: status %d", methods[m], uris[u], r.status);
            assert_true(s_has_header(r.head, "Allow: GET"));
            s_response_free(&r);
        }
    }

    static const char *const unknown[] = {"/nothing-here", "/metrics/x", "/healthzz", "/"};
    for (size_t u = 0; u < sizeof unknown / sizeof unknown[0]; u++) {
        r = s_request(port, "GET", unknown[u]);
        if (r.status != 404)
            fail_msg("GET %s: status %d", unknown[u], r.status);
        s_response_free(&r);
    }

    statusd_handle(sd, "/api/v1/hello", s_hello, "hello\n");
    r = s_request(port, "GET", "/api/v1/hello");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello\n");
    s_response_free(&r);

    statusd_stop(&sd);
    assert_null(sd);
    statusd_stop(&sd); /* idempotent */
    statusd_stop(NULL);
    sbuf_destroy(&err);
    metrics_shutdown();
}

static void test_ready_default(void **state)
{
    (void)state;
    statusd_t *sd = statusd_start("127.0.0.1", 0, NULL, NULL, NULL);
    assert_non_null(sd);
    s_response_t r = s_request(statusd_port(sd), "GET", "/readyz");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"ready\":true}");
    s_response_free(&r);
    statusd_stop(&sd);
}

static void test_port_in_use(void **state)
{
    (void)state;
    statusd_t *first = statusd_start("127.0.0.1", 0, NULL, NULL, NULL);
    assert_non_null(first);
    sbuf_t *err = sbuf_new(0);
    statusd_t *second = statusd_start("127.0.0.1", statusd_port(first), NULL, NULL, err);
    assert_null(second);
    assert_non_null(strstr(sbuf_data(err), "cannot listen"));
    /* The first server is unaffected. */
    s_response_t r = s_request(statusd_port(first), "GET", "/healthz");
    assert_int_equal(r.status, 200);
    s_response_free(&r);
    statusd_stop(&first);
    sbuf_destroy(&err);
}

static void test_bad_address(void **state)
{
    (void)state;
    static const struct {
        const char *bind;
        int port;
    } cases[] = {{"127.0.0.1", -1},        {"127.0.0.1", 65536}, {"", 0},
                 {"127.0.0.1,0.0.0.0", 0}, {"999.0.0.1", 0},     {NULL, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sbuf_t *err = sbuf_new(0);
        statusd_t *sd = statusd_start(cases[i].bind, cases[i].port, NULL, NULL, err);
        if (sd)
            fail_msg("case %zu: started on a bad address", i);
        assert_true(sbuf_len(err) > 0);
        sbuf_destroy(&err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_ready_default),
        cmocka_unit_test(test_port_in_use),
        cmocka_unit_test(test_bad_address),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
