/*
 * api_util - what API integration tests share: a running API node (with a
 * broker and one worker, so triggers reach tenant actors) on a fresh,
 * migrated database, an organization with its owner logged in, one API key
 * per scope, and an HTTP/1.1 client over loopback.
 */
#ifndef POSTCHI_TEST_API_UTIL_H
#define POSTCHI_TEST_API_UTIL_H

#include <stdarg.h>

#include <jansson.h>

#include "harness.h"
#include "mesh_util.h"

typedef struct {
    char db[64];            /* this test's database */
    int port;               /* API port */
    harness_proc_t *api;    /* the API node */
    mesh_t mesh;            /* broker + worker 0 */
    char email[128];        /* owner's email */
    char password[64];      /* owner's password */
    char org_id[64];        /* the organization */
    char token[2048];       /* owner's JWT */
    char key_full[160];     /* API key secrets, as shown once */
    char key_send[160];
    char key_read[160];
} api_env_t;

/* Start everything and set up the organization; extra (NULL or
 * NULL-terminated "POSTCHI_X=y") goes to the API node's environment.
 * 0 or -1 (with the reason on stderr). */
int api_env_start(api_env_t *e, char *const *extra);
/* Stop everything; returns how many processes did not exit cleanly. */
int api_env_stop(api_env_t *e);
/* Register another organization on the same node and log its owner in:
 * token (size >= 2048) and a full API key (size >= 160). 0 or -1. */
int api_env_other_org(api_env_t *e, char *token, char *key);

typedef struct {
    int status;        /* HTTP status, -1 when the request failed */
    sbuf_t *raw;       /* response body */
    json_t *json;      /* parsed body, or NULL when not JSON */
    sbuf_t *headers;   /* response header block */
} api_resp_t;

/* One request. path is the full path ("/api/v1/contacts?limit=5"); token is
 * a JWT or API key (NULL: no Authorization); body is JSON text or NULL;
 * headers is extra "Name: value\r\n" lines or NULL. Returns out->status. */
int api_call(const api_env_t *e, const char *method, const char *path, const char *token,
             const char *body, const char *headers, api_resp_t *out);
/* printf-style body. */
int api_callf(const api_env_t *e, const char *method, const char *path, const char *token,
              api_resp_t *out, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* A response header's value (copied into buf), or NULL. */
const char *api_resp_header(const api_resp_t *r, const char *name, char *buf, size_t size);
void api_resp_free(api_resp_t *r);

/* Run one SQL statement against the test database (assertions on rows):
 * returns the first column of the first row as a malloc'd string (caller
 * frees), or NULL. */
char *api_sql(const api_env_t *e, const char *sql);
/* api_sql with a printf-style statement (caller frees the result or NULL);
 * the va_list form; and the result as a number (-1 when NULL or no row). */
char *api_sqlf(const api_env_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *api_vsqlf(const api_env_t *e, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
long api_sql_long(const api_env_t *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The {"field", "message"} error naming field in problem response r
 * (borrowed from r), or NULL. */
json_t *api_field_error(const api_resp_t *r, const char *field);
/* Fail the running cmocka test unless r is a 422 with an error on field
 * whose message contains needle (NULL: any message). */
void api_expect_invalid(const api_resp_t *r, const char *field, const char *needle);

#endif
