/*
 * rule - parse, validate, compile to SQL and evaluate segment rules.
 *
 * How: rule_parse walks the JSON once, checking every shape, type and limit
 * and building a tree of nodes that holds only validated, typed values (so
 * compile and eval cannot meet bad input). rule_compile_sql emits a fixed
 * SQL skeleton per node and binds every value and custom-field name as a
 * parameter. rule_eval walks the same tree against a contact object with
 * the semantics the SQL has (see rule.h); the integration test
 * test_rule_sql runs both against PostgreSQL to keep them in step.
 *
 * What can go wrong: bad rules get one error naming the JSON path; the
 * recursion is bounded by RULE_MAX_DEPTH before it descends, so deep input
 * cannot exhaust the stack; out of memory is reported as an error.
 *
 * Security: no peer byte ever reaches the SQL text. The only strings that
 * are appended to SQL are the literals in this file and parameter numbers.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json_depth.h"
#include "sbuf.h"

#include "rule.h"

typedef enum { K_AND, K_OR, K_NOT, K_CMP, K_IN_LIST, K_HAS_TAG } s_kind_t;
typedef enum { F_EMAIL, F_STATUS, F_CREATED_AT, F_CUSTOM } s_field_t;
typedef enum {
    OP_EQ,
    OP_NEQ,
    OP_CONTAINS,
    OP_STARTS_WITH,
    OP_EXISTS,
    OP_GT,
    OP_GTE,
    OP_LT,
    OP_LTE,
    OP_IN
} s_op_t;
/* Value kinds; the comparison rules in rule.h are per kind. */
typedef enum { V_STRING, V_INT, V_REAL, V_BOOL, V_TIME } s_vtype_t;

#define OPBIT(op) (1u << (op))
#define OPS_ALL 0x3ffu
#define OPS_ORDER (OPBIT(OP_GT) | OPBIT(OP_GTE) | OPBIT(OP_LT) | OPBIT(OP_LTE))
#define OPS_TEXT (OPBIT(OP_CONTAINS) | OPBIT(OP_STARTS_WITH))

typedef struct {
    s_vtype_t type; /* what kind of value */
    char *text;     /* parameter text: the string, number, "true"/"false" or
                       canonical timestamp; owned */
    size_t len;     /* bytes in text */
    long long i;    /* V_INT value, V_BOOL 0/1 */
    double d;       /* V_REAL value */
    long long us;   /* V_TIME microseconds since the epoch */
} s_value_t;

struct rule {
    s_kind_t kind;      /* which shape */
    rule_t **kids;      /* K_AND/K_OR children, K_NOT: one; owned */
    size_t n_kids;      /* entries in kids */
    s_field_t field;    /* K_CMP: which field */
    char *name;         /* K_CMP on F_CUSTOM: the custom field name; owned */
    s_op_t op;          /* K_CMP: operator */
    s_value_t *values;  /* K_CMP: one value, or the "in" list; owned */
    size_t n_values;    /* entries in values (0 for exists) */
    char *key;          /* K_IN_LIST: lowercase uuid, K_HAS_TAG: tag name */
};

/* Operators: the JSON name and the SQL comparison it becomes (when it is
 * a plain binary comparison). */
static const struct {
    const char *name;
    s_op_t op;
    const char *sql;
} s_ops[] = {
    {"eq", OP_EQ, "="},         {"neq", OP_NEQ, "<>"},   {"contains", OP_CONTAINS, NULL},
    {"starts_with", OP_STARTS_WITH, NULL}, {"exists", OP_EXISTS, NULL}, {"gt", OP_GT, ">"},
    {"gte", OP_GTE, ">="},      {"lt", OP_LT, "<"},      {"lte", OP_LTE, "<="},
    {"in", OP_IN, NULL},
};

/* Built-in fields: name, column, the operators each accepts. */
static const struct {
    const char *name;
    s_field_t field;
    const char *column;
    unsigned ops;
} s_fields[] = {
    {"email", F_EMAIL, "c.email", OPS_ALL},
    {"status", F_STATUS, "c.status", OPBIT(OP_EQ) | OPBIT(OP_NEQ) | OPBIT(OP_IN) | OPBIT(OP_EXISTS)},
    {"created_at", F_CREATED_AT, "c.created_at", OPBIT(OP_EQ) | OPBIT(OP_NEQ) | OPS_ORDER | OPBIT(OP_EXISTS)},
};

static const char *const s_statuses[] = {"subscribed", "unsubscribed", "bounced", "complained"};

#define CUSTOM_PREFIX "fields."
#define CUSTOM_NAME_MAX 64

/* --------------------------------------------------------------------- */
/* Timestamps                                                            */

typedef struct {
    int year, month, day, hour, min, sec; /* local wall-clock fields */
    int usec;                              /* fraction, truncated to microseconds */
    int off_sign, off_h, off_m, off_s;     /* UTC offset */
} s_time_t;

static int s_digits(const char *s, size_t len, size_t at, int n, int *out)
{
    int v = 0;
    if (at + (size_t)n > len)
        return -1;
    for (int k = 0; k < n; k++) {
        if (!isdigit((unsigned char)s[at + (size_t)k]))
            return -1;
        v = v * 10 + (s[at + (size_t)k] - '0');
    }
    *out = v;
    return 0;
}

