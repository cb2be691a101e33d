/*
 * kv - Redis through hiredis (0.14, blocking API), kept behind kv.h so
 * redisContext never leaks into the rest of the code.
 *
 * How it is used: kv_connect once per thread, then kv_incrby and friends.
 * Every operation is bounded by the timeout given at connect time (socket
 * send/receive timeouts), so a hung Redis costs a caller at most that long.
 *
 * What can go wrong: Redis is down or restarts. A hiredis context that saw
 * an I/O error is dead for good, so before sending anything on such a
 * context we reconnect once; we never resend a command that may already
 * have reached the server (INCRBY is not idempotent). kv_error says why the
 * last call failed.
 *
 * Keys go to Redis as binary-safe arguments (%b), never spliced into the
 * command text.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "backoff.h"
#include "kv.h"

struct kv {
    redisContext *ctx;      /* hiredis connection; NULL while disconnected */
    char *host;             /* server host, for reconnects and messages */
    int port;               /* server port */
    struct timeval timeout; /* connect and per-operation timeout */
    sbuf_t *error;          /* why the last call failed, "" after success */
};

static void s_set_error(kv_t *self, const char *what, const char *reason)
{
    sbuf_reset(self->error);
    sbuf_appendf(self->error, "%s at %s:%d: %s", what, self->host, self->port,
                 reason && *reason ? reason : "unknown error");
}

/* One connection attempt: 0 with self->ctx ready, or -1 with self->error
 * set and self->ctx NULL. */
static int s_open(kv_t *self)
{
    redisFree(self->ctx);
    self->ctx = redisConnectWithTimeout(self->host, self->port, self->timeout);
    const char *reason = NULL;
    if (!self->ctx)
        reason = "out of memory";
    else if (self->ctx->err)
        reason = self->ctx->errstr;
    else if (redisSetTimeout(self->ctx, self->timeout) != REDIS_OK)
        reason = self->ctx->err ? self->ctx->errstr : "cannot set socket timeout";
    if (!reason) {
        sbuf_reset(self->error);
        return 0;
    }
    s_set_error(self, "cannot connect to Redis", reason);
    redisFree(self->ctx);
    self->ctx = NULL;
    return -1;
}

/* Make sure there is a usable context before a command is sent: a context
 * that failed earlier is replaced by a new connection (nothing is resent). */
static int s_ready(kv_t *self)
{
    if (self->ctx && !self->ctx->err)
        return 0;
    return s_open(self);
}

kv_t *kv_connect(const char *host, int port, int timeout_ms, int64_t wait_ms, sbuf_t *err)
{
    assert(host && err && timeout_ms > 0);
    kv_t *self = calloc(1, sizeof *self);
    if (self) {
        self->host = strdup(host);
        self->error = sbuf_new(128);
    }
    if (!self || !self->host || !self->error) {
        sbuf_reset(err);
        sbuf_appendf(err, "cannot connect to Redis at %s:%d: out of memory", host, port);
        kv_destroy(&self);
        return NULL;
    }
    self->port = port;
    self->timeout.tv_sec = timeout_ms / 1000;
    self->timeout.tv_usec = (timeout_ms % 1000) * 1000;

    backoff_t backoff;
    backoff_start(&backoff, wait_ms);
    while (s_open(self) != 0) {
        if (!backoff_wait(&backoff)) {
            sbuf_reset(err);
            sbuf_append_str(err, sbuf_data(self->error));
            kv_destroy(&self);
            return NULL;
        }
    }
    return self;
}

void kv_destroy(kv_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kv_t *self = *self_p;
    redisFree(self->ctx);
    free(self->host);
    sbuf_destroy(&self->error);
    free(self);
    *self_p = NULL;
}

/* Send one command (format as redisCommand); the reply, or NULL with
 * self->error set (I/O failure: the context is then dead, or an error
 * reply from the server, which is freed here). */
static redisReply *s_command(kv_t *self, const char *format, ...)
{
    if (s_ready(self) != 0)
        return NULL;
    va_list ap;
    va_start(ap, format);
    redisReply *reply = redisvCommand(self->ctx, format, ap);
    va_end(ap);
    if (!reply) {
        s_set_error(self, "Redis", self->ctx->errstr);
        return NULL;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        s_set_error(self, "Redis", reply->str);
        freeReplyObject(reply);
        return NULL;
    }
    sbuf_reset(self->error);
    return reply;
}

