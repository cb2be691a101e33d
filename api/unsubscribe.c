/*
 * unsubscribe - the public end of List-Unsubscribe (RFC 2369, RFC 8058):
 *
 *   GET  /api/v1/u/{token}   a small HTML page naming the address, with a
 *                            button that POSTs back; never changes anything
 *                            (mail scanners and link previews follow GETs)
 *   POST /api/v1/u/{token}   unsubscribe: RFC 8058 one-click (a mailbox
 *                            provider POSTs "List-Unsubscribe=One-Click") or
 *                            the page's button; 200 with a confirmation page,
 *                            also when it was done before
 *
 * No credentials: the token (core/unsub_token.h) is the authority, and it
 * names one message row; the organization, contact and address all come
 * from that row, never from the request. The body is not read beyond the
 * framework's bound (API_RAW_BODY: any content type, form-encoded or
 * multipart alike): the POST itself is the request.
 *
 * What can go wrong: a forged, mangled or unknown token is a 404 problem
 * and nothing is written; a database failure is a 503 (nothing written, the
 * sender's provider retries one-click POSTs). The address shown is HTML-
 * escaped, and the page forbids scripts, frames and outside resources.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "log.h"
#include "rest.h"
#include "sbuf.h"
#include "secretbox.h"
#include "unsub_token.h"

int unsubscribe_configure(const config_t *cfg, sbuf_t *err);

static struct {
    unsigned char key[UNSUB_TOKEN_KEY_LEN]; /* secret_key: checks tokens */
    int have_key;                           /* it parsed */
} U;

int unsubscribe_configure(const config_t *cfg, sbuf_t *err)
{
    /* The links the workers write start with public_url: refuse a bad one
     * here too, so a misconfigured node fails at start, not in a mailbox. */
    char *base = unsub_token_base_url(cfg, err);
    if (!base)
        return -1;
    free(base);
    U.have_key = secretbox_key_parse(config_str(cfg, "secret_key"), U.key) == 0;
    return 0;
}

static void s_escape(sbuf_t *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': sbuf_append_str(out, "&lt;"); break;
        case '>': sbuf_append_str(out, "&gt;"); break;
        case '&': sbuf_append_str(out, "&amp;"); break;
        case '"': sbuf_append_str(out, "&quot;"); break;
        case '\'': sbuf_append_str(out, "&#39;"); break;
        default: sbuf_append(out, s, 1);
        }
    }
}

/* Answer a page whose body is `before` + escaped address + `after`. */
static int s_page(api_req_t *req, const char *before, const char *address, const char *after)
{
    sbuf_t *b = sbuf_new(1024);
    if (!b)
        return api_problem(req, 503, "Service Unavailable", "out of memory");
    sbuf_append_str(b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                       "<meta name=\"robots\" content=\"noindex\"><title>Unsubscribe</title>"
                       "<style>body{font-family:sans-serif;max-width:32em;margin:4em auto;"
                       "padding:0 1em}button{font-size:1em;padding:.5em 1.5em}</style>"
                       "</head><body><main><h1>Unsubscribe</h1><p>");
    sbuf_append_str(b, before);
    s_escape(b, address);
    sbuf_append_str(b, after);
    sbuf_append_str(b, "</main></body></html>\n");
    api_set_header(req, "Content-Security-Policy",
                   "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                   "frame-ancestors 'none'");
    api_set_header(req, "X-Robots-Tag", "noindex");
    api_set_header(req, "Referrer-Policy", "no-referrer");
    int st = api_text(req, 200, "text/html; charset=utf-8", sbuf_data(b));
    sbuf_destroy(&b);
    return st;
}

static int s_failed(api_req_t *req, unsub_result_t rc, sbuf_t *err)
{
    if (rc == UNSUB_ERROR) {
        char safe[256];
        log_error("unsubscribe: database failed: %s",
                  log_printable(safe, sizeof safe, sbuf_data(err), sbuf_len(err)));
        return api_problem(req, 503, "Service Unavailable",
                           "the request cannot be handled now; try again shortly");
    }
    return api_not_found(req, "unsubscribe link");
}

/* ---- GET /u/{token} ---- */

static int s_get(api_req_t *req)
{
    if (!U.have_key)
        return api_not_found(req, "unsubscribe link");
    sbuf_t *email = sbuf_new(128), *err = sbuf_new(64);
    int subscribed = 0, st;
    unsub_result_t rc = email && err ? unsub_token_lookup(api_db(req), U.key,
                                                          api_param(req, "token"), email,
                                                          &subscribed, err)
                                     : UNSUB_ERROR;
    if (rc != UNSUB_DONE)
        st = s_failed(req, rc, err ? err : email);
    else if (subscribed)
        st = s_page(req, "Stop marketing mail from this sender to <strong>", sbuf_data(email),
                    "</strong>?</p><form method=\"post\" action=\"\"><input type=\"hidden\" "
                    "name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">"
                    "Unsubscribe</button></form>");
    else
        st = s_page(req, "<strong>", sbuf_data(email),
                    "</strong> is already unsubscribed from this sender's marketing mail.</p>");
    sbuf_destroy(&email);
    sbuf_destroy(&err);
    return st;
}

/* ---- POST /u/{token} ---- */

static int s_post(api_req_t *req)
{
    if (!U.have_key)
        return api_not_found(req, "unsubscribe link");
    sbuf_t *email = sbuf_new(128), *err = sbuf_new(64);
    char org[40] = "";
    long long event_id = 0;
    int st;
    unsub_result_t rc = email && err ? unsub_token_apply(api_db(req), U.key,
                                                         api_param(req, "token"), "https",
                                                         api_remote_addr(req), email, org,
                                                         &event_id, err)
                                     : UNSUB_ERROR;
    if (rc != UNSUB_DONE) {
        st = s_failed(req, rc, err ? err : email);
    } else {
        /* The events row is committed: announce it (the sweeper re-drives
         * it if this is lost). */
        if (event_id > 0) {
            char target[64];
            snprintf(target, sizeof target, "tenant/%s", org);
            api_mesh_send(req, target, "unsubscribed",
                          json_pack("{s:I}", "event_id", (json_int_t)event_id));
        }
        st = s_page(req, "<strong>", sbuf_data(email),
                    "</strong> is unsubscribed: this sender will send it no more marketing "
                    "mail.</p>");
    }
    sbuf_destroy(&email);
    sbuf_destroy(&err);
    return st;
}

const api_route_t api_routes_unsubscribe[] = {
    {"GET", "/u/{token}", s_get, API_SCOPE_PUBLIC, "unsubscribe.page", API_RAW_BODY},
    {"POST", "/u/{token}", s_post, API_SCOPE_PUBLIC, "unsubscribe.post", API_RAW_BODY},
    {0},
};
