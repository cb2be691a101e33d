/*
 * metrics - a process-wide Prometheus registry and its text exposition.
 *
 * How: families live on one singly linked list, each family's series on
 * another; both lists only grow (appended under s_lock) until
 * metrics_shutdown frees everything. A series pointer handed out therefore
 * stays valid for the life of the process, and updates never take the lock:
 * counters and gauges keep a double as its IEEE-754 bits in an
 * _Atomic uint64_t changed with a compare-and-swap loop; histograms keep one
 * atomic count per bucket (not cumulative, so an observation touches one
 * bucket) and an atomic double sum.
 *
 * What can go wrong: registering one name twice with a different type,
 * labels or buckets, an invalid metric or label name, a negative counter
 * increment or an update of the wrong kind are programmer errors and panic.
 * Running out of memory while creating a series panics too (the contract
 * promises a series, and a process that cannot allocate a few bytes is
 * done). Rendering returns -1 when the output buffer cannot grow.
 *
 * Security: label values may come from peers (actor kinds, reasons); they
 * are escaped on output so they cannot break the exposition format. Keep
 * their set small: every distinct combination is a series forever.
 */
#include <assert.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

/* A broken invariant: log it and abort (log_panic aborts; the explicit abort
 * tells the compiler and analysers that control does not come back). */
#define S_PANIC(...)                                                                               \
    do {                                                                                           \
        log_panic(__VA_ARGS__);                                                                    \
        abort();                                                                                   \
    } while (0)

struct metric {
    metric_family_t *family;   /* the family this series belongs to */
    char **values;             /* label values, family->nlabels of them, owned */
    _Atomic uint64_t bits;     /* counter/gauge value as double bits */
    _Atomic uint64_t *buckets; /* histogram: nbuckets + 1 counts (last is +Inf), owned */
    _Atomic uint64_t sum_bits; /* histogram: sum of observations as double bits */
    metric_t *next;            /* next series of the same family */
};

struct metric_family {
    metric_type_t type;    /* counter, gauge or histogram */
    char *name;            /* metric name, owned */
    char *help;            /* help text, owned */
    char **labels;         /* label names, nlabels of them, owned */
    size_t nlabels;        /* number of label names */
    double *buckets;       /* histogram upper bounds, ascending, owned */
    size_t nbuckets;       /* number of bounds (+Inf not counted) */
    metric_t *series;      /* first series, in creation order */
    metric_t **tail;       /* where the next series is linked in */
    metric_family_t *next; /* next family, in registration order */
};

const double metrics_default_buckets[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                          0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                          0.5,     1,      2.5,     5,      10};
const size_t metrics_default_nbuckets =
    sizeof metrics_default_buckets / sizeof metrics_default_buckets[0];

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static metric_family_t *s_families; /* registry, guarded by s_lock */
static metric_family_t **s_families_tail = &s_families;

static const char *const s_type_names[] = {"counter", "gauge", "histogram"};

/* --- small helpers ------------------------------------------------------- */

