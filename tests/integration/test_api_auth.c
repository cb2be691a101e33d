/*
 * test_api_auth - accounts and API keys through a real API node: register
 * (and each validation error, duplicates), login (same answer for an
 * unknown e-mail and a wrong password), failed-login lockout per account
 * and per address (login_max_failures = 3), the registration limit per
 * address, forged JWTs, whoami, and the
 * API key lifecycle (scopes, keys cannot manage keys, revocation,
 * tenancy, pagination, no secret in any listing or audit row).
 *
 * Failed logins are sent from their own loopback addresses (127.0.0.x,
 * bound before connecting), so the per-address counter of 127.0.0.1, which
 * every other request uses, never fills up; that also lets the per-account
 * and per-address limits be tested apart.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "api_util.h"
#include "authn.h"

#define PASSWORD "a long enough password"

static api_env_t s_env;

static int s_setup(void **state)
{
    (void)state;
    char *extra[] = {"POSTCHI_LOGIN_MAX_FAILURES=3", NULL};
    return api_env_start(&s_env, extra) == 0 ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return api_env_stop(&s_env) == 0 ? 0 : -1;
}

/* A unique e-mail address for this run. */
static const char *s_email(const char *tag)
{
    static char buf[8][128];
    static int n;
    char *b = buf[n++ % 8];
    snprintf(b, 128, "%s-%d@example.com", tag, (int)getpid());
    return b;
}

/* ---- HTTP from a chosen loopback source address ---- */

typedef struct {
    int status;        /* HTTP status, -1 on failure */
    json_t *json;      /* parsed body or NULL */
    long retry_after;  /* Retry-After value, -1 when absent */
} raw_resp_t;

/* POST path (full) with a JSON body from source address src (127.0.0.x),
 * HTTP/1.0 so the server closes and never chunks. */
static int s_post_from(const char *src, const char *path, const char *body, raw_resp_t *out)
{
    out->status = -1;
    out->json = NULL;
    out->retry_after = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    inet_pton(AF_INET, src, &sa.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct sockaddr_in to = {0};
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)s_env.port);
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&to, sizeof to), 0);
    sbuf_t *req = sbuf_new(512);
    sbuf_appendf(req,
                 "POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 path, strlen(body), body);
    assert_int_equal(write(fd, sbuf_data(req), sbuf_len(req)), (ssize_t)sbuf_len(req));
    sbuf_destroy(&req);
    sbuf_t *resp = sbuf_new(1024);
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        sbuf_append(resp, buf, (size_t)n);
    close(fd);
    const char *r = sbuf_data(resp);
    int status = 0;
    if (sscanf(r, "HTTP/1.%*d %d", &status) == 1)
        out->status = status;
    const char *end = strstr(r, "\r\n\r\n");
    if (end) {
        out->json = json_loads(end + 4, 0, NULL);
        const char *h = strcasestr(r, "\r\nRetry-After:");
        if (h && h < end)
            out->retry_after = strtol(h + 14, NULL, 10);
    }
    sbuf_destroy(&resp);
    return out->status;
}

static int s_login_from(const char *src, const char *email, const char *password, raw_resp_t *out)
{
    char body[512];
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", email, password);
    return s_post_from(src, "/api/v1/auth/login", body, out);
}

static void s_register(const char *email, const char *org, char *token, size_t size)
{
    api_resp_t r = {0};
    api_callf(&s_env, "POST", "/api/v1/auth/register", NULL, &r,
              "{\"email\":\"%s\",\"password\":\"" PASSWORD "\",\"organization\":\"%s\"}", email,
              org);
    assert_int_equal(r.status, 201);
    if (token)
        snprintf(token, size, "%s", json_string_value(json_object_get(r.json, "token")));
    api_resp_free(&r);
}

/* 1 when the problem body lists an error for field. */
static int s_has_field_error(const json_t *problem, const char *field)
{
    json_t *errs = json_object_get(problem, "errors");
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e)
    {
        const char *f = json_string_value(json_object_get(e, "field"));
        if (f && strcmp(f, field) == 0)
            return 1;
    }
    return 0;
}

static long s_sql_long(const char *sql)
{
    char *v = api_sql(&s_env, sql);
    assert_non_null(v);
    long n = atol(v);
    free(v);
    return n;
}

/* ---- register ---- */

