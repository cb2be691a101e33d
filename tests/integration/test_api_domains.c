/*
 * test_api_domains - /api/v1/domains against a real API node, PostgreSQL
 * and a real dnsmasq on loopback.
 *
 * The API is started with POSTCHI_DNS_RESOLVER pointing at a port where no
 * DNS server runs yet (verification then reports "error" and leaves the
 * domain pending); dnsmasq is then started on that port serving the
 * records the API asked for: all correct for one domain, a wrong Ed25519
 * DKIM key and no DMARC for another.
 *
 * Also: validation (422 naming the field, no row left), duplicates (409),
 * tenancy (404), scopes (403), pagination, delete, and that private keys
 * are stored sealed (not PEM) and open with the configured key into keys
 * matching the published ones, and never appear in a response or audit row.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "api_util.h"
#include "dkim_keys.h"
#include "dns_util.h"
#include "sbuf.h"
#include "secretbox.h"

#define SECRET_HEX "5ec0e7c0ffee5ec0e7c0ffee5ec0e7c0ffee5ec0e7c0ffee5ec0e7c0ffee0001"

static api_env_t s_env;
static int s_dns_port;
static char s_other_token[2048], s_other_key[160];

static int s_setup(void **state)
{
    (void)state;
    s_dns_port = harness_free_port();
    static char resolver[64];
    snprintf(resolver, sizeof resolver, "POSTCHI_DNS_RESOLVER=127.0.0.1:%d", s_dns_port);
    char *extra[] = {resolver, "POSTCHI_SECRET_KEY=" SECRET_HEX, NULL};
    if (api_env_start(&s_env, extra) != 0)
        return -1;
    return api_env_other_org(&s_env, s_other_token, s_other_key);
}

static int s_teardown(void **state)
{
    (void)state;
    api_env_stop(&s_env);
    return 0;
}

/* POST /domains {"name": name} with the full key; caller frees r. */
static int s_create(const char *name, api_resp_t *r)
{
    return api_callf(&s_env, "POST", "/api/v1/domains", s_env.key_full, r, "{\"name\":\"%s\"}",
                     name);
}

static const char *s_str(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    if (!v)
        fail_msg("no string \"%s\" in the response", key);
    return v;
}

/* The record object named rec ("spf", "dkim_ed25519", ...) of a domain. */
static json_t *s_record(json_t *domain, const char *rec)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(domain, "records"), i, r)
    {
        if (!strcmp(s_str(r, "record"), rec))
            return r;
    }
    fail_msg("no record %s", rec);
    return NULL;
}

/* n copies of c (n < 64), in one of four rotating buffers. */
static const char *s_run(size_t n, char c)
{
    static char buf[4][64];
    static int next;
    char *b = buf[next++ % 4];
    memset(b, c, n);
    b[n] = '\0';
    return b;
}

/* A listing cursor as the API makes one (unpadded base64url of
 * "v1|<pos>|<id>"), for forging. Caller frees. */
static char *s_cursor(const char *pos, const char *id)
{
    char in[160];
    int n = snprintf(in, sizeof in, "v1|%s|%s", pos, id);
    char *out = malloc((size_t)n / 3 * 4 + 8);
    assert_non_null(out);
    int m = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)in, n);
    while (m > 0 && out[m - 1] == '=')
        m--;
    out[m] = '\0';
    for (int i = 0; i < m; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    return out;
}

static long s_count_domains(void)
{
    return api_sql_long(&s_env, "SELECT count(*) FROM domains");
}

/* The problem response names field among its errors. */
static void s_assert_field_error(const api_resp_t *r, const char *field)
{
    if (!api_field_error(r, field))
        fail_msg("no error for field \"%s\" in %s", field, sbuf_data(r->raw));
}

