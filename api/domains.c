/*
 * domains - sending domains: add a domain (DKIM keys generated, private
 * halves sealed with secretbox), list, show, delete, and verify its DNS
 * records through the configured resolver.
 *
 * The records a domain publishes (docs/api/domains.md explains each):
 *   spf          TXT  bounces.<domain>                "v=spf1 mx -all"
 *   dkim_ed25519 TXT  <sel-e>._domainkey.<domain>     "v=DKIM1; k=ed25519; p=..."
 *   dkim_rsa     TXT  <sel-r>._domainkey.<domain>     "v=DKIM1; k=rsa; p=..."
 *   return_path  MX   bounces.<domain>                "10 mx.bounces.<domain>"
 *   dmarc        TXT  _dmarc.<domain>                 "v=DMARC1; p=none; rua=mailto:dmarc@<domain>"
 * The return path (envelope sender domain) is bounces.<domain>: its MX
 * brings bounces to Postchi (mx.bounces.<domain> is the name the operator
 * points at the Postchi host that receives mail), and its SPF record
 * authorizes exactly those MX hosts to send. DMARC is recommended, reported,
 * but not required for "verified".
 *
 * Verification asks every record at once in one c-ares channel with a 5 s
 * budget in total, so a civetweb thread is held at most that long, and
 * never inside a transaction.
 *
 * Security: private keys exist in clear only between generation and
 * sealing, never leave in a response or an audit row; the columns holding
 * them are never selected here. DNS data quoted in a reason is made
 * printable and bounded first.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "config.h"
#include "dkim_keys.h"
#include "dnscheck.h"
#include "log.h"
#include "rest.h"
#include "sbuf.h"
#include "secretbox.h"

#include "audience.h"

#include "domains.h"

/* Mail from a domain carries Message-ID <uuid@name>, which mime caps at
 * 250 bytes: 39 for the uuid and punctuation leaves 211. (That also keeps
 * "<selector>._domainkey.<name>" within 253.) */
#define NAME_MAX_LEN 211
#define LABEL_MAX_LEN 63
#define VERIFY_BUDGET_MS 5000
#define REASON_QUOTE_MAX 120 /* bytes of DNS data quoted in a reason */
#define N_RECORDS 5

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
/* Every column a response needs, and none of the private keys. */
#define DOMAIN_COLS                                                                        \
    "id, name, status, return_path, dkim_ed25519_selector, dkim_ed25519_public, "         \
    "dkim_rsa_selector, dkim_rsa_public, checks::text, " TS("created_at") ", "             \
    TS("updated_at") ", " TS("verified_at") ", signing"
enum {
    C_ID,
    C_NAME,
    C_STATUS,
    C_RETURN_PATH,
    C_ED_SEL,
    C_ED_PUB,
    C_RSA_SEL,
    C_RSA_PUB,
    C_CHECKS,
    C_CREATED,
    C_UPDATED,
    C_VERIFIED,
    C_SIGNING
};

static unsigned char s_key[SECRETBOX_KEY_LEN]; /* seals DKIM private keys */
static int s_configured;                       /* 1 once domains_configure succeeded */
static char *s_resolver;                       /* dns_resolver setting ("" = resolv.conf) */
static int s_skip_dns;                         /* domains_skip_dns (the dev stack) */

/* One DNS record a domain publishes, built from its row. */
typedef struct {
    const char *key;     /* stable name in checks: "spf", "dkim_ed25519", ... */
    const char *type;    /* "TXT" or "MX" */
    sbuf_t *host;        /* the name the record lives at */
    sbuf_t *value;       /* what it must say */
    sbuf_t *zone;        /* zone-file form of a TXT value (quoted strings) */
    const char *purpose; /* one line for the user */
    int required;        /* 1 when "verified" needs it */
} s_record_t;

