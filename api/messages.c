/*
 * messages - the send API and the outbox (ops/migrations/003_messages.sql).
 *
 *   POST   /messages               send to addresses, a list or a segment   send
 *   GET    /messages               list, filters status/recipient/tag/...   read
 *   GET    /messages/{id}          one recipient's message and its events   read
 *   DELETE /messages/{id}          cancel while scheduled (else 409)        full
 *   GET    /messages/batches/{id}  a bulk send's progress by status         read
 *
 * How: a send is validated whole (every field error at once), the from
 * domain must be one of the organization's verified domains, a template is
 * rendered now (core/tmpl) so the stored body is exactly what is sent, and
 * then one statement writes every row: one messages row per envelope
 * recipient (to, cc and bcc; cc shows in every copy's header, bcc in none),
 * the attachments once per send, and an event per row; the audit row joins
 * it in the same transaction. Suppressed recipients (an unexpired
 * suppression, or a contact that unsubscribed, bounced or complained) get a
 * row with status 'suppressed' and a 'suppressed' event, never a delivery.
 * A bulk send (to_list / to_segment) is written in steps of bulk_chunk
 * members (messages_expand): the batch and its first step before the 202,
 * the rest by the tenant actor, one transaction per step with the cursor,
 * so no transaction grows with the list and delivery starts at once; the
 * batch's status says "expanding" until the last step. Only after COMMIT
 * does the API answer 202 and wake the mailer
 * actors (mailer/<recipient_domain>): the outbox rule, so a message is never
 * announced before it exists, and a lost wake-up only delays it (mailers
 * scan their queue).
 *
 * What can go wrong: every bad field is a 422 naming it ("to[2]",
 * "attachments[0].content", "headers.X-Thing"); CR or LF in anything that
 * becomes a header (subject, names, header values) is refused here, so it
 * is never written; an unverified from domain is a 422 on "from.email"; a
 * strict template with a missing variable is a 422 on "variables"; a
 * message over MESSAGE_MAX_BYTES is a 413. A failed statement rolls the
 * whole send back: nothing is queued.
 *
 * Security: every statement is parameterized and filtered by the caller's
 * organization (another organization's message, batch, list, segment or
 * template is not found); a segment's rule compiles to bound parameters
 * only (core/rule.h) and runs under a statement timeout.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "db.h"
#include "email_addr.h"
#include "log.h"
#include "mime.h"
#include "rule.h"
#include "sbuf.h"
#include "tmpl.h"

#include "audience.h"
#include "config.h"
#include "mailer_shard.h"
#include "messages.h"
#include "rest.h"

/* max_message_bytes (25 MB unless configured), read at start-up. */
static size_t s_max_message_bytes = 25 * 1024 * 1024;
static int s_bulk_chunk = 5000; /* bulk_chunk: recipients per expansion step */
#define MESSAGE_MAX_BYTES s_max_message_bytes

int messages_configure(const config_t *cfg, sbuf_t *err);

int messages_configure(const config_t *cfg, sbuf_t *err)
{
    (void)err;
    s_max_message_bytes = (size_t)config_int(cfg, "max_message_bytes");
    s_bulk_chunk = (int)config_int(cfg, "bulk_chunk");
    return 0;
}
#define RECIPIENTS_MAX 50     /* to + cc + bcc of one send, after de-duplication */
#define REPLY_TO_MAX 10
#define SUBJECT_MAX 998       /* one header line's worth */
#define NAME_MAX_BYTES 200    /* display names */
#define HEADERS_MAX 50
#define HEADER_NAME_MAX 76
#define HEADER_VALUE_MAX 998
#define ATTACHMENTS_MAX 100
#define FILENAME_MAX_BYTES 255
#define CONTENT_TYPE_MAX 255
#define TAGS_MAX 20
#define TAG_MAX_BYTES 100
#define METADATA_MAX_BYTES 8192
#define BULK_TIMEOUT "SET LOCAL statement_timeout = '60s'"

/* Statuses a message row can have, in life order (batch progress keys). */
static const char *const s_statuses[] = {"scheduled", "queued",     "sending",  "sent",
                                         "deferred",  "bounced",    "failed",   "suppressed",
                                         "canceled",  NULL};

/* ------------------------------------------------------------ validators -- */

/* 0 when s[0..len) is strict base64 (RFC 4648 section 4: the alphabet, no
 * whitespace, length a multiple of 4, '=' only as the final padding, and
 * zero bits where the padding discards them) with *out_len the decoded
 * size; -1 otherwise. Strict because a lenient decoder is how two systems
 * come to disagree about an attachment's bytes. */
static int s_b64_check(const char *s, size_t len, size_t *out_len)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (len % 4 != 0)
        return -1;
    size_t pad = 0;
    if (len >= 1 && s[len - 1] == '=')
        pad++;
    if (len >= 2 && s[len - 2] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (!s[i] || !strchr(alphabet, s[i]))
            return -1;
    if (pad) {
        /* The last data character must not carry bits the padding drops. */
        int v = (int)(strchr(alphabet, s[len - pad - 1]) - alphabet);
        if ((pad == 1 && (v & 0x3)) || (pad == 2 && (v & 0xf)))
            return -1;
    }
    *out_len = len / 4 * 3 - pad;
    return 0;
}

/* 1 when name is a header field name (RFC 5322 ftext: printable ASCII
 * but ':'), 1..HEADER_NAME_MAX bytes. */
static int s_header_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > HEADER_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (name[i] < 33 || name[i] > 126 || name[i] == ':')
            return 0;
    return 1;
}

/* 1 when the header is one the mailer writes itself (structure, identity,
 * signatures, trace, unsubscribe): a caller setting it would forge or break
 * the message. */
static int s_header_reserved(const char *name)
{
    static const char *const exact[] = {
        "from",        "to",           "cc",          "bcc",         "subject", "date",
        "message-id",  "mime-version", "dkim-signature", "return-path", "received", "reply-to",
        "sender",      NULL};
    for (int i = 0; exact[i]; i++)
        if (strcasecmp(name, exact[i]) == 0)
            return 1;
    return strncasecmp(name, "content-", 8) == 0 || strncasecmp(name, "list-unsubscribe", 16) == 0;
}

/* 1 when s holds no CR, LF or other control character but HTAB (a header
 * value can fold nothing in: the mailer folds). */
static int s_header_value_ok(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return 0;
    return 1;
}

/* 1 when s is one line: no CR, LF or other control characters. */
static int s_one_line(const char *s)
{
    return aud_no_controls(s, strlen(s));
}

/* ------------------------------------------------------------ the send -- */

/* Everything a validated send needs, then handed to SQL as one JSON. */
typedef struct {
    json_t *doc;           /* the document SQL reads ($2): fields below and more */
    json_t *recipients;    /* [{email, domain, kind, ord}] (borrowed from doc) */
    json_t *seen;          /* lower-cased address -> true, for de-duplication */
    char from_domain[EMAIL_ADDR_MAX + 1]; /* the from address's domain */
    const char *template_id; /* borrowed from the body, or NULL */
    int64_t template_version; /* 0: the current one */
    json_t *variables;     /* borrowed, or NULL */
    const char *list_id;   /* bulk: borrowed, or NULL */
    const char *segment_id; /* bulk: borrowed, or NULL */
    size_t size;           /* bytes so far: subject, bodies, headers, attachments */
} send_t;

static void s_send_clear(send_t *s)
{
    json_decref(s->doc);
    json_decref(s->seen);
    memset(s, 0, sizeof *s);
}