static void test_create_and_get(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(s_create("Shape.Example.test", &r), 201);
    json_t *d = r.json;
    assert_string_equal(s_str(d, "name"), "shape.example.test"); /* lower-cased */
    assert_string_equal(s_str(d, "status"), "pending");
    assert_string_equal(s_str(d, "return_path"), "bounces.shape.example.test");
    assert_null(strstr(sbuf_data(r.raw), "PRIVATE"));
    assert_int_equal(json_array_size(json_object_get(d, "records")), 5);

    json_t *spf = s_record(d, "spf");
    assert_string_equal(s_str(spf, "type"), "TXT");
    assert_string_equal(s_str(spf, "host"), "bounces.shape.example.test");
    assert_string_equal(s_str(spf, "value"), "v=spf1 mx -all");
    assert_string_equal(s_str(spf, "status"), "pending");

    json_t *ed = s_record(d, "dkim_ed25519"), *rsa = s_record(d, "dkim_rsa");
    const char *sel_e = s_str(json_object_get(d, "dkim_selectors"), "ed25519");
    const char *sel_r = s_str(json_object_get(d, "dkim_selectors"), "rsa");
    assert_string_not_equal(sel_e, sel_r);
    char host[256];
    snprintf(host, sizeof host, "%s._domainkey.shape.example.test", sel_e);
    assert_string_equal(s_str(ed, "host"), host);
    assert_int_equal(strncmp(s_str(ed, "value"), "v=DKIM1; k=ed25519; p=", 22), 0);
    assert_int_equal(strncmp(s_str(rsa, "value"), "v=DKIM1; k=rsa; p=MIIB", 22), 0);
    /* The RSA record is longer than one character-string: the zone form
     * splits it into quoted pieces. */
    assert_non_null(strstr(s_str(rsa, "zone_value"), "\" \""));
    assert_true(json_is_true(json_object_get(rsa, "required")));

    json_t *mx = s_record(d, "return_path");
    assert_string_equal(s_str(mx, "type"), "MX");
    assert_string_equal(s_str(mx, "value"), "10 mx.bounces.shape.example.test");
    json_t *dmarc = s_record(d, "dmarc");
    assert_string_equal(s_str(dmarc, "host"), "_dmarc.shape.example.test");
    assert_true(json_is_false(json_object_get(dmarc, "required")));

    /* GET returns the same domain, with a read key too. */
    char path[128];
    snprintf(path, sizeof path, "/api/v1/domains/%s", s_str(d, "id"));
    api_resp_t g = {0};
    assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &g), 200);
    assert_true(json_equal(g.json, d));
    api_resp_free(&g);

    /* The audit row says who created what, without a key. */
    char *n = api_sqlf(&s_env, "SELECT count(*) FROM audit_log WHERE action = 'domain.create' AND "
                     "resource_id = '%s' AND actor_type = 'api_key'",
                     s_str(d, "id"));
    assert_string_equal(n, "1");
    free(n);
    n = api_sqlf(&s_env, "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%%PRIVATE%%' OR "
               "detail::text LIKE '%%MII%%'");
    assert_string_equal(n, "0");
    free(n);
    api_resp_free(&r);
}

static unsigned char *s_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    unsigned char *b = malloc(n + 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        b[i] = (unsigned char)v;
    }
    *len = n;
    return b;
}

/* Private keys are sealed in the database and open, with the configured
 * key, into the keys whose public halves the API published. */
static void test_private_keys_sealed(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(s_create("sealed.example.test", &r), 201);
    unsigned char key[SECRETBOX_KEY_LEN];
    assert_int_equal(secretbox_key_parse(SECRET_HEX, key), 0);
    const char *cols[] = {"dkim_ed25519_private", "dkim_rsa_private"};
    const char *recs[] = {"dkim_ed25519", "dkim_rsa"};
    for (int i = 0; i < 2; i++) {
        char *hex = api_sqlf(&s_env, "SELECT encode(%s, 'hex') FROM domains WHERE id = '%s'", cols[i],
                           s_str(r.json, "id"));
        assert_non_null(hex);
        size_t len;
        unsigned char *box = s_unhex(hex, &len);
        assert_null(memmem(box, len, "PRIVATE KEY", 11));
        assert_int_equal(box[0], SECRETBOX_VERSION);
        sbuf_t *pem = sbuf_new(0), *pub = sbuf_new(0), *txt = sbuf_new(0);
        assert_int_equal(secretbox_open(key, box, len, pem), 0);
        assert_non_null(strstr(sbuf_data(pem), "-----BEGIN PRIVATE KEY-----"));
        dkim_key_t *k = dkim_key_from_pem(sbuf_data(pem), sbuf_len(pem));
        assert_non_null(k);
        assert_int_equal(dkim_key_alg(k), i == 0 ? DKIM_ED25519 : DKIM_RSA);
        assert_int_equal(dkim_key_public_b64(k, pub), 0);
        assert_int_equal(dkim_txt_record(dkim_key_alg(k), sbuf_data(pub), txt, NULL), 0);
        assert_string_equal(s_str(s_record(r.json, recs[i]), "value"), sbuf_data(txt));
        /* The PEM's base64 body appears in no response. */
        assert_null(strstr(sbuf_data(r.raw), sbuf_data(pem) + 28));
        /* Another key does not open it. */
        unsigned char wrong[SECRETBOX_KEY_LEN];
        memcpy(wrong, key, sizeof wrong);
        wrong[0] ^= 1;
        sbuf_reset(txt);
        assert_int_equal(secretbox_open(wrong, box, len, txt), -1);
        dkim_key_destroy(&k);
        sbuf_destroy(&pem);
        sbuf_destroy(&pub);
        sbuf_destroy(&txt);
        free(box);
        free(hex);
    }
    api_resp_free(&r);
}