static void test_register(void **state)
{
    (void)state;
    char email[128];
    snprintf(email, sizeof email, "Reg.User-%d@Example.COM", (int)getpid());
    const char *org = "O'Brien & Co; DROP TABLE users;-- \\\"x\\\" ü";
    api_resp_t r = {0};
    api_callf(&s_env, "POST", "/api/v1/auth/register", NULL, &r,
              "{\"email\":\"%s\",\"password\":\"" PASSWORD "\",\"organization\":\"%s\"}", email,
              org);
    assert_int_equal(r.status, 201);
    json_t *user = json_object_get(r.json, "user");
    json_t *o = json_object_get(r.json, "organization");
    char expect[128];
    snprintf(expect, sizeof expect, "Reg.User-%d@example.com", (int)getpid());
    assert_string_equal(json_string_value(json_object_get(user, "email")), expect);
    assert_string_equal(json_string_value(json_object_get(o, "name")),
                        "O'Brien & Co; DROP TABLE users;-- \"x\" ü");
    const char *token = json_string_value(json_object_get(r.json, "token"));
    assert_non_null(token);
    char org_id[64], user_id[64];
    snprintf(org_id, sizeof org_id, "%s", json_string_value(json_object_get(o, "id")));
    snprintf(user_id, sizeof user_id, "%s", json_string_value(json_object_get(user, "id")));

    /* The token is a working login. */
    api_resp_t w = {0};
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", token, NULL, NULL, &w), 200);
    assert_string_equal(json_string_value(json_object_get(w.json, "organization_id")), org_id);
    assert_string_equal(json_string_value(json_object_get(w.json, "actor_type")), "user");
    assert_string_equal(json_string_value(json_object_get(w.json, "actor_id")), user_id);
    api_resp_free(&w);
    api_resp_free(&r);

    /* Stored as shown: owner role, Argon2id hash, one audit row. */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT role || ' ' || left(password_hash, 10) FROM users WHERE id = '%s'", user_id);
    char *v = api_sql(&s_env, sql);
    assert_string_equal(v, "owner $argon2id$");
    free(v);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM audit_log WHERE organization_id = '%s' AND action = "
             "'auth.register' AND detail::text NOT LIKE '%%argon2%%'",
             org_id);
    assert_int_equal(s_sql_long(sql), 1);

    /* The same address in another letter case is taken: 409, and the
     * failed attempt left no organization behind. */
    for (char *p = email; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    long orgs = s_sql_long("SELECT count(*) FROM organizations");
    api_callf(&s_env, "POST", "/api/v1/auth/register", NULL, &r,
              "{\"email\":\"%s\",\"password\":\"" PASSWORD "\",\"organization\":\"Dup\"}", email);
    assert_int_equal(r.status, 409);
    assert_non_null(json_object_get(r.json, "title"));
    api_resp_free(&r);
    assert_int_equal(s_sql_long("SELECT count(*) FROM organizations"), orgs);
}

