/*
 * login_limit - failed-login counters: at most max failures per key (an
 * account, an address) within a fixed window that starts at the first
 * failure. Counters live in Redis (shared by every API node); when Redis
 * is unreachable an in-process table takes over so the limit still holds
 * (per node, then). Values are hashed into keys: no e-mail address is
 * written to Redis.
 */
#ifndef POSTCHI_LOGIN_LIMIT_H
#define POSTCHI_LOGIN_LIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "kv.h"

typedef struct login_limit login_limit_t;

/* max failures per window_s seconds; the local table holds at most
 * capacity keys; ns prefixes every Redis key (which deployment). NULL when
 * out of memory. Thread-safe once made. */
login_limit_t *login_limit_new(int64_t max, int window_s, size_t capacity, const char *ns);
void login_limit_destroy(login_limit_t **self_p);
/* 0 when kind/value may try again, else the seconds until it may (>= 1).
 * kv may be NULL (Redis unreachable). */
int64_t login_limit_check(login_limit_t *self, kv_t *kv, const char *kind, const char *value);
/* Count one failure. */
void login_limit_fail(login_limit_t *self, kv_t *kv, const char *kind, const char *value);
/* Forget kind/value's failures (a successful login). */
void login_limit_reset(login_limit_t *self, kv_t *kv, const char *kind, const char *value);

#endif