/* ASCII lower-case copy of s into out (size > strlen(s)). */
static void s_lower(const char *s, char *out, size_t size)
{
    size_t i = 0;
    for (; s[i] && i + 1 < size; i++)
        out[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    out[i] = '\0';
}

/* Normalize the address in v (a JSON string) into out; adds a field error
 * naming field and returns -1 when it is not one. */
static int s_address(api_req_t *req, json_t *v, const char *field, char out[EMAIL_ADDR_MAX + 1])
{
    if (!json_is_string(v)) {
        api_error_add(api_errors(req), field, "must be a string holding an email address");
        return -1;
    }
    const char *why = NULL;
    if (email_normalize(json_string_value(v), json_string_length(v), out, EMAIL_ADDR_MAX + 1,
                        &why) != 0) {
        api_error_add(api_errors(req), field, "is not a valid email address: %s",
                      why ? why : "invalid");
        return -1;
    }
    return 0;
}

/* Read an address field that is a string or an array of strings (at most
 * max) into header (a JSON array of normalized addresses); when kind is not
 * NULL, also add each address not seen before to s->recipients. Returns the
 * number read, or -1 after field errors. */
static int s_address_list(api_req_t *req, send_t *s, json_t *body, const char *field, size_t max,
                          const char *kind, json_t *header)
{
    json_t *v = json_object_get(body, field);
    if (!v)
        return 0;
    json_t *one = NULL;
    if (json_is_string(v)) {
        one = json_array();
        json_array_append(one, v);
        v = one;
    } else if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > max) {
        api_error_add(api_errors(req), field,
                      "must be an email address or an array of 1 to %zu of them", max);
        return -1;
    }
    int bad = 0;
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) {
        char name[64], addr[EMAIL_ADDR_MAX + 1], low[EMAIL_ADDR_MAX + 1];
        if (one)
            snprintf(name, sizeof name, "%s", field);
        else
            snprintf(name, sizeof name, "%s[%zu]", field, i);
        if (s_address(req, item, name, addr) != 0) {
            bad = 1;
            continue;
        }
        json_array_append_new(header, json_string(addr));
        if (!kind)
            continue;
        s_lower(addr, low, sizeof low);
        if (json_object_get(s->seen, low))
            continue; /* one copy per envelope recipient */
        json_object_set_new(s->seen, low, json_true());
        const char *at = strrchr(addr, '@');
        char domain[EMAIL_ADDR_MAX + 1];
        s_lower(at + 1, domain, sizeof domain);
        json_array_append_new(s->recipients,
                              json_pack("{s:s, s:s, s:s, s:I}", "email", addr, "domain", domain,
                                        "kind", kind,
                                        "ord", (json_int_t)json_array_size(s->recipients)));
    }
    json_decref(one);
    return bad ? -1 : (int)json_array_size(v);
}

/* from: {"email", "name"?}. */
static void s_from(api_req_t *req, send_t *s, json_t *body)
{
    json_t *from = json_object_get(body, "from");
    if (!from) {
        api_error_add(api_errors(req), "from", "is required");
        return;
    }
    if (!json_is_object(from)) {
        api_error_add(api_errors(req), "from", "must be an object {\"email\", \"name\"}");
        return;
    }
    const char *key;
    json_t *v;
    json_object_foreach(from, key, v) {
        if (strcmp(key, "email") != 0 && strcmp(key, "name") != 0)
            api_error_add(api_errors(req), "from", "unknown field '%.64s'", key);
    }
    char addr[EMAIL_ADDR_MAX + 1];
    json_t *email = json_object_get(from, "email");
    if (!email)
        api_error_add(api_errors(req), "from.email", "is required");
    else if (s_address(req, email, "from.email", addr) == 0) {
        json_object_set_new(s->doc, "from_addr", json_string(addr));
        s_lower(strrchr(addr, '@') + 1, s->from_domain, sizeof s->from_domain);
    }
    json_t *name = json_object_get(from, "name");
    if (name && !json_is_null(name)) {
        if (!json_is_string(name) || json_string_length(name) > NAME_MAX_BYTES)
            api_error_add(api_errors(req), "from.name", "must be a string of at most %d bytes",
                          NAME_MAX_BYTES);
        else if (!s_one_line(json_string_value(name)))
            api_error_add(api_errors(req), "from.name",
                          "must be one line: no CR, LF or other control characters");
        else
            json_object_set(s->doc, "from_name", name);
    }
}

/* headers: {"Name": "value"}. */
static void s_headers(api_req_t *req, send_t *s, json_t *body)
{
    json_t *h = json_object_get(body, "headers");
    if (!h)
        return;
    if (!json_is_object(h) || json_object_size(h) > HEADERS_MAX) {
        api_error_add(api_errors(req), "headers", "must be an object of at most %d headers",
                      HEADERS_MAX);
        return;
    }
    const char *key;
    json_t *v;
    json_t *seen = json_object();
    json_object_foreach(h, key, v) {
        char field[HEADER_NAME_MAX + 16], low[HEADER_NAME_MAX + 1];
        snprintf(field, sizeof field, "headers.%.*s", HEADER_NAME_MAX, key);
        if (!s_header_name_ok(key)) {
            api_error_add(api_errors(req), field,
                          "is not a header name (1 to %d printable ASCII characters, no ':')",
                          HEADER_NAME_MAX);
            continue;
        }
        /* mime refuses more (Resent-*, ...) when it builds the message,
         * long after the 202: ask it now. */
        if (s_header_reserved(key) || !mime_custom_header_ok(key)) {
            api_error_add(api_errors(req), field,
                          "is set by Postchi itself; use the matching field or leave it out");
            continue;
        }
        s_lower(key, low, sizeof low);
        if (json_object_get(seen, low)) {
            api_error_add(api_errors(req), field, "is given twice (names are case-insensitive)");
            continue;
        }
        json_object_set_new(seen, low, json_true());
        if (!json_is_string(v) || json_string_length(v) > HEADER_VALUE_MAX) {
            api_error_add(api_errors(req), field, "must be a string of at most %d bytes",
                          HEADER_VALUE_MAX);
            continue;
        }
        if (!s_header_value_ok(json_string_value(v))) {
            api_error_add(api_errors(req), field,
                          "must not contain CR, LF or other control characters");
            continue;
        }
        s->size += strlen(key) + json_string_length(v) + 4;
    }
    json_decref(seen);
    json_object_set(s->doc, "headers", h);
}

/* attachments: [{filename, content_type, content (base64), content_id?}].
 * The base64 is checked here and decoded by PostgreSQL (decode(..,
 * 'base64') accepts everything the strict check does, identically). */
static void s_attachments(api_req_t *req, send_t *s, json_t *body)
{
    json_t *a = json_object_get(body, "attachments");
    if (!a)
        return;
    if (!json_is_array(a) || json_array_size(a) > ATTACHMENTS_MAX) {
        api_error_add(api_errors(req), "attachments", "must be an array of at most %d items",
                      ATTACHMENTS_MAX);
        return;
    }
    static const char *const keys[] = {"filename", "content_type", "content", "content_id", NULL};
    json_t *out = json_array();
    size_t i;
    json_t *item;
    json_array_foreach(a, i, item) {
        char field[64];
        if (!json_is_object(item)) {
            snprintf(field, sizeof field, "attachments[%zu]", i);
            api_error_add(api_errors(req), field, "must be an object");
            continue;
        }
        const char *key;
        json_t *v;
        json_object_foreach(item, key, v) {
            int known = 0;
            for (int k = 0; keys[k]; k++)
                known |= strcmp(key, keys[k]) == 0;
            if (!known) {
                snprintf(field, sizeof field, "attachments[%zu]", i);
                api_error_add(api_errors(req), field, "unknown field '%.64s'", key);
            }
        }
        const char *val[4] = {NULL, NULL, NULL, NULL};
        size_t max[4] = {FILENAME_MAX_BYTES, CONTENT_TYPE_MAX, 0, 255};
        for (int k = 0; k < 4; k++) {
            snprintf(field, sizeof field, "attachments[%zu].%s", i, keys[k]);
            v = json_object_get(item, keys[k]);
            if (!v || json_is_null(v)) {
                if (k != 3)
                    api_error_add(api_errors(req), field, "is required");
                continue;
            }
            if (!json_is_string(v) || (max[k] && json_string_length(v) > max[k]) ||
                (max[k] && json_string_length(v) == 0)) {
                api_error_add(api_errors(req), field, "must be a string of 1 to %zu bytes",
                              max[k] ? max[k] : (size_t)MESSAGE_MAX_BYTES);
                continue;
            }
            if (k != 2 && !s_one_line(json_string_value(v))) {
                api_error_add(api_errors(req), field,
                              "must not contain CR, LF or other control characters");
                continue;
            }
            val[k] = json_string_value(v);
        }
        /* The mailer builds with core/mime: what it would refuse is refused
         * here, so an accepted send never fails for its shape. */
        if (val[1] && !mime_attachment_type_ok(val[1])) {
            snprintf(field, sizeof field, "attachments[%zu].content_type", i);
            api_error_add(api_errors(req), field,
                          "must be a media type type/subtype with optional ; attribute=value "
                          "parameters (value a token or a \"quoted string\"), such as "
                          "text/csv; charset=utf-8 (at most 255 bytes of printable ASCII, no "
                          "attribute twice; not multipart/* or message/*)");
            val[1] = NULL;
        }
        if (val[3] && !mime_content_id_ok(val[3])) {
            snprintf(field, sizeof field, "attachments[%zu].content_id", i);
            api_error_add(api_errors(req), field,
                          "must be 1 to 200 printable ASCII characters without spaces or any of "
                          "< > \" \\ ( ) , ; : [ ] (reference it as cid:<content_id>)");
            val[3] = NULL;
        }
        size_t decoded = 0;
        if (val[2] && s_b64_check(val[2], json_string_length(json_object_get(item, "content")),
                                  &decoded) != 0) {
            snprintf(field, sizeof field, "attachments[%zu].content", i);
            api_error_add(api_errors(req), field,
                          "is not valid base64 (RFC 4648 alphabet with padding, no whitespace)");
            val[2] = NULL;
        }
        s->size += decoded;
        if (val[0] && val[1] && val[2])
            json_array_append_new(out, json_pack("{s:I, s:s, s:s, s:s?, s:s}", "idx",
                                                 (json_int_t)i, "filename", val[0],
                                                 "content_type", val[1], "content_id", val[3],
                                                 "content", val[2]));
    }
    json_object_set_new(s->doc, "attachments", out);
}

