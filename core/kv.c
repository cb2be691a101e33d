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

/* ---- Lua scripts (used by ratelimit) ----
 * Kept in one block at the end of the file: the script cache is keyed by
 * the script's SHA1, computed here with libcrypto so a caller passes only
 * the script text. */
#include <openssl/evp.h>

/* One command from an argument vector. Unlike s_command, an error reply is
 * returned to the caller (to tell NOSCRIPT from a real error); NULL only
 * when nothing usable came back (self->error set). */
static redisReply *s_command_argv(kv_t *self, int argc, const char **argv, const size_t *lens)
{
    if (s_ready(self) != 0)
        return NULL;
    redisReply *reply = redisCommandArgv(self->ctx, argc, argv, lens);
    if (!reply) {
        s_set_error(self, "Redis", self->ctx->errstr);
        return NULL;
    }
    return reply;
}

/* SHA1 of script as 40 lower-case hex digits (sha >= 41 bytes). */
static int s_sha1_hex(const char *script, char *sha)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(script, strlen(script), md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return -1;
    static const char hex[] = "0123456789abcdef";
    for (unsigned int i = 0; i < mdlen; i++) {
        sha[2 * i] = hex[md[i] >> 4];
        sha[2 * i + 1] = hex[md[i] & 0xf];
    }
    sha[40] = '\0';
    return 0;
}

int kv_script_load(kv_t *self, const char *script, char *sha)
{
    assert(self && script && sha);
    redisReply *reply = s_command(self, "SCRIPT LOAD %b", script, strlen(script));
    if (!reply)
        return -1;
    int rc = -1;
    if (reply->type == REDIS_REPLY_STRING && reply->len == 40) {
        memcpy(sha, reply->str, 40);
        sha[40] = '\0';
        rc = 0;
    } else {
        s_set_error(self, "Redis", "SCRIPT LOAD: unexpected reply");
    }
    freeReplyObject(reply);
    return rc;
}

/* Store an integer or an array of integers from reply into out. */
static int s_reply_ints(kv_t *self, const redisReply *reply, int64_t *out, size_t max, size_t *n)
{
    *n = 0;
    if (reply->type == REDIS_REPLY_INTEGER) {
        if (max > 0)
            out[(*n)++] = reply->integer;
        return 0;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        s_set_error(self, "Redis", "EVALSHA: reply is not an integer or an array");
        return -1;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        if (reply->element[i]->type != REDIS_REPLY_INTEGER) {
            s_set_error(self, "Redis", "EVALSHA: array element is not an integer");
            return -1;
        }
        if (*n < max)
            out[(*n)++] = reply->element[i]->integer;
    }
    return 0;
}

int kv_eval_ints(kv_t *self, const char *script, int nkeys, const char *const *keys, int nargs,
                 const char *const *args, int64_t *out, size_t max, size_t *n)
{
    assert(self && script && nkeys >= 0 && nargs >= 0 && (nkeys == 0 || keys) &&
           (nargs == 0 || args) && (max == 0 || out) && n);
    *n = 0;
    char sha[41], numkeys[16];
    if (s_sha1_hex(script, sha) != 0) {
        s_set_error(self, "Redis", "EVALSHA: cannot compute the script's SHA1");
        return -1;
    }
    snprintf(numkeys, sizeof numkeys, "%d", nkeys);

    size_t argc = 3 + (size_t)nkeys + (size_t)nargs;
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    if (!argv || !lens) {
        free(argv);
        free(lens);
        s_set_error(self, "Redis", "EVALSHA: out of memory");
        return -1;
    }
    argv[0] = "EVALSHA";
    argv[1] = sha;
    argv[2] = numkeys;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    for (size_t i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);

    int rc = -1;
    redisReply *reply = s_command_argv(self, (int)argc, argv, lens);
    if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* Not in the cache: the script did not run. Load it and go again. */
        freeReplyObject(reply);
        reply = NULL;
        char loaded[41];
        if (kv_script_load(self, script, loaded) == 0)
            reply = s_command_argv(self, (int)argc, argv, lens);
    }
    if (reply) {
        if (reply->type == REDIS_REPLY_ERROR) {
            s_set_error(self, "Redis", reply->str);
        } else {
            rc = s_reply_ints(self, reply, out, max, n);
            if (rc == 0)
                sbuf_reset(self->error);
        }
        freeReplyObject(reply);
    }
    free(argv);
    free(lens);
    return rc;
}
