/*
 * fuzz_rule - libFuzzer target for the rule language.
 *
 * Feeds arbitrary bytes to rule_parse_text; whatever parses is compiled to
 * SQL and evaluated against a few fixed contacts and against the input
 * itself read as a contact. Crashes, leaks, sanitizer reports and broken
 * invariants (checked with abort) are findings. Seeds: corpus/rule/.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "rule.h"
#include "sbuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const s_contacts[] = {
    "{}",
    ("{\"email\":\"a@b.c\",\"status\":\"subscribed\",\"created_at\":\"2024-03-01T10:00:00Z\","
    "\"fields\":{\"plan\":\"pro\",\"age\":30,\"score\":2.5,\"vip\":true,\"n\":null}}"),
    "{\"email\":5,\"status\":null,\"created_at\":\"2024-03-01 10:00:00.5+05\",\"fields\":[]}",
};

/* Deterministic membership: yes for keys of even length, failure for keys
 * starting with '!' (so the -1 path is exercised too). */
static int s_lookup(void *arg, rule_member_t kind, const char *key)
{
    (void)arg;
    if (kind != RULE_MEMBER_LIST && kind != RULE_MEMBER_TAG)
        abort();
    if (key[0] == '!')
        return -1;
    return strlen(key) % 2 == 0;
}

static void s_check_eval(const rule_t *r, const json_t *contact)
{
    int got = rule_eval(r, contact, s_lookup, NULL);
    if (got < -1 || got > 1)
        abort();
    if (!json_is_object(contact) && got != -1)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sbuf_t *err = sbuf_new(64);
    if (!err)
        return 0;
    rule_t *r = rule_parse_text((const char *)data, size, err);
    if (!r) {
        /* every refusal says why, prefixed with the rule path */
        if (strncmp(sbuf_data(err), "rule", 4) != 0)
            abort();
        sbuf_destroy(&err);
        return 0;
    }
    rule_sql_t sql;
    if (rule_compile_sql(r, 2, &sql, err) == 0) {
        if (!sql.sql || sql.n_params < 0 || sql.first_param != 2)
            abort();
        for (int i = 0; i < sql.n_params; i++)
            if (!sql.params[i])
                abort();
        rule_sql_clear(&sql);
    }
    for (size_t i = 0; i < sizeof s_contacts / sizeof s_contacts[0]; i++) {
        json_t *c = json_loads(s_contacts[i], 0, NULL);
        s_check_eval(r, c);
        json_decref(c);
    }
    json_t *self = json_loadb((const char *)data, size, 0, NULL);
    if (self)
        s_check_eval(r, self);
    json_decref(self);
    rule_destroy(&r);
    sbuf_destroy(&err);
    return 0;
}