static void test_validation(void **state)
{
    (void)state;
    long before = s_count_domains();
    char long_label[80], long_name[300];
    memset(long_label, 'a', 64);
    strcpy(long_label + 64, ".test");
    long_name[0] = '\0';
    while (strlen(long_name) < 233)
        strcat(long_name, "abcdefghi.");
    strcat(long_name, "test");
    /* 212 characters: a Message-ID <uuid@name> would pass 250 bytes. */
    char name_212[256];
    snprintf(name_212, sizeof name_212, "%s.%s.%s.%s.test", s_run(63, 'a'), s_run(63, 'b'),
             s_run(63, 'c'), s_run(15, 'd'));
    assert_int_equal(strlen(name_212), 212);
    const char *bad_names[] = {"",
                               "nodot",
                               "-lead.example.test",
                               "trail-.example.test",
                               "two..dots.test",
                               ".leading.test",
                               "trailing.test.",
                               "192.0.2.1",
                               "under_score.test",
                               "spa ce.test",
                               "x'; DROP TABLE domains;--.test",
                               "caf\\u00e9.test",
                               "[::1]",
                               long_label,
                               long_name,
                               name_212};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        api_resp_t r = {0};
        if (s_create(bad_names[i], &r) != 422)
            fail_msg("name \"%s\": status %d, %s", bad_names[i], r.status, sbuf_data(r.raw));
        s_assert_field_error(&r, "name");
        api_resp_free(&r);
    }
    const char *bad_bodies[][2] = {
        {"{}", "name"},
        {"{\"name\": 5}", "name"},
        {"{\"name\": null}", "name"},
        {"{\"name\": \"ok.example.test\", \"extra\": 1}", "extra"},
        {"{\"name\": \"ok.example.test\", \"dkim_rsa_private\": \"x\"}", "dkim_rsa_private"},
    };
    for (size_t i = 0; i < sizeof bad_bodies / sizeof bad_bodies[0]; i++) {
        api_resp_t r = {0};
        api_call(&s_env, "POST", "/api/v1/domains", s_env.key_full, bad_bodies[i][0], NULL, &r);
        if (r.status != 422)
            fail_msg("body %s: status %d", bad_bodies[i][0], r.status);
        s_assert_field_error(&r, bad_bodies[i][1]);
        api_resp_free(&r);
    }
    api_resp_t r = {0};
    /* Not an object: the framework or we refuse it, either way a 4xx. */
    api_call(&s_env, "POST", "/api/v1/domains", s_env.key_full, "[1]", NULL, &r);
    assert_true(r.status == 400 || r.status == 422);
    api_resp_free(&r);
    assert_int_equal(s_count_domains(), before); /* nothing half-made */

    /* 211 characters, the most whose Message-ID fits, is a domain. */
    char name_211[256];
    snprintf(name_211, sizeof name_211, "%s.%s.%s.%s.test", s_run(63, 'a'), s_run(63, 'b'),
             s_run(63, 'c'), s_run(14, 'd'));
    assert_int_equal(strlen(name_211), 211);
    assert_int_equal(s_create(name_211, &r), 201);
    assert_int_equal(strlen(s_str(r.json, "name")), 211);
    api_resp_free(&r);

    /* A 409 stays stored under its Idempotency-Key (other 4xx do not). */
    char body[300], buf[16];
    snprintf(body, sizeof body, "{\"name\":\"%s\"}", name_211);
    const char *H = "Idempotency-Key: dup-409-1\r\n";
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/domains", s_env.key_full, body, H, &r), 409);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "POST", "/api/v1/domains", s_env.key_full, body, H, &r), 409);
    assert_non_null(api_resp_header(&r, "Idempotent-Replayed", buf, sizeof buf));
    api_resp_free(&r);
}

