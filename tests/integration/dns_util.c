/*
 * dns_util - dnsmasq for integration tests (see dns_util.h).
 *
 * dnsmasq runs in the foreground (--keep-in-foreground, not --no-daemon:
 * that debug mode serves TCP in the main process, so one client's open TCP
 * connection stalls every other query for seconds) with no upstream, no hosts
 * file and no config file, so it serves exactly the records on its command
 * line. --local makes it answer NXDOMAIN under the test's domains instead
 * of REFUSED for lack of an upstream.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dns_util.h"
#include "dnscheck.h"
#include "sbuf.h"

#define DNSMASQ "/usr/sbin/dnsmasq"
#define MAX_ARGS 256

harness_proc_t *dns_util_start(const char *label, char *const *options, char *const *local,
                               int *port)
{
    int p = *port > 0 ? *port : harness_free_port();
    char port_arg[32];
    snprintf(port_arg, sizeof port_arg, "--port=%d", p);
    char *argv[MAX_ARGS];
    char *owned[MAX_ARGS];
    int n = 0, nowned = 0;
    char *fixed[] = {DNSMASQ,          "--keep-in-foreground", port_arg,
                     "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
                     "--no-hosts",     "--conf-file=/dev/null", "--user=root",
                     "--cache-size=0", "--log-facility=-", "--log-queries", "--pid-file="};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    for (int i = 0; local && local[i] && n < MAX_ARGS - 2; i++) {
        sbuf_t *b = sbuf_new(64);
        sbuf_appendf(b, "--local=/%s/", local[i]);
        argv[n++] = owned[nowned++] = sbuf_detach(b, NULL);
        sbuf_destroy(&b);
    }
    for (int i = 0; options && options[i] && n < MAX_ARGS - 1; i++)
        argv[n++] = options[i];
    argv[n] = NULL;
    harness_proc_t *proc = harness_spawn(label, argv, NULL);
    for (int i = 0; i < nowned; i++)
        free(owned[i]);
    if (!proc)
        return NULL;

    /* Ready when it answers anything at all (NXDOMAIN is an answer). */
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", p);
    sbuf_t *err = sbuf_new(64), *rec = sbuf_new(64);
    dnscheck_t *dns = dnscheck_new(server, 300, err);
    int64_t until = harness_now_ms() + 5000;
    int ready = 0;
    while (dns && !ready && harness_now_ms() < until && harness_alive(proc)) {
        sbuf_reset(rec);
        int st = dnscheck_txt(dns, "ready.probe.invalid", rec, NULL);
        ready = st != DNSCHECK_TIMEOUT;
        if (!ready)
            usleep(50 * 1000);
    }
    dnscheck_destroy(&dns);
    sbuf_destroy(&rec);
    if (!ready) {
        fprintf(stderr, "dns_util_start: dnsmasq did not answer on %s (%s; log %s)\n", server,
                sbuf_data(err), harness_log_path(proc));
        harness_kill9(proc);
        sbuf_destroy(&err);
        return NULL;
    }
    sbuf_destroy(&err);
    *port = p;
    return proc;
}

char *dns_util_txt_arg(const char *name, const char *value)
{
    if (strpbrk(value, ",\"\\"))
        return NULL;
    sbuf_t *b = sbuf_new(512);
    if (!b)
        return NULL;
    sbuf_appendf(b, "--txt-record=%s", name);
    size_t len = strlen(value);
    for (size_t off = 0; off < len || off == 0; off += 255) {
        size_t k = len - off < 255 ? len - off : 255;
        sbuf_appendf(b, ",%.*s", (int)k, value + off);
        if (len == 0)
            break;
    }
    char *out = sbuf_detach(b, NULL);
    sbuf_destroy(&b);
    return out;
}
