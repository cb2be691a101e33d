/*
 * test_api_message_limits - max_message_bytes: a send larger than the
 * configured limit is a 413 and writes nothing; one within it is accepted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_util.h"

static api_env_t E;

static int s_setup(void **state)
{
    (void)state;
    setenv("POSTCHI_DELIVERY_ENABLED", "false", 1); /* acceptance only */
    char *extra[] = {"POSTCHI_MAX_MESSAGE_BYTES=4096", NULL};
    return api_env_start(&E, extra);
}

static int s_teardown(void **state)
{
    (void)state;
    return api_env_stop(&E);
}

static void test_size_limit(void **state)
{
    (void)state;
    api_resp_t r;
    api_call(&E, "POST", "/api/v1/domains", E.key_full, "{\"name\":\"limit.example\"}", NULL, &r);
    assert_int_equal(r.status, 201);
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE domains SET status = 'verified' WHERE id = '%s'",
             json_string_value(json_object_get(r.json, "id")));
    api_resp_free(&r);
    free(api_sql(&E, sql));

    char big[6000], half[3000], small[1100];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memset(half, 'h', sizeof half - 1);
    half[sizeof half - 1] = 0;
    memset(small, 'y', sizeof small - 1);
    small[sizeof small - 1] = 0;
    /* One field alone over the limit: a 422 that names it. */
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{\"from\":{\"email\":\"a@limit.example\"},\"to\":\"b@dest.example\","
              "\"subject\":\"big\",\"text\":\"%s\"}", big);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(sbuf_data(r.raw), "\"field\":\"text\""));
    api_resp_free(&r);
    /* Each part within the limit, the message over it: a 413. */
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{\"from\":{\"email\":\"a@limit.example\"},\"to\":\"b@dest.example\","
              "\"subject\":\"big\",\"text\":\"%s\",\"html\":\"%s\"}", half, half);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(json_string_value(json_object_get(r.json, "detail")), "4096"));
    api_resp_free(&r);
    char *n = api_sql(&E, "SELECT count(*) FROM messages");
    assert_string_equal(n, "0"); /* nothing written */
    free(n);
    api_callf(&E, "POST", "/api/v1/messages", E.key_send, &r,
              "{\"from\":{\"email\":\"a@limit.example\"},\"to\":\"b@dest.example\","
              "\"subject\":\"small\",\"text\":\"%s\"}", small);
    assert_int_equal(r.status, 202);
    api_resp_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_size_limit)};
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