static void test_duplicate(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(s_create("dup.example.test", &r), 201);
    api_resp_free(&r);
    long before = s_count_domains();
    assert_int_equal(s_create("dup.example.test", &r), 409);
    api_resp_free(&r);
    assert_int_equal(s_create("DUP.example.TEST", &r), 409);
    api_resp_free(&r);
    assert_int_equal(s_count_domains(), before);
    /* Another organization may add the same name: it is theirs to prove. */
    assert_int_equal(api_callf(&s_env, "POST", "/api/v1/domains", s_other_key, &r,
                               "{\"name\":\"dup.example.test\"}"),
                     201);
    api_resp_free(&r);
}

static void test_tenancy_and_scope(void **state)
{
    (void)state;
    api_resp_t r = {0};
    assert_int_equal(s_create("mine.example.test", &r), 201);
    char path[160], vpath[200];
    snprintf(path, sizeof path, "/api/v1/domains/%s", s_str(r.json, "id"));
    snprintf(vpath, sizeof vpath, "%s/verify", path);
    api_resp_free(&r);

    const char *creds[] = {s_other_key, s_other_token};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(api_call(&s_env, "GET", path, creds[i], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "POST", vpath, creds[i], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, creds[i], NULL, NULL, &r), 404);
        api_resp_free(&r);
        assert_int_equal(
            api_call(&s_env, "GET", "/api/v1/domains?limit=100", creds[i], NULL, NULL, &r), 200);
        assert_null(strstr(sbuf_data(r.raw), "mine.example.test"));
        api_resp_free(&r);
    }
    /* read and send keys may look but not change. */
    const char *weak[] = {s_env.key_read, s_env.key_send};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(api_callf(&s_env, "POST", "/api/v1/domains", weak[i], &r,
                                   "{\"name\":\"scoped.example.test\"}"),
                         403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "POST", vpath, weak[i], NULL, NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "DELETE", path, weak[i], NULL, NULL, &r), 403);
        api_resp_free(&r);
        assert_int_equal(api_call(&s_env, "GET", path, weak[i], NULL, NULL, &r), 200);
        api_resp_free(&r);
    }
    assert_int_equal(api_call(&s_env, "GET", path, NULL, NULL, NULL, &r), 401);
    api_resp_free(&r);
    /* Ids that are not uuids, or unknown ones, are simply not found. */
    const char *ids[] = {"/api/v1/domains/nope", "/api/v1/domains/..%2f..%2fetc",
                         "/api/v1/domains/00000000-0000-0000-0000-000000000000",
                         "/api/v1/domains/00000000-0000-0000-0000-000000000000/verify"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        const char *m = strstr(ids[i], "verify") ? "POST" : "GET";
        assert_int_equal(api_call(&s_env, m, ids[i], s_env.key_full, NULL, NULL, &r), 404);
        api_resp_free(&r);
    }
}

