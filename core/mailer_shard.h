/*
 * mailer_shard - which mailer actor owns a message row.
 *
 * Mailer actors are "mailer/<recipient domain>#<shard>": a big send to one
 * domain is built and signed by MAILER_SHARDS actors in parallel (across
 * pool threads and workers) instead of one. A row's shard is the first byte
 * of its uuid modulo MAILER_SHARDS; SQL computes the same thing with
 * get_byte(uuid_send(id), 0) % MAILER_SHARDS (MAILER_SHARD_SQL). Shaping is
 * per destination in the delivery engine, shared through Redis, so shards
 * never multiply a destination's budget.
 */
#ifndef POSTCHI_MAILER_SHARD_H
#define POSTCHI_MAILER_SHARD_H

#include <stdio.h>

#define MAILER_SHARDS 8
#define MAILER_SHARD_SQL(col) "(get_byte(uuid_send(" col "), 0) % 8)"

/* The shard of a canonical uuid text; 0 for anything else. */
static inline int mailer_shard(const char *uuid)
{
    unsigned byte = 0;
    if (!uuid || sscanf(uuid, "%2x", &byte) != 1)
        return 0;
    return (int)(byte % MAILER_SHARDS);
}

/* "mailer/<domain>#<shard>" into out. */
static inline void mailer_address(char *out, size_t size, const char *domain, int shard)
{
    snprintf(out, size, "mailer/%s#%d", domain, shard);
}

#endif
