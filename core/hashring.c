/*
 * hashring - weighted rendezvous hashing over a small set of nodes.
 *
 * How: each node's id is hashed once when it is added. A lookup hashes the
 * key once, then for every node mixes the two hashes into a uniform u in
 * (0,1) and scores the node -weight / ln(u); the highest score wins. With
 * equal weights this is plain highest-random-weight hashing; with weights it
 * gives each node a share proportional to its weight (the score is an
 * exponential race whose rates are the weights), and a node's arrival or
 * departure moves only the keys it wins or held.
 *
 * What can go wrong: two processes agree on owners only if they agree on the
 * node set and weights. The hash is defined on bytes read little-endian, so it
 * is the same on every platform; the score uses the C library's log(), which
 * may differ in the last bit between libms, so processes on different
 * platforms could disagree on a key whose two best scores are within one
 * ulp, which is vanishingly rare. Exact ties go to the smaller node id.
 */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hashring.h"

/* Odd 64-bit constants with well spread bits (golden ratio and friends). */
#define S_K0 0x9e3779b97f4a7c15ULL
#define S_K1 0xc2b2ae3d27d4eb4fULL
#define S_K2 0x165667b19e3779f9ULL
#define S_K3 0xd6e8feb86659fd93ULL
/* Seed for node ids, so an id and an equal key do not hash alike. */
#define S_ID_SEED 0x6e6f64652f696473ULL

typedef struct {
    char *id;         /* node id, owned */
    uint64_t id_hash; /* hashring_hash of id, computed once at add */
    uint32_t weight;  /* >= 1, share of keys relative to the others */
    void *data;       /* caller's pointer handed back by lookups */
} node_t;

struct hashring {
    node_t *nodes;   /* live nodes, unordered */
    size_t count;    /* nodes in use */
    size_t capacity; /* nodes allocated */
    int uniform;     /* all nodes share one weight: lookups may skip log() */
};

static inline uint64_t s_rotl(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

/* Full-avalanche finaliser: every input bit flips each output bit with
 * probability close to 1/2. A bijection, so it loses nothing. */
static inline uint64_t s_mix(uint64_t x)
{
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    x *= 0xd6e8feb86659fd93ULL;
    x ^= x >> 32;
    return x;
}

/* 8 bytes as a little-endian word, whatever the host's byte order. */
static inline uint64_t s_load_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/*
 * Words are scrambled on their own (multiply, rotate, multiply), then folded
 * into the state by xor, rotate, multiply and add. Each step is a bijection
 * of the state for a fixed word, so no input can collapse the state, and the
 * length is folded in first so zero padding of the tail cannot collide with
 * real zero bytes.
 */
uint64_t hashring_hash(const void *data, size_t len, uint64_t seed)
{
    assert(data || len == 0);
    const uint8_t *p = data;
    uint64_t h = seed ^ ((uint64_t)len * S_K0) ^ S_K3;
    size_t i = 0;
    for (;;) {
        size_t n = len - i < 8 ? len - i : 8;
        if (n == 0)
            break;
        uint64_t w = s_load_le(p + i, n);
        w *= S_K1;
        w = s_rotl(w, 31);
        w *= S_K0;
        h ^= w;
        h = s_rotl(h, 27) * S_K2 + S_K3;
        i += n;
    }
    return s_mix(h ^ (h >> 29));
}

hashring_t *hashring_new(void)
{
    return calloc(1, sizeof(hashring_t));
}

void hashring_destroy(hashring_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    hashring_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++)
        free(self->nodes[i].id);
    free(self->nodes);
    free(self);
    *self_p = NULL;
}

/* Recompute uniform after the node set or a weight changed. */
static void s_update_uniform(hashring_t *self)
{
    self->uniform = 1;
    for (size_t i = 1; i < self->count && self->uniform; i++)
        self->uniform = self->nodes[i].weight == self->nodes[0].weight;
}

static node_t *s_find(const hashring_t *self, const char *node_id)
{
    for (size_t i = 0; i < self->count; i++)
        if (strcmp(self->nodes[i].id, node_id) == 0)
            return &self->nodes[i];
    return NULL;
}

int hashring_add(hashring_t *self, const char *node_id, uint32_t weight, void *data)
{
    assert(self && node_id);
    if (weight == 0 || node_id[0] == '\0')
        return -1;
    node_t *node = s_find(self, node_id);
    if (node) {
        node->weight = weight;
        node->data = data;
        s_update_uniform(self);
        return 0;
    }
    if (self->count == self->capacity) {
        size_t capacity = self->capacity ? self->capacity * 2 : 8;
        node_t *nodes = realloc(self->nodes, capacity * sizeof *nodes);
        if (!nodes)
            return -1;
        self->nodes = nodes;
        self->capacity = capacity;
    }
    char *id = strdup(node_id);
    if (!id)
        return -1;
    self->nodes[self->count++] = (node_t){
        .id = id,
        .id_hash = hashring_hash(id, strlen(id), S_ID_SEED),
        .weight = weight,
        .data = data,
    };
    s_update_uniform(self);
    return 0;
}

int hashring_remove(hashring_t *self, const char *node_id)
{
    assert(self && node_id);
    node_t *node = s_find(self, node_id);
    if (!node)
        return -1;
    free(node->id);
    /* Order does not matter to lookups, so the last node fills the hole. */
    *node = self->nodes[--self->count];
    s_update_uniform(self);
    return 0;
}

size_t hashring_size(const hashring_t *self)
{
    assert(self);
    return self->count;
}

/* The node's u for a key as a 53-bit integer in [1, 2^53): u * 2^53. */
static uint64_t s_draw(const node_t *node, uint64_t key_hash)
{
    uint64_t h = s_mix(s_mix(key_hash ^ node->id_hash) + node->id_hash);
    uint64_t top = h >> 11; /* 53 bits, what a double holds exactly */
    return top ? top : 1;   /* u == 0 would score 0 whatever the weight */
}

/*
 * The node's score for a key: -weight / ln(u), u uniform in (0,1). When all
 * weights are equal the score orders nodes exactly as u does, so the draw
 * itself is the score and the log (most of a lookup's time) is skipped.
 * Which path is taken depends only on the weights, so every process with
 * the same nodes takes the same one.
 */
static double s_score(const hashring_t *self, const node_t *node, uint64_t key_hash)
{
    uint64_t draw = s_draw(node, key_hash);
    if (self->uniform)
        return (double)draw; /* exact: draw < 2^53 */
    return -(double)node->weight / log((double)draw * 0x1.0p-53);
}

void *hashring_lookup(const hashring_t *self, const void *key, size_t keylen,
                      const char **node_id_p)
{
    assert(self);
    if (self->count == 0)
        return NULL;
    uint64_t key_hash = hashring_hash(key, keylen, 0);
    const node_t *best = &self->nodes[0];
    double best_score = s_score(self, best, key_hash);
    for (size_t i = 1; i < self->count; i++) {
        const node_t *node = &self->nodes[i];
        double score = s_score(self, node, key_hash);
        if (score > best_score || (score == best_score && strcmp(node->id, best->id) < 0)) {
            best = node;
            best_score = score;
        }
    }
    if (node_id_p)
        *node_id_p = best->id;
    return best->data;
}