int domains_configure(const config_t *cfg, sbuf_t *err)
{
    const char *hex = config_str(cfg, "secret_key");
    const char *resolver = config_str(cfg, "dns_resolver");
    if (!hex || !*hex) {
        sbuf_append_str(err, "setting 'secret_key' is not set: it must be 64 hex digits (32 "
                             "bytes, e.g. from `openssl rand -hex 32`); it encrypts DKIM "
                             "private keys at rest");
        return -1;
    }
    if (secretbox_key_parse(hex, s_key) != 0) {
        sbuf_append_str(err, "setting 'secret_key': must be exactly 64 hex digits (32 bytes)");
        return -1;
    }
    /* Refuse a malformed resolver now rather than on the first verify. */
    sbuf_t *why = sbuf_new(64);
    dnscheck_t *probe = dnscheck_new(resolver, 1000, why);
    if (!probe) {
        sbuf_appendf(err, "setting 'dns_resolver': %s", why ? sbuf_data(why) : "out of memory");
        sbuf_destroy(&why);
        return -1;
    }
    dnscheck_destroy(&probe);
    sbuf_destroy(&why);
    free(s_resolver);
    s_resolver = strdup(resolver ? resolver : "");
    if (!s_resolver) {
        sbuf_append_str(err, "domains_configure: out of memory");
        return -1;
    }
    s_skip_dns = config_bool(cfg, "domains_skip_dns");
    if (s_skip_dns)
        log_warn("domains_skip_dns is on: domains are verified without DNS lookups "
                 "(dev stack only)");
    s_configured = 1;
    return 0;
}

/* ---- names ---- */

/* Lower-case name in place and check it is a domain we can send from:
 * LDH labels of 1..63, at least two, not all-numeric at the top (so no IP
 * address), short enough that the DKIM names under it fit. NULL when
 * fine, else the reason. */
static const char *s_name_invalid(char *name)
{
    size_t len = strlen(name);
    if (len == 0)
        return "must not be empty";
    if (len > NAME_MAX_LEN)
        return "must be at most 211 characters (the Message-ID <uuid@domain> of its mail "
               "must fit in 250 bytes)";
    if (name[len - 1] == '.')
        return "must not end with a dot";
    for (size_t i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    int labels = 0, all_digits = 1;
    const char *p = name;
    while (1) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0)
            return "has an empty label (two dots in a row, or a leading dot)";
        if (n > LABEL_MAX_LEN)
            return "has a label longer than 63 characters";
        if (p[0] == '-' || p[n - 1] == '-')
            return "has a label that starts or ends with a hyphen";
        all_digits = 1;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            if (!(isdigit(c) || (c >= 'a' && c <= 'z') || c == '-'))
                return "may hold only letters, digits, hyphens and dots (use the xn-- form for "
                       "international names)";
            if (!isdigit(c))
                all_digits = 0;
        }
        labels++;
        if (!dot)
            break;
        p = dot + 1;
    }
    if (labels < 2)
        return "must have at least two labels (example.com)";
    if (all_digits)
        return "must be a domain name, not an IP address";
    return NULL;
}

/* ---- the records ---- */

static void s_records_free(s_record_t *r)
{
    for (int i = 0; i < N_RECORDS; i++) {
        sbuf_destroy(&r[i].host);
        sbuf_destroy(&r[i].value);
        sbuf_destroy(&r[i].zone);
    }
}

