/*
 * rule - the segment / flow-condition rule language: parse JSON, compile to
 * parameterized SQL, or evaluate in memory against one contact.
 *
 * A rule is one JSON object of exactly one of these shapes:
 *
 *   {"and": [rule, ...]}            all must hold (1..1000 children)
 *   {"or":  [rule, ...]}            any must hold (1..1000 children)
 *   {"not": rule}
 *   {"field": F, "op": OP, "value": V}
 *   {"in_list": "<list uuid>"}      the contact is a member of the list
 *   {"has_tag": "<tag name>"}       the contact carries the tag
 *
 * Fields F and the operators each accepts:
 *
 *   "email"          eq neq contains starts_with gt gte lt lte in exists  (string values)
 *   "status"         eq neq in exists   (subscribed|unsubscribed|bounced|complained)
 *   "created_at"     eq neq gt gte lt lte exists   (RFC 3339 timestamp values,
 *                    e.g. "2024-05-01T12:00:00Z", "2024-05-01T12:00:00.5+03:30";
 *                    fractions beyond microseconds are truncated)
 *   "fields.<name>"  custom field, <name> matching [A-Za-z0-9_]{1,64}:
 *                    eq neq      string, number or boolean value
 *                    gt gte lt lte   string or number value
 *                    contains starts_with   string value
 *                    in          array of strings / numbers / booleans
 *                    exists      no value
 *
 * "exists" takes no "value"; "in" takes an array of 1..1000 scalars.
 *
 * Semantics (SQL and rule_eval agree on all of them):
 *  - Comparisons are typed. A custom field only compares with a value of the
 *    same JSON kind: a string value matches string fields (byte-exact,
 *    ordering by bytes as in COLLATE "C"), a number value matches number
 *    fields (numerically: 30 eq 30.0), a boolean matches booleans. A field
 *    that is missing, null or of another kind makes every comparison false,
 *    including neq: {"op":"neq","value":"pro"} is false for a contact without
 *    the field. Use {"not": {... "op":"eq" ...}} to include those contacts
 *    (not(false) is true). The same holds for email/status/created_at
 *    when the column is NULL.
 *  - exists on a custom field is true when the key is present, even with a
 *    JSON null value; on email/status/created_at it means "not NULL".
 *  - contains / starts_with are case-sensitive byte matches; "" matches any
 *    string.
 *  - Numbers are exact in SQL (numeric). rule_eval compares integers exactly
 *    and other numbers as doubles, so two decimals that differ only beyond
 *    double precision (~16 significant digits) may compare differently.
 *
 * Limits: nesting depth <= 32, at most 1000 rule nodes, at most 5000 "in"
 * values in total, strings <= 1024 bytes (valid UTF-8 without NUL), rule
 * text <= 1 MiB. Unknown keys, operators and fields are errors.
 *
 * Errors name the JSON path of the bad part, for example
 *   rule.and[2].op: unknown operator 'like'
 * Peer strings quoted in errors are truncated and escaped (printable ASCII).
 *
 * Security: compiled SQL never contains a value or a field name: all of them
 * are bound parameters ($N); the SQL text only holds our own fixed words.
 */
#ifndef POSTCHI_RULE_H
#define POSTCHI_RULE_H

#include <stddef.h>

#include <jansson.h>

#include "sbuf.h"

#define RULE_MAX_DEPTH 32
#define RULE_MAX_NODES 1000
#define RULE_MAX_IN_VALUES 1000
#define RULE_MAX_TOTAL_IN_VALUES 5000
#define RULE_MAX_STRING 1024
#define RULE_MAX_TEXT (1024 * 1024)

typedef struct rule rule_t;

/* Kinds of membership rule_eval asks its callback about. */
typedef enum { RULE_MEMBER_LIST = 1, RULE_MEMBER_TAG = 2 } rule_member_t;

/* Membership lookup for rule_eval: is the contact in list `key` (a lowercase
 * UUID) or does it carry tag `key` (a tag name)? Return 1 yes, 0 no, -1 on
 * failure (the evaluation then returns -1). */
typedef int (*rule_lookup_fn)(void *arg, rule_member_t kind, const char *key);

/* A compiled rule: one SQL boolean expression over a contacts table aliased
 * `c` (c.id, c.organization_id, c.email, c.status, c.fields jsonb,
 * c.created_at timestamptz) that is never NULL, plus its text parameters
 * $first_param .. $first_param + n_params - 1, in order. Pass params to
 * db_query as (const char *const *)params. Free with rule_sql_clear. */
typedef struct {
    char *sql;       /* the boolean expression, NUL-terminated */
    char **params;   /* n_params owned strings, never NULL entries */
    int n_params;    /* number of parameters used */
    int first_param; /* number of the first parameter ($first_param) */
} rule_sql_t;

/* Parse and validate a rule from a JSON value. Returns the rule (caller owns
 * it, rule_destroy) or NULL with a message in err ("rule.path: reason").
 * The JSON value is not kept. err may be NULL. */
rule_t *rule_parse(const json_t *json, sbuf_t *err);
/* Same from JSON text of len bytes (need not be NUL-terminated). */
rule_t *rule_parse_text(const char *text, size_t len, sbuf_t *err);
/* NULL-safe and idempotent; sets *self_p to NULL. */
void rule_destroy(rule_t **self_p);

/* Compile to SQL with parameters numbered from first_param (>= 1), so the
 * caller can keep $1.. for its own (e.g. organization_id). 0 with *out filled
 * (caller frees with rule_sql_clear), or -1 with err set and *out empty
 * (out of memory, or more than 65535 parameters). */
int rule_compile_sql(const rule_t *self, int first_param, rule_sql_t *out, sbuf_t *err);
/* Free what rule_compile_sql put in sql and zero it. NULL-safe, idempotent. */
void rule_sql_clear(rule_sql_t *sql);

/* Evaluate against a contact object {"email","status","created_at",
 * "fields":{...}} (created_at in RFC 3339 or PostgreSQL's ISO output form).
 * lookup answers in_list / has_tag (may be NULL when the rule has none).
 * Returns 1 (match), 0 (no match) or -1 (contact is not an object, or a
 * lookup failed or was needed but missing). and/or short-circuit, so the
 * lookup is only asked what decides the answer. */
int rule_eval(const rule_t *self, const json_t *contact, rule_lookup_fn lookup, void *arg);

/* Parse an RFC 3339 timestamp (also accepts a space for 'T' and PostgreSQL's
 * "+HH" offsets when lenient is non-zero) into microseconds since the Unix
 * epoch. 0 or -1 when it is not one. Shared with flows' delay "until". */
int rule_parse_time(const char *s, size_t len, int lenient, long long *us_out);

#endif