static int s_days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil), which is also what PostgreSQL uses. */
static long long s_days_from_civil(int y, int m, int d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Strict RFC 3339 (lenient: also ' ' for 'T' and offsets +HH, +HHMM,
 * +HH:MM:SS as PostgreSQL prints them). Leap seconds (:60) are refused. */
static int s_time_parse(const char *s, size_t len, int lenient, s_time_t *t)
{
    size_t at = 0;
    memset(t, 0, sizeof *t);
    if (s_digits(s, len, 0, 4, &t->year) || len < 19 || s[4] != '-' ||
        s_digits(s, len, 5, 2, &t->month) || s[7] != '-' || s_digits(s, len, 8, 2, &t->day))
        return -1;
    if (!(s[10] == 'T' || s[10] == 't' || (lenient && s[10] == ' ')))
        return -1;
    if (s_digits(s, len, 11, 2, &t->hour) || s[13] != ':' || s_digits(s, len, 14, 2, &t->min) ||
        s[16] != ':' || s_digits(s, len, 17, 2, &t->sec))
        return -1;
    if (t->year < 1 || t->month < 1 || t->month > 12 || t->day < 1 ||
        t->day > s_days_in_month(t->year, t->month) || t->hour > 23 || t->min > 59 || t->sec > 59)
        return -1;
    at = 19;
    if (at < len && s[at] == '.') {
        int n = 0, scale = 100000;
        at++;
        while (at < len && isdigit((unsigned char)s[at])) {
            if (scale > 0) {
                t->usec += (s[at] - '0') * scale;
                scale /= 10;
            }
            at++;
            n++;
        }
        if (n == 0)
            return -1;
    }
    if (at < len && (s[at] == 'Z' || s[at] == 'z')) {
        t->off_sign = 1;
        return at + 1 == len ? 0 : -1;
    }
    if (at >= len || (s[at] != '+' && s[at] != '-'))
        return -1;
    t->off_sign = s[at] == '-' ? -1 : 1;
    at++;
    if (s_digits(s, len, at, 2, &t->off_h))
        return -1;
    at += 2;
    if (at < len && s[at] == ':') {
        if (s_digits(s, len, at + 1, 2, &t->off_m))
            return -1;
        at += 3;
        if (lenient && at < len && s[at] == ':') {
            if (s_digits(s, len, at + 1, 2, &t->off_s))
                return -1;
            at += 3;
        }
    } else if (!lenient) {
        return -1;
    } else if (at < len) {
        if (s_digits(s, len, at, 2, &t->off_m))
            return -1;
        at += 2;
    }
    if (t->off_h > 23 || t->off_m > 59 || t->off_s > 59)
        return -1;
    return at == len ? 0 : -1;
}

static long long s_time_us(const s_time_t *t)
{
    long long secs = s_days_from_civil(t->year, t->month, t->day) * 86400LL + t->hour * 3600LL +
                     t->min * 60LL + t->sec;
    secs -= t->off_sign * (t->off_h * 3600LL + t->off_m * 60LL + t->off_s);
    return secs * 1000000LL + t->usec;
}

int rule_parse_time(const char *s, size_t len, int lenient, long long *us_out)
{
    s_time_t t;
    if (!s || s_time_parse(s, len, lenient, &t))
        return -1;
    *us_out = s_time_us(&t);
    return 0;
}

/* --------------------------------------------------------------------- */
/* Destruction                                                           */

static void s_node_free(rule_t *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n_kids; i++)
        s_node_free(n->kids[i]);
    free(n->kids);
    for (size_t i = 0; i < n->n_values; i++)
        free(n->values[i].text);
    free(n->values);
    free(n->name);
    free(n->key);
    free(n);
}

void rule_destroy(rule_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_node_free(*self_p);
    *self_p = NULL;
}

/* --------------------------------------------------------------------- */
/* Parsing                                                               */

typedef struct {
    sbuf_t *err;      /* where the one error message goes (may be NULL) */
    sbuf_t *path;     /* JSON path of the node being parsed: "rule.and[2]" */
    sbuf_t *tmp;      /* scratch for quoting peer strings in messages */
    size_t nodes;     /* rule nodes seen so far */
    size_t in_values; /* "in" values seen so far, over the whole rule */
} s_parse_t;

/* Peer bytes made safe to print into out: at most 64 bytes, printable
 * ASCII kept, the rest as \xNN (and the quote and backslash too when the
 * text goes between quotes, so it cannot fake the end of the quote). */
static const char *s_printable(sbuf_t *out, const char *s, size_t len, int quoted)
{
    size_t max = len > 64 ? 64 : len;
    sbuf_reset(out);
    for (size_t i = 0; i < max; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f && !(quoted && (ch == '\'' || ch == '\\')))
            sbuf_append(out, &ch, 1);
        else
            sbuf_appendf(out, "\\x%02x", ch);
    }
    if (max < len)
        sbuf_append_str(out, "...");
    return sbuf_data(out);
}

/* Peer bytes for a message, between quotes. Valid until the next call. */
static const char *s_show(s_parse_t *p, const char *s, size_t len)
{
    return s_printable(p->tmp, s, len, 1);
}