/* Fill r[N_RECORDS] from a domains row (DOMAIN_COLS). 0 or -1 (memory). */
static int s_records_build(const db_result_t *res, int row, s_record_t *r)
{
    const char *name = db_result_get(res, row, C_NAME);
    const char *rp = db_result_get(res, row, C_RETURN_PATH);
    static const struct {
        const char *key, *type, *purpose;
        int required;
    } spec[N_RECORDS] = {
        {"spf", "TXT",
         "SPF for the return-path domain: authorizes the hosts its MX names (the Postchi mail "
         "hosts) to send with it as envelope sender",
         1},
        {"dkim_ed25519", "TXT", "DKIM public key (Ed25519, RFC 8463) that verifies Postchi's "
                                "signatures",
         1},
        {"dkim_rsa", "TXT",
         "DKIM public key (RSA-2048) for receivers that do not check Ed25519 yet", 1},
        {"return_path", "MX",
         "brings bounces for the return-path domain to Postchi: point mx.<return path> (A/AAAA "
         "or CNAME) at the Postchi host that receives mail",
         1},
        {"dmarc", "TXT",
         "DMARC policy (recommended, not required): start with p=none and tighten once reports "
         "look right",
         0},
    };
    memset(r, 0, N_RECORDS * sizeof *r);
    for (int i = 0; i < N_RECORDS; i++) {
        r[i].key = spec[i].key;
        r[i].type = spec[i].type;
        r[i].purpose = spec[i].purpose;
        r[i].required = spec[i].required;
        r[i].host = sbuf_new(64);
        r[i].value = sbuf_new(128);
        r[i].zone = sbuf_new(128);
        if (!r[i].host || !r[i].value || !r[i].zone)
            return -1;
    }
    int rc = 0;
    rc |= sbuf_append_str(r[0].host, rp);
    rc |= sbuf_append_str(r[0].value, "v=spf1 mx -all");
    rc |= sbuf_appendf(r[1].host, "%s._domainkey.%s", db_result_get(res, row, C_ED_SEL), name);
    rc |= dkim_txt_record(DKIM_ED25519, db_result_get(res, row, C_ED_PUB), r[1].value, r[1].zone);
    rc |= sbuf_appendf(r[2].host, "%s._domainkey.%s", db_result_get(res, row, C_RSA_SEL), name);
    rc |= dkim_txt_record(DKIM_RSA, db_result_get(res, row, C_RSA_PUB), r[2].value, r[2].zone);
    rc |= sbuf_append_str(r[3].host, rp);
    rc |= sbuf_appendf(r[3].value, "10 mx.%s", rp);
    rc |= sbuf_appendf(r[4].host, "_dmarc.%s", name);
    rc |= sbuf_appendf(r[4].value, "v=DMARC1; p=none; rua=mailto:dmarc@%s", name);
    for (int i = 0; i < N_RECORDS && rc == 0; i++)
        if (!strcmp(r[i].type, "TXT") && sbuf_len(r[i].zone) == 0)
            rc |= sbuf_appendf(r[i].zone, "\"%s\"", sbuf_data(r[i].value));
    return rc ? -1 : 0;
}

/* The response object for one row; NULL when out of memory. */
static json_t *s_domain_json(const db_result_t *res, int row)
{
    s_record_t r[N_RECORDS] = {0};
    json_t *checks = json_loads(db_result_get(res, row, C_CHECKS), 0, NULL);
    json_t *records = json_array();
    json_t *out = NULL;
    if (!records || s_records_build(res, row, r) != 0)
        goto done;
    for (int i = 0; i < N_RECORDS; i++) {
        json_t *check = json_object_get(checks, r[i].key);
        const char *status = json_string_value(json_object_get(check, "status"));
        const char *reason = json_string_value(json_object_get(check, "reason"));
        json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:s, s:s?}", "record", r[i].key,
                                "type", r[i].type, "host", sbuf_data(r[i].host), "value",
                                sbuf_data(r[i].value), "purpose", r[i].purpose, "required",
                                r[i].required, "status", status ? status : "pending", "reason",
                                reason);
        if (!rec)
            goto done;
        if (!strcmp(r[i].type, "TXT"))
            json_object_set_new(rec, "zone_value", json_string(sbuf_data(r[i].zone)));
        json_array_append_new(records, rec);
    }
    out = json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:s, s:s, s:s, s:s?, s:o}", "id",
                    db_result_get(res, row, C_ID), "name", db_result_get(res, row, C_NAME),
                    "status", db_result_get(res, row, C_STATUS), "return_path",
                    db_result_get(res, row, C_RETURN_PATH), "dkim_selectors", "ed25519",
                    db_result_get(res, row, C_ED_SEL), "rsa", db_result_get(res, row, C_RSA_SEL),
                    "signing", db_result_get(res, row, C_SIGNING), "created_at", db_result_get(res, row, C_CREATED), "updated_at",
                    db_result_get(res, row, C_UPDATED), "verified_at",
                    db_result_get(res, row, C_VERIFIED), "records", records);
    records = NULL; /* stolen by "o", even on failure */
done:
    s_records_free(r);
    json_decref(records);
    json_decref(checks);
    return out;
}

/* ---- shared plumbing ---- */

static int s_not_configured(api_req_t *req)
{
    return api_problem(req, 503, "Service Unavailable",
                       "domains are not configured on this node (secret_key)");
}

/* Run sql; NULL after answering the error (the caller returns *status). */
static db_result_t *s_query(api_req_t *req, const char *sql, int n, const char *const *params,
                            int *status)
{
    sbuf_t *err = sbuf_new(128);
    db_t *db = api_db(req);
    db_result_t *res = db_query(db, sql, n, params, err);
    if (!res)
        *status = api_db_error(req, db_sqlstate(db), err ? sbuf_data(err) : "out of memory");
    sbuf_destroy(&err);
    return res;
}

