/*
 * auth - accounts: POST /auth/register (a new organization and its owner),
 * POST /auth/login (a JWT for e-mail + password), GET /auth/whoami (who the
 * credentials belong to).
 *
 * How it is used: the API node calls auth_configure at start-up; routes.c
 * lists api_routes_auth.
 *
 * What can go wrong, and the security notes:
 * - Login answers the same 401 body for an unknown e-mail and a wrong
 *   password, and verifies a dummy Argon2id hash for an unknown e-mail so
 *   the two take the same time.
 * - Failed logins are limited per account and per client address
 *   (login_max_failures within 15 minutes, login_limit.c); over the limit
 *   the answer is 429 with Retry-After, before any password is checked, so
 *   a locked account cannot be probed either. A successful login clears
 *   the account's counter (not the address's).
 * - Registration is limited per client address (REGISTER_MAX within an
 *   hour, counted like failed logins): it needs no credentials, and each
 *   call hashes a password and makes an organization. Over the limit the
 *   answer is 429 with Retry-After, before any hashing.
 * - Registration creates the organization, the owner and the audit row in
 *   one statement: either all of it exists or none does. A taken e-mail is
 *   a 409 (registration necessarily tells that an address has an account).
 * - The JWT secret is copied here and wiped by auth_shutdown.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "config.h"
#include "db.h"
#include "log.h"
#include "sbuf.h"

#include "auth.h"
#include "authn.h"
#include "login_limit.h"

/* Failed logins are counted in windows of this length. */
#define LOGIN_WINDOW_S 900
/* Registrations (each an Argon2id hash and a new organization, asked with
 * no credentials) allowed per client address in REGISTER_WINDOW_S. Above
 * what a team signs up by hand, far below what a script burns CPU with. */
#define REGISTER_MAX 20
#define REGISTER_WINDOW_S 3600
/* Keys the in-process fallback counter table holds. */
#define LOGIN_LOCAL_KEYS 10000
#define EMAIL_MAX 254
#define PASSWORD_MIN 10
#define PASSWORD_MAX 256
#define ORG_NAME_MAX 200

/* Settings from auth_configure; written before threads start, then read-only. */
static char *s_jwt_secret;        /* HS256 key (wiped by auth_shutdown) */
static char *s_jwt_issuer;        /* iss written and required */
static int64_t s_jwt_ttl_s = 86400; /* token lifetime */
static login_limit_t *s_limit;    /* failed-login counters */
static login_limit_t *s_reg_limit; /* registrations per client address */

/* Argon2id hash of a random password, verified against for unknown e-mails. */
static char *s_dummy_hash;
static pthread_once_t s_dummy_once = PTHREAD_ONCE_INIT;

void auth_shutdown(void)
{
    if (s_jwt_secret) {
        OPENSSL_cleanse(s_jwt_secret, strlen(s_jwt_secret));
        free(s_jwt_secret);
        s_jwt_secret = NULL;
    }
    free(s_jwt_issuer);
    s_jwt_issuer = NULL;
    login_limit_destroy(&s_limit);
    login_limit_destroy(&s_reg_limit);
}

int auth_configure(const config_t *cfg, sbuf_t *err)
{
    auth_shutdown();
    const char *secret = config_str(cfg, "jwt_secret");
    s_jwt_secret = secret && *secret ? strdup(secret) : NULL;
    s_jwt_issuer = strdup(config_str(cfg, "jwt_issuer"));
    s_jwt_ttl_s = config_int(cfg, "jwt_ttl_s");
    /* Login counters in Redis are namespaced by the database this node
     * serves: two deployments (or two test databases) sharing one Redis
     * must not lock each other's users out. The conninfo holds the
     * password, so only a hash of it is used. */
    char ns[64] = "postchi";
    char *conninfo = db_conninfo_from_config(cfg);
    if (conninfo) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        if (EVP_Digest(conninfo, strlen(conninfo), md, &md_len, EVP_sha256(), NULL) == 1) {
            int n = snprintf(ns, sizeof ns, "postchi:");
            for (unsigned i = 0; i < 6; i++)
                n += snprintf(ns + n, sizeof ns - (size_t)n, "%02x", md[i]);
        }
        OPENSSL_cleanse(conninfo, strlen(conninfo));
        free(conninfo);
    }
    s_limit = login_limit_new(config_int(cfg, "login_max_failures"), LOGIN_WINDOW_S,
                              LOGIN_LOCAL_KEYS, ns);
    s_reg_limit = login_limit_new(REGISTER_MAX, REGISTER_WINDOW_S, LOGIN_LOCAL_KEYS, ns);
    if (!s_jwt_secret) {
        if (err)
            sbuf_append_str(err, "setting 'jwt_secret' is required: login tokens are signed with it");
        auth_shutdown();
        return -1;
    }
    if (!s_jwt_issuer || !s_limit || !s_reg_limit) {
        if (err)
            sbuf_append_str(err, "auth_configure: out of memory");
        auth_shutdown();
        return -1;
    }
    return 0;
}