static void test_register_validation(void **state)
{
    (void)state;
    char long_email[300], long_local[128], long_pw[300], long_org[260], short_pw_utf8[64];
    memset(long_email, 'a', 250);
    strcpy(long_email + 250, "@x.io"); /* 255 bytes */
    memset(long_local, 'b', 65);
    strcpy(long_local + 65, "@example.com");
    memset(long_pw, 'p', 257);
    long_pw[257] = '\0';
    memset(long_org, 'o', 201);
    long_org[201] = '\0';
    strcpy(short_pw_utf8, "ééééééééé"); /* 9 characters, 18 bytes */
    struct {
        const char *email, *password, *org; /* NULL: leave the field out */
        const char *extra;                  /* another field, or NULL */
        const char *field;                  /* the error expected */
    } cases[] = {
        {NULL, PASSWORD, "Org", NULL, "email"},
        {"no-at.example.com", PASSWORD, "Org", NULL, "email"},
        {"two@@example.com", PASSWORD, "Org", NULL, "email"},
        {"a@b@example.com", PASSWORD, "Org", NULL, "email"},
        {"sp ace@example.com", PASSWORD, "Org", NULL, "email"},
        {"tab\\t@example.com", PASSWORD, "Org", NULL, "email"},
        {"nodot@localhost", PASSWORD, "Org", NULL, "email"},
        {"dot@.example.com", PASSWORD, "Org", NULL, "email"},
        {"dot@example..com", PASSWORD, "Org", NULL, "email"},
        {"dot@example.com.", PASSWORD, "Org", NULL, "email"},
        {".lead@example.com", PASSWORD, "Org", NULL, "email"},
        {"@example.com", PASSWORD, "Org", NULL, "email"},
        {"x@-bad-.com", PASSWORD, "Org", NULL, "email"},
        {"x'; DROP TABLE users;--@example.com", PASSWORD, "Org", NULL, "email"},
        {long_email, PASSWORD, "Org", NULL, "email"},
        {long_local, PASSWORD, "Org", NULL, "email"},
        {"val-1@example.com", NULL, "Org", NULL, "password"},
        {"val-2@example.com", "short", "Org", NULL, "password"},
        {"val-3@example.com", "123456789", "Org", NULL, "password"},
        {"val-4@example.com", short_pw_utf8, "Org", NULL, "password"},
        {"val-5@example.com", long_pw, "Org", NULL, "password"},
        {"val-6@example.com", PASSWORD, NULL, NULL, "organization"},
        {"val-7@example.com", PASSWORD, "", NULL, "organization"},
        {"val-8@example.com", PASSWORD, "   ", NULL, "organization"},
        {"val-9@example.com", PASSWORD, long_org, NULL, "organization"},
        {"val-10@example.com", PASSWORD, "Org", "\"role\":\"admin\"", "role"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sbuf_t *b = sbuf_new(256);
        sbuf_append_str(b, "{");
        const char *sep = "";
        if (cases[i].email) {
            sbuf_appendf(b, "\"email\":\"%s\"", cases[i].email);
            sep = ",";
        }
        if (cases[i].password) {
            sbuf_appendf(b, "%s\"password\":\"%s\"", sep, cases[i].password);
            sep = ",";
        }
        if (cases[i].org) {
            sbuf_appendf(b, "%s\"organization\":\"%s\"", sep, cases[i].org);
            sep = ",";
        }
        if (cases[i].extra)
            sbuf_appendf(b, "%s%s", sep, cases[i].extra);
        sbuf_append_str(b, "}");
        api_resp_t r = {0};
        api_call(&s_env, "POST", "/api/v1/auth/register", NULL, sbuf_data(b), NULL, &r);
        if (r.status != 422 || !s_has_field_error(r.json, cases[i].field))
            fail_msg("case %zu (%s): status %d body %s", i, sbuf_data(b), r.status,
                     sbuf_data(r.raw));
        api_resp_free(&r);
        sbuf_destroy(&b);
    }
    /* Wrong types. */
    api_resp_t r = {0};
    api_call(&s_env, "POST", "/api/v1/auth/register", NULL,
             "{\"email\":1,\"password\":true,\"organization\":[]}", NULL, &r);
    assert_int_equal(r.status, 422);
    assert_true(s_has_field_error(r.json, "email"));
    assert_true(s_has_field_error(r.json, "password"));
    assert_true(s_has_field_error(r.json, "organization"));
    api_resp_free(&r);
    api_call(&s_env, "POST", "/api/v1/auth/register", NULL, "[1,2]", NULL, &r);
    assert_true(r.status == 400 || r.status == 422);
    api_resp_free(&r);
    /* Nothing was created by any of them. */
    assert_int_equal(s_sql_long("SELECT count(*) FROM users WHERE email LIKE 'val-%' OR email "
                                "LIKE '%DROP%' OR email LIKE '%localhost'"),
                     0);
}

/* ---- login ---- */

static void test_login(void **state)
{
    (void)state;
    const char *email = s_email("login");
    s_register(email, "Login Org", NULL, 0);
    api_resp_t r = {0};
    /* Any letter case of the address logs in. */
    char upper[128];
    snprintf(upper, sizeof upper, "%s", email);
    upper[0] = 'L';
    api_callf(&s_env, "POST", "/api/v1/auth/login", NULL, &r,
              "{\"email\":\"%s\",\"password\":\"" PASSWORD "\"}", upper);
    assert_int_equal(r.status, 200);
    const char *token = json_string_value(json_object_get(r.json, "token"));
    const char *expires = json_string_value(json_object_get(r.json, "expires_at"));
    assert_non_null(token);
    assert_non_null(expires);
    assert_int_equal(strlen(expires), 27);
    assert_int_equal(expires[10], 'T');
    assert_int_equal(expires[26], 'Z');
    api_resp_t w = {0};
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", token, NULL, NULL, &w), 200);
    assert_string_equal(json_string_value(json_object_get(w.json, "actor_type")), "user");
    api_resp_free(&w);
    api_resp_free(&r);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM users WHERE email = '%s' AND last_login_at > now() - "
             "interval '1 minute'",
             email);
    assert_int_equal(s_sql_long(sql), 1);

    /* Wrong password and unknown e-mail: the same answer. */
    raw_resp_t a, b;
    assert_int_equal(s_login_from("127.0.0.2", email, "not the password", &a), 401);
    assert_int_equal(s_login_from("127.0.0.3", s_email("nobody"), "not the password", &b), 401);
    const char *keys[] = {"type", "title", "status", "detail"};
    for (size_t i = 0; i < 4; i++) {
        char *x = json_dumps(json_object_get(a.json, keys[i]), JSON_ENCODE_ANY);
        char *y = json_dumps(json_object_get(b.json, keys[i]), JSON_ENCODE_ANY);
        assert_non_null(x);
        assert_string_equal(x, y);
        free(x);
        free(y);
    }
    assert_null(json_object_get(a.json, "token"));
    json_decref(a.json);
    json_decref(b.json);

    /* Bad bodies are 422 with the field. */
    api_call(&s_env, "POST", "/api/v1/auth/login", NULL, "{\"email\":\"x@example.com\"}", NULL,
             &r);
    assert_int_equal(r.status, 422);
    assert_true(s_has_field_error(r.json, "password"));
    api_resp_free(&r);
    api_call(&s_env, "POST", "/api/v1/auth/login", NULL,
             "{\"email\":\"x@example.com\",\"password\":\"y\",\"totp\":1}", NULL, &r);
    assert_int_equal(r.status, 422);
    assert_true(s_has_field_error(r.json, "totp"));
    api_resp_free(&r);
}