static int s_oom(api_req_t *req)
{
    return api_problem(req, 500, "Internal Server Error", "out of memory");
}

/* Seal a key's private PEM and append it to out as bytea hex input. */
static int s_seal_pem(const dkim_key_t *key, sbuf_t *out)
{
    sbuf_t *pem = sbuf_new(2048), *box = sbuf_new(2048);
    int rc = -1;
    if (pem && box && dkim_key_private_pem(key, pem) == 0 &&
        secretbox_seal(s_key, sbuf_data(pem), sbuf_len(pem), box) == 0) {
        const unsigned char *b = (const unsigned char *)sbuf_data(box);
        rc = sbuf_append_str(out, "\\x");
        for (size_t i = 0; i < sbuf_len(box) && rc == 0; i++)
            rc = sbuf_appendf(out, "%02x", b[i]);
    }
    if (pem) {
        /* The clear PEM must not linger in freed memory. */
        OPENSSL_cleanse((void *)sbuf_data(pem), sbuf_len(pem));
        sbuf_destroy(&pem);
    }
    sbuf_destroy(&box);
    return rc;
}

/* ---- POST /domains ---- */

static int s_create(api_req_t *req)
{
    static const char *const allowed[] = {"name", "signing", NULL};
    static const char *const signings[] = {"both", "ed25519", NULL};
    json_t *body = api_body(req);
    json_t *empty = NULL;
    const char *name_in = NULL, *signing = "both";
    if (!json_is_object(body)) {
        if (body) {
            api_error_add(api_errors(req), "body", "must be a JSON object");
            return api_invalid(req);
        }
        body = empty = json_object();
    }
    api_field_only(req, body, allowed);
    int got = api_field_string(req, body, "name", 1, 253, &name_in);
    api_field_enum(req, body, "signing", 0, signings, &signing);
    char *name = got == 0 ? strdup(name_in) : NULL;
    json_decref(empty);
    if (got == 0 && !name)
        return s_oom(req);
    const char *why = name ? s_name_invalid(name) : NULL;
    if (why)
        api_error_add(api_errors(req), "name", "%s", why);
    if (api_errors_count(api_errors(req))) {
        free(name);
        return api_invalid(req);
    }
    if (!s_configured) {
        free(name);
        return s_not_configured(req);
    }

    int status = 500;
    dkim_key_t *ed = dkim_key_generate(DKIM_ED25519), *rsa = dkim_key_generate(DKIM_RSA);
    sbuf_t *ed_pub = sbuf_new(64), *rsa_pub = sbuf_new(512), *ed_priv = sbuf_new(512),
           *rsa_priv = sbuf_new(4096), *rp = sbuf_new(64), *ed_sel = sbuf_new(16),
           *rsa_sel = sbuf_new(16);
    db_result_t *res = NULL;
    if (!ed || !rsa || !ed_pub || !rsa_pub || !ed_priv || !rsa_priv || !rp || !ed_sel ||
        !rsa_sel || dkim_key_public_b64(ed, ed_pub) || dkim_key_public_b64(rsa, rsa_pub) ||
        s_seal_pem(ed, ed_priv) || s_seal_pem(rsa, rsa_priv)) {
        log_error("cannot generate or seal DKIM keys");
        status = api_problem(req, 500, "Internal Server Error", "could not generate DKIM keys");
        goto done;
    }
    /* Selectors name the month the keys were made: rotating later adds a
     * new pair beside the old one without a clash. */
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    sbuf_appendf(ed_sel, "pc%04d%02de", tm.tm_year + 1900, tm.tm_mon + 1);
    sbuf_appendf(rsa_sel, "pc%04d%02dr", tm.tm_year + 1900, tm.tm_mon + 1);
    sbuf_appendf(rp, "bounces.%s", name);

    if (api_tx_begin(req) != 0) {
        status = api_problem(req, 503, "Service Unavailable", "the database is unavailable");
        goto done;
    }
    const char *params[] = {api_org(req),        name,
                            sbuf_data(rp),       sbuf_data(ed_sel),
                            sbuf_data(ed_pub),   sbuf_data(ed_priv),
                            sbuf_data(rsa_sel),  sbuf_data(rsa_pub),
                            sbuf_data(rsa_priv), signing};
    res = s_query(req,
                  "INSERT INTO domains (organization_id, name, return_path, "
                  "dkim_ed25519_selector, dkim_ed25519_public, dkim_ed25519_private, "
                  "dkim_rsa_selector, dkim_rsa_public, dkim_rsa_private, signing) "
                  "VALUES ($1, $2, $3, $4, $5, $6::bytea, $7, $8, $9::bytea, $10) RETURNING " DOMAIN_COLS,
                  10, params, &status);
    if (!res) {
        api_tx_rollback(req);
        goto done;
    }
    const char *id = db_result_get(res, 0, C_ID);
    api_audit(req, "domain.create", "domain", id,
              json_pack("{s:s, s:s, s:s}", "name", name, "dkim_ed25519_selector",
                        sbuf_data(ed_sel), "dkim_rsa_selector", sbuf_data(rsa_sel)));
    json_t *out = s_domain_json(res, 0);
    if (!out) {
        api_tx_rollback(req);
        status = s_oom(req);
        goto done;
    }
    if (api_tx_commit(req) != 0) {
        json_decref(out);
        status = api_problem(req, 503, "Service Unavailable", "the database is unavailable");
        goto done;
    }
    status = api_json(req, 201, out);
done:
    db_result_free(&res);
    dkim_key_destroy(&ed);
    dkim_key_destroy(&rsa);
    sbuf_destroy(&ed_pub);
    sbuf_destroy(&rsa_pub);
    sbuf_destroy(&ed_priv);
    sbuf_destroy(&rsa_priv);
    sbuf_destroy(&rp);
    sbuf_destroy(&ed_sel);
    sbuf_destroy(&rsa_sel);
    free(name);
    return status;
}

