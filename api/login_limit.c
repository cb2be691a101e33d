/*
 * login_limit - failed-login counters in Redis with an in-process fallback.
 *
 * How it is used: the login handler asks login_limit_check for the account
 * and the address before it verifies a password, login_limit_fail after a
 * wrong one, login_limit_reset (account only) after a right one.
 *
 * Redis key: "<ns>:login:<kind>:<first 32 hex of SHA-256(value)>", counted
 * with kv_incr_expire, so the window starts at the first failure and the
 * key always expires. When Redis cannot be asked (kv NULL or the command
 * failed) the failure is counted in a local table instead, and a check
 * takes the larger of the two counts, so an outage never hands an attacker
 * a fresh allowance.
 *
 * What can go wrong: the local table is bounded (capacity); when it is
 * full, expired entries go first, then the oldest entry. An attacker cycling through many keys while Redis is down can
 * therefore push an entry out early; Redis is the real store.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "log.h"

#include "login_limit.h"

typedef struct {
    char *key;        /* "<kind>:<hash>" (malloc'd), NULL when the slot is free */
    int64_t count;    /* failures in this window */
    int64_t until_ms; /* monotonic time the window ends */
    uint64_t seq;     /* when the entry was made (eviction order) */
} s_entry_t;

struct login_limit {
    int64_t max;          /* failures allowed per window */
    int window_s;         /* window length */
    char *ns;             /* Redis key namespace */
    pthread_mutex_t lock; /* guards the table */
    s_entry_t *table;     /* local fallback counters */
    size_t capacity;      /* slots in table */
    uint64_t next_seq;    /* seq of the next entry made */
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

login_limit_t *login_limit_new(int64_t max, int window_s, size_t capacity, const char *ns)
{
    login_limit_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->max = max < 1 ? 1 : max;
    self->window_s = window_s < 1 ? 1 : window_s;
    self->capacity = capacity < 1 ? 1 : capacity;
    self->ns = strdup(ns ? ns : "postchi");
    self->table = calloc(self->capacity, sizeof *self->table);
    pthread_mutex_init(&self->lock, NULL);
    if (!self->ns || !self->table) {
        login_limit_destroy(&self);
        return NULL;
    }
    return self;
}

void login_limit_destroy(login_limit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    login_limit_t *self = *self_p;
    if (self->table)
        for (size_t i = 0; i < self->capacity; i++)
            free(self->table[i].key);
    free(self->table);
    free(self->ns);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

/* "<kind>:<hash>" into out (kind is ours, short; the value is hashed). */
static void s_local_key(const char *kind, const char *value, char *out, size_t size)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    char hex[33] = "";
    if (EVP_Digest(value, strlen(value), md, &md_len, EVP_sha256(), NULL) == 1)
        for (unsigned i = 0; i < 16 && i < md_len; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(out, size, "%s:%s", kind, hex);
}

/* Slot holding key, or NULL; drops it when its window is over. Locked. */
static s_entry_t *s_find(login_limit_t *self, const char *key, int64_t now)
{
    for (size_t i = 0; i < self->capacity; i++) {
        s_entry_t *e = &self->table[i];
        if (e->key && strcmp(e->key, key) == 0) {
            if (e->until_ms <= now) {
                free(e->key);
                e->key = NULL;
                return NULL;
            }
            return e;
        }
    }
    return NULL;
}

/* A slot for a new key: a free one, an expired one, else the oldest (all
 * windows have one length, so the oldest ends soonest). Locked. */
static s_entry_t *s_slot(login_limit_t *self, int64_t now)
{
    s_entry_t *soonest = NULL;
    for (size_t i = 0; i < self->capacity; i++) {
        s_entry_t *e = &self->table[i];
        if (!e->key || e->until_ms <= now) {
            free(e->key);
            e->key = NULL;
            return e;
        }
        if (!soonest || e->seq < soonest->seq)
            soonest = e;
    }
    free(soonest->key);
    soonest->key = NULL;
    return soonest;
}

/* Local count and seconds left for key. */
static int64_t s_local_count(login_limit_t *self, const char *key, int64_t *left_s)
{
    int64_t now = s_now_ms(), count = 0;
    *left_s = 0;
    pthread_mutex_lock(&self->lock);
    s_entry_t *e = s_find(self, key, now);
    if (e) {
        count = e->count;
        *left_s = (e->until_ms - now + 999) / 1000;
    }
    pthread_mutex_unlock(&self->lock);
    return count;
}

static void s_local_fail(login_limit_t *self, const char *key)
{
    int64_t now = s_now_ms();
    pthread_mutex_lock(&self->lock);
    s_entry_t *e = s_find(self, key, now);
    if (!e) {
        e = s_slot(self, now);
        e->key = strdup(key);
        e->count = 0;
        e->until_ms = now + (int64_t)self->window_s * 1000;
        e->seq = self->next_seq++;
    }
    if (e->key)
        e->count++;
    pthread_mutex_unlock(&self->lock);
}

static void s_local_reset(login_limit_t *self, const char *key)
{
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->capacity; i++) {
        s_entry_t *e = &self->table[i];
        if (e->key && strcmp(e->key, key) == 0) {
            free(e->key);
            e->key = NULL;
        }
    }
    pthread_mutex_unlock(&self->lock);
}

static void s_redis_key(const login_limit_t *self, const char *local, char *out, size_t size)
{
    snprintf(out, size, "%s:login:%s", self->ns, local);
}

static void s_warn_redis(kv_t *kv)
{
    static const char key[] = "login_limit.redis";
    if (log_should(key, sizeof key - 1, 60000))
        log_warn("Redis unavailable, counting failed logins in this process: %s",
                 kv ? kv_error(kv) : "no connection");
}

int64_t login_limit_check(login_limit_t *self, kv_t *kv, const char *kind, const char *value)
{
    char local[128], rkey[256];
    s_local_key(kind, value, local, sizeof local);
    int64_t left = 0;
    int64_t count = s_local_count(self, local, &left);
    int64_t rcount = 0, rttl = -1;
    s_redis_key(self, local, rkey, sizeof rkey);
    if (kv && kv_get_int(kv, rkey, &rcount, &rttl) == 0) {
        if (rcount > count) {
            count = rcount;
            left = rttl > 0 ? rttl : self->window_s;
        }
    } else {
        s_warn_redis(kv);
    }
    if (count < self->max)
        return 0;
    return left > 0 ? left : 1;
}

void login_limit_fail(login_limit_t *self, kv_t *kv, const char *kind, const char *value)
{
    char local[128], rkey[256];
    s_local_key(kind, value, local, sizeof local);
    s_redis_key(self, local, rkey, sizeof rkey);
    int64_t n = 0;
    if (kv && kv_incr_expire(kv, rkey, self->window_s, &n) == 0)
        return;
    s_warn_redis(kv);
    s_local_fail(self, local);
}

void login_limit_reset(login_limit_t *self, kv_t *kv, const char *kind, const char *value)
{
    char local[128], rkey[256];
    s_local_key(kind, value, local, sizeof local);
    s_redis_key(self, local, rkey, sizeof rkey);
    s_local_reset(self, local);
    if (kv && kv_del(kv, rkey) != 0)
        s_warn_redis(kv);
}
