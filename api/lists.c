/*
 * lists - the /lists resource: CRUD for an organization's mailing lists and
 * bulk membership by contact ids and/or email addresses.
 *
 * Membership: POST /lists/{id}/contacts takes up to 10,000 contact ids and
 * emails together. The whole body is validated before anything is written
 * (one malformed id refuses the request, nothing is added). Emails that are
 * not contacts yet are created as subscribed contacts (upsert). Each new
 * member gets a 'list_added' events row in the same transaction; after the
 * commit ONE trigger goes to the tenant actor, naming the event ids (or, for
 * more than 100, the first and last id and the count; the sweeper covers a
 * lost message either way).
 *
 * Tenancy: every statement filters by the caller's organization; a contact
 * id of another organization is reported in not_found and never added.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "db.h"
#include "sbuf.h"

#include "audience.h"
#include "rest.h"

#define LIST_NAME_MAX 200
#define LIST_DESC_MAX 2000
#define MEMBERS_MAX 10000
#define MEMBER_ERRORS_MAX 20 /* field errors reported per request for members */

/* Columns of a list row, in s_list_json order; the table is aliased l. */
#define LIST_COLS                                                                          \
    "l.id, l.name, l.description, "                                                        \
    "(SELECT count(*) FROM list_members m WHERE m.list_id = l.id), " AUD_TS("l.created_at") \
    ", " AUD_TS("l.updated_at") ", " AUD_US("l.created_at")

static json_t *s_list_json(const db_result_t *res, int row)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:s, s:s}", "id", db_result_get(res, row, 0), "name",
                     db_result_get(res, row, 1), "description", db_result_get(res, row, 2),
                     "member_count", (json_int_t)strtoll(db_result_get(res, row, 3), NULL, 10),
                     "created_at", db_result_get(res, row, 4), "updated_at",
                     db_result_get(res, row, 5));
}

/* A deleted list's audit detail: its name and how many members it had. */
static void s_deleted_detail(const db_result_t *res, json_t *detail)
{
    aud_detail_name(res, detail);
    json_object_set_new(detail, "member_count",
                        json_integer((json_int_t)strtoll(db_result_get(res, 0, 2), NULL, 10)));
}

/* A list's row is LIST_COLS (deleted: id, name and member count); the
 * audit detail names it. */
static const aud_write_t s_created =
    AUD_WRITE("list", "list.create", 201, s_list_json, aud_detail_name);
static const aud_write_t s_updated =
    AUD_WRITE("list", "list.update", 200, s_list_json, aud_detail_name);
static const aud_write_t s_deleted = AUD_WRITE("list", "list.delete", 204, NULL, s_deleted_detail);

/* Read create's (create) or update's name and description; absent ones
 * stay *name NULL and *desc as given. 0, or -1 after adding field errors. */
static int s_fields(api_req_t *req, int create, const char **name, const char **desc)
{
    static const char *const allowed[] = {"name", "description", NULL};
    json_t *body = aud_body_object(req);
    if (body) {
        api_field_only(req, body, allowed);
        aud_field_name(req, body, "name", create, LIST_NAME_MAX, name);
        api_field_string(req, body, "description", 0, LIST_DESC_MAX, desc);
    }
    return api_errors_count(api_errors(req)) ? -1 : 0;
}

static int s_create(api_req_t *req)
{
    const char *name = NULL, *desc = "";
    if (s_fields(req, 1, &name, &desc) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), name, desc};
    return aud_write(req, &s_created,
                     "INSERT INTO lists AS l (organization_id, name, description)"
                     " VALUES ($1, $2, $3) RETURNING " LIST_COLS,
                     3, params, NULL, NULL);
}

static int s_index(api_req_t *req)
{
    return aud_page_index(
        req, AUD_INDEX("SELECT " LIST_COLS " FROM lists l WHERE l.organization_id = $1", "l"),
        s_list_json, 6, 0);
}

static int s_get(api_req_t *req)
{
    return aud_get_id(
        req, "SELECT " LIST_COLS " FROM lists l WHERE l.organization_id = $1 AND l.id = $2", "list",
        s_list_json);
}

