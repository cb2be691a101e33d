/*
 * test_log - line shape, level filter, cutting and one-line-per-event,
 * fatal/panic endings (in a forked child), log_printable escapes and cuts,
 * log_should rate limiting and its bounded table.
 *
 * stderr is captured by pointing fd 2 at a temporary file, so lines from
 * several threads can be checked afterwards without a reader thread.
 */
#include <pthread.h>
#include <regex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "sbuf.h"

/* The fixed part of every line; %s is the level, %ld the pid, the rest is
 * "func: message". */
#define LINE_HEAD                                                                                  \
    "^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\\.[0-9]{3}Z "              \
    "level=%s proc=test pid=%ld "

typedef struct {
    int saved;  /* the real stderr */
    FILE *file; /* where fd 2 points meanwhile */
} capture_t;

static void s_capture_start(capture_t *c)
{
    fflush(stderr);
    c->file = tmpfile();
    assert_non_null(c->file);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fileno(c->file), STDERR_FILENO) >= 0);
}

/* Restore stderr; returns everything written meanwhile (caller frees). */
static char *s_capture_end(capture_t *c)
{
    assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
    close(c->saved);
    sbuf_t *b = sbuf_new(1024);
    rewind(c->file);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, c->file)) > 0)
        assert_int_equal(sbuf_append(b, chunk, n), 0);
    fclose(c->file);
    char *out = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return out;
}