/* Inline images (content_id) live in a multipart/related beside the html
 * that references them: without an html body mime has nothing to put them
 * in. Called once the bodies are known (after rendering for a template);
 * -1 after a field error per inline attachment. */
static int s_inline_needs_html(api_req_t *req, const send_t *s)
{
    json_t *html = json_object_get(s->doc, "html");
    if (json_string_length(html) > 0)
        return 0;
    int bad = 0;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(s->doc, "attachments"), i, a) {
        if (!json_string_value(json_object_get(a, "content_id")))
            continue;
        char field[64];
        snprintf(field, sizeof field, "attachments[%lld].content_id",
                 (long long)json_integer_value(json_object_get(a, "idx")));
        api_error_add(api_errors(req), field,
                      "an inline image needs an html body that references it; without html, "
                      "leave content_id out to attach it");
        bad = 1;
    }
    return bad ? -1 : 0;
}

/* tags: [string], metadata: {}. */
static void s_tags_metadata(api_req_t *req, send_t *s, json_t *body)
{
    json_t *t = json_object_get(body, "tags");
    if (t) {
        if (!json_is_array(t) || json_array_size(t) > TAGS_MAX) {
            api_error_add(api_errors(req), "tags", "must be an array of at most %d strings",
                          TAGS_MAX);
        } else {
            size_t i;
            json_t *v;
            json_array_foreach(t, i, v) {
                if (!json_is_string(v) || json_string_length(v) == 0 ||
                    json_string_length(v) > TAG_MAX_BYTES || !s_one_line(json_string_value(v))) {
                    char field[32];
                    snprintf(field, sizeof field, "tags[%zu]", i);
                    api_error_add(api_errors(req), field,
                                  "must be a string of 1 to %d bytes without control characters",
                                  TAG_MAX_BYTES);
                }
            }
            json_object_set(s->doc, "tags", t);
        }
    }
    json_t *m = json_object_get(body, "metadata");
    if (m) {
        char *text = json_is_object(m) ? json_dumps(m, JSON_COMPACT) : NULL;
        if (!text || strlen(text) > METADATA_MAX_BYTES)
            api_error_add(api_errors(req), "metadata", "must be an object of at most %d bytes",
                          METADATA_MAX_BYTES);
        else
            json_object_set(s->doc, "metadata", m);
        free(text);
    }
}

/* Content without a template: subject, html and/or text. */
static void s_content(api_req_t *req, send_t *s, json_t *body)
{
    const char *subject = NULL, *html = NULL, *text = NULL;
    if (api_field_string(req, body, "subject", 1, SUBJECT_MAX, &subject) == 0) {
        if (!s_one_line(subject))
            api_error_add(api_errors(req), "subject",
                          "must be one line: no CR, LF or other control characters");
        else
            json_object_set_new(s->doc, "subject", json_string(subject));
    }
    int h = api_field_string(req, body, "html", 0, MESSAGE_MAX_BYTES, &html);
    int t = api_field_string(req, body, "text", 0, MESSAGE_MAX_BYTES, &text);
    if (h == 1 && t == 1)
        api_error_add(api_errors(req), "html", "html or text (or both) is required");
    if (h == 0)
        json_object_set_new(s->doc, "html", json_string(html));
    if (t == 0)
        json_object_set_new(s->doc, "text", json_string(text));
    s->size += (subject ? strlen(subject) : 0) + (html ? strlen(html) : 0) +
               (text ? strlen(text) : 0);
}

/* Template fields: template_id, template_version, variables. */
static void s_template_fields(api_req_t *req, send_t *s, json_t *body)
{
    static const char *const content[] = {"subject", "html", "text", NULL};
    for (int i = 0; content[i]; i++)
        if (json_object_get(body, content[i]))
            api_error_add(api_errors(req), content[i],
                          "must not be given with template_id (the template supplies it)");
    if (api_field_string(req, body, "template_id", 1, 64, &s->template_id) == 0 &&
        !api_is_uuid(s->template_id)) {
        api_error_add(api_errors(req), "template_id", "must be a template id (uuid)");
        s->template_id = NULL;
    }
    if (api_field_int(req, body, "template_version", 0, 1, INT32_MAX, &s->template_version) != 0)
        s->template_version = 0;
    s->variables = json_object_get(body, "variables");
    if (s->variables && !json_is_object(s->variables)) {
        api_error_add(api_errors(req), "variables", "must be an object");
        s->variables = NULL;
    }
}

/* send_at: RFC 3339 -> microseconds text in the document. */
static void s_send_at(api_req_t *req, send_t *s, json_t *body)
{
    const char *at = NULL;
    if (api_field_string(req, body, "send_at", 0, 64, &at) != 0)
        return;
    long long us = 0;
    if (rule_parse_time(at, strlen(at), 0, &us) != 0) {
        api_error_add(api_errors(req), "send_at",
                      "must be an RFC 3339 timestamp such as 2030-01-01T09:00:00Z");
        return;
    }
    json_object_set_new(s->doc, "send_at_us", json_integer(us));
}

/* Recipients: to/cc/bcc, or to_list / to_segment. */
static void s_recipients(api_req_t *req, send_t *s, json_t *body)
{
    int bulk = 0;
    static const char *const bulk_fields[] = {"to_list", "to_segment", NULL};
    for (int i = 0; bulk_fields[i]; i++) {
        const char *id = NULL;
        if (api_field_string(req, body, bulk_fields[i], 0, 64, &id) != 0)
            continue;
        if (!api_is_uuid(id)) {
            api_error_add(api_errors(req), bulk_fields[i], "must be an id (uuid)");
            continue;
        }
        if (bulk++) {
            api_error_add(api_errors(req), bulk_fields[i], "only one of to_list and to_segment");
            continue;
        }
        *(i == 0 ? &s->list_id : &s->segment_id) = id;
    }
    if (bulk || json_object_get(body, "to_list") || json_object_get(body, "to_segment")) {
        static const char *const single[] = {"to", "cc", "bcc", NULL};
        for (int i = 0; single[i]; i++)
            if (json_object_get(body, single[i]))
                api_error_add(api_errors(req), single[i],
                              "must not be given with to_list or to_segment");
        return;
    }
    json_t *to = json_array(), *cc = json_array(), *bcc = json_array();
    json_object_set_new(s->doc, "to", to);
    json_object_set_new(s->doc, "cc", cc);
    if (!json_object_get(body, "to"))
        api_error_add(api_errors(req), "to", "is required (or to_list, or to_segment)");
    s_address_list(req, s, body, "to", RECIPIENTS_MAX, "to", to);
    s_address_list(req, s, body, "cc", RECIPIENTS_MAX, "cc", cc);
    s_address_list(req, s, body, "bcc", RECIPIENTS_MAX, "bcc", bcc);
    json_decref(bcc);
    if (json_array_size(s->recipients) > RECIPIENTS_MAX)
        api_error_add(api_errors(req), "to",
                      "at most %d distinct recipients in to, cc and bcc together (use a list "
                      "for more)",
                      RECIPIENTS_MAX);
}

/* --------------------------------------------------------- database side -- */

/* Check the from domain is one of the organization's verified domains.
 * 0 when it is; -1 after adding the field error or answering (*rc). */
static int s_check_domain(api_req_t *req, const send_t *s, int *rc)
{
    const char *p[] = {api_org(req), s->from_domain};
    db_result_t *res = aud_query(
        req, 0, "SELECT status FROM domains WHERE organization_id = $1 AND name = $2", 2, p, rc);
    if (!res)
        return -1;
    const char *status = db_result_rows(res) == 1 ? db_result_get(res, 0, 0) : NULL;
    int ok = status && strcmp(status, "verified") == 0;
    if (!status)
        api_error_add(api_errors(req), "from.email",
                      "the domain %s is not a domain of this organization: add it with POST "
                      "/domains and verify it",
                      s->from_domain);
    else if (!ok)
        api_error_add(api_errors(req), "from.email",
                      "the domain %s is not verified (status %s): publish its DNS records and "
                      "POST /domains/{id}/verify",
                      s->from_domain, status);
    db_result_free(&res);
    return ok ? 0 : -1;
}