static void *s_fail(s_parse_t *p, const char *suffix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Write "<path><suffix>: <message>" to err; returns NULL for convenience. */
static void *s_fail(s_parse_t *p, const char *suffix, const char *fmt, ...)
{
    if (!p->err)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    sbuf_appendf(p->err, "%s%s: ", sbuf_data(p->path), suffix);
    sbuf_vappendf(p->err, fmt, ap);
    va_end(ap);
    return NULL;
}

static int s_op_lookup(const char *name, s_op_t *op)
{
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++)
        if (strcmp(s_ops[i].name, name) == 0) {
            *op = s_ops[i].op;
            return 0;
        }
    return -1;
}

static const char *s_op_name(s_op_t op)
{
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++)
        if (s_ops[i].op == op)
            return s_ops[i].name;
    return "?";
}

static const char *s_op_sql(s_op_t op)
{
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++)
        if (s_ops[i].op == op)
            return s_ops[i].sql;
    return NULL;
}

/* A JSON string that is within limits and has no NUL; NULL (error written)
 * otherwise. */
static const char *s_string(s_parse_t *p, const json_t *j, const char *suffix, const char *what,
                            size_t *len_out)
{
    if (!json_is_string(j))
        return s_fail(p, suffix, "expected %s", what);
    const char *s = json_string_value(j);
    size_t len = json_string_length(j);
    if (len > RULE_MAX_STRING)
        return s_fail(p, suffix, "string longer than %d bytes", RULE_MAX_STRING);
    if (strlen(s) != len)
        return s_fail(p, suffix, "string contains a NUL byte");
    *len_out = len;
    return s;
}

static char *s_strndup(const char *s, size_t len)
{
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = 0;
    }
    return d;
}

/* The shortest decimal that reads back as the same double, so PostgreSQL's
 * exact numeric sees the number the user wrote (0.1, not 0.1000...0001). */
static char *s_format_real(double d)
{
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return strdup(buf);
}