static void test_lockout_per_account(void **state)
{
    (void)state;
    const char *email = s_email("lock-account");
    const char *other = s_email("lock-account-other");
    s_register(email, "Lock Org", NULL, 0);
    s_register(other, "Lock Org 2", NULL, 0);
    raw_resp_t r;
    /* Three failures, each from its own address: only the account adds up. */
    const char *srcs[] = {"127.0.0.11", "127.0.0.12", "127.0.0.13"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s_login_from(srcs[i], email, "wrong password!", &r), 401);
        json_decref(r.json);
    }
    /* Now even the right password is refused, from a fresh address. */
    assert_int_equal(s_login_from("127.0.0.14", email, PASSWORD, &r), 429);
    assert_true(r.retry_after >= 1 && r.retry_after <= 900);
    assert_null(json_object_get(r.json, "token"));
    json_decref(r.json);
    /* Letter case does not make it another account. */
    char upper[128];
    snprintf(upper, sizeof upper, "%s", email);
    upper[0] = 'L';
    assert_int_equal(s_login_from("127.0.0.14", upper, PASSWORD, &r), 429);
    json_decref(r.json);
    /* That address is not locked: another account logs in from it. */
    assert_int_equal(s_login_from("127.0.0.14", other, PASSWORD, &r), 200);
    json_decref(r.json);
}

static void test_success_resets_account(void **state)
{
    (void)state;
    const char *email = s_email("reset");
    s_register(email, "Reset Org", NULL, 0);
    raw_resp_t r;
    const char *srcs[] = {"127.0.0.21", "127.0.0.22", "127.0.0.23",
                          "127.0.0.24", "127.0.0.25", "127.0.0.26"};
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 2; i++) {
            assert_int_equal(s_login_from(srcs[round * 3 + i], email, "wrong password!", &r), 401);
            json_decref(r.json);
        }
        /* Four failures in all, but never three since the last success. */
        assert_int_equal(s_login_from(srcs[round * 3 + 2], email, PASSWORD, &r), 200);
        json_decref(r.json);
    }
}

static void test_lockout_per_address(void **state)
{
    (void)state;
    const char *email = s_email("lock-address");
    s_register(email, "Address Org", NULL, 0);
    raw_resp_t r;
    /* Three failures from one address, on three different (unknown) accounts. */
    for (int i = 0; i < 3; i++) {
        char who[64];
        snprintf(who, sizeof who, "spray%d-%d@example.com", i, (int)getpid());
        assert_int_equal(s_login_from("127.0.0.31", who, "guess guess", &r), 401);
        json_decref(r.json);
    }
    assert_int_equal(s_login_from("127.0.0.31", email, PASSWORD, &r), 429);
    assert_true(r.retry_after >= 1 && r.retry_after <= 900);
    json_decref(r.json);
    /* The account itself is fine from elsewhere. */
    assert_int_equal(s_login_from("127.0.0.32", email, PASSWORD, &r), 200);
    json_decref(r.json);
}

/* ---- registration limit ---- */