static int s_update(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "list");
    const char *name = NULL, *desc = NULL;
    if (s_fields(req, 0, &name, &desc) != 0)
        return api_invalid(req);
    const char *params[] = {api_org(req), id, name, desc};
    return aud_write(req, &s_updated,
                     "UPDATE lists AS l SET name = coalesce($3, l.name),"
                     " description = coalesce($4, l.description), updated_at = now()"
                     " WHERE l.organization_id = $1 AND l.id = $2 RETURNING " LIST_COLS,
                     4, params, NULL, NULL);
}

static int s_delete(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "list");
    const char *params[] = {api_org(req), id};
    return aud_write(req, &s_deleted,
                     "DELETE FROM lists WHERE organization_id = $1 AND id = $2 RETURNING id, name,"
                     " (SELECT count(*) FROM list_members m WHERE m.list_id = lists.id)",
                     2, params, NULL, NULL);
}

/* ---- membership ---- */

/* What a membership body asks for, checked. */
typedef struct {
    char *ids;    /* JSON array text of canonical contact uuids */
    char *emails; /* JSON array text of normalized emails */
    size_t n_emails; /* how many emails */
} s_members_t;

static void s_members_clear(s_members_t *m)
{
    free(m->ids);
    free(m->emails);
    memset(m, 0, sizeof *m);
}

/* Check one array of the body ("contact_ids" or "emails"), appending the
 * accepted values to out. Errors name the element ("contact_ids[3]"). */
static void s_members_array(api_req_t *req, json_t *body, const char *field, int emails,
                            json_t *out, int *n_errors)
{
    json_t *arr = json_object_get(body, field);
    if (!arr)
        return;
    if (!json_is_array(arr)) {
        api_error_add(api_errors(req), field, "must be an array");
        (*n_errors)++;
        return;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        const char *why = "must be a string";
        char *val = NULL;
        if (s && !emails) {
            why = "is not a contact id (uuid)";
            if (json_string_length(v) == 36 && (val = strdup(s)) != NULL) {
                for (char *p = val; *p; p++)
                    *p = (char)tolower((unsigned char)*p);
                if (!api_is_uuid(val)) {
                    free(val);
                    val = NULL;
                }
            }
        } else if (s) {
            val = aud_email_normalize(s, json_string_length(v), &why);
        }
        if (val) {
            json_array_append_new(out, json_string(val));
            free(val);
        } else if ((*n_errors)++ < MEMBER_ERRORS_MAX) {
            char name[48];
            snprintf(name, sizeof name, "%s[%zu]", field, i);
            api_error_add(api_errors(req), name, "%s", why);
        }
    }
}

/* Validate a membership body into m. 0, or -1 with field errors added. */
static int s_members_body(api_req_t *req, s_members_t *m)
{
    static const char *const allowed[] = {"contact_ids", "emails", NULL};
    memset(m, 0, sizeof *m);
    json_t *body = aud_body_object(req);
    if (!body)
        return -1;
    api_field_only(req, body, allowed);
    json_t *ids = json_array(), *emails = json_array();
    int n_errors = 0;
    s_members_array(req, body, "contact_ids", 0, ids, &n_errors);
    s_members_array(req, body, "emails", 1, emails, &n_errors);
    size_t total = json_array_size(json_object_get(body, "contact_ids")) +
                   json_array_size(json_object_get(body, "emails"));
    if (total == 0 && n_errors == 0)
        api_error_add(api_errors(req), "contact_ids", "give contact_ids and/or emails");
    else if (total > MEMBERS_MAX)
        api_error_add(api_errors(req), "contact_ids",
                      "at most %d contact ids and emails together (got %zu)", MEMBERS_MAX,
                      total);
    if (api_errors_count(api_errors(req)) == 0) {
        m->n_emails = json_array_size(emails);
        m->ids = json_dumps(ids, JSON_COMPACT);
        m->emails = json_dumps(emails, JSON_COMPACT);
    }
    json_decref(ids);
    json_decref(emails);
    if (api_errors_count(api_errors(req)))
        return -1;
    if (!m->ids || !m->emails) {
        s_members_clear(m);
        api_error_add(api_errors(req), "body", "out of memory");
        return -1;
    }
    return 0;
}

/* The start of a membership change: the path's list id into *id, the
 * checked body into *m and a transaction opened. 0, or -1 after answering
 * (404, 422, 503) with the status in *rc and nothing left to free. */
