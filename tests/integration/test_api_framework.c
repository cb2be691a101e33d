/*
 * test_api_framework - what the REST framework answers before (and
 * around) any handler, over real HTTP against a real API node: routing
 * (404, 405 + Allow), bodies (400 malformed JSON with line and column, 400
 * duplicate keys / invalid UTF-8 / not an object, 413 too large, 415 not
 * JSON), credentials (401 missing, unknown key, forged or expired token,
 * 403 scope), path tricks (encoded slashes and NULs), pagination
 * parameters, the problem+json shape, and per-route metrics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_util.h"
#include "authn.h"

static api_env_t E;

static int s_setup(void **state)
{
    (void)state;
    char *extra[] = {"POSTCHI_API_BODY_MAX=4096", NULL};
    return api_env_start(&E, extra);
}

static int s_teardown(void **state)
{
    (void)state;
    return api_env_stop(&E);
}

/* A problem response has the RFC 9457 members and the right media type. */
static void s_assert_problem(api_resp_t *r, int status)
{
    char ct[128];
    assert_int_equal(r->status, status);
    assert_non_null(api_resp_header(r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/problem+json");
    assert_non_null(r->json);
    assert_true(json_is_string(json_object_get(r->json, "type")));
    assert_true(json_is_string(json_object_get(r->json, "title")));
    assert_true(json_is_string(json_object_get(r->json, "detail")));
    assert_int_equal(json_integer_value(json_object_get(r->json, "status")), status);
}

static void test_routing(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "GET", "/api/v1/no-such-thing", E.token, NULL, NULL, &r);
    s_assert_problem(&r, 404);
    api_resp_free(&r);

    api_call(&E, "PUT", "/api/v1/api-keys", E.token, "{}", NULL, &r);
    s_assert_problem(&r, 405);
    char allow[64];
    assert_non_null(api_resp_header(&r, "Allow", allow, sizeof allow));
    assert_non_null(strstr(allow, "GET"));
    assert_non_null(strstr(allow, "POST"));
    api_resp_free(&r);

    /* Encoded slashes, NULs and traversal never reach a handler as ids. */
    const char *tricks[] = {"/api/v1/api-keys/..%2F..%2Fetc%2Fpasswd", "/api/v1/api-keys/%00",
                            "/api/v1/api-keys/%zz", "/api/v1/api-keys/'%20OR%201=1%20--",
                            "/api/v1/api-keys/../../etc"};
    for (size_t i = 0; i < sizeof tricks / sizeof tricks[0]; i++) {
        api_call(&E, "DELETE", tricks[i], E.token, NULL, NULL, &r);
        if (r.status != 404)
            fprintf(stderr, "%s -> %d\n", tricks[i], r.status);
        s_assert_problem(&r, 404);
        api_resp_free(&r);
    }
}

static void test_bodies(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/api-keys", E.token, "{\"name\": \"x\",\n \"scope\": }", NULL,
             &r);
    s_assert_problem(&r, 400);
    assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "line 2"));
    api_resp_free(&r);

    api_call(&E, "POST", "/api/v1/api-keys", E.token, "{\"name\":\"a\",\"name\":\"b\"}", NULL, &r);
    s_assert_problem(&r, 400);
    api_resp_free(&r);

    api_call(&E, "POST", "/api/v1/api-keys", E.token, "{\"name\":\"\xff\xfe\"}", NULL, &r);
    s_assert_problem(&r, 400);
    api_resp_free(&r);

    api_call(&E, "POST", "/api/v1/api-keys", E.token, "[1,2,3]", NULL, &r);
    s_assert_problem(&r, 400);
    api_resp_free(&r);

    /* Not JSON: the media type is checked before the bytes are parsed. */
    api_call(&E, "POST", "/api/v1/auth/login", NULL, "{\"a\":1}", "Content-Type: text/plain\r\n",
             &r);
    s_assert_problem(&r, 415);
    api_resp_free(&r);

    /* Larger than api_body_max (4096 in this test). */
    char *big = malloc(8192);
    memset(big, 'a', 8191);
    big[8191] = 0;
    memcpy(big, "{\"name\":\"", 9);
    memcpy(big + 8188, "\"}", 3);
    api_call(&E, "POST", "/api/v1/api-keys", E.token, big, NULL, &r);
    s_assert_problem(&r, 413);
    api_resp_free(&r);
    free(big);

    /* Nested deeper than the guard's 32, before any credential: refused
     * from its bytes. 3,000 levels overflowed a request thread's stack in
     * the parser, taking the API down; the call after it must still be
     * answered. */
    char *deep = malloc(3001);
    memset(deep, '[', 3000);
    deep[3000] = 0;
    api_call(&E, "POST", "/api/v1/auth/login", NULL, deep, NULL, &r);
    s_assert_problem(&r, 400);
    assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "deeper than 32"));
    api_resp_free(&r);
    memset(deep, '{', 3000);
    api_call(&E, "POST", "/api/v1/auth/login", NULL, deep, NULL, &r);
    s_assert_problem(&r, 400);
    api_resp_free(&r);
    free(deep);
    /* Brackets inside strings are text, not nesting: this body is read
     * as a login (an unknown address), not refused as deep. */
    api_call(&E, "POST", "/api/v1/auth/login", NULL,
             "{\"email\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{@x.example\","
             "\"password\":\"a long password\"}",
             NULL, &r);
    assert_int_equal(r.status, 401);
    api_resp_free(&r);

    /* Nothing above left a row behind. */
    char *n = api_sql(&E, "SELECT count(*) FROM api_keys");
    assert_string_equal(n, "3"); /* the three the set-up made */
    free(n);
}

