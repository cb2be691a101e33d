/*
 * sbuf - growable, length-carrying, binary-safe string (see sbuf.h).
 *
 * The bytes live in one heap block of cap bytes; len of them are content and
 * data[len] is always NUL, so sbuf_data can be handed to printf-style code
 * even though the content itself may hold NULs. Growth is geometric (double
 * until big enough) so a long run of small appends costs amortised O(1).
 *
 * What can go wrong: malloc failure, or a requested size that would wrap
 * size_t or pass PTRDIFF_MAX. Both are reported as -1 before anything is
 * changed, so a caller that ignores a failed append still holds a valid,
 * unchanged buffer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sbuf.h"

/* Smallest block we bother to allocate; avoids a string of tiny reallocs. */
#define SBUF_MIN_CAP 16
/* Largest block we ask for: no object may exceed PTRDIFF_MAX (pointer
 * differences must fit), and no allocator grants one. */
#define SBUF_MAX_CAP ((size_t)PTRDIFF_MAX)

struct sbuf {
    char *data; /* cap bytes, NUL at data[len]; NULL only after detach (cap 0) */
    size_t len; /* content bytes, not counting the trailing NUL */
    size_t cap; /* bytes allocated at data */
};

/* Make sure cap >= len + extra + 1 (room for the NUL). Grows geometrically so
 * repeated appends do not realloc each time. 0, or -1 on overflow / ENOMEM
 * with the buffer untouched. */
static int s_grow(sbuf_t *self, size_t extra)
{
    if (extra > SBUF_MAX_CAP - 1 || self->len > SBUF_MAX_CAP - 1 - extra)
        return -1;
    size_t need = self->len + extra + 1;
    if (need <= self->cap)
        return 0;
    size_t cap = self->cap < SBUF_MIN_CAP ? SBUF_MIN_CAP : self->cap;
    while (cap < need)
        cap = cap > SBUF_MAX_CAP / 2 ? need : cap * 2;
    char *data = realloc(self->data, cap);
    if (!data)
        return -1;
    if (!self->data)
        data[0] = '\0';
    self->data = data;
    self->cap = cap;
    return 0;
}

sbuf_t *sbuf_new(size_t hint)
{
    sbuf_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    if (s_grow(self, hint) < 0) {
        free(self);
        return NULL;
    }
    return self;
}

void sbuf_destroy(sbuf_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->data);
    free(*self_p);
    *self_p = NULL;
}

/* Appending a slice of our own buffer is allowed: realloc may move the block,
 * so remember the offset and re-derive the source after growing. */
int sbuf_append(sbuf_t *self, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    const char *src = data;
    uintptr_t base = (uintptr_t)self->data, at = (uintptr_t)src;
    int inside = self->data && at >= base && at < base + self->cap;
    size_t off = inside ? at - base : 0;
    if (s_grow(self, len) < 0)
        return -1;
    if (inside)
        src = self->data + off;
    memmove(self->data + self->len, src, len);
    self->len += len;
    self->data[self->len] = '\0';
    return 0;
}

int sbuf_append_str(sbuf_t *self, const char *str)
{
    return sbuf_append(self, str, strlen(str));
}

int sbuf_appendf(sbuf_t *self, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = sbuf_vappendf(self, fmt, ap);
    va_end(ap);
    return rc;
}

/* Try to format into the spare room first; only when it does not fit, grow
 * to the exact size vsnprintf reported and format again. */
int sbuf_vappendf(sbuf_t *self, const char *fmt, va_list ap)
{
    if (!self->data && s_grow(self, 0) < 0)
        return -1;
    va_list ap2;
    va_copy(ap2, ap);
    size_t room = self->cap - self->len;
    int n = vsnprintf(self->data + self->len, room, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        goto fail;
    if ((size_t)n >= room) {
        if (s_grow(self, (size_t)n) < 0)
            goto fail;
        va_copy(ap2, ap);
        n = vsnprintf(self->data + self->len, self->cap - self->len, fmt, ap2);
        va_end(ap2);
        if (n < 0)
            goto fail;
    }
    self->len += (size_t)n;
    return 0;
fail:
    /* vsnprintf may have written past len: restore the terminator. */
    self->data[self->len] = '\0';
    return -1;
}

int sbuf_reserve(sbuf_t *self, size_t len)
{
    return s_grow(self, len);
}

const char *sbuf_data(const sbuf_t *self)
{
    return self->data ? self->data : "";
}

size_t sbuf_len(const sbuf_t *self)
{
    return self->len;
}

void sbuf_reset(sbuf_t *self)
{
    sbuf_truncate(self, 0);
}

void sbuf_truncate(sbuf_t *self, size_t len)
{
    if (len >= self->len)
        return;
    self->len = len;
    self->data[len] = '\0';
}

void sbuf_consume(sbuf_t *self, size_t n)
{
    if (n >= self->len) {
        sbuf_truncate(self, 0);
        return;
    }
    memmove(self->data, self->data + n, self->len - n);
    sbuf_truncate(self, self->len - n);
}

/* The block is handed over as is (it may be larger than len + 1); the buffer
 * goes back to the no-memory state and grows again on the next append. */
char *sbuf_detach(sbuf_t *self, size_t *len_p)
{
    char *out = self->data;
    size_t len = self->len;
    if (!out) {
        out = malloc(1);
        if (!out)
            return NULL;
        out[0] = '\0';
    }
    self->data = NULL;
    self->len = 0;
    self->cap = 0;
    if (len_p)
        *len_p = len;
    return out;
}