static int s_members_open(api_req_t *req, const char **id, s_members_t *m, int *rc)
{
    *id = api_param(req, "id");
    if (!api_is_uuid(*id)) {
        *rc = api_not_found(req, "list");
        return -1;
    }
    if (s_members_body(req, m) != 0) {
        *rc = api_invalid(req);
        return -1;
    }
    if (api_tx_begin(req) != 0) {
        s_members_clear(m);
        *rc = api_problem(req, 503, "Service Unavailable", "database unavailable");
        return -1;
    }
    return 0;
}

/* Tell the tenant actor about the committed list_added events (ev is the
 * {"n","min","max"} object the insert returned). */
static void s_trigger_added(api_req_t *req, const char *list_id, json_t *ev)
{
    json_int_t n = json_integer_value(json_object_get(ev, "n"));
    if (n <= 0)
        return;
    /* One id is the single form; more is the range form the tenant actor
     * marks in one statement (it only ever touches this organization's
     * undispatched rows in the range, each handled under its own name). */
    json_t *body;
    if (n == 1)
        body = json_pack("{s:s, s:O}", "list_id", list_id, "event_id", json_object_get(ev, "min"));
    else
        body = json_pack("{s:s, s:O, s:O, s:I}", "list_id", list_id, "first_event_id",
                         json_object_get(ev, "min"), "last_event_id",
                         json_object_get(ev, "max"), "count", n);
    if (body)
        api_trigger(req, "list_added", body);
}

/* Contacts for the emails that are not contacts yet, created subscribed.
 * Distinct by lower(email) so the same address twice is one contact. */
static const char s_sql_upsert_emails[] =
    "WITH ins AS (INSERT INTO contacts (organization_id, email)"
    " SELECT DISTINCT ON (lower(e)) $1::uuid, e FROM jsonb_array_elements_text($2::jsonb) e"
    " ORDER BY lower(e), e"
    " ON CONFLICT (organization_id, lower(email)) DO NOTHING RETURNING id)"
    " SELECT count(*) FROM ins";

/* Add the organization's contacts named by id ($3) or email ($4) to the list
 * ($2), one events row per new member. Returns list found (0/1), added,
 * found, the events summary and the requested ids that are not contacts
 * of this organization. */
static const char s_sql_add[] =
    "WITH lst AS (SELECT id FROM lists WHERE organization_id = $1 AND id = $2::uuid),"
    " want AS (SELECT DISTINCT x::uuid AS id FROM jsonb_array_elements_text($3::jsonb) x),"
    " found AS (SELECT c.id FROM contacts c JOIN want w ON w.id = c.id"
    "  WHERE c.organization_id = $1"
    "  UNION SELECT c.id FROM contacts c WHERE c.organization_id = $1 AND lower(c.email) IN"
    "  (SELECT lower(e) FROM jsonb_array_elements_text($4::jsonb) e)),"
    " ins AS (INSERT INTO list_members (organization_id, list_id, contact_id)"
    "  SELECT $1, lst.id, f.id FROM found f CROSS JOIN lst ORDER BY f.id"
    "  ON CONFLICT DO NOTHING RETURNING contact_id),"
    " ev AS (INSERT INTO events (organization_id, name, contact_id, payload)"
    "  SELECT $1, 'list_added', i.contact_id,"
    "  jsonb_build_object('list_id', $2::text, 'contact_id', i.contact_id)"
    "  FROM ins i ORDER BY i.contact_id RETURNING id)"
    " SELECT (SELECT count(*) FROM lst), (SELECT count(*) FROM ins),"
    " (SELECT count(*) FROM found),"
    " (SELECT json_build_object('n', count(*), 'min', min(id), 'max', max(id)) FROM ev),"
    " (SELECT coalesce(json_agg(w.id ORDER BY w.id), '[]') FROM want w"
    "  WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.id = w.id))";