/* The server drops every idle connection (a restart, an administrator, a
 * pooler): the next requests are answered, each thread reconnecting
 * before its first statement instead of failing it with a 503. */
static void test_dropped_connections_reconnect(void **state)
{
    (void)state;
    api_resp_t r;
    for (int i = 0; i < 8; i++) { /* every request thread has a connection */
        api_call(&E, "GET", "/api/v1/contacts", E.key_read, NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        api_resp_free(&r);
    }
    char *n = api_sql(&E, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()");
    assert_non_null(n);
    assert_true(atoi(n) >= 1);
    free(n);
    usleep(200 * 1000);
    for (int i = 0; i < 16; i++) {
        api_call(&E, "GET", "/api/v1/contacts", E.key_read, NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        api_resp_free(&r);
    }
}

static void test_credentials(void **state)
{
    (void)state;
    api_resp_t r;
    char wa[64];
    api_call(&E, "GET", "/api/v1/api-keys", NULL, NULL, NULL, &r);
    s_assert_problem(&r, 401);
    assert_non_null(api_resp_header(&r, "WWW-Authenticate", wa, sizeof wa));
    api_resp_free(&r);

    api_call(&E, "GET", "/api/v1/api-keys", "pk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", NULL,
             NULL, &r);
    s_assert_problem(&r, 401);
    api_resp_free(&r);

    api_call(&E, "GET", "/api/v1/api-keys", "not-a-token", NULL, NULL, &r);
    s_assert_problem(&r, 401);
    api_resp_free(&r);

    /* A token signed with another key, and one already expired. */
    char *forged = NULL, *expired = NULL;
    assert_int_equal(authn_jwt_issue("some-other-secret-that-is-long-enough-000", "postchi", 3600,
                                     "00000000-0000-0000-0000-000000000001", E.org_id, &forged),
                     0);
    api_call(&E, "GET", "/api/v1/api-keys", forged, NULL, NULL, &r);
    s_assert_problem(&r, 401);
    api_resp_free(&r);
    assert_int_equal(authn_jwt_issue("postchi-test-secret-0123456789abcdef0123456789", "postchi",
                                     -10, "00000000-0000-0000-0000-000000000001", E.org_id,
                                     &expired),
                     0);
    api_call(&E, "GET", "/api/v1/api-keys", expired, NULL, NULL, &r);
    s_assert_problem(&r, 401);
    api_resp_free(&r);
    free(forged);
    free(expired);

    /* alg "none": header {"alg":"none","typ":"JWT"}, empty signature. */
    api_call(&E, "GET", "/api/v1/api-keys",
             "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.", NULL, NULL, &r);
    s_assert_problem(&r, 401);
    api_resp_free(&r);

    /* A token whose header (read before the signature is checked) nests
     * 1,500 levels: refused, and the API still answers. "W1tb" is "[[[". */
    size_t tl = 500 * 4 + sizeof ".e30.AAAA";
    char *nested = malloc(tl);
    for (int i = 0; i < 500; i++)
        memcpy(nested + i * 4, "W1tb", 4);
    memcpy(nested + 2000, ".e30.AAAA", sizeof ".e30.AAAA");
    api_call(&E, "GET", "/api/v1/contacts", nested, NULL, NULL, &r);
    s_assert_problem(&r, 401);
    api_resp_free(&r);
    free(nested);
    api_call(&E, "GET", "/api/v1/contacts", E.key_read, NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    api_resp_free(&r);

    /* Managing keys takes a logged-in user, whatever the key's scope. */
    api_call(&E, "GET", "/api/v1/api-keys", E.key_full, NULL, NULL, &r);
    s_assert_problem(&r, 403);
    api_resp_free(&r);
    api_call(&E, "GET", "/api/v1/api-keys", E.key_read, NULL, NULL, &r);
    s_assert_problem(&r, 403);
    api_resp_free(&r);
}

static void test_pagination_parameters(void **state)
{
    (void)state;
    api_resp_t r;
    const char *bad[] = {"/api/v1/api-keys?limit=0", "/api/v1/api-keys?limit=abc",
                         "/api/v1/api-keys?limit=100000", "/api/v1/api-keys?cursor=not-ours",
                         "/api/v1/api-keys?cursor=%27%3B%20DROP%20TABLE%20api_keys%3B--"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_call(&E, "GET", bad[i], E.token, NULL, NULL, &r);
        s_assert_problem(&r, 422);
        assert_non_null(api_field_error(&r, strstr(bad[i], "limit") ? "limit" : "cursor"));
        api_resp_free(&r);
    }
    /* Walk the keys one per page: three pages, then no cursor. */
    char path[512] = "/api/v1/api-keys?limit=1";
    int pages = 0;
    for (;;) {
        api_call(&E, "GET", path, E.token, NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        assert_int_equal(json_array_size(json_object_get(r.json, "data")), pages < 3 ? 1 : 0);
        json_t *next = json_object_get(r.json, "next_cursor");
        pages++;
        if (!json_is_string(next)) {
            api_resp_free(&r);
            break;
        }
        snprintf(path, sizeof path, "/api/v1/api-keys?limit=1&cursor=%s", json_string_value(next));
        api_resp_free(&r);
        assert_true(pages <= 4);
    }
    assert_true(pages >= 3);
}

static void test_metrics_by_route(void **state)
{
    (void)state;
    sbuf_t *m = sbuf_new(8192);
    assert_int_equal(harness_http_get(E.port, "/metrics", m), 200);
    assert_non_null(strstr(sbuf_data(m), "postchi_api_requests_total{route=\"api_keys.list\""));
    assert_non_null(strstr(sbuf_data(m), "postchi_api_auth_failures_total{reason=\"invalid_token\"}"));
    assert_non_null(strstr(sbuf_data(m), "postchi_api_request_duration_seconds_bucket"));
    sbuf_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_bodies),
        cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_pagination_parameters),
        cmocka_unit_test(test_metrics_by_route),
        cmocka_unit_test(test_dropped_connections_reconnect),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