static int s_register_from(const char *src, const char *email, raw_resp_t *out)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"email\":\"%s\",\"password\":\"" PASSWORD "\",\"organization\":\"Many\"}",
             email);
    return s_post_from(src, "/api/v1/auth/register", body, out);
}

/* Registration needs no credentials: 20 per client address per hour, then
 * 429 with Retry-After and nothing created; other addresses unaffected. */
static void test_register_limit_per_address(void **state)
{
    (void)state;
    raw_resp_t r;
    char email[128];
    for (int i = 0; i < 20; i++) {
        snprintf(email, sizeof email, "many%d-%d@example.com", i, (int)getpid());
        if (s_register_from("127.0.0.41", email, &r) != 201)
            fail_msg("registration %d: status %d", i + 1, r.status);
        json_decref(r.json);
    }
    long orgs = s_sql_long("SELECT count(*) FROM organizations");
    snprintf(email, sizeof email, "many20-%d@example.com", (int)getpid());
    assert_int_equal(s_register_from("127.0.0.41", email, &r), 429);
    assert_true(r.retry_after >= 1 && r.retry_after <= 3600);
    json_decref(r.json);
    assert_int_equal(s_sql_long("SELECT count(*) FROM organizations"), orgs);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM users WHERE email = '%s'", email);
    assert_int_equal(s_sql_long(sql), 0);
    /* Another address may still register. */
    assert_int_equal(s_register_from("127.0.0.42", email, &r), 201);
    json_decref(r.json);
}

/* ---- forged tokens ---- */

static char *s_b64url(const void *data, size_t len)
{
    char *out = malloc(len / 3 * 4 + 8);
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    return out;
}

static char *s_craft(const char *header, const char *payload, const char *secret)
{
    char *h = s_b64url(header, strlen(header));
    char *p = s_b64url(payload, strlen(payload));
    char input[2048];
    snprintf(input, sizeof input, "%s.%s", h, p);
    free(h);
    free(p);
    char *token = malloc(4096);
    if (!secret) {
        snprintf(token, 4096, "%s.", input);
        return token;
    }
    unsigned char mac[64];
    unsigned mac_len = 0;
    HMAC(strcmp(header, "{\"alg\":\"HS512\",\"typ\":\"JWT\"}") == 0 ? EVP_sha512() : EVP_sha256(),
         secret, (int)strlen(secret), (unsigned char *)input, strlen(input), mac, &mac_len);
    char *s = s_b64url(mac, mac_len);
    snprintf(token, 4096, "%s.%s", input, s);
    free(s);
    return token;
}

static void s_expect_401(const char *token, const char *what)
{
    api_resp_t r = {0};
    api_call(&s_env, "GET", "/api/v1/auth/whoami", token, NULL, NULL, &r);
    if (r.status != 401)
        fail_msg("%s: expected 401, got %d %s", what, r.status, sbuf_data(r.raw));
    api_resp_free(&r);
}

static void test_forged_tokens(void **state)
{
    (void)state;
    api_resp_t w = {0};
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", s_env.token, NULL, NULL, &w),
                     200);
    char user[64];
    snprintf(user, sizeof user, "%s", json_string_value(json_object_get(w.json, "actor_id")));
    api_resp_free(&w);
    char payload[512];
    snprintf(payload, sizeof payload,
             "{\"sub\":\"%s\",\"org\":\"%s\",\"iss\":\"postchi\",\"iat\":1700000000,"
             "\"exp\":4102444800}",
             user, s_env.org_id);
    const char *wrong = "a-secret-the-server-does-not-have-0123456789";

    char *t = s_craft("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, NULL);
    s_expect_401(t, "alg none");
    free(t);
    t = s_craft("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", payload, wrong);
    s_expect_401(t, "alg HS512");
    free(t);
    t = s_craft("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", payload, wrong);
    s_expect_401(t, "alg RS256");
    free(t);
    t = s_craft("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, wrong);
    s_expect_401(t, "wrong secret (crafted)");
    free(t);
    assert_int_equal(authn_jwt_issue(wrong, "postchi", 3600, user, s_env.org_id, &t), 0);
    s_expect_401(t, "wrong secret (authn_jwt_issue)");
    free(t);
    assert_int_equal(authn_jwt_issue(wrong, "postchi", -60, user, s_env.org_id, &t), 0);
    s_expect_401(t, "expired");
    free(t);

    /* The owner's real token with the payload swapped: the signature no
     * longer matches. */
    const char *dot1 = strchr(s_env.token, '.');
    const char *dot2 = strchr(dot1 + 1, '.');
    char *p = s_b64url(payload, strlen(payload));
    char forged[4096];
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(dot1 - s_env.token), s_env.token, p, dot2);
    free(p);
    s_expect_401(forged, "payload swapped");
    /* Truncated, extra part, garbage, oversized. */
    snprintf(forged, sizeof forged, "%.*s", (int)strlen(s_env.token) - 3, s_env.token);
    s_expect_401(forged, "truncated");
    snprintf(forged, sizeof forged, "%s.x", s_env.token);
    s_expect_401(forged, "four parts");
    s_expect_401("not-a-token", "garbage");
    char *huge = malloc(9001);
    memset(huge, 'A', 9000);
    huge[9000] = '\0';
    huge[100] = '.';
    huge[200] = '.';
    s_expect_401(huge, "oversized");
    free(huge);
    /* No credentials at all. */
    s_expect_401(NULL, "no credentials");
}