/* Load and render the template into the document (subject, html, text,
 * template_id, template_version, variables); warnings go to *warnings.
 * 0, or -1 after field errors or an answer (*rc set). */
static int s_render(api_req_t *req, send_t *s, json_t *warnings, int *rc)
{
    char vbuf[24];
    snprintf(vbuf, sizeof vbuf, "%lld", (long long)s->template_version);
    const char *p[] = {s->template_id, api_org(req), s->template_version ? vbuf : NULL};
    db_result_t *res = aud_query(req, 0,
                                 "SELECT t.strict, v.version, v.subject, v.html, v.text "
                                 "FROM templates t JOIN template_versions v "
                                 "ON v.template_id = t.id "
                                 "AND v.version = coalesce($3::int, t.current_version) "
                                 "WHERE t.id = $1 AND t.organization_id = $2",
                                 3, p, rc);
    if (!res)
        return -1;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        api_error_add(api_errors(req), s->template_version ? "template_version" : "template_id",
                      "no such template%s in this organization",
                      s->template_version ? " version" : "");
        return -1;
    }
    static const char *const parts[] = {"subject", "html", "text"};
    int strict = strcmp(db_result_get(res, 0, 0), "t") == 0;
    json_t *root = s->variables ? json_incref(s->variables) : json_object();
    tmpl_warnings_t *warn = tmpl_warnings_new();
    sbuf_t *buf = sbuf_new(0);
    int failed = 0;
    for (int i = 0; i < 3 && warn && buf; i++) {
        const char *src = db_result_get(res, 0, 2 + i);
        tmpl_error_t err;
        tmpl_t *t = tmpl_parse(src, strlen(src), &err);
        if (!t) {
            log_error("stored template %s does not parse: %d:%d: %s", parts[i], err.line,
                      err.column, err.message);
            api_error_add(api_errors(req), "template_id", "the stored %s no longer parses",
                          parts[i]);
            failed = 1;
            continue;
        }
        sbuf_reset(buf);
        tmpl_warnings_reset(warn);
        int flags = (strict ? TMPL_STRICT : 0) | (i == 1 ? 0 : TMPL_TEXT);
        if (tmpl_render(t, root, flags, buf, warn, &err) != 0) {
            api_error_add(api_errors(req), "variables", "%s line %d, column %d: %s", parts[i],
                          err.line, err.column, err.message);
            failed = 1;
        } else if (i == 0 && !aud_no_controls(sbuf_data(buf), sbuf_len(buf))) {
            api_error_add(api_errors(req), "variables",
                          "the rendered subject contains CR, LF or other control characters");
            failed = 1;
        } else if (i == 0 && sbuf_len(buf) > SUBJECT_MAX) {
            api_error_add(api_errors(req), "variables",
                          "the rendered subject is %zu bytes; at most %d (as a given subject)",
                          sbuf_len(buf), SUBJECT_MAX);
            failed = 1;
        } else {
            if (i == 0 || sbuf_len(buf) > 0)
                json_object_set_new(s->doc, parts[i], json_stringn(sbuf_data(buf), sbuf_len(buf)));
            s->size += sbuf_len(buf);
            for (size_t w = 0; w < tmpl_warnings_count(warn); w++) {
                int line = 0, column = 0;
                const char *msg = tmpl_warnings_get(warn, w, &line, &column);
                json_array_append_new(warnings,
                                      json_pack("{s:s, s:i, s:i, s:s}", "part", parts[i], "line",
                                                line, "column", column, "message", msg));
            }
        }
        tmpl_destroy(&t);
    }
    if (!warn || !buf) {
        failed = 1;
        *rc = api_problem(req, 500, "Internal Server Error", "out of memory");
    } else if (!failed && !json_object_get(s->doc, "html") && !json_object_get(s->doc, "text")) {
        api_error_add(api_errors(req), "template_id", "the template has neither html nor text");
        failed = 1;
    }
    if (!failed) {
        json_object_set_new(s->doc, "template_id", json_string(s->template_id));
        json_object_set_new(s->doc, "template_version",
                            json_integer(strtoll(db_result_get(res, 0, 1), NULL, 10)));
        json_object_set(s->doc, "variables", root);
    }
    json_decref(root);
    tmpl_warnings_destroy(&warn);
    sbuf_destroy(&buf);
    db_result_free(&res);
    return failed ? -1 : 0;
}

/* The columns every insert writes, from the document p.j (and the send's
 * status expression, which each statement puts first). */
/* clang-format off */
#define MSG_INSERT_COLS                                                                            \
    "id, organization_id, send_id, batch_id, contact_id, status, from_addr, from_name, reply_to, " \
    "recipient, recipient_domain, recipient_type, to_addrs, cc_addrs, subject, html, text, "       \
    "template_id, template_version, variables, headers, tags, metadata, size_bytes, send_at, "     \
    "next_attempt_at, message_id"
#define MSG_INSERT_DOC                                                                             \
    "p.j->>'from_addr', p.j->>'from_name', "                                                       \
    "ARRAY(SELECT jsonb_array_elements_text(coalesce(p.j->'reply_to', '[]'))), "                   \
    "r.email, r.domain, r.kind, "                                                                  \
    "ARRAY(SELECT jsonb_array_elements_text(coalesce(p.j->'to', jsonb_build_array(r.email)))), "  \
    "ARRAY(SELECT jsonb_array_elements_text(coalesce(p.j->'cc', '[]'))), "                         \
    "coalesce(p.j->>'subject', ''), NULL, NULL, (p.j->>'template_id')::uuid, "                     \
    "(p.j->>'template_version')::int, p.j->'variables', coalesce(p.j->'headers', '{}'), "          \
    "ARRAY(SELECT jsonb_array_elements_text(coalesce(p.j->'tags', '[]'))), "                       \
    "coalesce(p.j->'metadata', '{}'), (p.j->>'size')::bigint, p.send_at, "                         \
    "greatest(now(), coalesce(p.send_at, now())), '<' || r.id || '@' || $3 || '>'"
/* The document, its send id and send time: the first CTE of a send. */
#define MSG_DOC_CTE                                                                                \
    "p AS (SELECT $2::jsonb AS j, gen_random_uuid() AS send_id, "                                  \
    "'epoch'::timestamptz + ($2::jsonb->>'send_at_us')::bigint * interval '1 microsecond' "        \
    "AS send_at)"
/* The bodies, once per send (message_contents); the rows carry none. */
#define MSG_CONTENT_CTE                                                                            \
    "ct AS (INSERT INTO message_contents (send_id, organization_id, html, text) "                  \
    "SELECT p.send_id, $1, p.j->>'html', p.j->>'text' FROM p)"
/* The attachments, once per send. */
#define MSG_ATTACHMENTS_CTE                                                                        \
    "a AS (INSERT INTO message_attachments (organization_id, send_id, idx, filename, "             \
    "content_type, content_id, data) SELECT $1, p.send_id, x.idx, x.filename, "                    \
    "x.content_type, x.content_id, decode(x.content, 'base64') "                                   \
    "FROM p, jsonb_to_recordset(coalesce(p.j->'attachments', '[]')) AS x(idx int, "                \
    "filename text, content_type text, content_id text, content text))"
/* Why a recipient is skipped (NULL: it is not): an unexpired suppression
 * first, then its contact's status. */
#define MSG_SUPPRESSION(email)                                                                     \
    "(SELECT s.reason FROM suppressions s WHERE s.organization_id = $1 "                           \
    "AND lower(s.email) = lower(" email ") "                                                       \
    "AND (s.expires_at IS NULL OR s.expires_at > now()) LIMIT 1)"
#define MSG_REASON(email)                                                                          \
    "coalesce(" MSG_SUPPRESSION(email) ", "                                                        \
    "(SELECT 'contact_' || k.status FROM contacts k WHERE k.organization_id = $1 "                 \
    "AND lower(k.email) = lower(" email ") AND k.status <> 'subscribed' LIMIT 1))"
/* The same for a list or segment member c: the contact is c itself (one
 * contact per address and organization), so its status is read from the
 * row in hand, not looked up again by address (an index probe per member). */
#define MSG_MEMBER_REASON                                                                          \
    "coalesce(" MSG_SUPPRESSION("c.email") ", "                                                    \
    "CASE WHEN c.status <> 'subscribed' THEN 'contact_' || c.status END)"
#define MSG_STATUS                                                                                 \
    "CASE WHEN r.reason IS NOT NULL THEN 'suppressed' WHEN p.send_at > now() THEN 'scheduled' "    \
    "ELSE 'queued' END"
