/*
 * ratelimit - token buckets in Redis (one Lua script per request) with a
 * bounded in-process fallback. See ratelimit.h for the contract.
 *
 * Redis side: the bucket is a hash {tokens, ts} at postchi:ratelimit:<key>.
 * The script reads it, refills for the time elapsed on the Redis server's
 * clock (TIME), takes a token when there is one, writes it back and sets a
 * PEXPIRE of "time until full" plus a second: a key that expired is the
 * same as a full bucket, so idle keys cost Redis nothing. Every API node
 * runs the same script against the same clock, so they share one budget
 * whatever their own clocks say. The script answers whole numbers only
 * (Redis truncates Lua numbers), so tokens come back in millionths.
 *
 * Local side: a set-associative table (LOCAL_SETS sets of LOCAL_WAYS
 * buckets) keyed by a seeded 64-bit hash of the key, behind one mutex. It
 * is bounded: a new key evicts the bucket in its set that would be fullest
 * now (a full bucket carries no information, so eviction usually loses
 * nothing). Two keys with the same 64-bit hash would share a bucket, which
 * only makes the limit stricter for them.
 *
 * What can go wrong: Redis down, slow (bounded by the kv timeout) or
 * answering errors: the local bucket decides, and we say so at most once a
 * minute in the log. A Redis key of the wrong type (someone else's data)
 * makes the script fail the same way.
 */
#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"
#include "log.h"
#include "ratelimit.h"

#define LOCAL_SETS 1024 /* power of two */
#define LOCAL_WAYS 4
#define KEY_PREFIX "postchi:ratelimit:"
#define MICRO 1000000.0
#define BURST_MAX 1e9 /* tokens travel as millionths in an int64 */

/* KEYS[1] the bucket; ARGV[1] rate per second, ARGV[2] burst, ARGV[3]
 * tokens wanted. Returns {tokens granted (0..wanted: as many whole tokens
 * as the bucket holds), tokens left in millionths}. */
static const char *const s_script =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local key = KEYS[1]\n"
    "local rate = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local v = redis.call('HMGET', key, 'tokens', 'ts')\n"
    "local tokens = tonumber(v[1])\n"
    "local ts = tonumber(v[2])\n"
    "if tokens == nil or ts == nil then\n"
    "  tokens = burst\n"
    "  ts = now\n"
    "end\n"
    "if tokens > burst then tokens = burst end\n"
    "if now > ts then\n"
    "  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)\n"
    "  ts = now\n"
    "end\n"
    "local want = tonumber(ARGV[3])\n"
    "local allowed = math.min(want, math.floor(tokens))\n"
    "if allowed < 0 then allowed = 0 end\n"
    "tokens = tokens - allowed\n"
    "redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),\n"
    "           'ts', string.format('%.17g', ts))\n"
    "local ttl = math.min(math.ceil((burst - tokens) / rate * 1000) + 1000, 1e12)\n"
    "redis.call('PEXPIRE', key, string.format('%d', ttl))\n"
    "return {allowed, math.floor(tokens * 1000000)}\n";

typedef struct {
    uint64_t hash; /* seeded hash of the key; 0 = slot unused */
    double tokens; /* tokens in the bucket at ts */
    int64_t ts;    /* clock reading (microseconds) of the last refill */
} s_bucket_t;

struct ratelimit {
    double rate;                /* tokens per second (shared budget) */
    double burst;               /* bucket size (shared budget) */
    char rate_arg[32];          /* rate as the script's ARGV[1] */
    char burst_arg[32];         /* burst as the script's ARGV[2] */
    double local_rate;          /* fallback's share of rate */
    double local_burst;         /* fallback's share of burst (>= 1) */
    ratelimit_clock_fn clock;   /* microsecond clock for the local buckets */
    uint64_t seed;              /* per-instance seed of the key hash */
    pthread_mutex_t lock;       /* guards local */
    s_bucket_t *local;          /* LOCAL_SETS * LOCAL_WAYS buckets */
};

static int64_t s_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

ratelimit_t *ratelimit_new(double rate_per_s, double burst)
{
    if (!isfinite(rate_per_s) || !isfinite(burst) || rate_per_s <= 0 || burst < 1 ||
        burst > BURST_MAX)
        return NULL;
    ratelimit_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->local = calloc((size_t)LOCAL_SETS * LOCAL_WAYS, sizeof *self->local);
    if (!self->local || pthread_mutex_init(&self->lock, NULL) != 0) {
        free(self->local);
        free(self);
        return NULL;
    }
    self->rate = rate_per_s;
    self->burst = burst;
    snprintf(self->rate_arg, sizeof self->rate_arg, "%.17g", rate_per_s);
    snprintf(self->burst_arg, sizeof self->burst_arg, "%.17g", burst);
    self->clock = s_monotonic_us;
    if (getrandom(&self->seed, sizeof self->seed, GRND_NONBLOCK) != (ssize_t)sizeof self->seed)
        self->seed = (uint64_t)s_monotonic_us() ^ ((uint64_t)getpid() << 32);
    ratelimit_set_local_share(self, 2);
    return self;
}

void ratelimit_destroy(ratelimit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ratelimit_t *self = *self_p;
    pthread_mutex_destroy(&self->lock);
    free(self->local);
    free(self);
    *self_p = NULL;
}