static void test_pagination_and_delete(void **state)
{
    (void)state;
    const char *names[] = {"p1.example.test", "p2.example.test", "p3.example.test"};
    char ids[3][64];
    api_resp_t r = {0};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s_create(names[i], &r), 201);
        const char *id = s_str(r.json, "id");
        snprintf(ids[i], sizeof ids[i], "%s", id ? id : "");
        api_resp_free(&r);
    }
    /* Walk the whole list two at a time: every domain exactly once. */
    int seen[3] = {0}, pages = 0, total = 0;
    char path[1024] = "/api/v1/domains?limit=2";
    for (;;) {
        assert_int_equal(api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r), 200);
        json_t *data = json_object_get(r.json, "data");
        assert_true(json_array_size(data) <= 2);
        size_t i;
        json_t *d;
        json_array_foreach(data, i, d)
        {
            total++;
            assert_null(json_object_get(d, "dkim_rsa_private"));
            for (int k = 0; k < 3; k++)
                seen[k] += !strcmp(s_str(d, "id"), ids[k]);
        }
        pages++;
        json_t *next = json_object_get(r.json, "next_cursor");
        if (json_is_null(next)) {
            api_resp_free(&r);
            break;
        }
        snprintf(path, sizeof path, "/api/v1/domains?limit=2&cursor=%s", json_string_value(next));
        api_resp_free(&r);
    }
    char *n = api_sqlf(&s_env, "SELECT count(*) FROM domains WHERE organization_id = '%s'", s_env.org_id);
    assert_int_equal(total, atoi(n));
    free(n);
    assert_true(pages >= 2);
    for (int k = 0; k < 3; k++)
        assert_int_equal(seen[k], 1);

    const char *bad[] = {"/api/v1/domains?limit=0", "/api/v1/domains?limit=101",
                         "/api/v1/domains?limit=x", "/api/v1/domains?cursor=garbage",
                         "/api/v1/domains?cursor=%27%3B%20DROP"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        api_call(&s_env, "GET", bad[i], s_env.key_read, NULL, NULL, &r);
        if (r.status != 422 && r.status != 400)
            fail_msg("%s: status %d", bad[i], r.status);
        api_resp_free(&r);
    }

    /* Forged cursors of the right shape but with dates PostgreSQL refuses
     * are a 422 on "cursor", not a SQL error's generic 422. */
    const char *forged[] = {"2024-13-45T99:99:99.000000Z", "2023-02-29T00:00:00.000000Z",
                            "0000-01-01T00:00:00.000000Z", "2024-01-01T24:00:00.000000Z"};
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        char *cursor = s_cursor(forged[i], ids[0]);
        snprintf(path, sizeof path, "/api/v1/domains?cursor=%s", cursor);
        free(cursor);
        api_call(&s_env, "GET", path, s_env.key_read, NULL, NULL, &r);
        if (r.status != 422 || !api_field_error(&r, "cursor"))
            fail_msg("cursor at %s: status %d, %s", forged[i], r.status, sbuf_data(r.raw));
        api_resp_free(&r);
    }

    /* Delete: 204, then gone (404 again), with an audit row. */
    char dpath[128];
    snprintf(dpath, sizeof dpath, "/api/v1/domains/%s", ids[1]);
    assert_int_equal(api_call(&s_env, "DELETE", dpath, s_env.key_full, NULL, NULL, &r), 204);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "GET", dpath, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    assert_int_equal(api_call(&s_env, "DELETE", dpath, s_env.key_full, NULL, NULL, &r), 404);
    api_resp_free(&r);
    n = api_sqlf(&s_env, "SELECT count(*) FROM audit_log WHERE action = 'domain.delete' AND "
               "resource_id = '%s'",
               ids[1]);
    assert_string_equal(n, "1");
    free(n);
}

/* dnsmasq options publishing domain d's records; skip names the records
 * to leave out, replace_ed a DKIM Ed25519 value to publish instead. */
static void s_publish(json_t *d, const char *skip, const char *replace_ed, char **opts, int *n,
                      char **owned, int *nowned)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(d, "records"), i, r)
    {
        const char *rec = s_str(r, "record");
        if (skip && strstr(skip, rec))
            continue;
        char *arg;
        if (!strcmp(s_str(r, "type"), "MX")) {
            const char *v = s_str(r, "value");
            sbuf_t *b = sbuf_new(0);
            sbuf_appendf(b, "--mx-host=%s,%s,10", s_str(r, "host"), strchr(v, ' ') + 1);
            arg = sbuf_detach(b, NULL);
            sbuf_destroy(&b);
        } else {
            const char *v = s_str(r, "value");
            if (replace_ed && !strcmp(rec, "dkim_ed25519"))
                v = replace_ed;
            arg = dns_util_txt_arg(s_str(r, "host"), v);
        }
        assert_non_null(arg);
        opts[(*n)++] = owned[(*nowned)++] = arg;
    }
}

static const char *s_check(json_t *d, const char *rec)
{
    return s_str(s_record(d, rec), "status");
}

