/*
 * config - every setting Postchi has, in one table: name, type, default,
 * range and a one-line help (`postchi help config` prints them).
 *
 * Sources, later wins: built-in defaults, the config file (lines of
 * `name = value`, `#` comments), then POSTCHI_<NAME> environment variables
 * (name upper-cased). A bad value (unknown name, not a number, out of range,
 * not one of the allowed words) is refused with a message that names the
 * setting and says what was wrong; start-up must stop on it.
 *
 * Reading a name that is not in the table is a programmer error (panic).
 */
#ifndef POSTCHI_CONFIG_H
#define POSTCHI_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "sbuf.h"

typedef struct config config_t;

/* All defaults; NULL when out of memory. */
config_t *config_new(void);
void config_destroy(config_t **self_p);

/* Each returns 0, or -1 with a message in err ("file:line: setting 'x': ..."). */
int config_load_file(config_t *self, const char *path, sbuf_t *err);
/* envp as in main's third argument / environ; only POSTCHI_* are read.
 * POSTCHI_CONFIG (the file path) is not a setting and is skipped. */
int config_load_env(config_t *self, char *const *envp, sbuf_t *err);
int config_set(config_t *self, const char *name, const char *value, sbuf_t *err);

/* The standard start-up: defaults, then the file named by path (or by
 * POSTCHI_CONFIG when path is NULL; no file at all is fine), then env.
 * NULL with err set on any bad value. Caller owns the result. */
config_t *config_load(const char *path, char *const *envp, sbuf_t *err);

int64_t config_int(const config_t *self, const char *name);
const char *config_str(const config_t *self, const char *name);
bool config_bool(const config_t *self, const char *name);

/* "true" | "yes" | "on" | "1" -> true, "false" | "no" | "off" | "0" -> false
 * (any case): 0 and *out set, or -1. The words CONFIG_BOOL settings take. */
int config_parse_bool(const char *word, bool *out);

/* One line per setting: name, default, range or allowed values, help. */
void config_print_help(FILE *out);
/* Current values, one `name = value` per line (for `postchi config`). */
void config_print(const config_t *self, FILE *out);

#endif