/* ---- GET /domains ---- */

/* The value of the n digits at s (the caller checked they are digits). */
static int s_num(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* A cursor position is "<created_at as DOMAIN_COLS prints it>|<uuid>".
 * Checked so a forged one is a 422 on "cursor", never a SQL error: the
 * digits alone would let "2024-13-45T99:99:99" reach $2::timestamptz,
 * so every field is range-checked too (as contacts.c's s_rfc3339_ok). */
static int s_pos_ok(const char *pos, size_t len)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (len != sizeof shape - 1)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (shape[i] == 'd' ? !isdigit((unsigned char)pos[i]) : pos[i] != shape[i])
            return 0;
    int y = s_num(pos, 4), mo = s_num(pos + 5, 2), d = s_num(pos + 8, 2);
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || s_num(pos + 11, 2) > 23 ||
        s_num(pos + 14, 2) > 59 || s_num(pos + 17, 2) > 59)
        return 0;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 0;
    return 1;
}

static const aud_paging_t s_paging = {50, 100, s_pos_ok, "is not a cursor this list returned"};

static int s_list(api_req_t *req)
{
    aud_page_t page;
    if (aud_page_open(req, &s_paging, &page) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), page.pos, page.id, page.lim};
    return aud_page_query(req, &page,
                          "SELECT " DOMAIN_COLS " FROM domains WHERE organization_id = $1 "
                          "AND ($2::timestamptz IS NULL OR (created_at, id) > "
                          "($2::timestamptz, $3::uuid)) ORDER BY created_at, id LIMIT $4",
                          4, params, s_domain_json, C_CREATED, C_ID);
}

/* ---- GET /domains/{id} ---- */

static int s_get(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "domain");
    const char *params[] = {id, api_org(req)};
    int status = 500;
    db_result_t *res = s_query(
        req, "SELECT " DOMAIN_COLS " FROM domains WHERE id = $1 AND organization_id = $2", 2,
        params, &status);
    if (!res)
        return status;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        return api_not_found(req, "domain");
    }
    json_t *out = s_domain_json(res, 0);
    db_result_free(&res);
    return out ? api_json(req, 200, out) : s_oom(req);
}

/* ---- DELETE /domains/{id} ---- */

