/*
 * hashring - which node owns a key: weighted rendezvous (highest random
 * weight) hashing over the live nodes.
 *
 * Every node scores every key; the highest score wins. Removing a node moves
 * only the keys it owned, adding one takes only its fair share, and the
 * result depends on nothing but the set of (node id, weight), so every
 * process that sees the same nodes agrees on the owner. Lookup is O(nodes),
 * which is what a mesh of tens of workers wants.
 * Not thread-safe: one owner thread.
 */
#ifndef POSTCHI_HASHRING_H
#define POSTCHI_HASHRING_H

#include <stddef.h>
#include <stdint.h>

typedef struct hashring hashring_t;

hashring_t *hashring_new(void);
void hashring_destroy(hashring_t **self_p);

/* Add a node (id copied) with weight >= 1 and an opaque pointer returned by
 * lookups. Re-adding an existing id updates its weight and data. 0 or -1. */
int hashring_add(hashring_t *self, const char *node_id, uint32_t weight, void *data);
/* 0, or -1 when the id is not there. */
int hashring_remove(hashring_t *self, const char *node_id);
size_t hashring_size(const hashring_t *self);
/* The owner's data for key, or NULL when there are no nodes. If node_id_p is
 * not NULL it gets the owner's id (valid until the node is removed). */
void *hashring_lookup(const hashring_t *self, const void *key, size_t keylen,
                      const char **node_id_p);

/* The 64-bit hash the ring uses, exposed for tests and for sharding keys
 * elsewhere. Stable across processes and versions. */
uint64_t hashring_hash(const void *data, size_t len, uint64_t seed);

#endif