static void test_verify(void **state)
{
    (void)state;
    api_resp_t a = {0}, b = {0}, r = {0};
    assert_int_equal(s_create("good.verify.test", &a), 201);
    assert_int_equal(s_create("bad.verify.test", &b), 201);
    char apath[160], bpath[160];
    snprintf(apath, sizeof apath, "/api/v1/domains/%s/verify", s_str(a.json, "id"));
    snprintf(bpath, sizeof bpath, "/api/v1/domains/%s/verify", s_str(b.json, "id"));

    /* No DNS server yet: every lookup is an error, the domain stays
     * pending, and the reason says why. */
    assert_int_equal(api_call(&s_env, "POST", apath, s_env.key_full, NULL, NULL, &r), 200);
    assert_string_equal(s_str(r.json, "status"), "pending");
    json_t *spf = s_record(r.json, "spf");
    assert_string_equal(s_str(spf, "status"), "error");
    assert_non_null(strstr(s_str(spf, "reason"), "DNS lookup"));
    api_resp_free(&r);

    /* A wrong Ed25519 key for B: a real key, just not B's. */
    dkim_key_t *stranger = dkim_key_generate(DKIM_ED25519);
    sbuf_t *spub = sbuf_new(0), *sval = sbuf_new(0);
    dkim_key_public_b64(stranger, spub);
    dkim_txt_record(DKIM_ED25519, sbuf_data(spub), sval, NULL);
    char *opts[32], *owned[32];
    int n = 0, nowned = 0;
    s_publish(a.json, NULL, NULL, opts, &n, owned, &nowned);
    s_publish(b.json, "dmarc", sbuf_data(sval), opts, &n, owned, &nowned);
    opts[n] = NULL;
    char *local[] = {"verify.test", NULL};
    harness_proc_t *dns = dns_util_start("dnsmasq-domains", opts, local, &s_dns_port);
    assert_non_null(dns);

    assert_int_equal(api_call(&s_env, "POST", apath, s_env.key_full, NULL, NULL, &r), 200);
    const char *recs[] = {"spf", "dkim_ed25519", "dkim_rsa", "return_path", "dmarc"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s_check(r.json, recs[i]), "ok"))
            fail_msg("A: %s is %s: %s", recs[i], s_check(r.json, recs[i]), sbuf_data(r.raw));
    assert_string_equal(s_str(r.json, "status"), "verified");
    assert_non_null(json_string_value(json_object_get(r.json, "verified_at")));
    assert_true(json_is_null(json_object_get(s_record(r.json, "spf"), "reason")));
    api_resp_free(&r);
    char *st = api_sqlf(&s_env, "SELECT status || ' ' || (checks->'dkim_rsa'->>'status') || ' ' || "
                      "(verified_at IS NOT NULL) FROM domains WHERE id = '%s'",
                      s_str(a.json, "id"));
    assert_string_equal(st, "verified ok true");
    free(st);

    assert_int_equal(api_call(&s_env, "POST", bpath, s_env.key_full, NULL, NULL, &r), 200);
    assert_string_equal(s_str(r.json, "status"), "failed");
    assert_string_equal(s_check(r.json, "spf"), "ok");
    assert_string_equal(s_check(r.json, "dkim_rsa"), "ok");
    assert_string_equal(s_check(r.json, "return_path"), "ok");
    assert_string_equal(s_check(r.json, "dkim_ed25519"), "mismatch");
    assert_non_null(strstr(s_str(s_record(r.json, "dkim_ed25519"), "reason"), "different key"));
    assert_string_equal(s_check(r.json, "dmarc"), "missing");
    assert_non_null(strstr(s_str(s_record(r.json, "dmarc"), "reason"), "_dmarc.bad.verify.test"));
    assert_true(json_is_null(json_object_get(r.json, "verified_at")));
    api_resp_free(&r);
    /* The stored checks say the same, and GET shows them. */
    st = api_sqlf(&s_env, "SELECT status || ' ' || (checks->'dkim_ed25519'->>'status') || ' ' || "
                "(checks->'dmarc'->>'status') FROM domains WHERE id = '%s'",
                s_str(b.json, "id"));
    assert_string_equal(st, "failed mismatch missing");
    free(st);
    char gpath[160];
    snprintf(gpath, sizeof gpath, "/api/v1/domains/%s", s_str(b.json, "id"));
    assert_int_equal(api_call(&s_env, "GET", gpath, s_env.key_read, NULL, NULL, &r), 200);
    assert_string_equal(s_check(r.json, "dkim_ed25519"), "mismatch");
    assert_null(strstr(sbuf_data(r.raw), "PRIVATE"));
    api_resp_free(&r);
    st = api_sqlf(&s_env, "SELECT count(*) FROM audit_log WHERE action = 'domain.verify' AND "
                "resource_id = '%s' AND detail->>'status' = 'failed'",
                s_str(b.json, "id"));
    assert_string_equal(st, "1");
    free(st);

    harness_stop(dns, 15, 2000);
    for (int i = 0; i < nowned; i++)
        free(owned[i]);
    dkim_key_destroy(&stranger);
    sbuf_destroy(&spub);
    sbuf_destroy(&sval);
    api_resp_free(&a);
    api_resp_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_get),    cmocka_unit_test(test_private_keys_sealed),
        cmocka_unit_test(test_validation),        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_tenancy_and_scope), cmocka_unit_test(test_pagination_and_delete),
        cmocka_unit_test(test_verify),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
