/*
 * webhooks - REST resource for webhook endpoints (where Postchi will POST
 * signed event notifications; delivery itself is another module's job).
 *
 *   POST   /webhooks        create, returns the signing secret once  full
 *   GET    /webhooks        list (no secrets)                        read
 *   GET    /webhooks/{id}   one endpoint (no secret)                 read
 *   PATCH  /webhooks/{id}   url, events, enabled                     full
 *   DELETE /webhooks/{id}   remove                                   full
 *
 * How: the URL and the event names are checked here, once, so the delivery
 * side can trust what it reads: an absolute http(s) URL with a host and no
 * userinfo, printable ASCII only, at most 2048 bytes, whose host is no
 * literal non-public address or localhost name (core/netaddr; lifted by
 * webhook_allow_private); events from the fixed
 * list below, at least one, no duplicates, no wildcard. The secret is
 * "whsec_" and 32 random bytes in hex (authn_random_hex: OpenSSL's
 * CSPRNG). Responses are built by PostgreSQL (json_build_object) in the
 * statement that touches the row.
 *
 * What can go wrong: bad fields are a 422 naming each field; an id that is
 * not a uuid, missing, or another organization's is a 404; the random
 * source failing is a 500 (no row written). Changes and their audit rows
 * commit together or not at all.
 *
 * Security: the secret is stored (the sender needs it to sign) but only the
 * create response ever shows it, and it never goes into the audit log.
 * Userinfo in URLs is refused so credentials do not sit in listings and
 * logs. The host check is the first of two against SSRF: names are not
 * resolved here, so the sender must check every address it connects to
 * (netaddr_classify), or DNS rebinding defeats this one. Every query is
 * parameterized and filtered by organization.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "config.h"
#include "db.h"
#include "log.h"
#include "netaddr.h"
#include "sbuf.h"

#include "authn.h"
#include "audience.h"
#include "rest.h"
#include "webhooks.h"

#define URL_MAX_BYTES 2048
#define SECRET_BYTES 32

/* A webhook row w as the API shows it (never the secret). */
/* clang-format off */
#define WEBHOOK_JSON                                                                               \
    "json_build_object('id', w.id, 'url', w.url, 'events', to_json(w.events), "                    \
    "'enabled', w.enabled, 'created_at', " AUD_TS("w.created_at") ", "                             \
    "'updated_at', " AUD_TS("w.updated_at") ")::text"
/* clang-format on */

/* Every event a webhook may subscribe to. */
static const char *const s_events[] = {"message.sent",
                                       "message.delivered",
                                       "message.deferred",
                                       "message.bounced",
                                       "message.failed",
                                       "message.opened",
                                       "message.clicked",
                                       "message.complained",
                                       "contact.unsubscribed",
                                       "flow.run_completed",
                                       NULL};

/* webhook_allow_private: set once by webhooks_configure before the HTTP
 * server starts, read-only after. */
static int s_allow_private;

int webhooks_configure(const config_t *cfg, sbuf_t *err)
{
    (void)err;
    s_allow_private = config_bool(cfg, "webhook_allow_private");
    if (s_allow_private)
        log_warn("webhook_allow_private is on: webhook URLs may point at loopback, private and "
                 "link-local addresses");
    return 0;
}

/* ------------------------------------------------------------- helpers -- */

#define S_PUBLIC_ONLY                                                                              \
    ": webhooks go to public addresses only (the setting webhook_allow_private lifts this)"