static void s_make_dummy(void)
{
    char pw[33];
    if (authn_random_hex(pw, 16) == 0 && authn_password_hash(pw, &s_dummy_hash) != 0)
        s_dummy_hash = NULL;
    OPENSSL_cleanse(pw, sizeof pw);
}

static int s_unconfigured(api_req_t *req)
{
    return api_problem(req, 503, "Service Unavailable", "authentication is not configured");
}

/* ---- validation ---- */

/* Code points in a valid UTF-8 string. */
static size_t s_utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static int s_has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return 1;
    return 0;
}

/* One domain label: 1..63 bytes of letters, digits, '-' (not at either
 * end) or non-ASCII (internationalized names in UTF-8). */
static int s_label_ok(const char *s, size_t len)
{
    if (len == 0 || len > 63 || s[0] == '-' || s[len - 1] == '-')
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return 1;
}

/* Check an e-mail address and produce its stored form (domain lower-cased;
 * the local part is kept as written). NULL with *out set (caller frees),
 * or the reason it is refused. */
static const char *s_email_normalize(const char *in, char **out)
{
    *out = NULL;
    size_t len = strlen(in);
    if (len > EMAIL_MAX)
        return "must be at most 254 bytes";
    for (const char *p = in; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
            return "must not contain spaces or control characters";
    const char *at = strchr(in, '@');
    if (!at || strchr(at + 1, '@'))
        return "must contain exactly one @";
    size_t local_len = (size_t)(at - in);
    const char *domain = at + 1;
    size_t domain_len = len - local_len - 1;
    if (local_len == 0)
        return "needs a local part before the @";
    if (local_len > 64)
        return "local part must be at most 64 bytes";
    if (in[0] == '.' || at[-1] == '.' || memmem(in, local_len, "..", 2))
        return "local part must not start or end with a dot or contain two dots in a row";
    for (size_t i = 0; i < local_len; i++)
        if (strchr("()<>[]\\,;:\"", in[i]))
            return "local part contains a character that needs quoting";
    if (domain_len == 0 || !strchr(domain, '.'))
        return "domain must contain a dot";
    for (const char *label = domain;;) {
        const char *dot = strchr(label, '.');
        size_t label_len = dot ? (size_t)(dot - label) : strlen(label);
        if (!s_label_ok(label, label_len))
            return "domain is not a valid host name";
        if (!dot)
            break;
        label = dot + 1;
    }
    char *norm = strdup(in);
    if (!norm)
        return "cannot be processed (out of memory)";
    for (char *p = norm + local_len + 1; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    *out = norm;
    return NULL;
}

/* The body as an object, or NULL after adding a field error. */
static json_t *s_body_object(api_req_t *req)
{
    json_t *body = api_body(req);
    if (json_is_object(body))
        return body;
    api_error_add(api_errors(req), "body", "must be a JSON object");
    return NULL;
}

/* ---- POST /auth/register ---- */

static const char s_register_sql[] =
    "WITH o AS (INSERT INTO organizations (name) VALUES ($1) RETURNING id, name), "
    "u AS (INSERT INTO users (organization_id, email, password_hash, role) "
    "      SELECT o.id, $2, $3, 'owner' FROM o RETURNING id, organization_id, email), "
    "a AS (INSERT INTO audit_log (organization_id, actor_type, actor_id, action, "
    "      resource_type, resource_id, detail) "
    "      SELECT u.organization_id, 'user', u.id::text, 'auth.register', 'user', u.id::text, "
    "             jsonb_build_object('email', u.email, 'organization', o.name, "
    "                                'remote_addr', $4::text) FROM u, o) "
    "SELECT u.id, u.email, o.id, o.name FROM u, o";

static int s_register(api_req_t *req)
{
    static const char *const allowed[] = {"email", "password", "organization", NULL};
    json_t *body = s_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, allowed);
    const char *email = NULL, *password = NULL, *org = NULL;
    char *norm = NULL;
    if (api_field_string(req, body, "email", 1, EMAIL_MAX, &email) == 0) {
        const char *why = s_email_normalize(email, &norm);
        if (why)
            api_error_add(api_errors(req), "email", "%s", why);
    }
    if (api_field_string(req, body, "password", 1, PASSWORD_MAX * 4, &password) == 0) {
        size_t n = s_utf8_chars(password);
        if (n < PASSWORD_MIN || n > PASSWORD_MAX)
            api_error_add(api_errors(req), "password", "must be %d to %d characters",
                          PASSWORD_MIN, PASSWORD_MAX);
    }
    if (api_field_string(req, body, "organization", 1, ORG_NAME_MAX * 4, &org) == 0) {
        size_t n = s_utf8_chars(org);
        if (n < 1 || n > ORG_NAME_MAX)
            api_error_add(api_errors(req), "organization", "must be 1 to %d characters",
                          ORG_NAME_MAX);
        else if (s_has_control(org))
            api_error_add(api_errors(req), "organization", "must not contain control characters");
        else if (strspn(org, " ") == strlen(org))
            api_error_add(api_errors(req), "organization", "must not be blank");
    }
    if (api_errors_count(api_errors(req)) > 0) {
        free(norm);
        return api_invalid(req);
    }
    if (!s_jwt_secret || !s_jwt_issuer || !s_reg_limit) {
        free(norm);
        return s_unconfigured(req);
    }
    /* Every attempt that gets this far costs a hash, so each counts,
     * whether or not it then creates anything. */
    const char *addr = api_remote_addr(req);
    if (!addr)
        addr = "";
    kv_t *kv = api_kv(req);
    int64_t wait = login_limit_check(s_reg_limit, kv, "register", addr);
    if (wait > 0) {
        free(norm);
        char retry[32];
        snprintf(retry, sizeof retry, "%lld", (long long)wait);
        api_set_header(req, "Retry-After", retry);
        return api_problem(req, 429, "Too Many Requests",
                           "too many registrations from this address; try again in %s seconds",
                           retry);
    }
    login_limit_fail(s_reg_limit, kv, "register", addr);

    char *hash = NULL;
    if (authn_password_hash(password, &hash) != 0) {
        free(norm);
        return api_problem(req, 500, "Internal Server Error", "cannot hash the password");
    }
    sbuf_t *err = sbuf_new(128);
    const char *params[] = {org, norm, hash, api_remote_addr(req)};
    db_t *db = api_db(req);
    db_result_t *res = db_query(db, s_register_sql, 4, params, err);
    free(hash);
    free(norm);
    int status;
    if (!res) {
        if (strcmp(db_sqlstate(db), "23505") == 0)
            status = api_problem(req, 409, "Conflict", "an account with this email already exists");
        else
            status = api_db_error(req, db_sqlstate(db), err ? sbuf_data(err) : "");
        sbuf_destroy(&err);
        return status;
    }
    sbuf_destroy(&err);
    char *token = NULL;
    const char *user_id = db_result_get(res, 0, 0), *org_id = db_result_get(res, 0, 2);
    if (db_result_rows(res) != 1 ||
        authn_jwt_issue(s_jwt_secret, s_jwt_issuer, s_jwt_ttl_s, user_id, org_id, &token) != 0) {
        db_result_free(&res);
        return api_problem(req, 500, "Internal Server Error", "cannot issue a token");
    }
    json_t *out = json_pack("{s:{s:s,s:s}, s:{s:s,s:s}, s:s}", "user", "id", user_id, "email",
                            db_result_get(res, 0, 1), "organization", "id", org_id, "name",
                            db_result_get(res, 0, 3), "token", token);
    free(token);
    db_result_free(&res);
    if (!out)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    return api_json(req, 201, out);
}

/* ---- POST /auth/login ---- */

/* RFC 3339 UTC with microseconds, like every timestamp the API returns. */
static void s_rfc3339(int64_t t, char *out, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%S.000000Z", &tm);
}

static int s_login(api_req_t *req)
{
    static const char *const allowed[] = {"email", "password", NULL};
    json_t *body = s_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, allowed);
    const char *email = NULL, *password = NULL;
    api_field_string(req, body, "email", 1, EMAIL_MAX, &email);
    api_field_string(req, body, "password", 1, PASSWORD_MAX * 4, &password);
    if (api_errors_count(api_errors(req)) > 0)
        return api_invalid(req);
    if (!s_jwt_secret || !s_jwt_issuer || !s_limit)
        return s_unconfigured(req);

    /* The account is counted by its address in any letter case, as the
     * unique index on lower(email) identifies it. */
    char *account = strdup(email);
    if (!account)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    for (char *p = account; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    const char *addr = api_remote_addr(req);
    if (!addr)
        addr = "";
    kv_t *kv = api_kv(req);
    int64_t wait_account = login_limit_check(s_limit, kv, "account", account);
    int64_t wait_addr = login_limit_check(s_limit, kv, "address", addr);
    if (wait_account > 0 || wait_addr > 0) {
        free(account);
        char retry[32];
        snprintf(retry, sizeof retry, "%lld",
                 (long long)(wait_account > wait_addr ? wait_account : wait_addr));
        api_set_header(req, "Retry-After", retry);
        return api_problem(req, 429, "Too Many Requests",
                           "too many failed logins; try again in %s seconds", retry);
    }

    db_t *db = api_db(req);
    sbuf_t *err = sbuf_new(128);
    const char *params[] = {email};
    db_result_t *res = db_query(
        db, "SELECT id, organization_id, password_hash FROM users WHERE lower(email) = lower($1)",
        1, params, err);
    if (!res) {
        int status = api_db_error(req, db_sqlstate(db), err ? sbuf_data(err) : "");
        sbuf_destroy(&err);
        free(account);
        return status;
    }
    int ok = 0;
    if (db_result_rows(res) == 1) {
        int v = authn_password_verify(db_result_get(res, 0, 2), password);
        if (v < 0)
            log_error("stored password hash is malformed user=%s", db_result_get(res, 0, 0));
        ok = v == 1;
    } else {
        /* Same work as a wrong password, so timing does not tell whether
         * the address has an account. */
        pthread_once(&s_dummy_once, s_make_dummy);
        if (s_dummy_hash)
            (void)authn_password_verify(s_dummy_hash, password);
    }
    if (!ok) {
        login_limit_fail(s_limit, kv, "account", account);
        login_limit_fail(s_limit, kv, "address", addr);
        free(account);
        db_result_free(&res);
        sbuf_destroy(&err);
        return api_problem(req, 401, "Unauthorized", "invalid email or password");
    }
    login_limit_reset(s_limit, kv, "account", account);
    free(account);

    const char *user_id = db_result_get(res, 0, 0);
    const char *upd[] = {user_id};
    if (db_exec(db, "UPDATE users SET last_login_at = now() WHERE id = $1", 1, upd, err) != 0) {
        int status = api_db_error(req, db_sqlstate(db), err ? sbuf_data(err) : "");
        db_result_free(&res);
        sbuf_destroy(&err);
        return status;
    }
    sbuf_destroy(&err);
    /* expires_at is read before the token is made, so it is never later
     * than the token's own exp. */
    int64_t expires = (int64_t)time(NULL) + s_jwt_ttl_s;
    char *token = NULL;
    int issued = authn_jwt_issue(s_jwt_secret, s_jwt_issuer, s_jwt_ttl_s, user_id,
                                 db_result_get(res, 0, 1), &token);
    db_result_free(&res);
    if (issued != 0)
        return api_problem(req, 500, "Internal Server Error", "cannot issue a token");
    char when[40];
    s_rfc3339(expires, when, sizeof when);
    json_t *out = json_pack("{s:s, s:s}", "token", token, "expires_at", when);
    free(token);
    if (!out)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    return api_json(req, 200, out);
}

/* ---- GET /auth/whoami ---- */

static const char *s_scope_name(api_scope_t scope)
{
    switch (scope) {
    case API_SCOPE_READ:
        return "read";
    case API_SCOPE_SEND:
        return "send";
    case API_SCOPE_FULL:
        return "full";
    case API_SCOPE_USER:
        return "user";
    case API_SCOPE_PUBLIC:
        break;
    }
    return "public";
}

static int s_whoami(api_req_t *req)
{
    json_t *out = json_pack("{s:s?, s:s?, s:s?, s:s}", "organization_id", api_org(req),
                            "actor_type", api_actor_type(req), "actor_id", api_actor_id(req),
                            "scope", s_scope_name(api_scope(req)));
    if (!out)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    return api_json(req, 200, out);
}

const api_route_t api_routes_auth[] = {
    {"POST", "/auth/register", s_register, API_SCOPE_PUBLIC, "auth.register", 0},
    {"POST", "/auth/login", s_login, API_SCOPE_PUBLIC, "auth.login", 0},
    {"GET", "/auth/whoami", s_whoami, API_SCOPE_READ, "auth.whoami", 0},
    {0},
};
