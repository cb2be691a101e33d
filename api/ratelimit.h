/*
 * ratelimit - a token bucket per API key, shared by every API node through
 * Redis, with a conservative local bucket when Redis cannot answer.
 *
 * A bucket holds up to `burst` tokens and refills at `rate_per_s`; each
 * request takes one. In Redis, one Lua script does the whole
 * read-refill-take-write in one round trip, timed by the Redis server's
 * clock so API nodes with skewed clocks agree. When kv is NULL or the call
 * fails, an in-process bucket decides instead with rate/N and burst/N
 * (N = ratelimit_set_local_share, default 2: two API nodes each running on
 * their own cannot together exceed the shared limit by much), so requests
 * still succeed within that share.
 *
 * Thread-safe: many civetweb threads share one ratelimit_t (each passes its
 * own kv connection). Keys are opaque bytes (an API key id); they go to Redis
 * as one binary-safe argument and are kept locally only as a seeded hash.
 */
#ifndef POSTCHI_RATELIMIT_H
#define POSTCHI_RATELIMIT_H

#include <stdint.h>

#include "kv.h"

typedef struct ratelimit ratelimit_t;

typedef struct {
    int allowed;           /* 1: go ahead; 0: answer 429 */
    int64_t limit;         /* size of the bucket that decided (RateLimit-Limit) */
    int64_t remaining;     /* whole tokens left after this request (RateLimit-Remaining) */
    int64_t reset_s;       /* seconds until the bucket is full again, rounded up (RateLimit-Reset) */
    int64_t retry_after_s; /* refused: seconds until a token is there (>= 1, Retry-After); else 0 */
    int local;             /* 1 when the local fallback decided (Redis down or failing) */
    int64_t granted;       /* tokens taken (ratelimit_take_n; 0 or 1 for ratelimit_take) */
} ratelimit_result_t;

/* Monotonic clock in microseconds, for the local bucket. */
typedef int64_t (*ratelimit_clock_fn)(void);

/* A limiter refilling rate_per_s tokens per second up to burst (both finite,
 * rate > 0, burst >= 1). NULL on bad values or out of memory. */
ratelimit_t *ratelimit_new(double rate_per_s, double burst);
void ratelimit_destroy(ratelimit_t **self_p);
/* The local fallback gets rate/n and burst/n (its burst never below one
 * token, so a lone request always passes). n >= 1; default 2. */
void ratelimit_set_local_share(ratelimit_t *self, int n);
/* For tests: the local bucket's clock (NULL: CLOCK_MONOTONIC). */
void ratelimit_set_clock(ratelimit_t *self, ratelimit_clock_fn fn);

/* Take one token for key. kv is this thread's Redis connection or NULL when
 * Redis is down. Fills out and returns 0 when Redis decided, 1 when the
 * local bucket did (Redis NULL or failing; the failure is logged at most
 * once a minute). Never fails otherwise. */
int ratelimit_take(ratelimit_t *self, kv_t *kv, const char *key, ratelimit_result_t *out);
/* The same for up to want (>= 1) tokens at once: as many whole tokens as
 * the bucket holds, at most want, in out->granted (allowed: granted > 0).
 * For callers that spend tokens in batches (the delivery engine). */
int ratelimit_take_n(ratelimit_t *self, kv_t *kv, const char *key, int want,
                     ratelimit_result_t *out);

#endif
