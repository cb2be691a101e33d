/*
 * dns_util - a real DNS server for tests: dnsmasq on 127.0.0.1 at a free
 * port, serving only the records a test gives it, authoritative (NXDOMAIN
 * for anything else) under the test's domains. Started with harness_spawn,
 * so it is killed when the test exits, however it exits.
 */
#ifndef POSTCHI_TEST_DNS_UTIL_H
#define POSTCHI_TEST_DNS_UTIL_H

#include "harness.h"

/* Start dnsmasq with options (NULL-terminated dnsmasq arguments such as
 * "--mx-host=...", may be NULL), answering for the NULL-terminated local
 * domains only from its own data. Waits until it answers (5 s at most).
 * Listens on *port when it is > 0 (a server restarted with other records,
 * or a port a client was configured with before), else on a free port it
 * writes to *port. NULL (reason on stderr) on failure. */
harness_proc_t *dns_util_start(const char *label, char *const *options, char *const *local,
                               int *port);

/* "--txt-record=<name>,<s1>,<s2>...": value cut into character-strings of
 * at most 255 bytes (dnsmasq takes commas as string separators and, on its
 * command line, quotes literally). Caller frees. NULL when value holds a
 * comma, quote or backslash (no test needs them) or memory runs out. */
char *dns_util_txt_arg(const char *name, const char *value);

#endif
