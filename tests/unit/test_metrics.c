/*
 * test_metrics - the registry, its lock-free updates and the text format.
 *
 * Each test starts from an empty registry (metrics_shutdown in teardown) and
 * checks rendered lines exactly, so a change in the exposition shows up here.
 * The rendered text is also fed to `promtool check metrics`, the reference
 * linter, so both syntax and naming rules are checked by the real tool.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "metrics.h"
#include "sbuf.h"

/* Render the registry; caller frees. Fails the test when rendering fails. */
static char *s_render(void)
{
    sbuf_t *out = sbuf_new(0);
    assert_non_null(out);
    assert_int_equal(metrics_render(out), 0);
    char *text = sbuf_detach(out, NULL);
    sbuf_destroy(&out);
    assert_non_null(text);
    return text;
}

/* Does text hold this exact line? */
static int s_has_line(const char *text, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[len] == '\n')
            return 1;
    }
    return 0;
}

#define assert_line(text, line)                                                                    \
    do {                                                                                           \
        if (!s_has_line((text), (line)))                                                           \
            fail_msg("missing line <%s> in:\n%s", (line), (text));                                 \
    } while (0)

/* cmocka 1.1 has no assert_double_equal; the values compared here are exact. */
#define assert_value_equal(actual, expected)                                                       \
    do {                                                                                           \
        double a_ = (actual), e_ = (expected);                                                     \
        if (a_ != e_)                                                                              \
            fail_msg("%s is %.17g, expected %.17g", #actual, a_, e_);                              \
    } while (0)

static int s_teardown(void **state)
{
    (void)state;
    metrics_shutdown();
    return 0;
}

static void test_counter(void **state)
{
    (void)state;
    metric_t *c = metrics_counter("postchi_test_events_total", "Events seen.");
    assert_value_equal(metric_value(c), 0);
    metric_inc(c);
    metric_add(c, 2.5);
    assert_value_equal(metric_value(c), 3.5);
    /* Registering again returns the same series. */
    assert_ptr_equal(metrics_counter("postchi_test_events_total", "Events seen."), c);

    char *text = s_render();
    assert_line(text, "# HELP postchi_test_events_total Events seen.");
    assert_line(text, "# TYPE postchi_test_events_total counter");
    assert_line(text, "postchi_test_events_total 3.5");
    free(text);
}

static void test_gauge(void **state)
{
    (void)state;
    metric_t *g = metrics_gauge("postchi_test_depth", "Queue depth.");
    metric_set(g, 10);
    metric_add(g, -3);
    metric_inc(g);
    assert_value_equal(metric_value(g), 8);
    char *text = s_render();
    assert_line(text, "# TYPE postchi_test_depth gauge");
    assert_line(text, "postchi_test_depth 8");
    free(text);

    metric_set(g, -0.25);
    text = s_render();
    assert_line(text, "postchi_test_depth -0.25");
    free(text);

    metric_set(g, 1e20);
    text = s_render();
    assert_line(text, "postchi_test_depth 1e+20");
    free(text);

    metric_set(g, 0.1);
    text = s_render();
    assert_line(text, "postchi_test_depth 0.1");
    free(text);
}

static void test_special_values(void **state)
{
    (void)state;
    metric_t *g = metrics_gauge("postchi_test_special", "Special values.");
    metric_set(g, INFINITY);
    char *text = s_render();
    assert_line(text, "postchi_test_special +Inf");
    free(text);
    metric_set(g, -INFINITY);
    text = s_render();
    assert_line(text, "postchi_test_special -Inf");
    free(text);
    metric_set(g, NAN);
    text = s_render();
    assert_line(text, "postchi_test_special NaN");
    free(text);
}

static void test_labels(void **state)
{
    (void)state;
    const char *const labels[] = {"kind", "reason", NULL};
    metric_family_t *f = metrics_family(METRIC_COUNTER, "postchi_test_drops_total",
                                        "Dropped messages.", labels, NULL, 0);
    const char *const v1[] = {"mailer", "queue_full", NULL};
    const char *const v2[] = {"tenant", "expired", NULL};
    const char *const v1_again[] = {"mailer", "queue_full", NULL};
    metric_t *a = metrics_series(f, v1);
    metric_t *b = metrics_series(f, v2);
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(metrics_series(f, v1_again), a);
    /* The same family comes back for the same name, type and labels. */
    assert_ptr_equal(metrics_family(METRIC_COUNTER, "postchi_test_drops_total", "Dropped messages.",
                                    labels, NULL, 0),
                     f);
    metric_add(a, 2);
    metric_inc(b);
    char *text = s_render();
    assert_line(text, "postchi_test_drops_total{kind=\"mailer\",reason=\"queue_full\"} 2");
    assert_line(text, "postchi_test_drops_total{kind=\"tenant\",reason=\"expired\"} 1");
    free(text);
}

static void test_labeled_family_without_series(void **state)
{
    (void)state;
    const char *const labels[] = {"reason", NULL};
    metrics_family(METRIC_COUNTER, "postchi_test_unused_total", "Never used.", labels, NULL, 0);
    char *text = s_render();
    assert_line(text, "# TYPE postchi_test_unused_total counter");
    assert_null(strstr(text, "postchi_test_unused_total{"));
    free(text);
}

static void test_escaping(void **state)
{
    (void)state;
    const char *const labels[] = {"path", NULL};
    metric_family_t *f = metrics_family(METRIC_GAUGE, "postchi_test_escape",
                                        "Back\\slash and\nnewline \"quoted\".", labels, NULL, 0);
    const char *const values[] = {"a\\b\"c\nd", NULL};
    metric_set(metrics_series(f, values), 1);
    char *text = s_render();
    /* HELP escapes backslash and newline but not quotes. */
    assert_line(text, "# HELP postchi_test_escape Back\\\\slash and\\nnewline \"quoted\".");
    assert_line(text, "postchi_test_escape{path=\"a\\\\b\\\"c\\nd\"} 1");
    free(text);
}

static void test_histogram_buckets(void **state)
{
    (void)state;
    static const double buckets[] = {0.1, 0.5, 1};
    metric_t *h = metrics_histogram("postchi_test_duration_seconds", "Durations.", buckets, 3);
    metric_observe(h, 0.05); /* <= 0.1 */
    metric_observe(h, 0.1);  /* <= 0.1: bounds are inclusive */
    metric_observe(h, 0.3);  /* <= 0.5 */
    metric_observe(h, 2);    /* +Inf only */
    metric_observe(h, 7);    /* +Inf only */
    assert_value_equal(metric_value(h), 5);
    char *text = s_render();
    assert_line(text, "# TYPE postchi_test_duration_seconds histogram");
    assert_line(text, "postchi_test_duration_seconds_bucket{le=\"0.1\"} 2");
    assert_line(text, "postchi_test_duration_seconds_bucket{le=\"0.5\"} 3");
    assert_line(text, "postchi_test_duration_seconds_bucket{le=\"1\"} 3");
    assert_line(text, "postchi_test_duration_seconds_bucket{le=\"+Inf\"} 5");
    assert_line(text, "postchi_test_duration_seconds_sum 9.45");
    assert_line(text, "postchi_test_duration_seconds_count 5");
    free(text);
}

static void test_histogram_labels_default_buckets(void **state)
{
    (void)state;
    const char *const labels[] = {"kind", NULL};
    metric_family_t *f = metrics_family(METRIC_HISTOGRAM, "postchi_test_handler_seconds",
                                        "Handler time.", labels, NULL, 0);
    const char *const values[] = {"mailer", NULL};
    metric_t *h = metrics_series(f, values);
    metric_observe(h, 0.0003);
    char *text = s_render();
    assert_line(text, "postchi_test_handler_seconds_bucket{kind=\"mailer\",le=\"5e-05\"} 0");
    assert_line(text, "postchi_test_handler_seconds_bucket{kind=\"mailer\",le=\"0.00025\"} 0");
    assert_line(text, "postchi_test_handler_seconds_bucket{kind=\"mailer\",le=\"0.0005\"} 1");
    assert_line(text, "postchi_test_handler_seconds_bucket{kind=\"mailer\",le=\"10\"} 1");
    assert_line(text, "postchi_test_handler_seconds_bucket{kind=\"mailer\",le=\"+Inf\"} 1");
    assert_line(text, "postchi_test_handler_seconds_count{kind=\"mailer\"} 1");
    /* 17 bounds plus +Inf. */
    int nbuckets = 0;
    for (const char *p = text; (p = strstr(p, "_bucket{")) != NULL; p++)
        nbuckets++;
    assert_int_equal(nbuckets, 18);
    assert_int_equal(metrics_default_nbuckets, 17);
    assert_value_equal(metrics_default_buckets[0], 0.00005);
    assert_value_equal(metrics_default_buckets[16], 10);
    free(text);
}

static void test_process_metrics(void **state)
{
    (void)state;
    char *text = s_render();
    static const char *const names[] = {
        "postchi_process_resident_memory_bytes", "postchi_process_virtual_memory_bytes",
        "postchi_process_start_time_seconds", "postchi_process_open_fds",
        "postchi_process_cpu_seconds_total"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char prefix[128];
        snprintf(prefix, sizeof prefix, "\n%s ", names[i]);
        const char *p = strstr(text, prefix);
        if (!p)
            fail_msg("missing %s in:\n%s", names[i], text);
        double v = strtod(p + strlen(prefix), NULL);
        /* cpu may still read 0 in a fresh process; the others cannot. */
        if (strcmp(names[i], "postchi_process_cpu_seconds_total") == 0)
            assert_true(v >= 0);
        else
            assert_true(v > 0);
    }
    /* stdin, stdout and stderr at least. */
    const char *fds = strstr(text, "\npostchi_process_open_fds ");
    assert_true(strtod(fds + strlen("\npostchi_process_open_fds "), NULL) >= 3);
    free(text);
}

#define THREADS 4
#define PER_THREAD 100000

typedef struct {
    metric_t *counter;
    metric_t *gauge;
    metric_t *histogram;
} s_shared_t;

static void *s_hammer(void *arg)
{
    s_shared_t *shared = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        metric_inc(shared->counter);
        metric_add(shared->gauge, 0.5);
        metric_observe(shared->histogram, 0.001);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    s_shared_t shared = {
        metrics_counter("postchi_test_concurrent_total", "Concurrent increments."),
        metrics_gauge("postchi_test_concurrent", "Concurrent adds."),
        metrics_histogram("postchi_test_concurrent_seconds", "Concurrent observations.", NULL, 0),
    };
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, s_hammer, &shared), 0);
    /* Render while the updates run: it must not block them or crash. */
    free(s_render());
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    assert_value_equal(metric_value(shared.counter), THREADS * PER_THREAD);
    assert_value_equal(metric_value(shared.gauge), THREADS * PER_THREAD * 0.5);
    assert_value_equal(metric_value(shared.histogram), THREADS * PER_THREAD);
    char *text = s_render();
    char line[128];
    snprintf(line, sizeof line, "postchi_test_concurrent_total %d", THREADS * PER_THREAD);
    assert_line(text, line);
    snprintf(line, sizeof line, "postchi_test_concurrent_seconds_bucket{le=\"0.001\"} %d",
             THREADS * PER_THREAD);
    assert_line(text, line);
    free(text);
}