/* One event per written row: its first status, and why. The reason of a
 * suppressed row is looked up again (same snapshot, so the same answer)
 * rather than by joining m back to r: the planner cannot see how many rows
 * the two CTEs hold and a bulk send of 10,000 rows became a 10,000 x
 * 10,000 nested loop (4 s of the send). */
#define MSG_EVENTS                                                                                 \
    "e AS (INSERT INTO message_events (organization_id, message_id, type, detail) "                \
    "SELECT $1, m.id, CASE m.status WHEN 'queued' THEN 'accepted' ELSE m.status END, "             \
    "CASE WHEN m.status = 'suppressed' THEN jsonb_build_object('reason', "                         \
    MSG_REASON("m.recipient") ") "                                                                 \
    "WHEN m.status = 'scheduled' THEN jsonb_build_object('send_at', "                              \
    AUD_TS("m.send_at") ") ELSE '{}'::jsonb END FROM m)"
/* clang-format on */

/* "deliver" {"message_id"} to the mailer that owns the row (its domain and
 * shard), after COMMIT. */
static void s_deliver(api_req_t *req, const char *domain, const char *id)
{
    char target[300];
    mailer_address(target, sizeof target, domain, mailer_shard(id));
    api_mesh_send(req, target, "deliver", json_pack("{s:s}", "message_id", id));
}

/* "wake" {"batch_id"} to each mailer of mailers ("<domain>#<shard>" keys,
 * a JSON array), after COMMIT. */
static void s_wake_mailers(api_req_t *req, const json_t *mailers, const char *batch_id)
{
    size_t i;
    json_t *k;
    char target[300];
    json_array_foreach(mailers, i, k) {
        if (!json_is_string(k))
            continue;
        snprintf(target, sizeof target, "mailer/%s", json_string_value(k));
        api_mesh_send(req, target, "wake", json_pack("{s:s}", "batch_id", batch_id));
    }
}

/* Write a send to explicit recipients and answer 202. */
static int s_send_single(api_req_t *req, send_t *s, json_t *warnings)
{
    /* clang-format off */
    const char *sql =
        "WITH " MSG_DOC_CTE ", "
        "r AS (SELECT gen_random_uuid() AS id, x.email, x.domain, x.kind, x.ord, "
        MSG_REASON("x.email") " AS reason "
        "FROM p, jsonb_to_recordset(p.j->'recipients') AS x(email text, domain text, kind text, "
        "ord int)), "
        "m AS (INSERT INTO messages (" MSG_INSERT_COLS ") "
        "SELECT r.id, $1, p.send_id, NULL, NULL, " MSG_STATUS ", " MSG_INSERT_DOC " FROM p, r "
        "RETURNING id, send_id, recipient, status, send_at), "
        MSG_CONTENT_CTE ", "
        MSG_ATTACHMENTS_CTE ", "
        MSG_EVENTS " "
        "SELECT m.send_id, m.id, m.recipient, m.status, r.reason, r.domain "
        "FROM m JOIN r ON r.id = m.id ORDER BY r.ord";
    /* clang-format on */
    json_object_set_new(s->doc, "size", json_integer((json_int_t)s->size));
    char *doc = json_dumps(s->doc, JSON_COMPACT);
    if (!doc)
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    if (api_tx_begin(req) != 0) {
        free(doc);
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    }
    const char *p[] = {api_org(req), doc, s->from_domain};
    int rc = 0;
    db_result_t *res = aud_query(req, 1, sql, 3, p, &rc);
    free(doc);
    if (!res)
        return rc;
    int rows = db_result_rows(res);
    json_t *messages = json_array(), *suppressed = json_array();
    for (int i = 0; i < rows; i++) {
        const char *reason = db_result_get(res, i, 4);
        json_array_append_new(messages, json_pack("{s:s, s:s, s:s}", "id",
                                                  db_result_get(res, i, 1), "to",
                                                  db_result_get(res, i, 2), "status",
                                                  db_result_get(res, i, 3)));
        if (reason)
            json_array_append_new(suppressed,
                                  json_pack("{s:s, s:s, s:s}", "id", db_result_get(res, i, 1),
                                            "email", db_result_get(res, i, 2), "reason", reason));
    }
    const char *send_id = rows ? db_result_get(res, 0, 0) : "";
    api_audit(req, "message.send", "send", send_id,
              json_pack("{s:i, s:i, s:O?}", "recipients", rows, "suppressed",
                        (int)json_array_size(suppressed), "template_id",
                        json_object_get(s->doc, "template_id")));
    json_t *out = json_pack("{s:s, s:o, s:o}", "id", send_id, "messages", messages, "suppressed",
                            suppressed);
    if (json_array_size(warnings))
        json_object_set(out, "warnings", warnings);
    if (api_tx_commit(req) != 0) {
        json_decref(out);
        db_result_free(&res);
        return api_problem(req, 500, "Internal Server Error", "the message was not accepted");
    }
    /* Committed: now, and only now, tell the mailers. */
    for (int i = 0; i < rows; i++)
        if (strcmp(db_result_get(res, i, 3), "queued") == 0)
            s_deliver(req, db_result_get(res, i, 5), db_result_get(res, i, 1));
    db_result_free(&res);
    return api_json(req, 202, out);
}

/* One expansion step of a batch: the next bulk_chunk members after the
 * batch's cursor (contacts in (created_at, id) order, the
 * contacts_org_created index), each a messages row with its event, and the
 * cursor moved past them, in the statement's transaction. $1 organization,
 * $2 batch, $3 from domain, $4 step size, $5 and $6 the cursor (given as
 * parameters, so it bounds the index scan: read from the batch row in a
 * join it was only a filter, and every step walked the list from its start),
 * then $7 the list, or the segment's rule parameters from $7. The batch
 * row p reads is the one the caller locked. */
/* clang-format off */
#define EXPAND_SQL_HEAD                                                                            \
    "WITH p AS (SELECT b.doc AS j, b.send_id, "                                                    \
    "'epoch'::timestamptz + (b.doc->>'send_at_us')::bigint * interval '1 microsecond' AS send_at " \
    "FROM batches b WHERE b.id = $2::uuid AND b.organization_id = $1), "                           \
    "r AS (SELECT gen_random_uuid() AS id, c.id AS contact_id, c.created_at, c.email, "           \
    "lower(split_part(c.email, '@', 2)) AS domain, 'to' AS kind, "                                \
    MSG_MEMBER_REASON " AS reason FROM contacts c WHERE c.organization_id = $1 "                   \
    "AND (c.created_at, c.id) > ($5::timestamptz, $6::uuid) AND "
#define EXPAND_SQL_TAIL                                                                            \
    " ORDER BY c.created_at, c.id LIMIT $4::int), "                                                \
    "m AS (INSERT INTO messages (" MSG_INSERT_COLS ") "                                            \
    "SELECT r.id, $1, p.send_id, $2::uuid, r.contact_id, " MSG_STATUS ", " MSG_INSERT_DOC          \
    " FROM p, r ON CONFLICT (organization_id, send_id, lower(recipient)) DO NOTHING "              \
    "RETURNING id, status, send_at, recipient, recipient_domain), "                               \
    MSG_EVENTS ", "                                                                                \
    "l AS (SELECT created_at, contact_id FROM r ORDER BY created_at DESC, contact_id DESC "        \
    "LIMIT 1), "                                                                                   \
    "u AS (UPDATE batches b SET total = b.total + (SELECT count(*) FROM m), "                      \
    "expand_at = coalesce((SELECT created_at FROM l), b.expand_at), "                              \
    "expand_id = coalesce((SELECT contact_id FROM l), b.expand_id), "                              \
    "status = CASE WHEN (SELECT count(*) FROM r) < $4::int THEN 'expanded' ELSE 'expanding' END, " \
    "doc = CASE WHEN (SELECT count(*) FROM r) < $4::int THEN NULL ELSE b.doc END, "               \
    "updated_at = clock_timestamp() WHERE b.id = $2::uuid AND b.organization_id = $1 "           \
    "RETURNING b.status) "                                                                         \
    "SELECT count(m.id), count(m.id) FILTER (WHERE m.status = 'queued'), "                        \
    "count(m.id) FILTER (WHERE m.status = 'scheduled'), "                                          \
    "count(m.id) FILTER (WHERE m.status = 'suppressed'), "                                         \
    "coalesce(array_to_json(array_agg(DISTINCT m.recipient_domain || '#' || "                      \
    MAILER_SHARD_SQL("m.id") ") FILTER (WHERE m.status = 'queued'))::text, '[]'), "              \
    "(SELECT status FROM u) FROM m"
#define EXPAND_LIST_MEMBER                                                                         \
    "EXISTS (SELECT 1 FROM list_members lm WHERE lm.organization_id = $1 "                         \
    "AND lm.list_id = $7::uuid AND lm.contact_id = c.id)"