static int s_add_members(api_req_t *req)
{
    const char *id;
    s_members_t m;
    int rc = 0;
    if (s_members_open(req, &id, &m, &rc) != 0)
        return rc;
    long long created = 0;
    db_result_t *res = NULL;
    if (m.n_emails > 0) {
        const char *p1[] = {api_org(req), m.emails};
        res = aud_query(req, 1, s_sql_upsert_emails, 2, p1, &rc);
        if (!res) {
            s_members_clear(&m);
            return rc;
        }
        created = strtoll(db_result_get(res, 0, 0), NULL, 10);
        db_result_free(&res);
    }
    const char *p2[] = {api_org(req), id, m.ids, m.emails};
    res = aud_query(req, 1, s_sql_add, 4, p2, &rc);
    s_members_clear(&m);
    if (!res)
        return rc;
    if (strcmp(db_result_get(res, 0, 0), "1") != 0) {
        db_result_free(&res);
        api_tx_rollback(req);
        return api_not_found(req, "list");
    }
    long long added = strtoll(db_result_get(res, 0, 1), NULL, 10);
    long long found = strtoll(db_result_get(res, 0, 2), NULL, 10);
    json_t *ev = aud_json_col(db_result_get(res, 0, 3));
    json_t *missing = aud_json_col(db_result_get(res, 0, 4));
    db_result_free(&res);
    api_audit(req, "list.contacts_add", "list", id,
              json_pack("{s:I, s:I, s:I}", "added", (json_int_t)added, "created",
                        (json_int_t)created, "not_found", (json_int_t)json_array_size(missing)));
    if (api_tx_commit(req) != 0) {
        json_decref(ev);
        json_decref(missing);
        return api_problem(req, 500, "Internal Server Error", "could not commit the change");
    }
    /* After the commit: the tenant actor must find the rows it is told of. */
    s_trigger_added(req, id, ev);
    json_decref(ev);
    return api_json(req, 200,
                    json_pack("{s:I, s:I, s:I, s:o}", "added", (json_int_t)added, "already",
                              (json_int_t)(found - added), "created", (json_int_t)created,
                              "not_found", json_is_array(missing) ? missing : json_array()));
}

const char s_sql_remove[] =
    "WITH lst AS (SELECT id FROM lists WHERE organization_id = $1 AND id = $2::uuid),"
    " del AS (DELETE FROM list_members m USING contacts c"
    "  WHERE m.organization_id = $1 AND m.list_id = $2::uuid AND c.id = m.contact_id"
    "  AND c.organization_id = $1"
    "  AND (m.contact_id IN (SELECT x::uuid FROM jsonb_array_elements_text($3::jsonb) x)"
    "   OR lower(c.email) IN (SELECT lower(e) FROM jsonb_array_elements_text($4::jsonb) e))"
    "  RETURNING m.contact_id)"
    " SELECT (SELECT count(*) FROM lst), (SELECT count(*) FROM del)";

static int s_remove_members(api_req_t *req)
{
    const char *id;
    s_members_t m;
    int rc = 0;
    if (s_members_open(req, &id, &m, &rc) != 0)
        return rc;
    const char *params[] = {api_org(req), id, m.ids, m.emails};
    db_result_t *res = aud_query(req, 1, s_sql_remove, 4, params, &rc);
    s_members_clear(&m);
    if (!res)
        return rc;
    int exists = strcmp(db_result_get(res, 0, 0), "1") == 0;
    long long removed = strtoll(db_result_get(res, 0, 1), NULL, 10);
    db_result_free(&res);
    if (!exists) {
        api_tx_rollback(req);
        return api_not_found(req, "list");
    }
    api_audit(req, "list.contacts_remove", "list", id,
              json_pack("{s:I}", "removed", (json_int_t)removed));
    return aud_commit(req, 200, json_pack("{s:I}", "removed", (json_int_t)removed));
}

const api_route_t api_routes_lists[] = {
    {"POST", "/lists", s_create, API_SCOPE_FULL, "lists.create", API_IDEMPOTENT},
    {"GET", "/lists", s_index, API_SCOPE_READ, "lists.list", 0},
    {"GET", "/lists/{id}", s_get, API_SCOPE_READ, "lists.get", 0},
    {"PATCH", "/lists/{id}", s_update, API_SCOPE_FULL, "lists.update", 0},
    {"DELETE", "/lists/{id}", s_delete, API_SCOPE_FULL, "lists.delete", 0},
    {"POST", "/lists/{id}/contacts", s_add_members, API_SCOPE_FULL, "lists.add_contacts",
     API_IDEMPOTENT | API_BATCH},
    {"DELETE", "/lists/{id}/contacts", s_remove_members, API_SCOPE_FULL,
     "lists.remove_contacts", API_BATCH},
    {0},
};
