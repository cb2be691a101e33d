/*
 * sbuf - the one growable, length-carrying, binary-safe string type.
 *
 * Everything a peer sends (frames, HTTP bodies, SMTP replies) and every
 * protocol byte we build goes through an sbuf: sizes are checked for
 * overflow, the data is always NUL-terminated (so it can be printed) but may
 * also contain NULs. Functions that can grow the buffer return 0, or -1 when
 * memory runs out or the size would overflow; the buffer is then unchanged.
 */
#ifndef POSTCHI_SBUF_H
#define POSTCHI_SBUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct sbuf sbuf_t;

/* A new empty buffer with room for hint bytes; NULL when out of memory. */
sbuf_t *sbuf_new(size_t hint);
/* NULL-safe and idempotent; sets *self_p to NULL. */
void sbuf_destroy(sbuf_t **self_p);

int sbuf_append(sbuf_t *self, const void *data, size_t len);
int sbuf_append_str(sbuf_t *self, const char *str);
int sbuf_appendf(sbuf_t *self, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int sbuf_vappendf(sbuf_t *self, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Make room for at least len more bytes without changing the length. */
int sbuf_reserve(sbuf_t *self, size_t len);

/* Always NUL-terminated; valid until the next call that changes the buffer. */
const char *sbuf_data(const sbuf_t *self);
size_t sbuf_len(const sbuf_t *self);
/* Drop the contents, keep the memory. */
void sbuf_reset(sbuf_t *self);
/* Shorten to len bytes (no-op when len >= current length). */
void sbuf_truncate(sbuf_t *self, size_t len);
/* Drop the first n bytes (all of them when n >= the length), keep the
 * memory: what is left of a read buffer once its complete lines are
 * handled. */
void sbuf_consume(sbuf_t *self, size_t n);
/* Hand the bytes to the caller (caller owns the result, free() it) and leave
 * the buffer empty. len_p may be NULL. NULL when out of memory. */
char *sbuf_detach(sbuf_t *self, size_t *len_p);

#endif
