/*
 * backoff - "try again until it works or the caller's patience runs out",
 * with exponential pauses: 100 ms, doubling, capped at 2 s, never sleeping
 * past the deadline. Used by every connect-with-wait (db, kv).
 *
 *   backoff_t b;
 *   backoff_start(&b, wait_ms);
 *   while (try_once() != 0)
 *       if (!backoff_wait(&b))
 *           return give_up();
 *
 * A plain value on the caller's stack (no allocation), so the struct is
 * visible; treat its fields as private.
 */
#ifndef POSTCHI_BACKOFF_H
#define POSTCHI_BACKOFF_H

#include <stdint.h>

typedef struct {
    int64_t deadline_ms; /* monotonic time after which no attempt starts */
    int64_t pause_ms;    /* the next pause */
} backoff_t;

/* Begin a wait of wait_ms (<= 0: no retries at all). */
void backoff_start(backoff_t *self, int64_t wait_ms);
/* After a failed attempt: sleep the next pause (cut to the time left) and
 * return 1, or return 0 at once when the time is up. */
int backoff_wait(backoff_t *self);

/* Milliseconds on a monotonic clock. */
int64_t backoff_now_ms(void);

#endif