/* Does line match LINE_HEAD for level, followed by tail (a regex)? */
static int s_matches(const char *line, const char *level, const char *tail)
{
    char pattern[1024];
    int n = snprintf(pattern, sizeof pattern, LINE_HEAD "%s", level, (long)getpid(), tail);
    assert_true(n > 0 && (size_t)n < sizeof pattern);
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE), 0);
    int ok = regexec(&re, line, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

static size_t s_count_lines(const char *text)
{
    size_t n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static int s_setup(void **state)
{
    (void)state;
    log_init("test");
    log_set_level(LOG_INFO);
    return 0;
}

static void test_line_shape(void **state)
{
    (void)state;
    capture_t c;
    s_capture_start(&c);
    log_info("hello x=%d name=%s", 1, "w1");
    char *out = s_capture_end(&c);
    assert_true(s_matches(out, "info", "test_line_shape: hello x=1 name=w1\n$"));
    assert_int_equal(s_count_lines(out), 1);
    free(out);
}

/* The stamp is UTC whatever the local zone: with TZ 3h30 away from UTC the
 * printed time must still be within minutes of time(NULL). */
static void test_time_is_utc(void **state)
{
    (void)state;
    setenv("TZ", "XYZ-3:30", 1);
    tzset();
    capture_t c;
    s_capture_start(&c);
    log_warn("tick");
    char *out = s_capture_end(&c);
    time_t now = time(NULL);
    unsetenv("TZ");
    tzset();

    struct tm tm = {0};
    char *rest = strptime(out, "%Y-%m-%dT%H:%M:%S", &tm);
    assert_non_null(rest);
    time_t stamped = timegm(&tm);
    assert_true(stamped > now - 600 && stamped <= now);
    free(out);
}

static void test_level_filter(void **state)
{
    (void)state;
    capture_t c;
    s_capture_start(&c);
    log_set_level(LOG_WARN);
    log_debug("d");
    log_info("i");
    log_warn("w");
    log_error("e");
    log_set_level(LOG_DEBUG);
    log_debug("d2");
    log_set_level(LOG_INFO);
    log_debug("d3");
    char *out = s_capture_end(&c);
    assert_int_equal(s_count_lines(out), 3);
    assert_true(s_matches(out, "warn", "test_level_filter: w$"));
    assert_true(s_matches(out, "error", "test_level_filter: e$"));
    assert_true(s_matches(out, "debug", "test_level_filter: d2$"));
    assert_null(strstr(out, ": i\n"));
    assert_null(strstr(out, ": d\n"));
    assert_null(strstr(out, "d3"));
    free(out);
}

static void test_level_parse(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int rc;
        log_level_t level;
    } cases[] = {
        {"debug", 0, LOG_DEBUG},
        {"info", 0, LOG_INFO},
        {"warn", 0, LOG_WARN},
        {"error", 0, LOG_ERROR},
        {"fatal", -1, 0},
        {"panic", -1, 0},
        {"", -1, 0},
        {"loud", -1, 0},
        {"info ", -1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        log_level_t level = LOG_PANIC;
        assert_int_equal(log_level_parse(cases[i].name, &level), cases[i].rc);
        if (cases[i].rc == 0)
            assert_int_equal(level, cases[i].level);
    }
}

/* A message longer than a line is cut with "..." and is still one line; an
 * embedded newline cannot split an event either. */
static void test_long_and_multiline(void **state)
{
    (void)state;
    size_t big = 20000;
    char *msg = malloc(big + 1);
    memset(msg, 'a', big);
    msg[big] = '\0';
    capture_t c;
    s_capture_start(&c);
    log_error("%s", msg);
    log_error("one\ntwo\r\nthree");
    char *out = s_capture_end(&c);
    free(msg);

    assert_int_equal(s_count_lines(out), 2);
    char *nl = strchr(out, '\n');
    size_t first = (size_t)(nl - out) + 1;
    assert_true(first <= 8192);
    assert_true(first > 8000);
    assert_memory_equal(nl - 4, "a...", 4);
    assert_true(s_matches(nl + 1, "error", "test_long_and_multiline: one two  three\n$"));
    free(out);
}

typedef struct {
    int id; /* thread number, part of every message */
} writer_arg_t;

#define WRITERS 4
#define WRITES 500

static void *s_writer(void *arg)
{
    const writer_arg_t *w = arg;
    char pad[300];
    memset(pad, 'p', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    for (int i = 0; i < WRITES; i++)
        log_info("thread=%d seq=%d pad=%s", w->id, i, pad);
    return NULL;
}

/* Lines from concurrent threads never interleave: every line is whole. */
static void test_threads_whole_lines(void **state)
{
    (void)state;
    capture_t c;
    s_capture_start(&c);
    pthread_t t[WRITERS];
    writer_arg_t args[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        args[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, s_writer, &args[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++)
        pthread_join(t[i], NULL);
    char *out = s_capture_end(&c);
    assert_int_equal(s_count_lines(out), WRITERS * WRITES);
    char *line = out;
    while (*line) {
        char *end = strchr(line, '\n');
        assert_non_null(end);
        *end = '\0';
        assert_true(s_matches(line, "info", "s_writer: thread=[0-3] seq=[0-9]+ pad=p{299}$"));
        line = end + 1;
    }
    free(out);
}

/* Run fn in a child with stderr captured; returns the wait status and the
 * child's output (caller frees). */
static char *s_run_child(void (*fn)(void), int *status)
{
    capture_t c;
    s_capture_start(&c);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGABRT, SIG_DFL); /* let abort() be seen by the parent */
        fn();
        _exit(99); /* fn must not return */
    }
    assert_int_equal(waitpid(pid, status, 0), pid);
    return s_capture_end(&c);
}

static void s_do_fatal(void)
{
    log_set_level(LOG_ERROR); /* fatal is written whatever the filter */
    log_fatal("cannot go on reason=%s", "test");
}

static void s_do_panic(void)
{
    log_panic("invariant broken");
}

static void test_fatal_exits_1(void **state)
{
    (void)state;
    int status = 0;
    char *out = s_run_child(s_do_fatal, &status);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    /* The child's pid is on the line, not ours: match loosely. */
    assert_non_null(strstr(out, " level=fatal proc=test pid="));
    assert_non_null(strstr(out, " s_do_fatal: cannot go on reason=test\n"));
    free(out);
}

static void test_panic_aborts(void **state)
{
    (void)state;
    int status = 0;
    char *out = s_run_child(s_do_panic, &status);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    assert_non_null(strstr(out, " level=panic proc=test pid="));
    assert_non_null(strstr(out, " s_do_panic: invariant broken\n"));
    free(out);
}

static void test_printable(void **state)
{
    (void)state;
    static const struct {
        const char *src;
        size_t srclen;
        size_t dstlen;
        const char *want;
    } cases[] = {
        {"abc", 3, 16, "abc"},
        {"a b~", 4, 16, "a b~"},
        {"a\"b\\c", 5, 16, "a\\x22b\\x5cc"},
        {"\n\0\x7f\xff\x1b", 5, 32, "\\x0a\\x00\\x7f\\xff\\x1b"},
        {"", 0, 4, ""},
        {"abc", 3, 1, ""},
        {"abcdefghij", 10, 8, "abcd..."},
        {"\n\n\n", 3, 8, "\\x0a..."},
        {"ab\n", 3, 7, "ab\\x0a"}, /* exactly fits */
        {"abc\n", 4, 7, "abc..."}, /* escape is not split */
        {"abcdef", 6, 3, ".."},
        {"abcdef", 6, 4, "..."},
        {"abcdef", 6, 7, "abcdef"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dst[64];
        memset(dst, 'Z', sizeof dst);
        char *r = log_printable(dst, cases[i].dstlen, cases[i].src, cases[i].srclen);
        assert_ptr_equal(r, dst);
        assert_string_equal(dst, cases[i].want);
        for (size_t k = cases[i].dstlen; k < sizeof dst; k++)
            assert_int_equal(dst[k], 'Z'); /* nothing past dstlen */
    }
}

static void test_should_basic(void **state)
{
    (void)state;
    assert_int_equal(log_should("peer-a", 6, 60000), 1);
    assert_int_equal(log_should("peer-a", 6, 60000), 0);
    assert_int_equal(log_should("peer-a", 6, 60000), 0);
    assert_int_equal(log_should("peer-b", 6, 60000), 1);
    /* keys are byte strings: a longer key with a NUL is another key */
    assert_int_equal(log_should("peer-a\0", 7, 60000), 1);
    /* period 0: always */
    assert_int_equal(log_should("peer-a", 6, 0), 1);
    assert_int_equal(log_should("every", 5, 0), 1);
    assert_int_equal(log_should("every", 5, 0), 1);
}

/* When the table is full the oldest key goes, and only then. */
static void test_should_bounded(void **state)
{
    (void)state;
    char key[32];
    /* 256 fresh keys push out whatever earlier tests left behind. */
    for (int i = 0; i < 256; i++) {
        int n = snprintf(key, sizeof key, "fill-%d", i);
        assert_int_equal(log_should(key, (size_t)n, 60000), 1);
    }
    assert_int_equal(log_should("victim", 6, 60000), 1);
    for (int i = 0; i < 255; i++) {
        int n = snprintf(key, sizeof key, "more-%d", i);
        assert_int_equal(log_should(key, (size_t)n, 60000), 1);
    }
    assert_int_equal(log_should("victim", 6, 60000), 0); /* still remembered */
    assert_int_equal(log_should("one-more", 8, 60000), 1);
    assert_int_equal(log_should("victim", 6, 60000), 1); /* forgotten, allowed again */
}

static void *s_should_racer(void *arg)
{
    int *allowed = arg;
    for (int i = 0; i < 2000; i++)
        *allowed += log_should("race", 4, 600000);
    return NULL;
}

/* Many threads, one key: exactly one of them is told to log. */
static void test_should_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    int allowed[4] = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, s_should_racer, &allowed[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(allowed[0] + allowed[1] + allowed[2] + allowed[3], 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_line_shape, s_setup),
        cmocka_unit_test_setup(test_time_is_utc, s_setup),
        cmocka_unit_test_setup(test_level_filter, s_setup),
        cmocka_unit_test(test_level_parse),
        cmocka_unit_test_setup(test_long_and_multiline, s_setup),
        cmocka_unit_test_setup(test_threads_whole_lines, s_setup),
        cmocka_unit_test_setup(test_fatal_exits_1, s_setup),
        cmocka_unit_test_setup(test_panic_aborts, s_setup),
        cmocka_unit_test(test_printable),
        cmocka_unit_test(test_should_basic),
        cmocka_unit_test(test_should_bounded),
        cmocka_unit_test(test_should_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
