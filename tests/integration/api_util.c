/*
 * api_util - see api_util.h. The HTTP client is deliberately small and
 * strict: one request per connection (Connection: close), body read to the
 * end, so a test sees exactly what the server sent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "api_util.h"
#include "db.h"

#define TEST_JWT_SECRET "postchi-test-secret-0123456789abcdef0123456789"
#define TEST_SECRET_KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static int s_seq;

/* Append "KEY=VALUE" to env unless extra already sets KEY. */
static void s_env_add(char **env, int *n, char *const *extra, char *kv)
{
    size_t klen = strcspn(kv, "=");
    for (int i = 0; extra && extra[i]; i++)
        if (strncmp(extra[i], kv, klen + 1) == 0)
            return;
    env[(*n)++] = kv;
}

static int s_migrate(const char *db)
{
    harness_proc_t *p = harness_spawn_postchi("migrate", "migrate", harness_server_env(db));
    if (!p)
        return -1;
    int64_t deadline = harness_now_ms() + 30000;
    while (harness_alive(p) && harness_now_ms() < deadline)
        usleep(20 * 1000);
    return harness_stop(p, SIGKILL, 1000) == 0 ? 0 : -1;
}

static int s_register(api_env_t *e, const char *email, const char *password, const char *org,
                      char *token, char *org_id)
{
    api_resp_t r;
    api_callf(e, "POST", "/api/v1/auth/register", NULL, &r,
              "{\"email\":\"%s\",\"password\":\"%s\",\"organization\":\"%s\"}", email, password,
              org);
    int ok = r.status == 201 && r.json;
    if (ok) {
        json_t *t = json_object_get(r.json, "token");
        json_t *o = json_object_get(json_object_get(r.json, "organization"), "id");
        ok = json_is_string(t) && json_is_string(o);
        if (ok) {
            snprintf(token, 2048, "%s", json_string_value(t));
            if (org_id)
                snprintf(org_id, 64, "%s", json_string_value(o));
        }
    }
    if (!ok)
        fprintf(stderr, "api_util: register failed: %d %s\n", r.status,
                r.raw ? sbuf_data(r.raw) : "");
    api_resp_free(&r);
    return ok ? 0 : -1;
}

static int s_key(api_env_t *e, const char *token, const char *scope, char *key)
{
    api_resp_t r;
    api_callf(e, "POST", "/api/v1/api-keys", token, &r, "{\"name\":\"test %s\",\"scope\":\"%s\"}",
              scope, scope);
    json_t *k = r.json ? json_object_get(r.json, "key") : NULL;
    int ok = r.status == 201 && json_is_string(k);
    if (ok)
        snprintf(key, 160, "%s", json_string_value(k));
    else
        fprintf(stderr, "api_util: api key (%s) failed: %d %s\n", scope, r.status,
                r.raw ? sbuf_data(r.raw) : "");
    api_resp_free(&r);
    return ok ? 0 : -1;
}