/* ---- API keys ---- */

/* Create a key with the owner's token; fills id and key. */
static void s_create_key(const char *token, const char *name, const char *scope, char *id,
                         char *key)
{
    api_resp_t r = {0};
    api_callf(&s_env, "POST", "/api/v1/api-keys", token, &r,
              "{\"name\":\"%s\",\"scope\":\"%s\"}", name, scope);
    if (r.status != 201)
        fail_msg("create key: %d %s", r.status, sbuf_data(r.raw));
    snprintf(id, 64, "%s", json_string_value(json_object_get(r.json, "id")));
    snprintf(key, 160, "%s", json_string_value(json_object_get(r.json, "key")));
    assert_string_equal(json_string_value(json_object_get(r.json, "scope")), scope);
    assert_non_null(json_string_value(json_object_get(r.json, "created_at")));
    char prefix[AUTHN_PREFIX_LEN + 1], hash[AUTHN_HASH_HEX];
    assert_int_equal(authn_key_parse(key, prefix, hash), 0);
    assert_string_equal(json_string_value(json_object_get(r.json, "prefix")), prefix);
    api_resp_free(&r);
}

static void test_api_key_lifecycle(void **state)
{
    (void)state;
    const char *scopes[] = {"full", "send", "read"};
    char ids[3][64], keys[3][160];
    for (int i = 0; i < 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "key %s; DROP TABLE api_keys;--'\\\"", scopes[i]);
        s_create_key(s_env.token, name, scopes[i], ids[i], keys[i]);
        api_resp_t w = {0};
        assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", keys[i], NULL, NULL, &w),
                         200);
        assert_string_equal(json_string_value(json_object_get(w.json, "actor_type")), "api_key");
        assert_string_equal(json_string_value(json_object_get(w.json, "actor_id")), ids[i]);
        assert_string_equal(json_string_value(json_object_get(w.json, "scope")), scopes[i]);
        assert_string_equal(json_string_value(json_object_get(w.json, "organization_id")),
                            s_env.org_id);
        api_resp_free(&w);
        /* A key can never manage keys, whatever its scope. */
        api_resp_t r = {0};
        assert_int_equal(api_call(&s_env, "GET", "/api/v1/api-keys", keys[i], NULL, NULL, &r), 403);
        api_resp_free(&r);
        api_callf(&s_env, "POST", "/api/v1/api-keys", keys[i], &r,
                  "{\"name\":\"minted\",\"scope\":\"full\"}");
        assert_int_equal(r.status, 403);
        api_resp_free(&r);
        char path[256];
        snprintf(path, sizeof path, "/api/v1/api-keys/%s", ids[i]);
        assert_int_equal(api_call(&s_env, "DELETE", path, keys[i], NULL, NULL, &r), 403);
        api_resp_free(&r);
    }
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT name FROM api_keys WHERE id = '%s'", ids[0]);
    char *v = api_sql(&s_env, sql);
    assert_string_equal(v, "key full; DROP TABLE api_keys;--'\"");
    free(v);

    /* The listing shows each key without its secret or hash. */
    api_resp_t r = {0};
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/api-keys?limit=200", s_env.token, NULL, NULL,
                              &r),
                     200);
    json_t *data = json_object_get(r.json, "data");
    int seen = 0;
    size_t i;
    json_t *row;
    json_array_foreach(data, i, row)
    {
        assert_null(json_object_get(row, "key"));
        assert_null(json_object_get(row, "secret_hash"));
        assert_null(json_object_get(row, "hash"));
        assert_non_null(json_object_get(row, "last_used_at"));
        assert_non_null(json_object_get(row, "revoked_at"));
        for (int k = 0; k < 3; k++)
            seen += strcmp(json_string_value(json_object_get(row, "id")), ids[k]) == 0;
    }
    assert_int_equal(seen, 3);
    for (int k = 0; k < 3; k++) {
        char prefix[AUTHN_PREFIX_LEN + 1], hash[AUTHN_HASH_HEX];
        authn_key_parse(keys[k], prefix, hash);
        assert_null(strstr(sbuf_data(r.raw), keys[k] + 16)); /* the secret part */
        assert_null(strstr(sbuf_data(r.raw), hash));
        /* ... nor in any audit row. */
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%%%s%%' OR "
                 "detail::text LIKE '%%%s%%'",
                 keys[k] + 16, hash);
        assert_int_equal(s_sql_long(sql), 0);
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM audit_log WHERE action = 'api_key.create' AND "
                 "resource_id = '%s' AND actor_type = 'user'",
                 ids[k]);
        assert_int_equal(s_sql_long(sql), 1);
    }
    api_resp_free(&r);
    /* Use is recorded (the framework keeps last_used_at). */

    /* Revoke the read key: 204, then 204 again, one audit row. */
    char path[256];
    snprintf(path, sizeof path, "/api/v1/api-keys/%s", ids[2]);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.token, NULL, NULL, &r), 204);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", path, s_env.token, NULL, NULL, &r), 204);
    api_resp_free(&r);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM audit_log WHERE action = 'api_key.revoke' AND resource_id = "
             "'%s'",
             ids[2]);
    assert_int_equal(s_sql_long(sql), 1);
    /* The revoked key stops working (lookups are cached up to 2 s). */
    int status = 0;
    for (int64_t until = harness_now_ms() + 5000; harness_now_ms() < until;) {
        api_resp_t w = {0};
        status = api_call(&s_env, "GET", "/api/v1/auth/whoami", keys[2], NULL, NULL, &w);
        api_resp_free(&w);
        if (status == 401)
            break;
        usleep(100000);
    }
    assert_int_equal(status, 401);
    /* The others still work. */
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", keys[0], NULL, NULL, &r), 200);
    api_resp_free(&r);
    /* The listing shows when it was revoked. */
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/api-keys?limit=200", s_env.token, NULL, NULL,
                              &r),
                     200);
    int revoked = 0;
    json_array_foreach(json_object_get(r.json, "data"), i, row)
    {
        int is_read = strcmp(json_string_value(json_object_get(row, "id")), ids[2]) == 0;
        int has = json_is_string(json_object_get(row, "revoked_at"));
        if (is_read)
            revoked = has;
        else if (strcmp(json_string_value(json_object_get(row, "id")), ids[0]) == 0)
            assert_false(has);
    }
    assert_true(revoked);
    api_resp_free(&r);

    /* Unknown ids and ids that are not uuids are 404. */
    assert_int_equal(api_call(&s_env, "DELETE",
                              "/api/v1/api-keys/00000000-0000-4000-8000-000000000000", s_env.token,
                              NULL, NULL, &r),
                     404);
    api_resp_free(&r);
    assert_int_equal(
        api_call(&s_env, "DELETE", "/api/v1/api-keys/not-a-uuid'--", s_env.token, NULL, NULL, &r),
        404);
    api_resp_free(&r);
    /* Traversal never reaches a handler (the router refuses it). */
    api_call(&s_env, "DELETE", "/api/v1/api-keys/..%2F..%2Fetc", s_env.token, NULL, NULL, &r);
    assert_true(r.status >= 400 && r.status < 500);
    api_resp_free(&r);
}