/* Each refused class: what the 422 says. */
static const char *const s_refusals[] = {
    [NETADDR_UNSPECIFIED] =
        "must not point at an unspecified address (0.0.0.0/8, ::)" S_PUBLIC_ONLY,
    [NETADDR_LOOPBACK] = "must not point at a loopback address (127.0.0.0/8, ::1)" S_PUBLIC_ONLY,
    [NETADDR_PRIVATE] = "must not point at a private network address (10.0.0.0/8, 172.16.0.0/12, "
                        "192.168.0.0/16, fc00::/7)" S_PUBLIC_ONLY,
    [NETADDR_SHARED] =
        "must not point at a carrier-grade NAT address (100.64.0.0/10)" S_PUBLIC_ONLY,
    [NETADDR_LINK_LOCAL] = "must not point at a link-local address (169.254.0.0/16, "
                           "fe80::/10)" S_PUBLIC_ONLY,
    [NETADDR_MULTICAST] = "must not point at a multicast address" S_PUBLIC_ONLY,
    [NETADDR_BROADCAST] = "must not point at the broadcast address" S_PUBLIC_ONLY,
    [NETADDR_DOCUMENTATION] = "must not point at a documentation address" S_PUBLIC_ONLY,
    [NETADDR_RESERVED] = "must not point at a reserved address" S_PUBLIC_ONLY,
    [NETADDR_LOCAL_NAME] = "must not point at localhost" S_PUBLIC_ONLY,
};

/* Why the host of a URL (len bytes, an IPv6 literal in its brackets) is
 * not one to send to, or NULL. A webhook must not be a way to reach the
 * services around the sender (SSRF): literal addresses that are not public
 * unicast, in any spelling (2130706433 and 0x7f.1 are 127.0.0.1), and
 * localhost names are refused unless the operator allows private
 * destinations. A number that is no address is refused either way, since
 * clients read it differently. Names are not resolved here: the sender
 * checks every address a name resolves to when it connects (netaddr.h). */
static const char *s_host_problem(const char *host, size_t len)
{
    netaddr_class_t cls = netaddr_host_class(host, len);
    if (cls == NETADDR_MALFORMED)
        return *host == '[' ? "has a malformed IPv6 host"
                            : "has a numeric host that is not a valid IPv4 address";
    if (cls == NETADDR_PUBLIC || cls == NETADDR_NAME || s_allow_private)
        return NULL;
    return (size_t)cls < sizeof s_refusals / sizeof s_refusals[0] && s_refusals[cls]
               ? s_refusals[cls]
               : "must not point at an address that is not public" S_PUBLIC_ONLY;
}

/* Why url is not an acceptable endpoint, or NULL when it is. The shape is
 * checked (no DNS): absolute http/https, a host (name, IPv4 or bracketed
 * IPv6) with an optional port 1..65535, no userinfo, printable ASCII
 * without spaces; then the host (s_host_problem). */
static const char *s_url_problem(const char *url)
{
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p <= 0x20 || *p == 0x7f)
            return "must not contain spaces or control characters";
        if (*p >= 0x80)
            return "must be ASCII (percent-encode the path, use punycode for the host)";
        if (*p == '\\')
            return "must not contain a backslash";
    }
    const char *rest;
    if (strncasecmp(url, "https://", 8) == 0)
        rest = url + 8;
    else if (strncasecmp(url, "http://", 7) == 0)
        rest = url + 7;
    else
        return "must be an absolute http:// or https:// URL";
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen))
        return "must not contain a user name or password";
    if (alen == 0)
        return "must have a host";
    const char *host = rest, *end = rest + alen;
    const char *port = NULL, *hend = NULL;
    if (*host == '[') {
        const char *close = memchr(host, ']', alen);
        if (!close || close == host + 1)
            return "has a malformed IPv6 host";
        for (const char *p = host + 1; p < close; p++)
            if (!strchr("0123456789abcdefABCDEF:.", *p))
                return "has a malformed IPv6 host";
        hend = close + 1;
        if (close + 1 < end) {
            if (close[1] != ':')
                return "has a malformed IPv6 host";
            port = close + 2;
        }
    } else {
        const char *colon = memchr(host, ':', alen);
        hend = colon ? colon : end;
        if (hend == host)
            return "must have a host";
        for (const char *p = host; p < hend; p++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._", *p))
                return "has a host with characters a host name cannot have";
        if (colon)
            port = colon + 1;
    }
    if (port) {
        long v = 0;
        if (port == end || end - port > 5)
            return "has a bad port (1-65535)";
        for (const char *p = port; p < end; p++) {
            if (*p < '0' || *p > '9')
                return "has a bad port (1-65535)";
            v = v * 10 + (*p - '0');
        }
        if (v < 1 || v > 65535)
            return "has a bad port (1-65535)";
    }
    return s_host_problem(host, (size_t)(hend - host));
}