static int s_delete(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "domain");
    if (api_tx_begin(req) != 0)
        return api_problem(req, 503, "Service Unavailable", "the database is unavailable");
    const char *params[] = {id, api_org(req)};
    int status = 500;
    db_result_t *res = s_query(
        req, "DELETE FROM domains WHERE id = $1 AND organization_id = $2 RETURNING name", 2,
        params, &status);
    if (!res || db_result_rows(res) != 1) {
        api_tx_rollback(req);
        if (res)
            status = api_not_found(req, "domain");
        db_result_free(&res);
        return status;
    }
    api_audit(req, "domain.delete", "domain", id,
              json_pack("{s:s}", "name", db_result_get(res, 0, 0)));
    db_result_free(&res);
    if (api_tx_commit(req) != 0)
        return api_problem(req, 503, "Service Unavailable", "the database is unavailable");
    return api_no_content(req);
}

/* ---- POST /domains/{id}/verify ---- */

/* "ok" | "missing" | "mismatch" | "error", and a reason. */
typedef struct {
    const char *status; /* the record's verdict */
    sbuf_t *reason;     /* why, empty when ok */
} s_verdict_t;

/* Quote untrusted DNS text in a reason: printable, bounded. */
static void s_quote(sbuf_t *out, const char *s)
{
    char buf[REASON_QUOTE_MAX * 4 + 8];
    size_t n = strlen(s);
    log_printable(buf, sizeof buf, s, n > REASON_QUOTE_MAX ? REASON_QUOTE_MAX : n);
    sbuf_appendf(out, "\"%s%s\"", buf, n > REASON_QUOTE_MAX ? "..." : "");
}

/* Collapse whitespace runs, trim, lower-case (SPF terms are
 * case-insensitive) into out. */
static void s_normalize(const char *s, sbuf_t *out)
{
    int space = 0;
    for (; *s; s++) {
        if (isspace((unsigned char)*s)) {
            space = sbuf_len(out) > 0;
            continue;
        }
        if (space)
            sbuf_append(out, " ", 1);
        space = 0;
        char c = (char)tolower((unsigned char)*s);
        sbuf_append(out, &c, 1);
    }
}

/* 1 when txt starts with the version tag word (e.g. "v=spf1"), case-blind,
 * followed by a space, ';' or the end. */
static int s_has_version(const char *txt, const char *word)
{
    while (isspace((unsigned char)*txt))
        txt++;
    size_t n = strlen(word);
    return !strncasecmp(txt, word, n) &&
           (txt[n] == '\0' || txt[n] == ';' || isspace((unsigned char)txt[n]));
}

