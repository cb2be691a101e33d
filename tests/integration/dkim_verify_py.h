/*
 * dkim_verify_py - verify DKIM signatures with an independent verifier,
 * dkimpy (Debian python3-dkim, Ed25519 through python3-nacl), run by
 * /usr/bin/python3 (the Debian interpreter: a pyenv one on PATH lacks the
 * Debian modules).
 *
 * Keys come either from a table (name -> TXT value, no DNS at all: unit
 * tests) or from a real DNS server through dnspython's resolver pointed at
 * 127.0.0.1:port (integration tests). Every DKIM-Signature field of every
 * message is verified, each on its own; the run passes only when all do
 * and each message carries the expected number of signatures.
 *
 * Shared by tests/unit/test_dkim_sign.c and tests/integration/
 * test_dkim_dns.c as a header so neither needs a source path at run time.
 */
#ifndef POSTCHI_TEST_DKIM_VERIFY_PY_H
#define POSTCHI_TEST_DKIM_VERIFY_PY_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sbuf.h"

/* argv: records-file-or-"dns:PORT" then (message-file expected-count)...
 * Prints one line per signature: file index a= d= s= ok|FAIL. */
static const char DKIM_VERIFY_PY[] =
    "import sys, dkim\n"
    "src = sys.argv[1]\n"
    "if src.startswith('dns:'):\n"
    "    import dns.resolver\n"
    "    r = dns.resolver.Resolver(configure=False)\n"
    "    r.nameservers = ['127.0.0.1']\n"
    "    r.port = int(src[4:])\n"
    "    def dnsfunc(name, timeout=5):\n"
    "        n = name.decode() if isinstance(name, bytes) else name\n"
    "        try:\n"
    "            a = r.resolve(n, 'TXT', lifetime=timeout)\n"
    "        except Exception as e:\n"
    "            print('dns', n, repr(e))\n"
    "            return None\n"
    "        return b''.join(a[0].strings)\n"
    "else:\n"
    "    recs = {}\n"
    "    for line in open(src, 'rb').read().split(b'\\n'):\n"
    "        if line:\n"
    "            k, v = line.split(b'\\t', 1)\n"
    "            recs[k.lower()] = v\n"
    "    def dnsfunc(name, timeout=5):\n"
    "        n = name if isinstance(name, bytes) else name.encode()\n"
    "        return recs.get(n.rstrip(b'.').lower())\n"
    "bad = 0\n"
    "args = sys.argv[2:]\n"
    "for i in range(0, len(args), 2):\n"
    "    msg = open(args[i], 'rb').read()\n"
    "    want = int(args[i + 1])\n"
    "    d = dkim.DKIM(msg)\n"
    "    sigs = [v for k, v in d.headers if k.lower() == b'dkim-signature']\n"
    "    if len(sigs) != want:\n"
    "        print(args[i], 'has', len(sigs), 'signatures, want', want)\n"
    "        bad += 1\n"
    "    for j, s in enumerate(sigs):\n"
    "        t = dkim.util.parse_tag_value(s)\n"
    "        try:\n"
    "            ok = d.verify(idx=j, dnsfunc=dnsfunc)\n"
    "        except Exception as e:\n"
    "            print('error', repr(e))\n"
    "            ok = False\n"
    "        print(args[i], j, t.get(b'a'), t.get(b'd'), t.get(b's'), 'ok' if ok else 'FAIL')\n"
    "        bad += 0 if ok else 1\n"
    "sys.exit(1 if bad else 0)\n";

/* Write len bytes to path; 0 or -1. */
static inline int dkim_verify_write(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int rc = fwrite(data, 1, len, f) == len ? 0 : -1;
    return fclose(f) == 0 ? rc : -1;
}

/* Verify nmsgs messages (msgs[i], lens[i] bytes, want[i] signatures each)
 * with dkimpy. Keys: when dns_port > 0, from the DNS server at
 * 127.0.0.1:dns_port; else from the nrecs pairs names[i] -> values[i]
 * ("sel._domainkey.example.com" -> "v=DKIM1; k=..."). The verifier's
 * output is appended to out. 1 when every signature verifies, 0 when any
 * does not, -1 when the verifier could not run. */
static inline int dkim_verify_py(const char *const *msgs, const size_t *lens, const int *want,
                                 size_t nmsgs, const char *const *names, const char *const *values,
                                 size_t nrecs, int dns_port, sbuf_t *out)
{
    char dir[] = "/tmp/postchi-dkimpy-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    int rc = -1;
    sbuf_t *cmd = sbuf_new(256), *path = sbuf_new(64), *recs = sbuf_new(256);
    if (!cmd || !path || !recs)
        goto done;
    sbuf_appendf(path, "%s/verify.py", dir);
    if (dkim_verify_write(sbuf_data(path), DKIM_VERIFY_PY, sizeof DKIM_VERIFY_PY - 1) != 0)
        goto done;
    sbuf_appendf(cmd, "/usr/bin/python3 %s", sbuf_data(path));
    if (dns_port > 0) {
        sbuf_appendf(cmd, " dns:%d", dns_port);
    } else {
        for (size_t i = 0; i < nrecs; i++)
            sbuf_appendf(recs, "%s\t%s\n", names[i], values[i]);
        sbuf_reset(path);
        sbuf_appendf(path, "%s/records", dir);
        if (dkim_verify_write(sbuf_data(path), sbuf_data(recs), sbuf_len(recs)) != 0)
            goto done;
        sbuf_appendf(cmd, " %s", sbuf_data(path));
    }
    for (size_t i = 0; i < nmsgs; i++) {
        sbuf_reset(path);
        sbuf_appendf(path, "%s/msg%zu.eml", dir, i);
        if (dkim_verify_write(sbuf_data(path), msgs[i], lens[i]) != 0)
            goto done;
        sbuf_appendf(cmd, " %s %d", sbuf_data(path), want[i]);
    }
    sbuf_append_str(cmd, " 2>&1");
    FILE *p = popen(sbuf_data(cmd), "r");
    if (!p)
        goto done;
    char buf[512];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        sbuf_append(out, buf, n);
    int st = pclose(p);
    if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) <= 1 &&
        strstr(sbuf_data(out), "Traceback") == NULL)
        rc = WEXITSTATUS(st) == 0 ? 1 : 0;
done:
    sbuf_reset(cmd);
    sbuf_appendf(cmd, "rm -rf %s", dir);
    if (system(sbuf_data(cmd)) != 0)
        rc = rc == 1 ? -1 : rc;
    sbuf_destroy(&cmd);
    sbuf_destroy(&path);
    sbuf_destroy(&recs);
    return rc;
}

#endif
