/*
 * dict - chained hash table with inline keys. See dict.h.
 *
 * Growth doubles the bucket array and rehashes every entry in one go; the
 * stored 64-bit hash makes that a pointer shuffle, not a re-hash of keys.
 */
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "hashring.h"

typedef struct entry {
    struct entry *next; /* next entry in the same bucket */
    uint64_t hash;      /* hashring_hash of the key */
    void *value;        /* the caller's pointer */
    uint32_t len;       /* key length */
    char key[];         /* key bytes */
} entry_t;

struct dict {
    entry_t **buckets; /* nbuckets chains */
    size_t nbuckets;   /* power of two */
    size_t size;       /* entries stored */
};

#define DICT_SEED 0x9e3779b97f4a7c15ULL
#define DICT_MIN_BUCKETS 16

dict_t *dict_new(void)
{
    dict_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->buckets = calloc(DICT_MIN_BUCKETS, sizeof *self->buckets);
    if (!self->buckets) {
        free(self);
        return NULL;
    }
    self->nbuckets = DICT_MIN_BUCKETS;
    return self;
}

void dict_destroy(dict_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    dict_t *self = *self_p;
    for (size_t i = 0; i < self->nbuckets; i++) {
        entry_t *e = self->buckets[i];
        while (e) {
            entry_t *next = e->next;
            free(e);
            e = next;
        }
    }
    free(self->buckets);
    free(self);
    *self_p = NULL;
}

static entry_t **s_find(const dict_t *self, const void *key, size_t len, uint64_t hash)
{
    entry_t **link = &self->buckets[hash & (self->nbuckets - 1)];
    while (*link) {
        entry_t *e = *link;
        if (e->hash == hash && e->len == len && memcmp(e->key, key, len) == 0)
            return link;
        link = &e->next;
    }
    return link;
}

void *dict_get(const dict_t *self, const void *key, size_t len)
{
    entry_t **link = s_find(self, key, len, hashring_hash(key, len, DICT_SEED));
    return *link ? (*link)->value : NULL;
}

static void s_grow(dict_t *self)
{
    size_t n = self->nbuckets * 2;
    entry_t **buckets = calloc(n, sizeof *buckets);
    if (!buckets)
        return; /* a fuller table is slower, not wrong */
    for (size_t i = 0; i < self->nbuckets; i++) {
        entry_t *e = self->buckets[i];
        while (e) {
            entry_t *next = e->next;
            e->next = buckets[e->hash & (n - 1)];
            buckets[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(self->buckets);
    self->buckets = buckets;
    self->nbuckets = n;
}

int dict_put(dict_t *self, const void *key, size_t len, void *value)
{
    if (len > UINT32_MAX)
        return -1;
    uint64_t hash = hashring_hash(key, len, DICT_SEED);
    entry_t **link = s_find(self, key, len, hash);
    if (*link) {
        (*link)->value = value;
        return 0;
    }
    entry_t *e = malloc(sizeof *e + len);
    if (!e)
        return -1;
    e->next = NULL;
    e->hash = hash;
    e->value = value;
    e->len = (uint32_t)len;
    memcpy(e->key, key, len);
    *link = e;
    if (++self->size > self->nbuckets)
        s_grow(self);
    return 0;
}

void *dict_remove(dict_t *self, const void *key, size_t len)
{
    entry_t **link = s_find(self, key, len, hashring_hash(key, len, DICT_SEED));
    entry_t *e = *link;
    if (!e)
        return NULL;
    void *value = e->value;
    *link = e->next;
    free(e);
    self->size--;
    return value;
}

size_t dict_size(const dict_t *self)
{
    return self->size;
}

size_t dict_sweep(dict_t *self, size_t *cursor, size_t max, dict_visit_fn fn, void *arg)
{
    size_t visited = 0;
    size_t b = *cursor < self->nbuckets ? *cursor : 0;
    while (visited < max) {
        entry_t **link = &self->buckets[b];
        while (*link) {
            entry_t *e = *link;
            visited++;
            if (fn(arg, e->key, e->len, e->value)) {
                *link = e->next;
                free(e);
                self->size--;
            } else {
                link = &e->next;
            }
        }
        if (++b == self->nbuckets) {
            b = 0;
            break;
        }
    }
    *cursor = b;
    return visited;
}