void ratelimit_set_local_share(ratelimit_t *self, int n)
{
    assert(self && n >= 1);
    pthread_mutex_lock(&self->lock);
    self->local_rate = self->rate / n;
    /* Below one token nothing would ever pass: "requests still succeed". */
    self->local_burst = fmax(1.0, self->burst / n);
    /* Buckets filled under the old share must not exceed the new one. */
    for (size_t i = 0; i < (size_t)LOCAL_SETS * LOCAL_WAYS; i++)
        if (self->local[i].tokens > self->local_burst)
            self->local[i].tokens = self->local_burst;
    pthread_mutex_unlock(&self->lock);
}

void ratelimit_set_clock(ratelimit_t *self, ratelimit_clock_fn fn)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    self->clock = fn ? fn : s_monotonic_us;
    pthread_mutex_unlock(&self->lock);
}

/* What the headers say, from the tokens left after the decision. */
static void s_result(double tokens, double rate, double burst, int allowed, int local,
                     ratelimit_result_t *out)
{
    if (tokens < 0)
        tokens = 0;
    out->allowed = allowed;
    out->local = local;
    out->limit = (int64_t)floor(burst);
    out->remaining = (int64_t)floor(tokens);
    out->reset_s = tokens >= burst ? 0 : (int64_t)ceil((burst - tokens) / rate);
    out->retry_after_s = 0;
    if (!allowed) {
        int64_t wait = (int64_t)ceil((1.0 - tokens) / rate);
        out->retry_after_s = wait < 1 ? 1 : wait;
    }
}

/* FNV-1a over seed and key, then a 64-bit finalizer to spread the bits the
 * set index takes; never 0 (the unused-slot mark). */
static uint64_t s_hash(uint64_t seed, const char *key)
{
    uint64_t h = 14695981039346656037ULL ^ seed;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h ? h : 1;
}

/* The bucket's tokens at now, refilled (never above burst). */
static double s_refilled(const s_bucket_t *b, double rate, double burst, int64_t now)
{
    double tokens = b->tokens;
    if (now > b->ts)
        tokens += (double)(now - b->ts) * rate / MICRO;
    return fmin(tokens, burst);
}

static void s_take_local(ratelimit_t *self, const char *key, int want,
                         ratelimit_result_t *out)
{
    uint64_t h = s_hash(self->seed, key);
    pthread_mutex_lock(&self->lock);
    int64_t now = self->clock();
    double rate = self->local_rate, burst = self->local_burst;
    s_bucket_t *set = self->local + (h & (LOCAL_SETS - 1)) * LOCAL_WAYS;
    s_bucket_t *b = NULL;
    for (int i = 0; i < LOCAL_WAYS && !b; i++)
        if (set[i].hash == h)
            b = &set[i];
    if (!b) {
        /* Evict an unused slot, else the one that would be fullest now. */
        double best = -1;
        for (int i = 0; i < LOCAL_WAYS; i++) {
            double t = set[i].hash ? s_refilled(&set[i], rate, burst, now) : burst + 1;
            if (t > best) {
                best = t;
                b = &set[i];
            }
        }
        b->hash = h;
        b->tokens = burst;
        b->ts = now;
    }
    b->tokens = s_refilled(b, rate, burst, now);
    if (now > b->ts)
        b->ts = now; /* a clock that went back refills nothing */
    int granted = (int)fmin((double)want, floor(b->tokens));
    if (granted < 0)
        granted = 0;
    b->tokens -= granted;
    s_result(b->tokens, rate, burst, granted > 0, 1, out);
    out->granted = granted;
    pthread_mutex_unlock(&self->lock);
}

/* The shared bucket in Redis: 0 with out filled, or -1. */
static int s_take_redis(ratelimit_t *self, kv_t *kv, const char *key, int want,
                        ratelimit_result_t *out)
{
    size_t len = strlen(KEY_PREFIX) + strlen(key) + 1;
    char *rkey = malloc(len);
    if (!rkey)
        return -1;
    snprintf(rkey, len, "%s%s", KEY_PREFIX, key);
    const char *keys[] = {rkey};
    char want_arg[16];
    snprintf(want_arg, sizeof want_arg, "%d", want);
    const char *args[] = {self->rate_arg, self->burst_arg, want_arg};
    int64_t r[2];
    size_t n = 0;
    int rc = kv_eval_ints(kv, s_script, 1, keys, 3, args, r, 2, &n);
    free(rkey);
    if (rc != 0)
        return -1;
    if (n != 2 || r[0] < 0 || r[0] > want || r[1] < 0) {
        if (log_should("ratelimit_reply", strlen("ratelimit_reply"), 60000))
            log_warn("unexpected reply from the rate limit script (n=%zu)", n);
        return -1;
    }
    s_result((double)r[1] / MICRO, self->rate, self->burst, r[0] > 0, 0, out);
    out->granted = r[0];
    return 0;
}

int ratelimit_take_n(ratelimit_t *self, kv_t *kv, const char *key, int want,
                     ratelimit_result_t *out)
{
    assert(self && key && out && want >= 1);
    if (kv) {
        if (s_take_redis(self, kv, key, want, out) == 0)
            return 0;
        if (log_should("ratelimit_redis", strlen("ratelimit_redis"), 60000))
            log_warn("Redis failed, local limit applies: %s", kv_error(kv));
    }
    s_take_local(self, key, want, out);
    return 1;
}

int ratelimit_take(ratelimit_t *self, kv_t *kv, const char *key, ratelimit_result_t *out)
{
    return ratelimit_take_n(self, kv, key, 1, out);
}
