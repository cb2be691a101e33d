/*
 * kv - Redis behind one small module (hiredis stays in here).
 *
 * Redis only ever holds what can be rebuilt (counters, buckets, caches), so
 * every caller must have an answer for "Redis is down". One connection is
 * used by one thread at a time.
 */
#ifndef POSTCHI_KV_H
#define POSTCHI_KV_H

#include <stdint.h>

#include "sbuf.h"

typedef struct kv kv_t;

/* Connect to host:port with timeout_ms per operation. When wait_ms > 0,
 * retry with back-off until it works or wait_ms has passed. NULL with err
 * set ("cannot connect to Redis at host:port: reason"). */
kv_t *kv_connect(const char *host, int port, int timeout_ms, int64_t wait_ms, sbuf_t *err);
void kv_destroy(kv_t **self_p);
/* 1 when PING answers PONG, 0 otherwise (reconnects once when gone). */
int kv_ping(kv_t *self);
/* INCRBY key by; 0 with *out set, or -1. A connection that failed on an
 * earlier call is re-opened first; a command that may have reached Redis is
 * never resent. */
int kv_incrby(kv_t *self, const char *key, int64_t by, int64_t *out);
/* Count an event in a window: INCR key, and when the key has no expiry
 * yet (it was just created) EXPIRE it in ttl_s seconds, atomically (one
 * Lua script), so a counter can never be left without an expiry. 0 with
 * *out the new count, or -1. Not resent after a possible delivery. */
int kv_incr_expire(kv_t *self, const char *key, int ttl_s, int64_t *out);
/* GET key as an integer and its remaining time to live: 0 with *out the
 * value (0 when the key is absent) and, when ttl_s is not NULL, *ttl_s the
 * seconds it has left (-1 when absent or without expiry); -1 on failure or
 * when the value is not an integer. */
int kv_get_int(kv_t *self, const char *key, int64_t *out, int64_t *ttl_s);
/* DEL key (absent is fine): 0 or -1. */
int kv_del(kv_t *self, const char *key);
/* Why the last call on self failed ("" after a success); for log lines.
 * Valid until the next call on self. */
const char *kv_error(const kv_t *self);

/* ---- Lua scripts (used by ratelimit) ---- */
/* Load script into Redis's script cache (SCRIPT LOAD). sha (>= 41 bytes)
 * gets its SHA1 in hex. 0, or -1 with kv_error set. */
int kv_script_load(kv_t *self, const char *script, char *sha);
/* Run script in one round trip: EVALSHA with its SHA1 (computed here), and
 * on NOSCRIPT (first use, Redis restarted, SCRIPT FLUSH) SCRIPT LOAD and
 * EVALSHA once more; a refused EVALSHA ran nothing, so nothing runs twice.
 * keys (nkeys) and args (nargs) are NUL-terminated strings sent as single
 * binary-safe arguments. The script must return an integer or an array of
 * integers (Lua numbers are truncated by Redis): up to max of them go to
 * out and *n says how many were stored. 0, or -1 with kv_error set (an
 * error reply, a reply of another type, or a dead connection, which is not
 * retried: the script may have run). */
int kv_eval_ints(kv_t *self, const char *script, int nkeys, const char *const *keys, int nargs,
                 const char *const *args, int64_t *out, size_t max, size_t *n);

#endif