static void test_api_key_validation(void **state)
{
    (void)state;
    long before = s_sql_long("SELECT count(*) FROM api_keys");
    struct {
        const char *body, *field;
    } cases[] = {
        {"{\"scope\":\"full\"}", "name"},
        {"{\"name\":\"\",\"scope\":\"full\"}", "name"},
        {"{\"name\":\"x\"}", "scope"},
        {"{\"name\":\"x\",\"scope\":\"admin\"}", "scope"},
        {"{\"name\":\"x\",\"scope\":\"FULL\"}", "scope"},
        {"{\"name\":7,\"scope\":\"full\"}", "name"},
        {"{\"name\":\"x\",\"scope\":\"full\",\"key\":\"pk_mine\"}", "key"},
        {"{\"name\":\"x\",\"scope\":\"full\",\"prefix\":\"aaaaaaaaaaaa\"}", "prefix"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        api_resp_t r = {0};
        api_call(&s_env, "POST", "/api/v1/api-keys", s_env.token, cases[i].body, NULL, &r);
        if (r.status != 422 || !s_has_field_error(r.json, cases[i].field))
            fail_msg("case %zu (%s): %d %s", i, cases[i].body, r.status, sbuf_data(r.raw));
        api_resp_free(&r);
    }
    assert_int_equal(s_sql_long("SELECT count(*) FROM api_keys"), before);
}

static void test_api_keys_other_org(void **state)
{
    (void)state;
    char other_token[2048], other_key[160];
    assert_int_equal(api_env_other_org(&s_env, other_token, other_key), 0);
    char id[64], key[160];
    s_create_key(s_env.token, "mine", "read", id, key);
    /* The other organization cannot see it ... */
    api_resp_t r = {0};
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/api-keys?limit=200", other_token, NULL, NULL,
                              &r),
                     200);
    assert_null(strstr(sbuf_data(r.raw), id));
    api_resp_free(&r);
    /* ... nor revoke it: 404, exactly like a key that does not exist. */
    char path[256];
    snprintf(path, sizeof path, "/api/v1/api-keys/%s", id);
    assert_int_equal(api_call(&s_env, "DELETE", path, other_token, NULL, NULL, &r), 404);
    api_resp_free(&r);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM api_keys WHERE id = '%s' AND revoked_at IS NULL",
             id);
    assert_int_equal(s_sql_long(sql), 1);
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", key, NULL, NULL, &r), 200);
    api_resp_free(&r);
    /* And its own key says it belongs to the other organization. */
    assert_int_equal(api_call(&s_env, "GET", "/api/v1/auth/whoami", other_key, NULL, NULL, &r), 200);
    assert_string_not_equal(json_string_value(json_object_get(r.json, "organization_id")),
                            s_env.org_id);
    api_resp_free(&r);
}

