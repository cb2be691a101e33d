/*
 * messages - what the send API shares with the workers: one expansion step
 * of a bulk send (see messages.c and ops/migrations/009_batch_expansion.sql).
 */
#ifndef POSTCHI_MESSAGES_H
#define POSTCHI_MESSAGES_H

#include <jansson.h>

#include "db.h"
#include "sbuf.h"

/* What one expansion step wrote. */
typedef struct {
    long written;     /* rows written (every status) */
    long queued;      /* of which queued */
    long scheduled;   /* of which scheduled (send_at in the future) */
    long suppressed;  /* of which suppressed */
    int done;         /* the batch is whole (now, or before this step) */
    json_t *mailers;  /* "<domain>#<shard>" of the mailers with queued rows in the step, a
                       * JSON array (owned), or NULL: only those are woken */
} messages_step_t;

/* Write the next step of batch batch_id of organization org inside the
 * caller's open transaction: the batch row is locked first, so steps of
 * one batch never run side by side, and the rows and the moved cursor
 * commit together or not at all. A batch already whole, or not this
 * organization's, writes nothing and sets out->done. 0, or -1 with err
 * set (the caller rolls back). out is cleared first. */
int messages_expand(db_t *db, const char *org, const char *batch_id, messages_step_t *out,
                    sbuf_t *err);

/* Free out's domains and zero it. NULL-safe, idempotent. */
void messages_step_clear(messages_step_t *step);

#endif