/* Validate the url field; sets *out when valid. */
static void s_field_url(api_req_t *req, json_t *body, int required, const char **out)
{
    *out = NULL;
    const char *url = NULL;
    if (api_field_string(req, body, "url", required, URL_MAX_BYTES, &url) != 0)
        return;
    const char *why = s_url_problem(url);
    if (why) {
        api_error_add(api_errors(req), "url", "%s", why);
        return;
    }
    *out = url;
}

/* Validate the events field; sets *out to a new JSON array of the names
 * (caller decrefs) when valid. */
static void s_field_events(api_req_t *req, json_t *body, int required, json_t **out)
{
    *out = NULL;
    json_t *events = json_object_get(body, "events");
    if (!events) {
        if (required)
            api_error_add(api_errors(req), "events", "is required");
        return;
    }
    if (!json_is_array(events) || json_array_size(events) == 0) {
        api_error_add(api_errors(req), "events", "must be a non-empty array of event names");
        return;
    }
    size_t bad = 0, i;
    json_t *ev;
    unsigned seen = 0;
    json_array_foreach(events, i, ev)
    {
        const char *name = json_string_value(ev);
        size_t k = 0;
        while (name && s_events[k] && strcmp(s_events[k], name) != 0)
            k++;
        if (!name || !s_events[k]) {
            if (name && strcmp(name, "*") == 0)
                api_error_add(api_errors(req), "events", "\"*\" is not allowed: list the events");
            else
                api_error_add(api_errors(req), "events",
                              "item %zu is not a known event (message.sent, message.delivered, "
                              "message.deferred, message.bounced, message.failed, "
                              "message.opened, message.clicked, message.complained, "
                              "contact.unsubscribed, flow.run_completed)",
                              i);
            bad++;
        } else if (seen & (1u << k)) {
            api_error_add(api_errors(req), "events", "\"%s\" is listed twice", s_events[k]);
            bad++;
        } else {
            seen |= 1u << k;
        }
    }
    if (!bad)
        *out = json_incref(events);
}

/* Read and check url, events and enabled (required on create, optional on
 * update: absent ones stay NULL / -1). *events is a new reference. 0, or -1
 * after adding field errors. */
static int s_fields(api_req_t *req, int create, const char **url, json_t **events, int *enabled)
{
    static const char *const allowed[] = {"url", "events", "enabled", NULL};
    *url = NULL;
    *events = NULL;
    *enabled = create ? 1 : -1;
    json_t *body = aud_body_object(req);
    if (!body)
        return -1;
    api_field_only(req, body, allowed);
    s_field_url(req, body, create, url);
    s_field_events(req, body, create, events);
    if (api_field_bool(req, body, "enabled", 0, enabled) != 0)
        *enabled = create ? 1 : -1;
    if (api_errors_count(api_errors(req))) {
        json_decref(*events);
        *events = NULL;
        return -1;
    }
    return 0;
}

/* "whsec_" + SECRET_BYTES random bytes in hex into out (size >= 6 + 2n + 1).
 * 0, or -1 when the CSPRNG fails. */
static int s_secret(char *out, size_t size)
{
    if (size < 6 + 2 * SECRET_BYTES + 1)
        return -1;
    memcpy(out, "whsec_", 6);
    return authn_random_hex(out + 6, SECRET_BYTES);
}

/* Writes return WEBHOOK_JSON and w.id; the audit detail is what the
 * request set (never the secret). */
static const aud_write_t s_created = AUD_WRITE_JSON("webhook", "webhook.created", 201, NULL, NULL);
static const aud_write_t s_updated = AUD_WRITE_JSON("webhook", "webhook.updated", 200, NULL, NULL);
static const aud_write_t s_deleted = AUD_WRITE_JSON("webhook", "webhook.deleted", 204, NULL, NULL);

/* ---------------------------------------------------------------- routes -- */