int kv_ping(kv_t *self)
{
    assert(self);
    /* PING is harmless to resend, so a connection that dies under it (Redis
     * restarted since the last call) gets one more try on a fresh one. A
     * context that was already dead is reconnected by s_command itself. */
    int was_live = self->ctx && !self->ctx->err;
    redisReply *reply = s_command(self, "PING");
    if (!reply && was_live && self->ctx && self->ctx->err)
        reply = s_command(self, "PING");
    if (!reply)
        return 0;
    int ok = reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0;
    freeReplyObject(reply);
    return ok;
}

int kv_incrby(kv_t *self, const char *key, int64_t by, int64_t *out)
{
    assert(self && key && out);
    redisReply *reply = s_command(self, "INCRBY %b %lld", key, strlen(key), (long long)by);
    if (!reply)
        return -1;
    int rc = -1;
    if (reply->type == REDIS_REPLY_INTEGER) {
        *out = reply->integer;
        rc = 0;
    } else {
        s_set_error(self, "Redis", "INCRBY: unexpected reply type");
    }
    freeReplyObject(reply);
    return rc;
}

/* Atomic "count in a window": an INCR followed by a separate EXPIRE could
 * die in between and leave a counter that never expires (a permanent
 * lockout); the script does both or neither. */
static const char s_incr_expire_lua[] =
    "local n = redis.call('INCR', KEYS[1]) "
    "if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end "
    "return n";

int kv_incr_expire(kv_t *self, const char *key, int ttl_s, int64_t *out)
{
    assert(self && key && out && ttl_s > 0);
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", ttl_s);
    redisReply *reply = s_command(self, "EVAL %s 1 %b %s", s_incr_expire_lua, key, strlen(key), ttl);
    if (!reply)
        return -1;
    int rc = -1;
    if (reply->type == REDIS_REPLY_INTEGER) {
        *out = reply->integer;
        rc = 0;
    } else {
        s_set_error(self, "Redis", "EVAL: unexpected reply type");
    }
    freeReplyObject(reply);
    return rc;
}

/* Parse a whole decimal integer reply string. */
static int s_parse_int(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > 20)
        return -1;
    char buf[24];
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end = NULL;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

int kv_get_int(kv_t *self, const char *key, int64_t *out, int64_t *ttl_s)
{
    assert(self && key && out);
    /* GET and TTL pipelined: one round trip; both are read-only, so a
     * failure between them costs nothing. */
    if (s_ready(self) != 0)
        return -1;
    size_t klen = strlen(key);
    if (redisAppendCommand(self->ctx, "GET %b", key, klen) != REDIS_OK ||
        redisAppendCommand(self->ctx, "TTL %b", key, klen) != REDIS_OK) {
        s_set_error(self, "Redis", self->ctx->errstr);
        return -1;
    }
    redisReply *replies[2] = {NULL, NULL};
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        void *r = NULL;
        if (redisGetReply(self->ctx, &r) != REDIS_OK) {
            s_set_error(self, "Redis", self->ctx->errstr);
            rc = -1;
            break;
        }
        replies[i] = r;
    }
    if (rc == 0) {
        redisReply *get = replies[0], *ttl = replies[1];
        if (get->type == REDIS_REPLY_NIL) {
            *out = 0;
        } else if (get->type != REDIS_REPLY_STRING || s_parse_int(get->str, get->len, out) != 0) {
            s_set_error(self, "Redis", "GET: not an integer");
            rc = -1;
        }
        if (rc == 0 && ttl_s) {
            if (ttl->type != REDIS_REPLY_INTEGER) {
                s_set_error(self, "Redis", "TTL: unexpected reply type");
                rc = -1;
            } else {
                *ttl_s = ttl->integer < 0 ? -1 : ttl->integer;
            }
        }
    }
    if (rc == 0)
        sbuf_reset(self->error);
    for (int i = 0; i < 2; i++)
        if (replies[i])
            freeReplyObject(replies[i]);
    return rc;
}

int kv_del(kv_t *self, const char *key)
{
    assert(self && key);
    redisReply *reply = s_command(self, "DEL %b", key, strlen(key));
    if (!reply)
        return -1;
    freeReplyObject(reply);
    return 0;
}

const char *kv_error(const kv_t *self)
{
    assert(self);
    return sbuf_data(self->error);
}