static uint64_t s_bits(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

static double s_double(uint64_t b)
{
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* Add v to the double held in *cell, retrying when another thread won. */
static void s_atomic_add(_Atomic uint64_t *cell, double v)
{
    uint64_t old = atomic_load_explicit(cell, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(cell, &old, s_bits(s_double(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

static char *s_strdup(const char *s)
{
    char *copy = strdup(s);
    if (!copy)
        S_PANIC("out of memory");
    return copy;
}

static void *s_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        S_PANIC("out of memory");
    return p;
}

/* Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; label names the same
 * without ':' and not starting with "__" (reserved). */
static int s_valid_name(const char *name, int is_label)
{
    if (!name || !*name)
        return 0;
    if (is_label && name[0] == '_' && name[1] == '_')
        return 0;
    for (const char *p = name; *p; p++) {
        int c = (unsigned char)*p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (!is_label && c == ':') || (p != name && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

static size_t s_count(const char *const *list)
{
    size_t n = 0;
    while (list && list[n])
        n++;
    return n;
}

static void s_free_strings(char **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        free(list[i]);
    free(list);
}

static char **s_copy_strings(const char *const *list, size_t n)
{
    char **copy = s_calloc(n, sizeof *copy);
    for (size_t i = 0; i < n; i++)
        copy[i] = s_strdup(list[i]);
    return copy;
}

/* Does a registered family match a new registration of the same name? */
static int s_family_same(const metric_family_t *f, metric_type_t type, const char *const *labels,
                         size_t nlabels, const double *buckets, size_t nbuckets)
{
    if (f->type != type || f->nlabels != nlabels)
        return 0;
    for (size_t i = 0; i < nlabels; i++)
        if (strcmp(f->labels[i], labels[i]) != 0)
            return 0;
    if (type != METRIC_HISTOGRAM)
        return 1;
    if (f->nbuckets != nbuckets)
        return 0;
    for (size_t i = 0; i < nbuckets; i++)
        if (f->buckets[i] != buckets[i])
            return 0;
    return 1;
}

/* --- registration -------------------------------------------------------- */

metric_family_t *metrics_family(metric_type_t type, const char *name, const char *help,
                                const char *const *labels, const double *buckets, size_t nbuckets)
{
    if (type != METRIC_COUNTER && type != METRIC_GAUGE && type != METRIC_HISTOGRAM)
        S_PANIC("bad metric type %d", (int)type);
    if (!s_valid_name(name, 0))
        S_PANIC("invalid metric name");
    size_t nlabels = s_count(labels);
    for (size_t i = 0; i < nlabels; i++) {
        if (!s_valid_name(labels[i], 1))
            S_PANIC("metric %s: invalid label name", name);
        if (type == METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0)
            S_PANIC("metric %s: histogram cannot have an le label", name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                S_PANIC("metric %s: duplicate label %s", name, labels[i]);
    }
    if (type == METRIC_HISTOGRAM) {
        if (!buckets) {
            buckets = metrics_default_buckets;
            nbuckets = metrics_default_nbuckets;
        }
        for (size_t i = 0; i < nbuckets; i++) {
            if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
                S_PANIC("metric %s: buckets must be finite and strictly ascending", name);
        }
    } else {
        buckets = NULL;
        nbuckets = 0;
    }

    pthread_mutex_lock(&s_lock);
    for (metric_family_t *f = s_families; f; f = f->next) {
        if (strcmp(f->name, name) != 0)
            continue;
        if (!s_family_same(f, type, labels, nlabels, buckets, nbuckets))
            S_PANIC("metric %s registered twice with different type, labels or buckets", name);
        pthread_mutex_unlock(&s_lock);
        return f;
    }
    metric_family_t *f = s_calloc(1, sizeof *f);
    f->type = type;
    f->name = s_strdup(name);
    f->help = s_strdup(help ? help : "");
    f->nlabels = nlabels;
    f->labels = s_copy_strings(labels, nlabels);
    if (nbuckets > 0) {
        f->buckets = s_calloc(nbuckets, sizeof *f->buckets);
        memcpy(f->buckets, buckets, nbuckets * sizeof *f->buckets);
    }
    f->nbuckets = nbuckets;
    f->tail = &f->series;
    *s_families_tail = f;
    s_families_tail = &f->next;
    pthread_mutex_unlock(&s_lock);
    return f;
}

metric_t *metrics_series(metric_family_t *family, const char *const *values)
{
    assert(family);
    size_t nvalues = s_count(values);
    if (nvalues != family->nlabels)
        S_PANIC("metric %s: %zu label values for %zu labels", family->name, nvalues,
                family->nlabels);

    pthread_mutex_lock(&s_lock);
    metric_t *m;
    for (m = family->series; m; m = m->next) {
        size_t i = 0;
        while (i < nvalues && strcmp(m->values[i], values[i]) == 0)
            i++;
        if (i == nvalues)
            break;
    }
    if (!m) {
        m = s_calloc(1, sizeof *m);
        m->family = family;
        m->values = s_copy_strings(values, nvalues);
        if (family->type == METRIC_HISTOGRAM)
            m->buckets = s_calloc(family->nbuckets + 1, sizeof *m->buckets);
        /* All-zero bits are 0.0, so calloc already set the values. */
        *family->tail = m;
        family->tail = &m->next;
    }
    pthread_mutex_unlock(&s_lock);
    return m;
}

metric_t *metrics_counter(const char *name, const char *help)
{
    return metrics_series(metrics_family(METRIC_COUNTER, name, help, NULL, NULL, 0), NULL);
}

metric_t *metrics_gauge(const char *name, const char *help)
{
    return metrics_series(metrics_family(METRIC_GAUGE, name, help, NULL, NULL, 0), NULL);
}

metric_t *metrics_histogram(const char *name, const char *help, const double *buckets,
                            size_t nbuckets)
{
    return metrics_series(metrics_family(METRIC_HISTOGRAM, name, help, NULL, buckets, nbuckets),
                          NULL);
}

/* --- updates (lock-free) ------------------------------------------------- */

void metric_inc(metric_t *m)
{
    metric_add(m, 1.0);
}

void metric_add(metric_t *m, double v)
{
    assert(m);
    if (m->family->type == METRIC_HISTOGRAM)
        S_PANIC("metric %s: add on a histogram", m->family->name);
    /* !(v >= 0) also catches NaN, which would poison a counter forever. */
    if (m->family->type == METRIC_COUNTER && !(v >= 0))
        S_PANIC("metric %s: counter increment must be >= 0", m->family->name);
    s_atomic_add(&m->bits, v);
}

void metric_set(metric_t *m, double v)
{
    assert(m);
    if (m->family->type != METRIC_GAUGE)
        S_PANIC("metric %s: set on a non-gauge", m->family->name);
    atomic_store_explicit(&m->bits, s_bits(v), memory_order_relaxed);
}

void metric_observe(metric_t *m, double v)
{
    assert(m);
    const metric_family_t *f = m->family;
    if (f->type != METRIC_HISTOGRAM)
        S_PANIC("metric %s: observe on a non-histogram", f->name);
    /* Buckets are few (17 by default); a linear scan beats a binary search
     * at this size and keeps NaN (compares false everywhere) in +Inf. */
    size_t i = 0;
    while (i < f->nbuckets && !(v <= f->buckets[i]))
        i++;
    atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
    s_atomic_add(&m->sum_bits, v);
}

double metric_value(const metric_t *m)
{
    assert(m);
    if (m->family->type != METRIC_HISTOGRAM)
        return s_double(atomic_load_explicit(&m->bits, memory_order_relaxed));
    uint64_t count = 0;
    for (size_t i = 0; i <= m->family->nbuckets; i++)
        count += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
    return (double)count;
}

/* --- rendering ----------------------------------------------------------- */

/* Output state: the buffer and a sticky failure, so the renderer can write
 * straight through and check once at the end. */
typedef struct {
    sbuf_t *out; /* where the exposition goes */
    int failed;  /* an append failed (out of memory) */
} s_writer_t;

static void s_put(s_writer_t *w, const char *s, size_t len)
{
    if (!w->failed && sbuf_append(w->out, s, len) != 0)
        w->failed = 1;
}

static void s_puts(s_writer_t *w, const char *s)
{
    s_put(w, s, strlen(s));
}

/* Copy s escaping backslash and newline, and double quote when in_label
 * (HELP text does not escape quotes; label values must). */
static void s_put_escaped(s_writer_t *w, const char *s, int in_label)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (*s == '"' && in_label)
            esc = "\\\"";
        if (esc) {
            s_put(w, run, (size_t)(s - run));
            s_puts(w, esc);
            run = s + 1;
        }
    }
    s_put(w, run, (size_t)(s - run));
}

/* A value as Prometheus writes it (samples and le bounds): integers without
 * a fraction or exponent, others in the shortest of %.15g / %.17g that reads
 * back exactly, and NaN, +Inf, -Inf spelled as the format says. size >= 32. */
static void s_format_double(char *buf, size_t size, double v)
{
    if (isnan(v))
        snprintf(buf, size, "NaN");
    else if (isinf(v))
        snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0) /* 2^53: exact */
        snprintf(buf, size, "%.0f", v);
    else {
        snprintf(buf, size, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, size, "%.17g", v);
    }
}

static void s_put_value(s_writer_t *w, double v)
{
    char buf[64];
    s_format_double(buf, sizeof buf, v);
    s_puts(w, buf);
}

/* name{l1="v1",...,extra_name="extra_value"} value\n; extra is the le label. */
static void s_put_sample(s_writer_t *w, const metric_t *m, const char *suffix,
                         const char *extra_name, const char *extra_value, double v)
{
    const metric_family_t *f = m->family;
    s_puts(w, f->name);
    s_puts(w, suffix);
    if (f->nlabels > 0 || extra_name) {
        s_puts(w, "{");
        for (size_t i = 0; i < f->nlabels; i++) {
            if (i)
                s_puts(w, ",");
            s_puts(w, f->labels[i]);
            s_puts(w, "=\"");
            s_put_escaped(w, m->values[i], 1);
            s_puts(w, "\"");
        }
        if (extra_name) {
            if (f->nlabels > 0)
                s_puts(w, ",");
            s_puts(w, extra_name);
            s_puts(w, "=\"");
            s_puts(w, extra_value);
            s_puts(w, "\"");
        }
        s_puts(w, "}");
    }
    s_puts(w, " ");
    s_put_value(w, v);
    s_puts(w, "\n");
}

static void s_put_header(s_writer_t *w, const char *name, const char *help, const char *type)
{
    s_puts(w, "# HELP ");
    s_puts(w, name);
    s_puts(w, " ");
    s_put_escaped(w, help, 0);
    s_puts(w, "\n# TYPE ");
    s_puts(w, name);
    s_puts(w, " ");
    s_puts(w, type);
    s_puts(w, "\n");
}

static void s_render_histogram(s_writer_t *w, const metric_t *m)
{
    const metric_family_t *f = m->family;
    /* Read each bucket once and derive _count from the same reads, so
     * le="+Inf" always equals _count even while observations land. */
    uint64_t cumulative = 0;
    char le[64];
    for (size_t i = 0; i <= f->nbuckets; i++) {
        cumulative += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        s_format_double(le, sizeof le, i < f->nbuckets ? f->buckets[i] : INFINITY);
        s_put_sample(w, m, "_bucket", "le", le, (double)cumulative);
    }
    s_put_sample(w, m, "_sum", NULL, NULL,
                 s_double(atomic_load_explicit(&m->sum_bits, memory_order_relaxed)));
    s_put_sample(w, m, "_count", NULL, NULL, (double)cumulative);
}

/* One unlabeled sample with its HELP and TYPE lines. */
static void s_put_single(s_writer_t *w, const char *name, const char *help, const char *type,
                         double v)
{
    s_put_header(w, name, help, type);
    s_puts(w, name);
    s_puts(w, " ");
    s_put_value(w, v);
    s_puts(w, "\n");
}

/* Process metrics from /proc/self. A file that cannot be read leaves its
 * metrics out rather than failing the scrape: /metrics must keep working. */
static void s_render_process(s_writer_t *w)
{
    long page = sysconf(_SC_PAGESIZE);
    long ticks = sysconf(_SC_CLK_TCK);

    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp) {
        unsigned long long size, resident;
        if (fscanf(fp, "%llu %llu", &size, &resident) == 2 && page > 0) {
            s_put_single(w, "postchi_process_virtual_memory_bytes", "Virtual memory size in bytes.",
                         "gauge", (double)size * (double)page);
            s_put_single(w, "postchi_process_resident_memory_bytes",
                         "Resident memory size in bytes.", "gauge",
                         (double)resident * (double)page);
        }
        fclose(fp);
    }

    /* /proc/self/stat: "pid (comm) state ..." where comm may hold spaces and
     * parentheses, so parse from the last ')'. utime and stime are fields
     * 14 and 15, starttime (ticks after boot) field 22. */
    char stat[1024];
    size_t n = 0;
    fp = fopen("/proc/self/stat", "r");
    if (fp) {
        n = fread(stat, 1, sizeof stat - 1, fp);
        fclose(fp);
    }
    stat[n] = '\0';
    char *rest = strrchr(stat, ')');
    unsigned long long utime, stime, start;
    if (rest && ticks > 0 &&
        sscanf(rest + 1,
               " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d"
               " %llu",
               &utime, &stime, &start) == 3) {
        s_put_single(w, "postchi_process_cpu_seconds_total",
                     "Total user and system CPU time spent in seconds.", "counter",
                     (double)(utime + stime) / (double)ticks);

        unsigned long long btime = 0;
        fp = fopen("/proc/stat", "r");
        if (fp) {
            char line[256];
            while (fgets(line, sizeof line, fp))
                if (sscanf(line, "btime %llu", &btime) == 1)
                    break;
            fclose(fp);
        }
        if (btime > 0) {
            s_put_single(w, "postchi_process_start_time_seconds",
                         "Start time of the process since unix epoch in seconds.", "gauge",
                         (double)btime + (double)start / (double)ticks);
        }
    }

    DIR *dir = opendir("/proc/self/fd");
    if (dir) {
        long fds = 0;
        int own = dirfd(dir);
        struct dirent *de;
        while ((de = readdir(dir)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            /* The directory stream's own descriptor is not the process's. */
            if (atoi(de->d_name) == own)
                continue;
            fds++;
        }
        closedir(dir);
        s_put_single(w, "postchi_process_open_fds", "Number of open file descriptors.", "gauge",
                     (double)fds);
    }
}

int metrics_render(sbuf_t *out)
{
    assert(out);
    s_writer_t w = {out, 0};
    size_t start = sbuf_len(out);

    pthread_mutex_lock(&s_lock);
    for (const metric_family_t *f = s_families; f && !w.failed; f = f->next) {
        s_put_header(&w, f->name, f->help, s_type_names[f->type]);
        for (const metric_t *m = f->series; m; m = m->next) {
            if (f->type == METRIC_HISTOGRAM)
                s_render_histogram(&w, m);
            else
                s_put_sample(&w, m, "", NULL, NULL, metric_value(m));
        }
    }
    pthread_mutex_unlock(&s_lock);

    s_render_process(&w);
    if (w.failed) {
        /* Leave no half exposition behind: a truncated scrape reads as
         * valid data with series missing. */
        sbuf_truncate(out, start);
        return -1;
    }
    return 0;
}

void metrics_shutdown(void)
{
    pthread_mutex_lock(&s_lock);
    metric_family_t *f = s_families;
    s_families = NULL;
    s_families_tail = &s_families;
    pthread_mutex_unlock(&s_lock);

    while (f) {
        metric_family_t *next_f = f->next;
        metric_t *m = f->series;
        while (m) {
            metric_t *next_m = m->next;
            s_free_strings(m->values, f->nlabels);
            free(m->buckets);
            free(m);
            m = next_m;
        }
        free(f->name);
        free(f->help);
        s_free_strings(f->labels, f->nlabels);
        free(f->buckets);
        free(f);
        f = next_f;
    }
}
