/*
 * log - one line per event on stderr:
 *   2026-11-28T14:40:15.123Z level=info proc=broker pid=123 broker_run: worker joined node=w1
 * Time in UTC with milliseconds, level, process name, pid, the calling
 * function, then a message whose fields are key=value.
 *
 * Levels mean something: info/warn carry on; error is a failed request or job
 * that is retried or reported; fatal exits the process with status 1 (its
 * supervisor restarts it); panic is a broken invariant and aborts.
 * Never pass peer data straight into a message: run it through log_printable.
 * Thread-safe: each line is written with one write(2).
 */
#ifndef POSTCHI_LOG_H
#define POSTCHI_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_FATAL, LOG_PANIC } log_level_t;

/* Name the process ("broker", "worker", "api", "postchi"); copied. */
void log_init(const char *process);
void log_set_level(log_level_t level);
/* "debug" | "info" | "warn" | "error": 0 and *level set, or -1. */
int log_level_parse(const char *name, log_level_t *level);

void log_write(log_level_t level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(...) log_write(LOG_DEBUG, __func__, __VA_ARGS__)
#define log_info(...) log_write(LOG_INFO, __func__, __VA_ARGS__)
#define log_warn(...) log_write(LOG_WARN, __func__, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __func__, __VA_ARGS__)
/* Writes the line, then exit(1). */
#define log_fatal(...) log_write(LOG_FATAL, __func__, __VA_ARGS__)
/* Writes the line, then abort(). */
#define log_panic(...) log_write(LOG_PANIC, __func__, __VA_ARGS__)

/* Copy untrusted bytes into dst (size dstlen > 0) so they are safe on a log
 * line: printable ASCII is kept, everything else (control bytes, quotes,
 * backslash, non-ASCII, NUL) becomes \xNN; output is cut with "..." to fit.
 * Always NUL-terminates. Returns dst. */
char *log_printable(char *dst, size_t dstlen, const void *src, size_t srclen);

/* Rate limit for noisy events ("once per peer per minute"): a small table of
 * keys with the last time each was allowed. Returns 1 when the caller should
 * log now, 0 when it logged this key less than period_ms ago. Thread-safe.
 * The table is bounded; when full, the oldest key is forgotten. */
int log_should(const char *key, size_t keylen, int64_t period_ms);

#endif
