/*
 * dict - a hash table from byte-string keys to pointers.
 *
 * Built for the worker's actor table (a million entries must stay small:
 * one allocation per entry, holding the key inline) and the broker's peer
 * table. Chained buckets, power-of-two sized, grown at load factor 1.
 * Values are not owned: the caller frees them. Not thread-safe.
 */
#ifndef POSTCHI_DICT_H
#define POSTCHI_DICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct dict dict_t;

dict_t *dict_new(void);
/* Frees the table and its keys, not the values. */
void dict_destroy(dict_t **self_p);

/* The value for key, or NULL. */
void *dict_get(const dict_t *self, const void *key, size_t len);
/* Insert or replace. 0, or -1 when out of memory (table unchanged). */
int dict_put(dict_t *self, const void *key, size_t len, void *value);
/* Remove and return the value, or NULL when absent. */
void *dict_remove(dict_t *self, const void *key, size_t len);
size_t dict_size(const dict_t *self);

/* Visit entries bucket by bucket from *cursor (start at 0), at most max of
 * them; fn may return 1 to remove the entry it was given (its value is then
 * the caller's to free inside fn). *cursor is advanced; it wraps to 0 after
 * the last bucket, so repeated calls sweep the table incrementally. Returns
 * the number of entries visited. */
typedef int (*dict_visit_fn)(void *arg, const void *key, size_t len, void *value);
size_t dict_sweep(dict_t *self, size_t *cursor, size_t max, dict_visit_fn fn, void *arg);

#endif