/* Feed text to `promtool check metrics`; returns its exit status and puts
 * whatever it printed into report (caller frees). */
static int s_promtool(const char *text, char **report)
{
    char path[] = "/tmp/test_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    sbuf_t *out = sbuf_new(0);
    char buf[512];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        assert_int_equal(sbuf_append(out, buf, n), 0);
    int status = pclose(p);
    unlink(path);
    *report = sbuf_detach(out, NULL);
    sbuf_destroy(&out);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_promtool_accepts_render(void **state)
{
    (void)state;
    if (access("/usr/bin/promtool", X_OK) != 0)
        fail_msg("/usr/bin/promtool is required (Debian package prometheus)");
    const char *const kind[] = {"kind", NULL};
    const char *const mailer[] = {"mailer", NULL};
    const char *const odd[] = {"we\"ird\\ \nvalue", NULL};
    metric_inc(metrics_counter("postchi_test_routed_total", "Messages routed."));
    metric_set(metrics_gauge("postchi_test_queue_depth", "Queue depth."), 3);
    metric_family_t *hf = metrics_family(METRIC_HISTOGRAM, "postchi_test_handler_duration_seconds",
                                         "Handler time.", kind, NULL, 0);
    metric_observe(metrics_series(hf, mailer), 0.02);
    metric_observe(metrics_series(hf, odd), 3);
    metric_family_t *cf = metrics_family(METRIC_COUNTER, "postchi_test_handled_total",
                                         "Help with \\ and\nnewline.", kind, NULL, 0);
    metric_add(metrics_series(cf, odd), 0.125);

    char *text = s_render();
    char *report = NULL;
    int rc = s_promtool(text, &report);
    if (rc != 0 || report[0] != '\0')
        fail_msg("promtool check metrics (exit %d):\n%s\n--- input ---\n%s", rc, report, text);
    free(report);
    free(text);

    /* And the check can fail: a counter without _total is a lint problem. */
    rc = s_promtool("# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n", &report);
    assert_true(rc != 0 || report[0] != '\0');
    free(report);
}

/* Programmer errors abort (log_panic). Each case runs in a child process. */
static void s_clash_type(void)
{
    metrics_counter("postchi_test_clash_total", "x");
    metrics_gauge("postchi_test_clash_total", "x");
}

static void s_clash_labels(void)
{
    const char *const a[] = {"a", NULL};
    const char *const b[] = {"b", NULL};
    metrics_family(METRIC_COUNTER, "postchi_test_clash_total", "x", a, NULL, 0);
    metrics_family(METRIC_COUNTER, "postchi_test_clash_total", "x", b, NULL, 0);
}

static void s_clash_buckets(void)
{
    static const double one[] = {1}, two[] = {2};
    metrics_histogram("postchi_test_clash_seconds", "x", one, 1);
    metrics_histogram("postchi_test_clash_seconds", "x", two, 1);
}

static void s_set_on_counter(void)
{
    metric_set(metrics_counter("postchi_test_clash_total", "x"), 1);
}

static void s_negative_counter(void)
{
    metric_add(metrics_counter("postchi_test_clash_total", "x"), -1);
}

static void s_observe_on_gauge(void)
{
    metric_observe(metrics_gauge("postchi_test_clash", "x"), 1);
}

static void s_bad_name(void)
{
    metrics_counter("postchi-test-total", "x");
}

static void s_wrong_label_count(void)
{
    const char *const a[] = {"a", NULL};
    const char *const two[] = {"x", "y", NULL};
    metrics_series(metrics_family(METRIC_COUNTER, "postchi_test_clash_total", "x", a, NULL, 0),
                   two);
}

static void s_unsorted_buckets(void)
{
    static const double b[] = {1, 0.5};
    metrics_histogram("postchi_test_clash_seconds", "x", b, 2);
}

static void test_programmer_errors_abort(void **state)
{
    (void)state;
    static void (*const cases[])(void) = {
        s_clash_type,     s_clash_labels,      s_clash_buckets,
        s_set_on_counter, s_negative_counter,  s_observe_on_gauge,
        s_bad_name,       s_wrong_label_count, s_unsorted_buckets};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* Keep the expected panic line out of the test output. */
            freopen("/dev/null", "w", stderr);
            cases[i]();
            _exit(0); /* no abort: the parent reports the failure */
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT)
            fail_msg("case %zu did not abort (status %d)", i, status);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_counter, s_teardown),
        cmocka_unit_test_teardown(test_gauge, s_teardown),
        cmocka_unit_test_teardown(test_special_values, s_teardown),
        cmocka_unit_test_teardown(test_labels, s_teardown),
        cmocka_unit_test_teardown(test_labeled_family_without_series, s_teardown),
        cmocka_unit_test_teardown(test_escaping, s_teardown),
        cmocka_unit_test_teardown(test_histogram_buckets, s_teardown),
        cmocka_unit_test_teardown(test_histogram_labels_default_buckets, s_teardown),
        cmocka_unit_test_teardown(test_process_metrics, s_teardown),
        cmocka_unit_test_teardown(test_concurrent_updates, s_teardown),
        cmocka_unit_test_teardown(test_promtool_accepts_render, s_teardown),
        cmocka_unit_test_teardown(test_programmer_errors_abort, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