#define EACH_RECORD(p, q)                                                                     \
    for (const char *p = sbuf_data((q)->records), *p##_end = p + sbuf_len((q)->records);      \
         p < p##_end; p += strlen(p) + 1)

static void s_judge_spf(const s_record_t *r, const dnscheck_query_t *q, s_verdict_t *v)
{
    int n = 0;
    const char *found = NULL;
    EACH_RECORD(p, q)
    if (s_has_version(p, "v=spf1")) {
        n++;
        found = p;
    }
    if (n == 0) {
        v->status = "missing";
        sbuf_appendf(v->reason, "no SPF record (v=spf1) among the TXT records at %s",
                     sbuf_data(r->host));
        return;
    }
    if (n > 1) {
        v->status = "mismatch";
        sbuf_appendf(v->reason, "%d SPF records at %s: a name may publish only one (RFC 7208)",
                     n, sbuf_data(r->host));
        return;
    }
    sbuf_t *a = sbuf_new(64), *b = sbuf_new(64);
    s_normalize(found, a);
    s_normalize(sbuf_data(r->value), b);
    if (a && b && !strcmp(sbuf_data(a), sbuf_data(b))) {
        v->status = "ok";
    } else {
        v->status = "mismatch";
        sbuf_append_str(v->reason, "the SPF record is ");
        s_quote(v->reason, found);
        sbuf_appendf(v->reason, ", expected \"%s\"", sbuf_data(r->value));
    }
    sbuf_destroy(&a);
    sbuf_destroy(&b);
}

static void s_judge_dkim(dkim_alg_t alg, const char *pub, const dnscheck_query_t *q,
                         s_verdict_t *v)
{
    const char *first_why = NULL;
    EACH_RECORD(p, q)
    {
        const char *why = NULL;
        if (dkim_txt_match(alg, pub, p, &why) == 1) {
            v->status = "ok";
            return;
        }
        if (!first_why)
            first_why = why;
    }
    v->status = "mismatch";
    sbuf_appendf(v->reason, "the DKIM record does not match: %s",
                 first_why ? first_why : "no usable record");
}

static void s_judge_mx(const s_record_t *r, const dnscheck_query_t *q, s_verdict_t *v)
{
    /* The value is "10 <host>": any preference will do, the host must. */
    const char *want = strchr(sbuf_data(r->value), ' ') + 1;
    const char *first = NULL;
    EACH_RECORD(p, q)
    {
        const char *host = strchr(p, ' ');
        host = host ? host + 1 : p;
        if (!strcasecmp(host, want)) {
            v->status = "ok";
            return;
        }
        if (!first)
            first = host;
    }
    v->status = "mismatch";
    sbuf_appendf(v->reason, "the MX record of %s points to ", sbuf_data(r->host));
    s_quote(v->reason, first ? first : "");
    sbuf_appendf(v->reason, ", expected %s", want);
}

static void s_judge_dmarc(const s_record_t *r, const dnscheck_query_t *q, s_verdict_t *v)
{
    int n = 0;
    EACH_RECORD(p, q)
    n += s_has_version(p, "v=DMARC1");
    if (n == 1) {
        v->status = "ok"; /* any policy the owner chose is theirs to choose */
    } else if (n == 0) {
        v->status = "missing";
        sbuf_appendf(v->reason, "no DMARC record (v=DMARC1) among the TXT records at %s",
                     sbuf_data(r->host));
    } else {
        v->status = "mismatch";
        sbuf_appendf(v->reason, "%d DMARC records at %s: receivers ignore them all (RFC 7489)",
                     n, sbuf_data(r->host));
    }
}

/* Verdict for one record from its lookup (res: the domain row). */
static void s_judge(const s_record_t *r, const dnscheck_query_t *q, const db_result_t *res,
                    s_verdict_t *v)
{
    if (q->status == DNSCHECK_NXDOMAIN || q->status == DNSCHECK_NODATA) {
        v->status = "missing";
        sbuf_appendf(v->reason, "no %s record at %s: %s", r->type, sbuf_data(r->host), q->why);
        return;
    }
    if (q->status != DNSCHECK_OK) {
        v->status = "error";
        sbuf_appendf(v->reason, "the DNS lookup of %s failed: %s", sbuf_data(r->host), q->why);
        return;
    }
    if (!strcmp(r->key, "spf"))
        s_judge_spf(r, q, v);
    else if (!strcmp(r->key, "dkim_ed25519"))
        s_judge_dkim(DKIM_ED25519, db_result_get(res, 0, C_ED_PUB), q, v);
    else if (!strcmp(r->key, "dkim_rsa"))
        s_judge_dkim(DKIM_RSA, db_result_get(res, 0, C_RSA_PUB), q, v);
    else if (!strcmp(r->key, "return_path"))
        s_judge_mx(r, q, v);
    else
        s_judge_dmarc(r, q, v);
}

/* Look every record up at once and judge each: checks (stolen by the
 * caller) and the domain status. -1 when the resolver cannot start. */
static int s_check_all(const db_result_t *res, const s_record_t *r, json_t **checks_out,
                       const char **status_out, sbuf_t *err)
{
    if (s_skip_dns) {
        /* The dev stack has no DNS for the user's domains: say so on every
         * record rather than pretend they were found. */
        json_t *checks = json_object();
        for (int i = 0; checks && i < N_RECORDS; i++)
            json_object_set_new(checks, r[i].key,
                                json_pack("{s:s, s:s}", "status", "ok", "reason",
                                          "not looked up: domains_skip_dns is on (dev stack)"));
        if (!checks) {
            sbuf_append_str(err, "out of memory");
            return -1;
        }
        *status_out = "verified";
        *checks_out = checks;
        return 0;
    }
    dnscheck_t *dns = dnscheck_new(s_resolver, VERIFY_BUDGET_MS, err);
    if (!dns)
        return -1;
    dnscheck_query_t q[N_RECORDS];
    s_verdict_t v[N_RECORDS];
    for (int i = 0; i < N_RECORDS; i++) {
        q[i] = (dnscheck_query_t){.type = !strcmp(r[i].type, "MX") ? DNSCHECK_MX : DNSCHECK_TXT,
                                  .name = sbuf_data(r[i].host),
                                  .records = sbuf_new(256)};
        v[i] = (s_verdict_t){.status = "error", .reason = sbuf_new(128)};
    }
    dnscheck_run(dns, q, N_RECORDS);
    dnscheck_destroy(&dns);
    json_t *checks = json_object();
    int failed = 0, unsure = 0;
    for (int i = 0; i < N_RECORDS; i++) {
        if (q[i].records && v[i].reason)
            s_judge(&r[i], &q[i], res, &v[i]);
        if (r[i].required && !strcmp(v[i].status, "error"))
            unsure = 1;
        else if (r[i].required && strcmp(v[i].status, "ok"))
            failed = 1;
        json_object_set_new(checks, r[i].key,
                            json_pack("{s:s, s:s?}", "status", v[i].status, "reason",
                                      v[i].reason && sbuf_len(v[i].reason)
                                          ? sbuf_data(v[i].reason)
                                          : NULL));
        sbuf_destroy(&q[i].records);
        sbuf_destroy(&v[i].reason);
    }
    /* A record that is wrong fails the domain; one we could not look up
     * leaves it pending (the DNS may just be slow today). */
    *status_out = failed ? "failed" : unsure ? "pending" : "verified";
    *checks_out = checks;
    return 0;
}

static int s_verify(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "domain");
    if (!s_configured)
        return s_not_configured(req);
    const char *params[] = {id, api_org(req)};
    int status = 500;
    db_result_t *res = s_query(
        req, "SELECT " DOMAIN_COLS " FROM domains WHERE id = $1 AND organization_id = $2", 2,
        params, &status);
    if (!res)
        return status;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        return api_not_found(req, "domain");
    }
    s_record_t r[N_RECORDS] = {0};
    json_t *checks = NULL;
    const char *verdict = NULL;
    char *checks_txt = NULL;
    db_result_t *upd = NULL;
    sbuf_t *err = sbuf_new(128);
    if (!err || s_records_build(res, 0, r) != 0) {
        status = s_oom(req);
        goto done;
    }
    /* DNS first, outside any transaction: it may take the whole budget. */
    if (s_check_all(res, r, &checks, &verdict, err) != 0) {
        log_error("cannot start the resolver: %s", sbuf_data(err));
        status = api_problem(req, 503, "Service Unavailable", "the DNS resolver is unavailable");
        goto done;
    }
    checks_txt = json_dumps(checks, JSON_COMPACT);
    if (!checks_txt) {
        status = s_oom(req);
        goto done;
    }
    if (api_tx_begin(req) != 0) {
        status = api_problem(req, 503, "Service Unavailable", "the database is unavailable");
        goto done;
    }
    const char *uparams[] = {id, api_org(req), checks_txt, verdict};
    upd = s_query(req,
                  "UPDATE domains SET checks = $3::jsonb, status = $4, updated_at = now(), "
                  "verified_at = CASE WHEN $4 = 'verified' THEN now() END "
                  "WHERE id = $1 AND organization_id = $2 RETURNING " DOMAIN_COLS,
                  4, uparams, &status);
    if (!upd || db_result_rows(upd) != 1) {
        api_tx_rollback(req);
        if (upd) /* deleted while we were asking the DNS */
            status = api_not_found(req, "domain");
        goto done;
    }
    api_audit(req, "domain.verify", "domain", id, json_pack("{s:s}", "status", verdict));
    json_t *out = s_domain_json(upd, 0);
    if (!out) {
        api_tx_rollback(req);
        status = s_oom(req);
        goto done;
    }
    if (api_tx_commit(req) != 0) {
        json_decref(out);
        status = api_problem(req, 503, "Service Unavailable", "the database is unavailable");
        goto done;
    }
    status = api_json(req, 200, out);
done:
    s_records_free(r);
    json_decref(checks);
    free(checks_txt);
    sbuf_destroy(&err);
    db_result_free(&upd);
    db_result_free(&res);
    return status;
}

const api_route_t api_routes_domains[] = {
    {"POST", "/domains", s_create, API_SCOPE_FULL, "domains.create", API_IDEMPOTENT},
    {"GET", "/domains", s_list, API_SCOPE_READ, "domains.list", 0},
    {"GET", "/domains/{id}", s_get, API_SCOPE_READ, "domains.get", 0},
    {"DELETE", "/domains/{id}", s_delete, API_SCOPE_FULL, "domains.delete", 0},
    {"POST", "/domains/{id}/verify", s_verify, API_SCOPE_FULL, "domains.verify", 0},
    {0},
};
