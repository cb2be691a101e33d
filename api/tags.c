/*
 * tags - the /tags resource: an organization's tag names (contacts carry
 * them through /contacts/{id}/tags; segments test them with has_tag).
 *
 * A name is 1..100 bytes of UTF-8 without control characters and unique in
 * its organization (a duplicate is a 409). Names are compared byte for byte,
 * exactly as the rule language's has_tag does.
 */
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "db.h"
#include "sbuf.h"

#include "audience.h"
#include "rest.h"

#define TAG_NAME_MAX 100

/* Columns of a tag row, in s_tag_json order; the table is aliased t. */
#define TAG_COLS                                                                           \
    "t.id, t.name, (SELECT count(*) FROM contact_tags ct WHERE ct.tag_id = t.id"           \
    " AND ct.organization_id = t.organization_id), " AUD_TS("t.created_at") ", "           \
    AUD_US("t.created_at")

static json_t *s_tag_json(const db_result_t *res, int row)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", db_result_get(res, row, 0), "name",
                     db_result_get(res, row, 1), "contact_count",
                     (json_int_t)strtoll(db_result_get(res, row, 2), NULL, 10), "created_at",
                     db_result_get(res, row, 3));
}

/* A tag's row is TAG_COLS (deleted: id and name); the audit detail names
 * it. */
static const aud_write_t s_created =
    AUD_WRITE("tag", "tag.create", 201, s_tag_json, aud_detail_name);
static const aud_write_t s_deleted = AUD_WRITE("tag", "tag.delete", 204, NULL, aud_detail_name);

static int s_create(api_req_t *req)
{
    static const char *const allowed[] = {"name", NULL};
    const char *name = NULL;
    json_t *body = aud_body_object(req);
    if (body) {
        api_field_only(req, body, allowed);
        aud_field_name(req, body, "name", 1, TAG_NAME_MAX, &name);
    }
    if (api_errors_count(api_errors(req)))
        return api_invalid(req);
    const char *params[] = {api_org(req), name};
    return aud_write(req, &s_created,
                     "INSERT INTO tags AS t (organization_id, name) VALUES ($1, $2)"
                     " RETURNING " TAG_COLS,
                     2, params, NULL, NULL);
}

static int s_index(api_req_t *req)
{
    return aud_page_index(
        req, AUD_INDEX("SELECT " TAG_COLS " FROM tags t WHERE t.organization_id = $1", "t"),
        s_tag_json, 4, 0);
}

static int s_get(api_req_t *req)
{
    return aud_get_id(req,
                      "SELECT " TAG_COLS " FROM tags t WHERE t.organization_id = $1 AND t.id = $2",
                      "tag", s_tag_json);
}

static int s_delete(api_req_t *req)
{
    const char *id = api_param(req, "id");
    if (!api_is_uuid(id))
        return api_not_found(req, "tag");
    const char *params[] = {api_org(req), id};
    return aud_write(req, &s_deleted,
                     "DELETE FROM tags WHERE organization_id = $1 AND id = $2 RETURNING id, name",
                     2, params, NULL, NULL);
}

const api_route_t api_routes_tags[] = {
    {"POST", "/tags", s_create, API_SCOPE_FULL, "tags.create", API_IDEMPOTENT},
    {"GET", "/tags", s_index, API_SCOPE_READ, "tags.list", 0},
    {"GET", "/tags/{id}", s_get, API_SCOPE_READ, "tags.get", 0},
    {"DELETE", "/tags/{id}", s_delete, API_SCOPE_FULL, "tags.delete", 0},
    {0},
};
