/*
 * metrics - a process-wide Prometheus registry and its text exposition.
 *
 * A family has a name (postchi_*), help, a type and fixed label names; a
 * series is one combination of label values. Look a series up once (it is
 * created on first use and lives until metrics_shutdown) and keep the
 * pointer: updates are lock-free atomics, safe from any thread, cheap enough
 * for the broker's per-message path. Rendering takes a lock only to walk
 * the families and series lists.
 *
 * metrics_render also writes process metrics (postchi_process_resident_memory_bytes,
 * postchi_process_virtual_memory_bytes, postchi_process_start_time_seconds,
 * postchi_process_open_fds, postchi_process_cpu_seconds_total) read from /proc.
 */
#ifndef POSTCHI_METRICS_H
#define POSTCHI_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type_t;

typedef struct metric_family metric_family_t;
typedef struct metric metric_t;

/* Register (or find, when name is already registered with the same type and
 * labels) a family. labels is a NULL-terminated array of label names or
 * NULL for none. buckets (ascending upper bounds, +Inf implied) only for
 * histograms; NULL means metrics_default_buckets. Panics on a clash: that is
 * programmer error. */
metric_family_t *metrics_family(metric_type_t type, const char *name, const char *help,
                                const char *const *labels, const double *buckets,
                                size_t nbuckets);
/* The series for these label values (NULL-terminated, same count as the
 * family's labels; NULL for an unlabeled family). Values are escaped on
 * output. Never NULL (panics when out of memory). */
metric_t *metrics_series(metric_family_t *family, const char *const *values);

/* Shorthands for unlabeled families: register and return the one series. */
metric_t *metrics_counter(const char *name, const char *help);
metric_t *metrics_gauge(const char *name, const char *help);
metric_t *metrics_histogram(const char *name, const char *help, const double *buckets,
                            size_t nbuckets);

void metric_inc(metric_t *m);                /* counter or gauge: +1 */
void metric_add(metric_t *m, double v);      /* counter (v >= 0) or gauge */
void metric_set(metric_t *m, double v);      /* gauge */
void metric_observe(metric_t *m, double v);  /* histogram */
double metric_value(const metric_t *m);      /* counter/gauge value, histogram count */

/* Latency buckets in seconds, 50 us .. 10 s. */
extern const double metrics_default_buckets[];
extern const size_t metrics_default_nbuckets;

/* Append the whole exposition (text format 0.0.4) to out. 0 or -1. */
int metrics_render(sbuf_t *out);
/* Free every family and series (tests, clean shutdown for LeakSanitizer). */
void metrics_shutdown(void);

#endif
