/*
 * events - POST /events: a custom event about a contact, the trigger that
 * flows with an `event` trigger node listen to.
 *
 *   {"name": "order.completed", "contact": {"email": "a@b.example"},
 *    "properties": {"total": 42}}
 *
 * The contact is found by email, or created (subscribed) when it is not
 * there yet: an event is often the first thing a product knows about a
 * person. One statement writes the contact (when new) and the events row;
 * after the commit the tenant actor is told (the outbox sweeper re-drives
 * the row if that message is lost). Answers 202 with the event's id.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audience.h"
#include "rest.h"

#define EVENT_NAME_MAX 100
#define PROPERTIES_MAX 65536

/* Letters, digits and . _ : - ; a name is an identifier, not prose. */
static int s_name_ok(const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static int s_create(api_req_t *req)
{
    static const char *const allowed[] = {"name", "contact", "properties", NULL};
    static const char *const contact_allowed[] = {"email", NULL};
    json_t *body = aud_body_object(req);
    if (!body)
        return api_invalid(req);
    api_field_only(req, body, allowed);
    const char *name = NULL;
    if (api_field_string(req, body, "name", 1, EVENT_NAME_MAX, &name) == 0 &&
        (!name[0] || !s_name_ok(name)))
        api_error_add(api_errors(req), "name",
                      "must be 1 to %d letters, digits or . _ : -", EVENT_NAME_MAX);
    json_t *contact = json_object_get(body, "contact");
    char *email = NULL;
    if (!contact) {
        api_error_add(api_errors(req), "contact", "is required");
    } else if (!json_is_object(contact)) {
        api_error_add(api_errors(req), "contact", "must be an object with an email");
    } else {
        const char *raw = NULL;
        api_field_only(req, contact, contact_allowed);
        if (api_field_string(req, contact, "email", 1, 254, &raw) == 0) {
            const char *why = NULL;
            email = aud_email_normalize(raw, strlen(raw), &why);
            if (!email)
                api_error_add(api_errors(req), "contact.email", "is not a valid address: %s",
                              why ? why : "invalid");
        }
    }
    json_t *props = json_object_get(body, "properties");
    char *props_text = NULL;
    if (props && !json_is_object(props)) {
        api_error_add(api_errors(req), "properties", "must be an object");
    } else if (!props) {
        props_text = strdup("{}");
    } else {
        props_text = json_dumps(props, JSON_COMPACT);
        if (props_text && strlen(props_text) > PROPERTIES_MAX)
            api_error_add(api_errors(req), "properties", "must be at most %d bytes as JSON",
                          PROPERTIES_MAX);
    }
    if (api_errors_count(api_errors(req))) {
        free(email);
        free(props_text);
        return api_invalid(req);
    }
    json_t *payload = json_pack("{s:s, s:o}", "name", name,
                                "properties", json_loads(props_text ? props_text : "{}", 0, NULL));
    char *payload_text = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    /* One round trip: the contact if new, then the event row pointing at it. */
    const char *p[] = {api_org(req), email, payload_text};
    int rc = 0;
    db_result_t *res = aud_query(
        req, 0,
        "WITH found AS (SELECT id FROM contacts WHERE organization_id = $1 "
        "AND lower(email) = lower($2)), "
        "made AS (INSERT INTO contacts (organization_id, email) SELECT $1, $2 "
        "WHERE NOT EXISTS (SELECT 1 FROM found) "
        "ON CONFLICT (organization_id, lower(email)) DO UPDATE SET updated_at = contacts.updated_at "
        "RETURNING id), "
        "who AS (SELECT id FROM found UNION ALL SELECT id FROM made LIMIT 1) "
        "INSERT INTO events (organization_id, name, contact_id, payload) "
        "SELECT $1, 'event', who.id, $3::jsonb FROM who RETURNING id, contact_id, "
        "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        3, p, &rc);
    free(email);
    free(props_text);
    free(payload_text);
    if (!res)
        return rc;
    if (db_result_rows(res) != 1) {
        db_result_free(&res);
        return api_problem(req, 500, "Internal Server Error", "the event could not be recorded");
    }
    json_int_t id = strtoll(db_result_get(res, 0, 0), NULL, 10);
    json_t *out = json_pack("{s:I, s:s, s:s, s:s}", "id", id, "name", name, "contact_id",
                            db_result_get(res, 0, 1), "created_at", db_result_get(res, 0, 2));
    db_result_free(&res);
    api_trigger(req, "event", json_pack("{s:I}", "event_id", id));
    return api_json(req, 202, out);
}

const api_route_t api_routes_events[] = {
    {"POST", "/events", s_create, API_SCOPE_SEND, "events.create", API_IDEMPOTENT},
    {0},
};