int api_env_start(api_env_t *e, char *const *extra)
{
    memset(e, 0, sizeof *e);
    if (harness_create_database(e->db, sizeof e->db) != 0 || s_migrate(e->db) != 0) {
        fprintf(stderr, "api_util: cannot create and migrate a database\n");
        return -1;
    }
    mesh_init(&e->mesh, 250);
    snprintf(e->mesh.database, sizeof e->mesh.database, "%s", e->db);
    if (mesh_start_broker(&e->mesh) != 0 || mesh_start_worker(&e->mesh, 0) != 0)
        return -1;
    e->port = harness_free_port();
    static char port_env[32], ep_env[96], id_env[48];
    snprintf(port_env, sizeof port_env, "POSTCHI_API_PORT=%d", e->port);
    snprintf(ep_env, sizeof ep_env, "POSTCHI_BROKER_ENDPOINT=%s", e->mesh.endpoint);
    snprintf(id_env, sizeof id_env, "POSTCHI_NODE_ID=api-%d", (int)getpid());
    char *env[64];
    int n = 0;
    for (int i = 0; extra && extra[i] && n < 20; i++)
        env[n++] = extra[i];
    char *const *stores = harness_server_env(e->db);
    for (int i = 0; stores[i] && n < 40; i++)
        s_env_add(env, &n, extra, stores[i]);
    s_env_add(env, &n, extra, port_env);
    s_env_add(env, &n, extra, ep_env);
    s_env_add(env, &n, extra, id_env);
    s_env_add(env, &n, extra, "POSTCHI_JWT_SECRET=" TEST_JWT_SECRET);
    s_env_add(env, &n, extra, "POSTCHI_SECRET_KEY=" TEST_SECRET_KEY);
    s_env_add(env, &n, extra, "POSTCHI_RATE_LIMIT_RPS=100000");
    s_env_add(env, &n, extra, "POSTCHI_RATE_LIMIT_BURST=100000");
    s_env_add(env, &n, extra, "POSTCHI_API_THREADS=4");
    env[n] = NULL;
    e->api = harness_spawn_postchi("api", "api", env);
    if (!e->api || harness_wait_http(e->port, "/readyz", 15000) != 0) {
        fprintf(stderr, "api_util: the API node did not become ready (log %s)\n",
                e->api ? harness_log_path(e->api) : "-");
        return -1;
    }
    snprintf(e->email, sizeof e->email, "owner-%d-%d@example.com", (int)getpid(), ++s_seq);
    snprintf(e->password, sizeof e->password, "correct horse battery");
    if (s_register(e, e->email, e->password, "Acme", e->token, e->org_id) != 0 ||
        s_key(e, e->token, "full", e->key_full) != 0 ||
        s_key(e, e->token, "send", e->key_send) != 0 || s_key(e, e->token, "read", e->key_read) != 0)
        return -1;
    return 0;
}

int api_env_other_org(api_env_t *e, char *token, char *key)
{
    char email[128];
    snprintf(email, sizeof email, "other-%d-%d@example.com", (int)getpid(), ++s_seq);
    if (s_register(e, email, "another long password", "Other Org", token, NULL) != 0)
        return -1;
    return s_key(e, token, "full", key);
}

int api_env_stop(api_env_t *e)
{
    int bad = 0;
    if (e->api && harness_stop(e->api, SIGTERM, 10000) != 0) {
        fprintf(stderr, "api node did not exit cleanly\n");
        bad++;
    }
    e->api = NULL;
    return bad + mesh_stop_all(&e->mesh);
}

