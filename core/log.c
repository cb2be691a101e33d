/*
 * log - one line per event on stderr (see log.h for the line format).
 *
 * Each line is built in a stack buffer and written with a single write(2),
 * so lines from different threads (and from processes sharing the same
 * stderr file, opened O_APPEND by `postchi up`) never interleave. The buffer
 * holds only text we format ourselves; anything from a peer must already
 * have been passed through log_printable. A message too long for the buffer
 * is cut and ends in "...", and newlines in it become spaces so one event
 * is always one line.
 *
 * log_fatal exits(1) and log_panic aborts after writing; they are written
 * whatever the level filter says.
 *
 * log_should keeps a fixed table of key hashes: it never allocates, and a
 * flood of distinct keys only pushes out the oldest entries.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* One log line at most; longer messages are cut with "...". */
#define LOG_LINE_MAX 8192
/* Room for the process name; ours are short words like "broker". */
#define LOG_PROC_MAX 32
/* Keys remembered by log_should. */
#define LOG_SHOULD_SLOTS 256

typedef struct {
    const char *name; /* what log_level_parse accepts and the line shows */
    bool parseable;   /* may be chosen as a filter level */
} level_row_t;

/* Indexed by log_level_t. */
static const level_row_t s_levels[] = {
    [LOG_DEBUG] = {"debug", true}, [LOG_INFO] = {"info", true},    [LOG_WARN] = {"warn", true},
    [LOG_ERROR] = {"error", true}, [LOG_FATAL] = {"fatal", false}, [LOG_PANIC] = {"panic", false},
};

static char s_proc[LOG_PROC_MAX] = "postchi";
static atomic_int s_min_level = LOG_INFO;

typedef struct {
    uint64_t hash;   /* FNV-1a of the key; 0 marks a free slot */
    int64_t last_ms; /* monotonic ms when this key was last allowed */
    uint64_t stamp;  /* order of that last allowance, to find the oldest */
} should_slot_t;

static pthread_mutex_t s_should_lock = PTHREAD_MUTEX_INITIALIZER;
static should_slot_t s_should[LOG_SHOULD_SLOTS];
static uint64_t s_should_clock;

void log_init(const char *process)
{
    snprintf(s_proc, sizeof s_proc, "%s", process ? process : "postchi");
}

void log_set_level(log_level_t level)
{
    atomic_store(&s_min_level, (int)level);
}

int log_level_parse(const char *name, log_level_t *level)
{
    for (size_t i = 0; i < sizeof s_levels / sizeof s_levels[0]; i++) {
        if (s_levels[i].parseable && strcmp(s_levels[i].name, name) == 0) {
            *level = (log_level_t)i;
            return 0;
        }
    }
    return -1;
}

/* Write all of buf with as few write(2) calls as the kernel allows (one, for
 * any line that fits a pipe buffer). Errors are dropped: there is nowhere
 * left to report them. */
static void s_write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

void log_write(log_level_t level, const char *func, const char *fmt, ...)
{
    if (level < LOG_FATAL && (int)level < atomic_load(&s_min_level))
        return;
    int saved_errno = errno; /* callers often log and then look at errno */
    char line[LOG_LINE_MAX];
    /* Keep room for "...\n" so a cut message still ends properly. */
    const size_t body_max = sizeof line - 4;

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t len = strftime(line, body_max, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *lname =
        (unsigned)level < sizeof s_levels / sizeof s_levels[0] ? s_levels[level].name : "?";
    int n = snprintf(line + len, body_max - len,
                     ".%03ldZ level=%s proc=%s pid=%ld %s: ", ts.tv_nsec / 1000000L, lname, s_proc,
                     (long)getpid(), func ? func : "?");
    size_t head = n < 0 ? len : len + (size_t)n;
    if (head > body_max)
        head = body_max;

    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(line + head, body_max - head, fmt, ap);
    va_end(ap);
    size_t msg = n < 0 ? 0 : (size_t)n;
    bool cut = head + msg >= body_max;
    len = cut ? body_max - 1 : head + msg;
    for (size_t i = head; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    if (cut) {
        memcpy(line + len, "...", 3);
        len += 3;
    }
    line[len++] = '\n';
    s_write_all(line, len);
    errno = saved_errno;

    if (level == LOG_FATAL)
        exit(1);
    if (level == LOG_PANIC)
        abort();
}

/* Width of byte c once made printable: itself, or \xNN. */
static size_t s_printable_width(unsigned char c)
{
    return (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? 1 : 4;
}

char *log_printable(char *dst, size_t dstlen, const void *src, size_t srclen)
{
    static const char hex[] = "0123456789abcdef";
    assert(dst && dstlen > 0);
    const unsigned char *in = src;
    size_t room = dstlen - 1;
    size_t need = 0;
    for (size_t i = 0; i < srclen && need <= room; i++)
        need += s_printable_width(in[i]);
    /* When everything fits, use it all; otherwise keep whole escapes only,
     * leaving room for the "..." that says something was dropped. */
    bool cut = need > room;
    size_t budget = cut ? (room >= 3 ? room - 3 : 0) : room;
    size_t o = 0;
    for (size_t i = 0; i < srclen; i++) {
        unsigned char c = in[i];
        size_t w = s_printable_width(c);
        if (o + w > budget)
            break;
        if (w == 1) {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 0xf];
        }
    }
    if (cut)
        for (int i = 0; i < 3 && o < room; i++)
            dst[o++] = '.';
    dst[o] = '\0';
    return dst;
}

/* FNV-1a, never 0 (0 marks a free slot). Two keys colliding on 64 bits would
 * only share a rate limit, which is harmless. */
static uint64_t s_hash(const char *key, size_t keylen)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < keylen; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

static int64_t s_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The table is small enough (256 x 24 bytes) that one pass over it to find
 * the key, a free slot or the oldest entry costs less than the log line the
 * caller is deciding about. */
int log_should(const char *key, size_t keylen, int64_t period_ms)
{
    uint64_t h = s_hash(key, keylen);
    int64_t now = s_monotonic_ms();
    int allow = 1;
    pthread_mutex_lock(&s_should_lock);
    should_slot_t *slot = NULL, *victim = &s_should[0];
    for (size_t i = 0; i < LOG_SHOULD_SLOTS; i++) {
        should_slot_t *s = &s_should[i];
        if (s->hash == h) {
            slot = s;
            break;
        }
        if (victim->hash != 0 && (s->hash == 0 || s->stamp < victim->stamp))
            victim = s;
    }
    if (slot) {
        if (now - slot->last_ms < period_ms)
            allow = 0;
    } else {
        slot = victim;
        slot->hash = h;
    }
    if (allow) {
        slot->last_ms = now;
        slot->stamp = ++s_should_clock;
    }
    pthread_mutex_unlock(&s_should_lock);
    return allow;
}
