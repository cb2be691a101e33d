/*
 * backoff - exponential pauses towards a deadline (see backoff.h).
 *
 * The clock is CLOCK_MONOTONIC so a wall-clock jump neither cuts a wait
 * short nor stretches it; sleeps resume after signals.
 */
#include <assert.h>
#include <errno.h>
#include <time.h>

#include "backoff.h"

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000

int64_t backoff_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void backoff_start(backoff_t *self, int64_t wait_ms)
{
    assert(self);
    self->deadline_ms = backoff_now_ms() + (wait_ms > 0 ? wait_ms : 0);
    self->pause_ms = BACKOFF_FIRST_MS;
}

int backoff_wait(backoff_t *self)
{
    assert(self);
    int64_t left = self->deadline_ms - backoff_now_ms();
    if (left <= 0)
        return 0;
    int64_t ms = self->pause_ms < left ? self->pause_ms : left;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
    self->pause_ms = self->pause_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : self->pause_ms * 2;
    return 1;
}