static int s_is_uuid(const char *s, size_t len)
{
    if (len != 36)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

/* What a comparison on this field with this operator takes, for messages. */
static const char *s_value_wants(s_field_t field, s_op_t op)
{
    if (field == F_CREATED_AT)
        return "an RFC 3339 timestamp string";
    if (field != F_CUSTOM || (OPBIT(op) & OPS_TEXT))
        return "a string";
    if (OPBIT(op) & OPS_ORDER)
        return "a string or a number";
    return "a string, a number or a boolean";
}

/* Validate one scalar value for field/op and fill *v. -1 with the error. */
static int s_parse_value(s_parse_t *p, const rule_t *n, const json_t *j, const char *suffix,
                         s_value_t *v)
{
    const char *wants = s_value_wants(n->field, n->op);
    int custom_any = n->field == F_CUSTOM && !(OPBIT(n->op) & OPS_TEXT);
    memset(v, 0, sizeof *v);
    if (json_is_string(j)) {
        size_t len = 0;
        const char *s = s_string(p, j, suffix, wants, &len);
        if (!s)
            return -1;
        if (n->field == F_CREATED_AT) {
            s_time_t t;
            if (s_time_parse(s, len, 0, &t)) {
                s_fail(p, suffix, "not an RFC 3339 timestamp '%s' (want e.g. 2024-05-01T12:00:00Z)",
                       s_show(p, s, len));
                return -1;
            }
            v->type = V_TIME;
            v->us = s_time_us(&t);
            v->text = malloc(48);
            if (v->text)
                snprintf(v->text, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%06d%c%02d:%02d", t.year,
                         t.month, t.day, t.hour, t.min, t.sec, t.usec, t.off_sign < 0 ? '-' : '+',
                         t.off_h, t.off_m);
        } else {
            if (n->field == F_STATUS) {
                size_t k = 0, count = sizeof s_statuses / sizeof s_statuses[0];
                while (k < count && strcmp(s_statuses[k], s) != 0)
                    k++;
                if (k == count) {
                    s_fail(p, suffix,
                           "unknown status '%s' (want subscribed, unsubscribed, bounced or "
                           "complained)",
                           s_show(p, s, len));
                    return -1;
                }
            }
            v->type = V_STRING;
            v->text = s_strndup(s, len);
        }
        v->len = v->text ? strlen(v->text) : 0;
    } else if (json_is_integer(j) && custom_any) {
        v->type = V_INT;
        v->i = json_integer_value(j);
        v->text = malloc(32);
        if (v->text)
            snprintf(v->text, 32, "%lld", v->i);
    } else if (json_is_real(j) && custom_any) {
        v->type = V_REAL;
        v->d = json_real_value(j);
        v->text = s_format_real(v->d);
    } else if (json_is_boolean(j) && custom_any && !(OPBIT(n->op) & OPS_ORDER)) {
        v->type = V_BOOL;
        v->i = json_is_true(j);
        v->text = strdup(v->i ? "true" : "false");
    } else {
        s_fail(p, suffix, "expected %s", wants);
        return -1;
    }
    if (!v->text) {
        s_fail(p, suffix, "out of memory");
        return -1;
    }
    if (v->type != V_STRING)
        v->len = strlen(v->text);
    return 0;
}

/* Fill the field of a comparison node from its "field" string. */
static int s_parse_field(s_parse_t *p, rule_t *n, const json_t *j)
{
    size_t len = 0;
    const char *s = s_string(p, j, ".field", "a field name string", &len);
    if (!s)
        return -1;
    size_t plen = strlen(CUSTOM_PREFIX);
    if (len >= plen && memcmp(s, CUSTOM_PREFIX, plen) == 0) {
        const char *name = s + plen;
        size_t nlen = len - plen;
        int ok = nlen >= 1 && nlen <= CUSTOM_NAME_MAX;
        for (size_t i = 0; ok && i < nlen; i++)
            ok = isalnum((unsigned char)name[i]) || name[i] == '_';
        if (!ok) {
            s_fail(p, ".field", "invalid custom field name '%s' (want [A-Za-z0-9_]{1,64})",
                   s_show(p, name, nlen));
            return -1;
        }
        n->field = F_CUSTOM;
        n->name = s_strndup(name, nlen);
        if (!n->name) {
            s_fail(p, ".field", "out of memory");
            return -1;
        }
        return 0;
    }
    for (size_t i = 0; i < sizeof s_fields / sizeof s_fields[0]; i++)
        if (strcmp(s_fields[i].name, s) == 0) {
            n->field = s_fields[i].field;
            return 0;
        }
    s_fail(p, ".field", "unknown field '%s' (want email, status, created_at or fields.<name>)",
           s_show(p, s, len));
    return -1;
}

static unsigned s_field_ops(s_field_t field)
{
    for (size_t i = 0; i < sizeof s_fields / sizeof s_fields[0]; i++)
        if (s_fields[i].field == field)
            return s_fields[i].ops;
    return OPS_ALL;
}

static const char *s_field_column(s_field_t field)
{
    for (size_t i = 0; i < sizeof s_fields / sizeof s_fields[0]; i++)
        if (s_fields[i].field == field)
            return s_fields[i].column;
    return NULL;
}

/* {"field":..., "op":..., "value":...} into n. */
static int s_parse_cmp(s_parse_t *p, rule_t *n, const json_t *obj)
{
    const json_t *jop = json_object_get(obj, "op");
    const json_t *jval = json_object_get(obj, "value");
    size_t len = 0;
    if (s_parse_field(p, n, json_object_get(obj, "field")))
        return -1;
    if (!jop) {
        s_fail(p, "", "missing 'op'");
        return -1;
    }
    const char *op = s_string(p, jop, ".op", "an operator string", &len);
    if (!op)
        return -1;
    if (s_op_lookup(op, &n->op)) {
        s_fail(p, ".op", "unknown operator '%s'", s_show(p, op, len));
        return -1;
    }
    if (!(s_field_ops(n->field) & OPBIT(n->op))) {
        const json_t *jf = json_object_get(obj, "field");
        s_fail(p, ".op", "operator '%s' does not apply to field '%s'", s_op_name(n->op),
               s_show(p, json_string_value(jf), json_string_length(jf)));
        return -1;
    }
    if (n->op == OP_EXISTS) {
        if (jval) {
            s_fail(p, ".value", "operator 'exists' takes no value");
            return -1;
        }
        return 0;
    }
    if (!jval) {
        s_fail(p, "", "missing 'value' for operator '%s'", s_op_name(n->op));
        return -1;
    }
    if (n->op != OP_IN) {
        n->values = calloc(1, sizeof *n->values);
        if (!n->values) {
            s_fail(p, ".value", "out of memory");
            return -1;
        }
        n->n_values = 1;
        return s_parse_value(p, n, jval, ".value", &n->values[0]);
    }
    size_t count = json_is_array(jval) ? json_array_size(jval) : 0;
    if (count < 1 || count > RULE_MAX_IN_VALUES) {
        s_fail(p, ".value", "operator 'in' needs an array of 1 to %d values", RULE_MAX_IN_VALUES);
        return -1;
    }
    p->in_values += count;
    if (p->in_values > RULE_MAX_TOTAL_IN_VALUES) {
        s_fail(p, ".value", "more than %d 'in' values in the whole rule",
               RULE_MAX_TOTAL_IN_VALUES);
        return -1;
    }
    n->values = calloc(count, sizeof *n->values);
    if (!n->values) {
        s_fail(p, ".value", "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        char suffix[40];
        snprintf(suffix, sizeof suffix, ".value[%zu]", i);
        n->n_values = i + 1;
        if (s_parse_value(p, n, json_array_get(jval, i), suffix, &n->values[i]))
            return -1;
    }
    return 0;
}

static rule_t *s_parse_node(s_parse_t *p, const json_t *j, int depth);

/* Parse a child at path + suffix. */
static rule_t *s_parse_child(s_parse_t *p, const json_t *j, const char *suffix, int depth)
{
    size_t mark = sbuf_len(p->path);
    sbuf_append_str(p->path, suffix);
    rule_t *kid = s_parse_node(p, j, depth);
    sbuf_truncate(p->path, mark);
    return kid;
}

static int s_parse_list(s_parse_t *p, rule_t *n, const json_t *arr, const char *key, int depth)
{
    char suffix[48];
    snprintf(suffix, sizeof suffix, ".%s", key);
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        s_fail(p, suffix, "expected a non-empty array of rules");
        return -1;
    }
    size_t count = json_array_size(arr);
    if (count > RULE_MAX_NODES) {
        s_fail(p, suffix, "more than %d rules", RULE_MAX_NODES);
        return -1;
    }
    n->kids = calloc(count, sizeof *n->kids);
    if (!n->kids) {
        s_fail(p, suffix, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        snprintf(suffix, sizeof suffix, ".%s[%zu]", key, i);
        n->kids[i] = s_parse_child(p, json_array_get(arr, i), suffix, depth + 1);
        if (!n->kids[i])
            return -1;
        n->n_kids = i + 1;
    }
    return 0;
}

/* The shape keys: exactly one of them names what a rule object is. */
static const struct {
    const char *key;
    s_kind_t kind;
} s_kinds[] = {
    {"and", K_AND},         {"or", K_OR},          {"not", K_NOT},
    {"field", K_CMP},       {"in_list", K_IN_LIST}, {"has_tag", K_HAS_TAG},
};

/* Work out which shape obj has; -1 (error written) for none, several, or
 * unknown keys. */
static int s_parse_kind(s_parse_t *p, const json_t *obj, s_kind_t *kind)
{
    const char *key, *found = NULL;
    json_t *val;
    int other = 0;
    json_object_foreach((json_t *)obj, key, val) {
        size_t i = 0, count = sizeof s_kinds / sizeof s_kinds[0];
        while (i < count && strcmp(s_kinds[i].key, key) != 0)
            i++;
        if (i < count) {
            if (found) {
                s_fail(p, "", "has both '%s' and '%s'; a rule has exactly one of and, or, not, "
                              "field, in_list, has_tag", found, key);
                return -1;
            }
            found = s_kinds[i].key;
            *kind = s_kinds[i].kind;
        } else if (strcmp(key, "op") == 0 || strcmp(key, "value") == 0) {
            other = 1;
        } else {
            s_fail(p, "", "unknown key '%s'", s_show(p, key, strlen(key)));
            return -1;
        }
    }
    if (!found) {
        s_fail(p, "", "expected one of and, or, not, field, in_list, has_tag");
        return -1;
    }
    if (other && *kind != K_CMP) {
        s_fail(p, "", "'op' and 'value' only go with 'field'");
        return -1;
    }
    return 0;
}

static rule_t *s_parse_node(s_parse_t *p, const json_t *j, int depth)
{
    if (depth > RULE_MAX_DEPTH)
        return s_fail(p, "", "nested deeper than %d levels", RULE_MAX_DEPTH);
    if (++p->nodes > RULE_MAX_NODES)
        return s_fail(p, "", "more than %d rule nodes", RULE_MAX_NODES);
    if (!json_is_object(j))
        return s_fail(p, "", "expected a rule object");
    s_kind_t kind;
    if (s_parse_kind(p, j, &kind))
        return NULL;
    rule_t *n = calloc(1, sizeof *n);
    if (!n)
        return s_fail(p, "", "out of memory");
    n->kind = kind;
    int rc = 0;
    size_t len = 0;
    const char *s;
    switch (kind) {
    case K_AND:
        rc = s_parse_list(p, n, json_object_get(j, "and"), "and", depth);
        break;
    case K_OR:
        rc = s_parse_list(p, n, json_object_get(j, "or"), "or", depth);
        break;
    case K_NOT:
        n->kids = calloc(1, sizeof *n->kids);
        if (!n->kids) {
            rc = -1;
            s_fail(p, "", "out of memory");
            break;
        }
        n->kids[0] = s_parse_child(p, json_object_get(j, "not"), ".not", depth + 1);
        n->n_kids = n->kids[0] ? 1 : 0;
        rc = n->kids[0] ? 0 : -1;
        break;
    case K_CMP:
        rc = s_parse_cmp(p, n, j);
        break;
    case K_IN_LIST:
        s = s_string(p, json_object_get(j, "in_list"), ".in_list", "a list UUID string", &len);
        if (s && !s_is_uuid(s, len)) {
            s_fail(p, ".in_list", "not a UUID '%s'", s_show(p, s, len));
            s = NULL;
        }
        if (s && (n->key = s_strndup(s, len)) != NULL)
            for (char *c = n->key; *c; c++)
                *c = (char)tolower((unsigned char)*c);
        else if (s)
            s_fail(p, ".in_list", "out of memory");
        rc = n->key ? 0 : -1;
        break;
    case K_HAS_TAG:
        s = s_string(p, json_object_get(j, "has_tag"), ".has_tag", "a tag name string", &len);
        if (s && len == 0) {
            s_fail(p, ".has_tag", "tag name must not be empty");
            s = NULL;
        }
        if (s && !(n->key = s_strndup(s, len)))
            s_fail(p, ".has_tag", "out of memory");
        rc = n->key ? 0 : -1;
        break;
    }
    if (rc) {
        s_node_free(n);
        return NULL;
    }
    return n;
}

rule_t *rule_parse(const json_t *json, sbuf_t *err)
{
    s_parse_t p = {.err = err, .path = sbuf_new(64), .tmp = sbuf_new(80)};
    rule_t *r = NULL;
    if (!p.path || !p.tmp || sbuf_append_str(p.path, "rule")) {
        if (err)
            sbuf_append_str(err, "rule: out of memory");
    } else {
        r = s_parse_node(&p, json, 1);
    }
    sbuf_destroy(&p.path);
    sbuf_destroy(&p.tmp);
    return r;
}

rule_t *rule_parse_text(const char *text, size_t len, sbuf_t *err)
{
    if (!text || len > RULE_MAX_TEXT) {
        if (err)
            sbuf_appendf(err, "rule: text longer than %d bytes", RULE_MAX_TEXT);
        return NULL;
    }
    /* Counted before parsing: the API parses rules on its request
     * threads, whose stacks the parser's recursion could overflow. */
    if (!json_depth_ok(text, len, RULE_MAX_DEPTH * 2 + 2)) {
        if (err)
            sbuf_appendf(err, "rule: nested deeper than %d levels", RULE_MAX_DEPTH);
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        if (err) {
            sbuf_t *tmp = sbuf_new(80);
            sbuf_appendf(err, "rule: invalid JSON at line %d column %d: %s", jerr.line,
                         jerr.column, tmp ? s_printable(tmp, jerr.text, strlen(jerr.text), 0) : "?");
            sbuf_destroy(&tmp);
        }
        return NULL;
    }
    rule_t *r = rule_parse(j, err);
    json_decref(j);
    return r;
}

/* --------------------------------------------------------------------- */
/* SQL                                                                   */

typedef struct {
    sbuf_t *sql;  /* expression being built */
    char **params; /* parameter texts so far; owned */
    int n;         /* parameters used */
    int cap;       /* room in params */
    int first;     /* number of the first parameter */
    int bad;       /* out of memory or too many parameters seen */
    int name_param; /* K_CMP on a custom field: $N holding the field name */
} s_sql_t;

static void s_put(s_sql_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void s_put(s_sql_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (sbuf_vappendf(c->sql, fmt, ap))
        c->bad = 1;
    va_end(ap);
}

/* Bind text (copied) as the next parameter; returns its number ($N). */
static int s_param(s_sql_t *c, const char *text, size_t len)
{
    if (c->bad)
        return 0;
    if (c->first + c->n > 65535) {
        c->bad = 2;
        return 0;
    }
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 8;
        char **grown = realloc(c->params, (size_t)cap * sizeof *grown);
        if (!grown) {
            c->bad = 1;
            return 0;
        }
        c->params = grown;
        c->cap = cap;
    }
    char *copy = s_strndup(text, len);
    if (!copy) {
        c->bad = 1;
        return 0;
    }
    c->params[c->n] = copy;
    return c->first + c->n++;
}

/* LIKE pattern for "starts with s": s with \ % _ escaped, then %. */
static int s_param_prefix(s_sql_t *c, const s_value_t *v)
{
    sbuf_t *pat = sbuf_new(v->len + 8);
    int num = 0;
    if (!pat) {
        c->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < v->len; i++) {
        char ch = v->text[i];
        if (ch == '\\' || ch == '%' || ch == '_')
            sbuf_append(pat, "\\", 1);
        sbuf_append(pat, &ch, 1);
    }
    if (sbuf_append(pat, "%", 1) == 0)
        num = s_param(c, sbuf_data(pat), sbuf_len(pat));
    else
        c->bad = 1;
    sbuf_destroy(&pat);
    return num;
}

/* The left-hand side of a comparison of node n with a value of kind type:
 * the column, or for custom fields the field's value when it is of that
 * JSON kind and NULL otherwise (CASE, because PostgreSQL does not promise
 * to evaluate an AND guard before a ::numeric cast). */
static void s_put_lhs(s_sql_t *c, const rule_t *n, s_vtype_t type)
{
    int k = c->name_param;
    if (n->field != F_CUSTOM)
        s_put(c, "%s", s_field_column(n->field));
    else if (type == V_INT || type == V_REAL)
        s_put(c,
              "(CASE WHEN jsonb_typeof(c.fields->$%d::text) = 'number' THEN "
              "(c.fields->>$%d::text)::numeric END)",
              k, k);
    else
        s_put(c, "(CASE WHEN jsonb_typeof(c.fields->$%d::text) = '%s' THEN c.fields->>$%d::text END)",
              k, type == V_BOOL ? "boolean" : "string", k);
}

static const char *s_cast(s_vtype_t type)
{
    if (type == V_INT || type == V_REAL)
        return "::numeric";
    if (type == V_TIME)
        return "::timestamptz";
    return "";
}

static int s_same_group(s_vtype_t a, s_vtype_t b)
{
    int an = a == V_INT || a == V_REAL, bn = b == V_INT || b == V_REAL;
    return an ? bn : a == b;
}

/* "in": one IN (...) per kind of value present, OR-ed. */
static void s_put_in(s_sql_t *c, const rule_t *n)
{
    static const s_vtype_t groups[] = {V_STRING, V_INT, V_BOOL};
    int any = 0;
    s_put(c, "COALESCE(");
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        int opened = 0;
        for (size_t i = 0; i < n->n_values; i++) {
            const s_value_t *v = &n->values[i];
            if (!s_same_group(v->type, groups[g]))
                continue;
            if (!opened) {
                if (any)
                    s_put(c, " OR ");
                s_put_lhs(c, n, v->type);
                s_put(c, " IN (");
                opened = any = 1;
            } else {
                s_put(c, ", ");
            }
            s_put(c, "$%d%s", s_param(c, v->text, v->len), s_cast(v->type));
        }
        if (opened)
            s_put(c, ")");
    }
    s_put(c, ", false)");
}

static void s_put_cmp(s_sql_t *c, const rule_t *n)
{
    const s_value_t *v = n->n_values ? &n->values[0] : NULL;
    if (n->field == F_CUSTOM)
        c->name_param = s_param(c, n->name, strlen(n->name));
    switch (n->op) {
    case OP_EXISTS:
        if (n->field == F_CUSTOM)
            s_put(c, "COALESCE(c.fields ? $%d::text, false)", c->name_param);
        else
            s_put(c, "(%s IS NOT NULL)", s_field_column(n->field));
        return;
    case OP_IN:
        s_put_in(c, n);
        return;
    case OP_CONTAINS:
        s_put(c, "COALESCE(strpos(");
        s_put_lhs(c, n, v->type);
        s_put(c, ", $%d) > 0, false)", s_param(c, v->text, v->len));
        return;
    case OP_STARTS_WITH:
        s_put(c, "COALESCE(");
        s_put_lhs(c, n, v->type);
        s_put(c, " LIKE $%d ESCAPE E'\\\\', false)", s_param_prefix(c, v));
        return;
    default:
        s_put(c, "COALESCE(");
        s_put_lhs(c, n, v->type);
        /* Order strings by bytes, as rule_eval does, whatever the
         * database's default collation says. */
        if (v->type == V_STRING && (OPBIT(n->op) & OPS_ORDER))
            s_put(c, " COLLATE \"C\"");
        s_put(c, " %s $%d%s, false)", s_op_sql(n->op), s_param(c, v->text, v->len),
              s_cast(v->type));
        return;
    }
}

static void s_put_node(s_sql_t *c, const rule_t *n)
{
    switch (n->kind) {
    case K_AND:
    case K_OR:
        s_put(c, "(");
        for (size_t i = 0; i < n->n_kids; i++) {
            if (i)
                s_put(c, n->kind == K_AND ? " AND " : " OR ");
            s_put_node(c, n->kids[i]);
        }
        s_put(c, ")");
        break;
    case K_NOT:
        s_put(c, "(NOT ");
        s_put_node(c, n->kids[0]);
        s_put(c, ")");
        break;
    case K_IN_LIST:
        s_put(c,
              "EXISTS (SELECT 1 FROM list_members lm WHERE lm.contact_id = c.id AND "
              "lm.organization_id = c.organization_id AND lm.list_id = $%d::uuid)",
              s_param(c, n->key, strlen(n->key)));
        break;
    case K_HAS_TAG:
        s_put(c,
              "EXISTS (SELECT 1 FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id AND "
              "t.organization_id = ct.organization_id WHERE ct.contact_id = c.id AND "
              "ct.organization_id = c.organization_id AND t.name = $%d)",
              s_param(c, n->key, strlen(n->key)));
        break;
    case K_CMP:
        s_put_cmp(c, n);
        break;
    }
}

void rule_sql_clear(rule_sql_t *sql)
{
    if (!sql)
        return;
    for (int i = 0; i < sql->n_params; i++)
        free(sql->params[i]);
    free(sql->params);
    free(sql->sql);
    memset(sql, 0, sizeof *sql);
}

int rule_compile_sql(const rule_t *self, int first_param, rule_sql_t *out, sbuf_t *err)
{
    if (!self || !out || first_param < 1 || first_param > 65535) {
        if (err)
            sbuf_append_str(err, "rule: bad arguments to rule_compile_sql");
        if (out)
            memset(out, 0, sizeof *out);
        return -1;
    }
    s_sql_t c = {.sql = sbuf_new(256), .first = first_param};
    memset(out, 0, sizeof *out);
    if (!c.sql)
        c.bad = 1;
    else
        s_put_node(&c, self);
    if (!c.bad)
        out->sql = sbuf_detach(c.sql, NULL);
    if (c.bad || !out->sql) {
        if (err)
            sbuf_append_str(err, c.bad == 2 ? "rule: more than 65535 SQL parameters"
                                            : "rule: out of memory");
        for (int i = 0; i < c.n; i++)
            free(c.params[i]);
        free(c.params);
        sbuf_destroy(&c.sql);
        return -1;
    }
    sbuf_destroy(&c.sql);
    out->params = c.params;
    out->n_params = c.n;
    out->first_param = first_param;
    return 0;
}

/* --------------------------------------------------------------------- */
/* Evaluation                                                            */

/* The contact's side of a comparison, as a typed value; 0 when the field is
 * missing, null or of no comparable kind. */
static int s_contact_value(const rule_t *n, const json_t *contact, s_value_t *v)
{
    const json_t *j;
    memset(v, 0, sizeof *v);
    switch (n->field) {
    case F_EMAIL:
        j = json_object_get(contact, "email");
        break;
    case F_STATUS:
        j = json_object_get(contact, "status");
        break;
    case F_CREATED_AT:
        j = json_object_get(contact, "created_at");
        if (!json_is_string(j) ||
            rule_parse_time(json_string_value(j), json_string_length(j), 1, &v->us))
            return 0;
        v->type = V_TIME;
        return 1;
    default: {
        const json_t *fields = json_object_get(contact, "fields");
        j = json_is_object(fields) ? json_object_get(fields, n->name) : NULL;
        break;
    }
    }
    if (json_is_string(j)) {
        v->type = V_STRING;
        v->text = (char *)json_string_value(j);
        v->len = json_string_length(j);
    } else if (json_is_integer(j) && n->field == F_CUSTOM) {
        v->type = V_INT;
        v->i = json_integer_value(j);
    } else if (json_is_real(j) && n->field == F_CUSTOM) {
        v->type = V_REAL;
        v->d = json_real_value(j);
    } else if (json_is_boolean(j) && n->field == F_CUSTOM) {
        v->type = V_BOOL;
        v->i = json_is_true(j);
    } else {
        return 0;
    }
    return 1;
}

/* Three-way compare a (contact) with b (rule value) into *cmp; -1 when the
 * two are of different kinds and so never compare (SQL: NULL, false). */
static int s_compare(const s_value_t *a, const s_value_t *b, int *cmp)
{
    if (!s_same_group(a->type, b->type))
        return -1;
    if (a->type == V_STRING) {
        size_t min = a->len < b->len ? a->len : b->len;
        int r = memcmp(a->text, b->text, min);
        *cmp = r ? (r < 0 ? -1 : 1) : (a->len < b->len ? -1 : a->len > b->len);
    } else if (a->type == V_INT && b->type == V_INT) {
        *cmp = a->i < b->i ? -1 : a->i > b->i;
    } else if (a->type == V_INT || a->type == V_REAL) {
        /* long double holds every int64 and every double exactly. */
        long double x = a->type == V_INT ? (long double)a->i : (long double)a->d;
        long double y = b->type == V_INT ? (long double)b->i : (long double)b->d;
        *cmp = x < y ? -1 : x > y;
    } else if (a->type == V_TIME) {
        *cmp = a->us < b->us ? -1 : a->us > b->us;
    } else {
        *cmp = a->i < b->i ? -1 : a->i > b->i;
    }
    return 0;
}

static int s_match(s_op_t op, const s_value_t *a, const s_value_t *b)
{
    int cmp;
    if (op == OP_CONTAINS || op == OP_STARTS_WITH) {
        if (a->type != V_STRING || b->type != V_STRING)
            return 0;
        if (op == OP_STARTS_WITH)
            return a->len >= b->len && memcmp(a->text, b->text, b->len) == 0;
        return b->len == 0 || memmem(a->text, a->len, b->text, b->len) != NULL;
    }
    if (s_compare(a, b, &cmp))
        return 0;
    switch (op) {
    case OP_EQ:
    case OP_IN:
        return cmp == 0;
    case OP_NEQ:
        return cmp != 0;
    case OP_GT:
        return cmp > 0;
    case OP_GTE:
        return cmp >= 0;
    case OP_LT:
        return cmp < 0;
    case OP_LTE:
        return cmp <= 0;
    default:
        return 0;
    }
}

static int s_eval_cmp(const rule_t *n, const json_t *contact)
{
    s_value_t mine;
    if (n->op == OP_EXISTS && n->field == F_CUSTOM) {
        const json_t *fields = json_object_get(contact, "fields");
        return json_is_object(fields) && json_object_get(fields, n->name) != NULL;
    }
    int present = s_contact_value(n, contact, &mine);
    if (n->op == OP_EXISTS || !present)
        return present;
    for (size_t i = 0; i < n->n_values; i++)
        if (s_match(n->op, &mine, &n->values[i]))
            return 1;
    return 0;
}

static int s_eval(const rule_t *n, const json_t *contact, rule_lookup_fn lookup, void *arg)
{
    int r;
    switch (n->kind) {
    case K_AND:
    case K_OR:
        for (size_t i = 0; i < n->n_kids; i++) {
            r = s_eval(n->kids[i], contact, lookup, arg);
            if (r < 0)
                return -1;
            if (r == (n->kind == K_OR))
                return r;
        }
        return n->kind == K_AND;
    case K_NOT:
        r = s_eval(n->kids[0], contact, lookup, arg);
        return r < 0 ? -1 : !r;
    case K_IN_LIST:
    case K_HAS_TAG:
        if (!lookup)
            return -1;
        r = lookup(arg, n->kind == K_IN_LIST ? RULE_MEMBER_LIST : RULE_MEMBER_TAG, n->key);
        return r < 0 ? -1 : r > 0;
    case K_CMP:
        return s_eval_cmp(n, contact);
    }
    return -1;
}

int rule_eval(const rule_t *self, const json_t *contact, rule_lookup_fn lookup, void *arg)
{
    if (!self || !json_is_object(contact))
        return -1;
    return s_eval(self, contact, lookup, arg);
}