static int s_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int api_call(const api_env_t *e, const char *method, const char *path, const char *token,
             const char *body, const char *headers, api_resp_t *out)
{
    memset(out, 0, sizeof *out);
    out->status = -1;
    out->raw = sbuf_new(1024);
    out->headers = sbuf_new(512);
    sbuf_t *req = sbuf_new(1024);
    int fd = s_connect(e->port);
    if (fd < 0 || !req || !out->raw || !out->headers) {
        sbuf_destroy(&req);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    sbuf_appendf(req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", method, path);
    if (token)
        sbuf_appendf(req, "Authorization: Bearer %s\r\n", token);
    if (body && !(headers && strstr(headers, "Content-Type:")))
        sbuf_appendf(req, "Content-Type: application/json\r\n");
    if (body)
        sbuf_appendf(req, "Content-Length: %zu\r\n", strlen(body));
    else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
             strcmp(method, "PATCH") == 0)
        sbuf_appendf(req, "Content-Length: 0\r\n");
    if (headers)
        sbuf_append_str(req, headers);
    sbuf_append_str(req, "\r\n");
    if (body)
        sbuf_append_str(req, body);
    size_t off = 0;
    while (off < sbuf_len(req)) {
        ssize_t w = send(fd, sbuf_data(req) + off, sbuf_len(req) - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    sbuf_t *all = sbuf_new(4096);
    char buf[8192];
    ssize_t r;
    while ((r = recv(fd, buf, sizeof buf, 0)) > 0)
        sbuf_append(all, buf, (size_t)r);
    close(fd);
    const char *text = sbuf_data(all);
    const char *end = strstr(text, "\r\n\r\n");
    if (end && sscanf(text, "HTTP/1.%*c %d", &out->status) == 1) {
        sbuf_append(out->headers, text, (size_t)(end - text) + 2);
        sbuf_append(out->raw, end + 4, sbuf_len(all) - (size_t)(end + 4 - text));
        json_error_t jerr;
        out->json = json_loadb(sbuf_data(out->raw), sbuf_len(out->raw), 0, &jerr);
    }
    sbuf_destroy(&all);
    sbuf_destroy(&req);
    return out->status;
}

int api_callf(const api_env_t *e, const char *method, const char *path, const char *token,
              api_resp_t *out, const char *fmt, ...)
{
    sbuf_t *b = sbuf_new(256);
    va_list ap;
    va_start(ap, fmt);
    sbuf_vappendf(b, fmt, ap);
    va_end(ap);
    int st = api_call(e, method, path, token, sbuf_data(b), NULL, out);
    sbuf_destroy(&b);
    return st;
}

const char *api_resp_header(const api_resp_t *r, const char *name, char *buf, size_t size)
{
    if (!r->headers)
        return NULL;
    size_t n = strlen(name);
    const char *p = sbuf_data(r->headers);
    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            size_t len = strcspn(v, "\r\n");
            if (len >= size)
                len = size - 1;
            memcpy(buf, v, len);
            buf[len] = 0;
            return buf;
        }
    }
    return NULL;
}

void api_resp_free(api_resp_t *r)
{
    sbuf_destroy(&r->raw);
    sbuf_destroy(&r->headers);
    json_decref(r->json);
    r->json = NULL;
}

char *api_sql(const api_env_t *e, const char *sql)
{
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s user=%s dbname=%s",
             harness_server("PG_HOST"), harness_server("PG_PORT"), harness_server("PG_USER"), e->db);
    sbuf_t *err = sbuf_new(64);
    db_t *db = db_connect(conninfo, 0, err);
    char *out = NULL;
    if (db) {
        db_result_t *res = db_query(db, sql, 0, NULL, err);
        if (res && db_result_rows(res) > 0 && db_result_cols(res) > 0 && db_result_get(res, 0, 0))
            out = strdup(db_result_get(res, 0, 0));
        if (!res)
            fprintf(stderr, "api_sql: %s\n", sbuf_data(err));
        db_result_free(&res);
    }
    db_destroy(&db);
    sbuf_destroy(&err);
    return out;
}

char *api_vsqlf(const api_env_t *e, const char *fmt, va_list ap)
{
    sbuf_t *b = sbuf_new(256);
    char *out = NULL;
    if (b && sbuf_vappendf(b, fmt, ap) == 0)
        out = api_sql(e, sbuf_data(b));
    sbuf_destroy(&b);
    return out;
}

char *api_sqlf(const api_env_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = api_vsqlf(e, fmt, ap);
    va_end(ap);
    return out;
}

long api_sql_long(const api_env_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = api_vsqlf(e, fmt, ap);
    va_end(ap);
    long v = out ? strtol(out, NULL, 10) : -1;
    free(out);
    return v;
}

json_t *api_field_error(const api_resp_t *r, const char *field)
{
    json_t *errs = r->json ? json_object_get(r->json, "errors") : NULL;
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e)
    {
        const char *f = json_string_value(json_object_get(e, "field"));
        if (f && strcmp(f, field) == 0)
            return e;
    }
    return NULL;
}

void api_expect_invalid(const api_resp_t *r, const char *field, const char *needle)
{
    const char *raw = r->raw ? sbuf_data(r->raw) : "";
    if (r->status != 422)
        fail_msg("expected 422 on %s, got %d: %s", field, r->status, raw);
    const char *msg = json_string_value(json_object_get(api_field_error(r, field), "message"));
    if (!msg)
        fail_msg("no error on field %s: %s", field, raw);
    if (needle && !strstr(msg, needle))
        fail_msg("error on %s is \"%s\", expected it to contain \"%s\"", field, msg, needle);
}