/* clang-format on */

void messages_step_clear(messages_step_t *step)
{
    if (!step)
        return;
    json_decref(step->mailers);
    memset(step, 0, sizeof *step);
}

int messages_expand(db_t *db, const char *org, const char *batch_id, messages_step_t *out,
                    sbuf_t *err)
{
    messages_step_clear(out);
    const char *bp[] = {batch_id, org};
    db_result_t *res = db_query(db,
                                "SELECT status, kind, target_id, rule, expand_chunk, "
                                "doc->>'from_domain', expand_at::text, expand_id "
                                "FROM batches WHERE id = $1::uuid "
                                "AND organization_id = $2 FOR UPDATE",
                                2, bp, err);
    if (!res)
        return -1;
    if (db_result_rows(res) != 1 || strcmp(db_result_get(res, 0, 0), "expanding") != 0) {
        /* Gone (its organization deleted) or already whole: nothing to do. */
        db_result_free(&res);
        out->done = 1;
        return 0;
    }
    int list = strcmp(db_result_get(res, 0, 1), "list") == 0;
    rule_sql_t rule = {0};
    if (!list) {
        const char *text = db_result_get(res, 0, 3);
        rule_t *r = text ? rule_parse_text(text, strlen(text), err) : NULL;
        int ok = r && rule_compile_sql(r, 7, &rule, err) == 0;
        rule_destroy(&r);
        if (!ok) {
            if (err && !text)
                sbuf_appendf(err, "the batch has no rule");
            db_result_free(&res);
            return -1;
        }
    }
    sbuf_t *sql = sbuf_new(4096);
    const char **params = calloc((size_t)(7 + rule.n_params), sizeof *params);
    int n = 6;
    db_result_t *step = NULL;
    if (sql && params && sbuf_append_str(sql, EXPAND_SQL_HEAD) == 0 &&
        sbuf_append_str(sql, list ? EXPAND_LIST_MEMBER : rule.sql) == 0 &&
        sbuf_append_str(sql, EXPAND_SQL_TAIL) == 0) {
        params[0] = org;
        params[1] = batch_id;
        params[2] = db_result_get(res, 0, 5);
        params[3] = db_result_get(res, 0, 4);
        params[4] = db_result_get(res, 0, 6);
        params[5] = db_result_get(res, 0, 7);
        if (list)
            params[n++] = db_result_get(res, 0, 2);
        for (int i = 0; i < rule.n_params; i++)
            params[n++] = rule.params[i];
        step = db_query(db, sbuf_data(sql), n, params, err);
    } else if (err) {
        sbuf_appendf(err, "out of memory");
    }
    free(params);
    sbuf_destroy(&sql);
    rule_sql_clear(&rule);
    db_result_free(&res);
    if (!step)
        return -1;
    out->written = strtol(db_result_get(step, 0, 0), NULL, 10);
    out->queued = strtol(db_result_get(step, 0, 1), NULL, 10);
    out->scheduled = strtol(db_result_get(step, 0, 2), NULL, 10);
    out->suppressed = strtol(db_result_get(step, 0, 3), NULL, 10);
    out->mailers = aud_json_col(db_result_get(step, 0, 4));
    const char *status = db_result_get(step, 0, 5);
    out->done = !status || strcmp(status, "expanded") == 0;
    db_result_free(&step);
    return 0;
}

/* Write a bulk send to a list's or segment's members and answer 202: the
 * batch and its first step in one transaction; a longer list goes on in
 * the background (tenant/<org>, "expand"), each step its own transaction. */
static int s_send_bulk(api_req_t *req, send_t *s, json_t *warnings)
{
    int rc = 0;
    if (api_tx_begin(req) != 0)
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    sbuf_t *err = sbuf_new(128);
    if (!err || db_exec(api_db(req), BULK_TIMEOUT, 0, NULL, err) != 0) {
        rc = aud_db_fail(req, 1, err);
        sbuf_destroy(&err);
        return rc;
    }
    const char *target = s->list_id ? s->list_id : s->segment_id;
    const char *field = s->list_id ? "to_list" : "to_segment";
    const char *lp[] = {api_org(req), target};
    db_result_t *res = aud_query(
        req, 1,
        s->list_id ? "SELECT NULL FROM lists WHERE organization_id = $1 AND id = $2"
                   : "SELECT rule::text FROM segments WHERE organization_id = $1 AND id = $2",
        2, lp, &rc);
    if (!res) {
        sbuf_destroy(&err);
        return rc;
    }
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        sbuf_destroy(&err);
        api_tx_rollback(req);
        api_error_add(api_errors(req), field, "no such %s in this organization",
                      s->list_id ? "list" : "segment");
        return api_invalid(req);
    }
    /* The segment's rule must compile now: a send is refused here, not
     * half-expanded later. Its text is kept with the batch, so an edit of
     * the segment does not change a send already accepted. */
    char *rule_text = s->segment_id ? strdup(db_result_get(res, 0, 0)) : NULL;
    db_result_free(&res);
    if (s->segment_id) {
        sbuf_t *why = sbuf_new(128);
        rule_t *r = rule_text && why ? rule_parse_text(rule_text, strlen(rule_text), why) : NULL;
        rule_sql_t rule = {0};
        int ok = r && rule_compile_sql(r, 7, &rule, why) == 0;
        rule_sql_clear(&rule);
        rule_destroy(&r);
        if (!ok) {
            free(rule_text);
            sbuf_destroy(&err);
            api_tx_rollback(req);
            rc = api_problem(req, 500, "Stored Rule Invalid",
                             "the segment's stored rule no longer compiles: %s",
                             why ? sbuf_data(why) : "out of memory");
            sbuf_destroy(&why);
            return rc;
        }
        sbuf_destroy(&why);
    }
    /* The batch keeps what every row needs; the bodies and attachments are
     * stored once, in message_contents and message_attachments. */
    json_object_set_new(s->doc, "size", json_integer((json_int_t)s->size));
    json_object_set_new(s->doc, "from_domain", json_string(s->from_domain));
    char *doc = json_dumps(s->doc, JSON_COMPACT);
    char chunk[24];
    snprintf(chunk, sizeof chunk, "%d", s_bulk_chunk);
    /* clang-format off */
    const char *sql =
        "WITH " MSG_DOC_CTE ", "
        "b AS (INSERT INTO batches (organization_id, kind, target_id, status, send_id, doc, rule, "
        "expand_chunk) SELECT $1, $3, $4::uuid, 'expanding', p.send_id, "
        "p.j - 'html' - 'text' - 'attachments' - 'recipients', $5, $6::int FROM p "
        "RETURNING id, send_id), "
        MSG_CONTENT_CTE ", "
        MSG_ATTACHMENTS_CTE " "
        "SELECT b.id, b.send_id FROM b";
    /* clang-format on */
    const char *bp[] = {api_org(req), doc, s->list_id ? "list" : "segment", target, rule_text,
                        chunk};
    res = doc ? aud_query(req, 1, sql, 6, bp, &rc) : NULL;
    free(doc);
    free(rule_text);
    if (!res) {
        sbuf_destroy(&err);
        if (!rc) {
            api_tx_rollback(req);
            rc = api_problem(req, 500, "Internal Server Error", "out of memory");
        }
        return rc;
    }
    char batch_id[40], send_id[40];
    snprintf(batch_id, sizeof batch_id, "%s", db_result_get(res, 0, 0));
    snprintf(send_id, sizeof send_id, "%s", db_result_get(res, 0, 1));
    db_result_free(&res);
    messages_step_t step = {0};
    if (messages_expand(api_db(req), api_org(req), batch_id, &step, err) != 0) {
        rc = aud_db_fail(req, 1, err);
        sbuf_destroy(&err);
        return rc;
    }
    sbuf_destroy(&err);
    json_t *out = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "batch_id", batch_id, "id",
                            send_id, "status", step.done ? "expanded" : "expanding", "total",
                            (json_int_t)step.written, "queued", (json_int_t)step.queued,
                            "scheduled", (json_int_t)step.scheduled, "suppressed",
                            (json_int_t)step.suppressed);
    if (json_array_size(warnings))
        json_object_set(out, "warnings", warnings);
    api_audit(req, "message.bulk_send", "batch", batch_id,
              json_pack("{s:s, s:s, s:O}", "kind", s->list_id ? "list" : "segment", "target_id",
                        target, "total", json_object_get(out, "total")));
    if (api_tx_commit(req) != 0) {
        json_decref(out);
        messages_step_clear(&step);
        return api_problem(req, 500, "Internal Server Error", "the send was not accepted");
    }
    /* One wake-up per mailer with rows in the step, not per row: the
     * mailer scans its queue. */
    s_wake_mailers(req, step.mailers, batch_id);
    messages_step_clear(&step);
    /* The rest in the background. Lost, the sweeper announces it again. */
    if (strcmp(json_string_value(json_object_get(out, "status")), "expanding") == 0) {
        char tenant[64];
        snprintf(tenant, sizeof tenant, "tenant/%s", api_org(req));
        api_mesh_send(req, tenant, "expand", json_pack("{s:s}", "batch_id", batch_id));
    }
    return api_json(req, 202, out);
}