static void test_api_keys_pagination(void **state)
{
    (void)state;
    /* A fresh organization so the count is known. */
    char token[2048];
    const char *email = s_email("pages");
    s_register(email, "Pages Org", token, sizeof token);
    char ids[5][64], key[160];
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof name, "page %d", i);
        s_create_key(token, name, "read", ids[i], key);
    }
    char path[1024] = "/api/v1/api-keys?limit=2";
    int total = 0, pages = 0;
    char seen[8][64];
    for (;;) {
        api_resp_t r = {0};
        assert_int_equal(api_call(&s_env, "GET", path, token, NULL, NULL, &r), 200);
        json_t *data = json_object_get(r.json, "data");
        assert_true(json_array_size(data) <= 2);
        size_t i;
        json_t *row;
        json_array_foreach(data, i, row)
        {
            assert_true(total < 8);
            snprintf(seen[total++], 64, "%s", json_string_value(json_object_get(row, "id")));
        }
        pages++;
        const char *next = json_string_value(json_object_get(r.json, "next_cursor"));
        if (!next) {
            api_resp_free(&r);
            break;
        }
        snprintf(path, sizeof path, "/api/v1/api-keys?limit=2&cursor=%s", next);
        api_resp_free(&r);
        assert_true(pages < 10);
    }
    assert_int_equal(total, 5);
    assert_int_equal(pages, 3);
    /* Newest first, each once. */
    for (int i = 0; i < 5; i++)
        assert_string_equal(seen[i], ids[4 - i]);
    /* Bad paging parameters. */
    const char *bad[] = {"/api/v1/api-keys?cursor=not-a-cursor", "/api/v1/api-keys?limit=0",
                         "/api/v1/api-keys?limit=100000", "/api/v1/api-keys?limit=abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_resp_t r = {0};
        api_call(&s_env, "GET", bad[i], token, NULL, NULL, &r);
        if (r.status != 400 && r.status != 422)
            fail_msg("%s: %d", bad[i], r.status);
        api_resp_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register),
        cmocka_unit_test(test_register_validation),
        cmocka_unit_test(test_login),
        cmocka_unit_test(test_lockout_per_account),
        cmocka_unit_test(test_success_resets_account),
        cmocka_unit_test(test_lockout_per_address),
        cmocka_unit_test(test_register_limit_per_address),
        cmocka_unit_test(test_forged_tokens),
        cmocka_unit_test(test_api_key_lifecycle),
        cmocka_unit_test(test_api_key_validation),
        cmocka_unit_test(test_api_keys_other_org),
        cmocka_unit_test(test_api_keys_pagination),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