static int s_create(api_req_t *req)
{
    const char *url;
    json_t *events;
    int enabled;
    if (s_fields(req, 1, &url, &events, &enabled) != 0)
        return api_invalid(req);
    char secret[6 + 2 * SECRET_BYTES + 1];
    char *events_text = json_dumps(events, JSON_COMPACT);
    if (!events_text || s_secret(secret, sizeof secret) != 0) {
        free(events_text);
        json_decref(events);
        log_error("cannot generate a webhook secret");
        return api_problem(req, 500, "Internal Server Error", "cannot generate a secret");
    }
    const char *sql = "INSERT INTO webhooks AS w (organization_id, url, events, secret, enabled) "
                      "VALUES ($1, $2, ARRAY(SELECT jsonb_array_elements_text($3::jsonb)), $4, "
                      "$5::boolean) RETURNING " WEBHOOK_JSON ", w.id";
    const char *params[] = {api_org(req), url, events_text, secret, enabled ? "true" : "false"};
    json_t *detail = json_pack("{s:s, s:O}", "url", url, "events", events);
    json_t *extra = json_pack("{s:s}", "secret", secret);
    int status = aud_write(req, &s_created, sql, 5, params, detail, extra);
    memset(secret, 0, sizeof secret);
    free(events_text);
    json_decref(events);
    return status;
}

static int s_list(api_req_t *req)
{
    return aud_page_rows(req, AUD_ROWS(WEBHOOK_JSON, "webhooks w", "w"));
}

static int s_get(api_req_t *req)
{
    return aud_get_id(req,
                      "SELECT " WEBHOOK_JSON " FROM webhooks w "
                      "WHERE w.organization_id = $1 AND w.id = $2",
                      "webhook", aud_row_item);
}

static int s_patch(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "webhook");
    const char *url;
    json_t *events;
    int enabled;
    if (s_fields(req, 0, &url, &events, &enabled) != 0)
        return api_invalid(req);
    char *events_text = events ? json_dumps(events, JSON_COMPACT) : NULL;
    const char *sql = "UPDATE webhooks w SET url = coalesce($3, w.url), "
                      "events = CASE WHEN $4::jsonb IS NULL THEN w.events "
                      "ELSE ARRAY(SELECT jsonb_array_elements_text($4::jsonb)) END, "
                      "enabled = coalesce($5::boolean, w.enabled), updated_at = now() "
                      "WHERE w.id = $1 AND w.organization_id = $2 RETURNING " WEBHOOK_JSON ", w.id";
    const char *params[] = {id, api_org(req), url, events_text,
                            enabled < 0 ? NULL
                            : enabled   ? "true"
                                        : "false"};
    json_t *detail = json_object();
    if (url)
        json_object_set_new(detail, "url", json_string(url));
    if (events)
        json_object_set(detail, "events", events);
    if (enabled >= 0)
        json_object_set_new(detail, "enabled", json_boolean(enabled));
    int status = aud_write(req, &s_updated, sql, 5, params, detail, NULL);
    free(events_text);
    json_decref(events);
    return status;
}

static int s_delete(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "webhook");
    const char *sql = "DELETE FROM webhooks w WHERE w.id = $1 AND w.organization_id = $2 "
                      "RETURNING " WEBHOOK_JSON ", w.id";
    const char *params[] = {id, api_org(req)};
    return aud_write(req, &s_deleted, sql, 2, params, NULL, NULL);
}

const api_route_t api_routes_webhooks[] = {
    {"POST", "/webhooks", s_create, API_SCOPE_FULL, "webhooks.create", API_IDEMPOTENT},
    {"GET", "/webhooks", s_list, API_SCOPE_READ, "webhooks.list", 0},
    {"GET", "/webhooks/{id}", s_get, API_SCOPE_READ, "webhooks.get", 0},
    {"PATCH", "/webhooks/{id}", s_patch, API_SCOPE_FULL, "webhooks.update", 0},
    {"DELETE", "/webhooks/{id}", s_delete, API_SCOPE_FULL, "webhooks.delete", 0},
    {0},
};