static int s_send(api_req_t *req)
{
    static const char *const allowed[] = {
        "from",     "to",          "cc",         "bcc",      "reply_to",         "subject",
        "html",     "text",        "template_id", "template_version", "variables", "headers",
        "attachments", "tags",     "metadata",   "send_at",  "to_list",          "to_segment",
        NULL};
    json_t *body = aud_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, allowed);
    send_t s = {0};
    s.doc = json_object();
    s.seen = json_object();
    s.recipients = json_array();
    json_object_set_new(s.doc, "recipients", s.recipients);
    json_t *warnings = json_array();
    if (!s.doc || !s.seen || !s.recipients || !warnings) {
        s_send_clear(&s);
        json_decref(warnings);
        return api_problem(req, 500, "Internal Server Error", "out of memory");
    }
    s_from(req, &s, body);
    s_recipients(req, &s, body);
    json_t *reply_to = json_array();
    if (s_address_list(req, &s, body, "reply_to", REPLY_TO_MAX, NULL, reply_to) > 0)
        json_object_set(s.doc, "reply_to", reply_to);
    json_decref(reply_to);
    if (json_object_get(body, "template_id"))
        s_template_fields(req, &s, body);
    else
        s_content(req, &s, body);
    s_headers(req, &s, body);
    s_attachments(req, &s, body);
    s_tags_metadata(req, &s, body);
    s_send_at(req, &s, body);

    int rc = 0;
    if (!json_object_get(body, "template_id"))
        s_inline_needs_html(req, &s);
    if (api_errors_count(api_errors(req)))
        goto invalid;
    if (s_check_domain(req, &s, &rc) != 0 || (s.template_id && s_render(req, &s, warnings, &rc)))
        goto invalid;
    if (s.template_id && s_inline_needs_html(req, &s) != 0)
        goto invalid;
    if (s.size > MESSAGE_MAX_BYTES) {
        rc = api_problem(req, 413, "Content Too Large",
                         "the message is %zu bytes (subject, bodies, headers and decoded "
                         "attachments); the limit is %zu",
                         s.size, MESSAGE_MAX_BYTES);
        goto done;
    }
    rc = (s.list_id || s.segment_id) ? s_send_bulk(req, &s, warnings)
                                     : s_send_single(req, &s, warnings);
    goto done;
invalid:
    if (!rc)
        rc = api_invalid(req);
done:
    json_decref(warnings);
    s_send_clear(&s);
    return rc;
}

/* ------------------------------------------------------------- reading -- */

/* A message row as the API shows it; m is the messages row. */
/* clang-format off */
#define MESSAGE_JSON                                                                               \
    "json_build_object('id', m.id, 'send_id', m.send_id, 'batch_id', m.batch_id, "                 \
    "'contact_id', m.contact_id, 'status', m.status, "                                             \
    "'from', json_build_object('email', m.from_addr, 'name', m.from_name), "                       \
    "'to', m.recipient, 'recipient_type', m.recipient_type, 'subject', m.subject, "                \
    "'tags', to_json(m.tags), 'metadata', m.metadata, 'attempts', m.attempts, "                    \
    "'message_id', m.message_id, 'send_at', " AUD_TS("m.send_at") ", "                             \
    "'next_attempt_at', " AUD_TS("m.next_attempt_at") ", "                                         \
    "'created_at', " AUD_TS("m.created_at") ", 'updated_at', " AUD_TS("m.updated_at") ")"
/* clang-format on */

static int s_list(api_req_t *req)
{
    int limit, has_pos;
    aud_pos_t pos;
    if (aud_page(req, &limit, &pos, &has_pos) != 0)
        return api_invalid(req);
    const char *status = api_query(req, "status");
    const char *recipient = api_query(req, "recipient");
    const char *tag = api_query(req, "tag");
    const char *send_id = api_query(req, "send_id");
    const char *batch_id = api_query(req, "batch_id");
    const char *after = api_query(req, "created_after");
    const char *before = api_query(req, "created_before");
    if (status) {
        int ok = 0;
        for (int i = 0; s_statuses[i]; i++)
            ok |= strcmp(status, s_statuses[i]) == 0;
        if (!ok)
            api_error_add(api_errors(req), "status", "must be one of scheduled, queued, sending, "
                                                     "sent, deferred, bounced, failed, "
                                                     "suppressed, canceled");
    }
    /* Query values are raw bytes after percent-decoding: PostgreSQL refuses
     * text that is not UTF-8 (a 500), so they are checked as a body field
     * would be. */
    if (recipient && (strlen(recipient) > EMAIL_ADDR_MAX || !api_utf8_ok(recipient) ||
                      !s_one_line(recipient)))
        api_error_add(api_errors(req), "recipient",
                      "must be UTF-8 text of at most %d bytes without control characters",
                      EMAIL_ADDR_MAX);
    if (tag && (!*tag || strlen(tag) > TAG_MAX_BYTES || !api_utf8_ok(tag) || !s_one_line(tag)))
        api_error_add(api_errors(req), "tag",
                      "must be UTF-8 text of 1 to %d bytes without control characters",
                      TAG_MAX_BYTES);
    if (send_id && !api_is_uuid(send_id))
        api_error_add(api_errors(req), "send_id", "must be an id (uuid)");
    if (batch_id && !api_is_uuid(batch_id))
        api_error_add(api_errors(req), "batch_id", "must be an id (uuid)");
    char after_us[32] = "", before_us[32] = "";
    const char *names[] = {"created_after", "created_before"};
    const char *vals[] = {after, before};
    char *outs[] = {after_us, before_us};
    for (int i = 0; i < 2; i++) {
        long long us = 0;
        if (!vals[i])
            continue;
        if (rule_parse_time(vals[i], strlen(vals[i]), 0, &us) != 0)
            api_error_add(api_errors(req), names[i], "must be an RFC 3339 timestamp");
        else
            snprintf(outs[i], 32, "%lld", us);
    }
    if (api_errors_count(api_errors(req)))
        return api_invalid(req);
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit + 1);
    const char *params[] = {api_org(req), lim,      has_pos ? pos.us : NULL,
                            has_pos ? pos.id : NULL, status,   recipient,
                            tag,          send_id,  batch_id,
                            after_us[0] ? after_us : NULL, before_us[0] ? before_us : NULL};
    /* clang-format off */
    const char *sql =
        "SELECT " MESSAGE_JSON "::text, " AUD_US("m.created_at") ", m.id FROM messages m "
        "WHERE m.organization_id = $1 "
        "AND ($3::bigint IS NULL OR (m.created_at, m.id) > (" AUD_FROM_US("$3") ", $4::uuid)) "
        "AND ($5::text IS NULL OR m.status = $5) "
        "AND ($6::text IS NULL OR lower(m.recipient) = lower($6)) "
        "AND ($7::text IS NULL OR m.tags @> ARRAY[$7::text]) "
        "AND ($8::uuid IS NULL OR m.send_id = $8::uuid) "
        "AND ($9::uuid IS NULL OR m.batch_id = $9::uuid) "
        "AND ($10::bigint IS NULL OR m.created_at >= " AUD_FROM_US("$10") ") "
        "AND ($11::bigint IS NULL OR m.created_at < " AUD_FROM_US("$11") ") "
        "ORDER BY m.created_at, m.id LIMIT $2::int";
    /* clang-format on */
    int rc = 0;
    db_result_t *res = aud_query(req, 0, sql, 11, params, &rc);
    if (!res)
        return rc;
    json_t *data = json_array();
    for (int i = 0; i < db_result_rows(res) && i < limit; i++)
        json_array_append_new(data, aud_json_col(db_result_get(res, i, 0)));
    char *next = aud_next_cursor(res, limit, 1, 2);
    db_result_free(&res);
    return api_page_json(req, data, next);
}

/* The JSON text in the first column of a query's only row, parsed; NULL
 * when there is no such row. *rc is set (the answer already given) when
 * the query failed. */
static json_t *s_json_row(api_req_t *req, const char *sql, int n, const char *const *params,
                          int *rc)
{
    db_result_t *res = aud_query(req, 0, sql, n, params, rc);
    if (!res)
        return NULL;
    json_t *out = db_result_rows(res) == 1 ? aud_json_col(db_result_get(res, 0, 0)) : NULL;
    db_result_free(&res);
    return out;
}

static int s_get(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "message");
    /* clang-format off */
    const char *sql =
        "SELECT (" MESSAGE_JSON "::jsonb || jsonb_build_object("
        "'reply_to', to_jsonb(m.reply_to), 'to_header', to_jsonb(m.to_addrs), "
        "'cc', to_jsonb(m.cc_addrs), 'html', coalesce(c.html, m.html), "
        "'text', coalesce(c.text, m.text), 'headers', m.headers, "
        "'template', CASE WHEN m.template_id IS NULL THEN NULL ELSE jsonb_build_object("
        "'id', m.template_id, 'version', m.template_version, 'variables', m.variables) END, "
        "'last_response', m.last_response, 'size_bytes', m.size_bytes, "
        "'attachments', coalesce((SELECT jsonb_agg(jsonb_build_object('filename', a.filename, "
        "'content_type', a.content_type, 'content_id', a.content_id, 'size', length(a.data)) "
        "ORDER BY a.idx) FROM message_attachments a WHERE a.organization_id = $2 "
        "AND a.send_id = m.send_id), '[]'), "
        "'events', coalesce((SELECT jsonb_agg(jsonb_build_object('type', e.type, "
        "'detail', e.detail, 'created_at', " AUD_TS("e.created_at") ") ORDER BY e.id) "
        "FROM message_events e WHERE e.message_id = m.id), '[]')))::text "
        "FROM messages m LEFT JOIN message_contents c ON c.send_id = m.send_id "
        "AND c.organization_id = m.organization_id "
        "WHERE m.id = $1 AND m.organization_id = $2";
    /* clang-format on */
    const char *params[] = {id, api_org(req)};
    int rc = 0;
    json_t *out = s_json_row(req, sql, 2, params, &rc);
    if (rc)
        return rc;
    if (!out)
        return api_not_found(req, "message");
    return api_json(req, 200, out);
}

static int s_cancel(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "message");
    if (api_tx_begin(req) != 0)
        return api_problem(req, 503, "Service Unavailable", "database unavailable");
    /* Lock the row so a scheduler that moves it to 'queued' either ran
     * before (409) or waits and then sees 'canceled'. */
    /* clang-format off */
    const char *sql =
        "WITH cur AS (SELECT id, status FROM messages WHERE id = $1 AND organization_id = $2 "
        "FOR UPDATE), "
        "u AS (UPDATE messages m SET status = 'canceled', updated_at = now() FROM cur "
        "WHERE m.id = cur.id AND cur.status = 'scheduled' RETURNING m.*), "
        "e AS (INSERT INTO message_events (organization_id, message_id, type) "
        "SELECT $2, u.id, 'canceled' FROM u) "
        "SELECT cur.status, (SELECT " MESSAGE_JSON "::text FROM u m) FROM cur";
    /* clang-format on */
    const char *params[] = {id, api_org(req)};
    int rc = 0;
    db_result_t *res = aud_query(req, 1, sql, 2, params, &rc);
    if (!res)
        return rc;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_not_found(req, "message");
    }
    if (!db_result_get(res, 0, 1)) {
        char status[32];
        snprintf(status, sizeof status, "%s", db_result_get(res, 0, 0));
        db_result_free(&res);
        api_tx_rollback(req);
        return api_problem(req, 409, "Conflict",
                           "the message is %s: only a scheduled message can be canceled", status);
    }
    json_t *out = aud_json_col(db_result_get(res, 0, 1));
    db_result_free(&res);
    api_audit(req, "message.cancel", "message", id, NULL);
    return aud_commit(req, 200, out);
}

static int s_batch(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "batch");
    /* clang-format off */
    const char *sql =
        "SELECT json_build_object('id', b.id, 'kind', b.kind, 'target_id', b.target_id, "
        "'status', b.status, 'total', b.total, 'created_at', " AUD_TS("b.created_at") ", "
        "'counts', coalesce((SELECT json_object_agg(s.status, s.n) FROM (SELECT status, "
        "count(*) AS n FROM messages WHERE organization_id = $2 AND batch_id = b.id "
        "GROUP BY status) s), '{}'))::text "
        "FROM batches b WHERE b.id = $1 AND b.organization_id = $2";
    /* clang-format on */
    const char *params[] = {id, api_org(req)};
    int rc = 0;
    json_t *out = s_json_row(req, sql, 2, params, &rc);
    if (rc)
        return rc;
    if (!out)
        return api_not_found(req, "batch");
    /* Every status, zero included, so a client never guesses. */
    json_t *counts = json_object_get(out, "counts");
    for (int i = 0; json_is_object(counts) && s_statuses[i]; i++)
        if (!json_object_get(counts, s_statuses[i]))
            json_object_set_new(counts, s_statuses[i], json_integer(0));
    return api_json(req, 200, out);
}

/* The organization's outbox as it stands: rows waiting (queued, deferred),
 * being sent (leased by a mailer) and scheduled, in all and per recipient
 * domain, the deepest first, with how late the oldest due row is. This is
 * where backpressure shows: when destinations accept mail slower than it
 * is sent, the API keeps accepting and these numbers grow, so a client can
 * slow down on them. Each part is read through the partial index whose
 * predicate it repeats (the queue, the leases, the schedule), so the cost
 * follows what is waiting, not the history. */
static int s_queue(api_req_t *req)
{
    int limit;
    const char *cursor;
    if (api_page(req, 100, 1000, &limit, &cursor) != 0)
        return api_invalid(req);
    if (cursor) {
        api_error_add(api_errors(req), "cursor",
                      "this view has no further pages: raise limit (at most 1000) instead");
        return api_invalid(req);
    }
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    /* clang-format off */
    const char *sql =
        "WITH q AS (SELECT recipient_domain AS d, status AS s, next_attempt_at AS due "
        "FROM messages WHERE organization_id = $1 AND status IN ('queued', 'deferred') "
        "UNION ALL SELECT recipient_domain, 'sending', NULL FROM messages "
        "WHERE organization_id = $1 AND lease_until IS NOT NULL AND status = 'sending' "
        "UNION ALL SELECT recipient_domain, 'scheduled', NULL FROM messages "
        "WHERE organization_id = $1 AND status = 'scheduled'), "
        "g AS (SELECT d, count(*) AS n, count(*) FILTER (WHERE s = 'queued') AS queued, "
        "count(*) FILTER (WHERE s = 'deferred') AS deferred, "
        "count(*) FILTER (WHERE s = 'sending') AS sending, "
        "count(*) FILTER (WHERE s = 'scheduled') AS scheduled, min(due) AS due FROM q GROUP BY d) "
        "SELECT json_build_object('queued', coalesce(sum(queued), 0), "
        "'deferred', coalesce(sum(deferred), 0), 'sending', coalesce(sum(sending), 0), "
        "'scheduled', coalesce(sum(scheduled), 0), 'oldest_due_at', " AUD_TS("min(due)") ", "
        "'lag_seconds', coalesce(round(greatest(extract(epoch FROM now() - min(due)), 0), 3), 0), "
        "'destinations_total', count(*), 'destinations', coalesce((SELECT json_agg("
        "json_build_object('domain', t.d, 'queued', t.queued, 'deferred', t.deferred, "
        "'sending', t.sending, 'scheduled', t.scheduled, 'oldest_due_at', " AUD_TS("t.due") ") "
        "ORDER BY t.n DESC, t.d) FROM (SELECT * FROM g ORDER BY n DESC, d LIMIT $2::int) t), "
        "'[]'))::text FROM g";
    /* clang-format on */
    const char *params[] = {api_org(req), lim};
    int rc = 0;
    json_t *out = s_json_row(req, sql, 2, params, &rc);
    if (rc)
        return rc;
    if (!out)
        return api_problem(req, 500, "Internal Server Error", "the queue could not be read");
    return api_json(req, 200, out);
}

const api_route_t api_routes_messages[] = {
    {"POST", "/messages", s_send, API_SCOPE_SEND, "messages.send", API_IDEMPOTENT | API_BATCH},
    {"GET", "/messages", s_list, API_SCOPE_READ, "messages.list", 0},
    {"GET", "/messages/batches/{id}", s_batch, API_SCOPE_READ, "messages.batch", 0},
    {"GET", "/messages/queue", s_queue, API_SCOPE_READ, "messages.queue", 0},
    {"GET", "/messages/{id}", s_get, API_SCOPE_READ, "messages.get", 0},
    {"DELETE", "/messages/{id}", s_cancel, API_SCOPE_FULL, "messages.cancel", 0},
    {0},
};
