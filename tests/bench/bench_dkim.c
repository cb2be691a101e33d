/*
 * bench_dkim - DKIM signing cost per message on one thread, through
 * dkim_signer_sign (libopendkim), against the bare key operation and
 * `openssl speed rsa2048`.
 *
 *   bench_dkim [messages per run] [runs]        (defaults 2000, 5)
 *
 * For 2 KB and 100 KB messages and each of ed25519, rsa, both: the median
 * over the runs of the time to sign all the messages, printed as
 * microseconds per message and messages per second. Then the bare
 * dkim_key_sign cost of each algorithm (SHA-256 + signature of a 32-byte
 * header hash stand-in, no canonicalization), so what libopendkim adds
 * beyond the signature itself shows, and `openssl speed -seconds 3 rsa2048`
 * sign/s from the same machine in the same run. No server needed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dkim_keys.h"
#include "dkim_sign.h"
#include "sbuf.h"

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A plausible message of about size bytes: the usual headers, then
 * 76-column quoted-printable-looking lines. */
static void s_message(size_t size, sbuf_t *out)
{
    sbuf_append_str(out, "From: Sender <news@example.com>\r\n"
                         "To: someone@example.org\r\n"
                         "Subject: Your monthly newsletter\r\n"
                         "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
                         "Message-ID: <bench.1@example.com>\r\n"
                         "MIME-Version: 1.0\r\n"
                         "List-Unsubscribe: <mailto:u+1@example.com>, <https://example.com/u/1>\r\n"
                         "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                         "Content-Type: text/plain; charset=utf-8\r\n"
                         "Content-Transfer-Encoding: quoted-printable\r\n"
                         "\r\n");
    for (unsigned i = 0; sbuf_len(out) < size; i++)
        sbuf_appendf(out, "Line %05u of the body, with some words  and a double space =\r\n", i);
    sbuf_append_str(out, "end\r\n");
}

/* Median seconds to sign n copies of msg with keys. */
static double s_run(dkim_signer_t *signer, const dkim_sign_key_t *keys, size_t nkeys,
                    const sbuf_t *msg, int n, int runs)
{
    double t[runs];
    sbuf_t *sig = sbuf_new(2048), *err = sbuf_new(0);
    for (int r = 0; r < runs; r++) {
        double t0 = s_now();
        for (int i = 0; i < n; i++) {
            sbuf_reset(sig);
            if (dkim_signer_sign(signer, keys, nkeys, sbuf_data(msg), sbuf_len(msg), sig, err) !=
                0) {
                fprintf(stderr, "bench_dkim: %s\n", sbuf_data(err));
                exit(1);
            }
        }
        t[r] = s_now() - t0;
    }
    qsort(t, (size_t)runs, sizeof t[0], s_cmp);
    sbuf_destroy(&sig);
    sbuf_destroy(&err);
    return t[runs / 2];
}

/* Median seconds for n bare signatures with key. */
static double s_bare(const dkim_key_t *key, int n, int runs)
{
    double t[runs];
    unsigned char hash[32] = {1};
    sbuf_t *sig = sbuf_new(512);
    for (int r = 0; r < runs; r++) {
        double t0 = s_now();
        for (int i = 0; i < n; i++) {
            sbuf_reset(sig);
            hash[0] = (unsigned char)i;
            if (dkim_key_sign(key, hash, sizeof hash, sig) != 0)
                exit(1);
        }
        t[r] = s_now() - t0;
    }
    qsort(t, (size_t)runs, sizeof t[0], s_cmp);
    sbuf_destroy(&sig);
    return t[runs / 2];
}

/* sign/s from `openssl speed -seconds 3 rsa2048`, or -1. */
static double s_openssl_speed(void)
{
    FILE *p = popen("openssl speed -seconds 3 rsa2048 2>/dev/null", "r");
    if (!p)
        return -1;
    char line[512];
    double signs = -1;
    while (fgets(line, sizeof line, p)) {
        double s, v, sps, vps;
        /* "rsa 2048 bits 0.000712s 0.000021s   1404.6  47619.0" */
        if (sscanf(line, "rsa 2048 bits %lfs %lfs %lf %lf", &s, &v, &sps, &vps) == 4)
            signs = sps;
    }
    pclose(p);
    return signs;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    int runs = argc > 2 ? atoi(argv[2]) : 5;
    if (n <= 0 || runs <= 0 || runs > 100) {
        fprintf(stderr, "usage: bench_dkim [messages per run] [runs]\n");
        return 2;
    }
    dkim_key_t *ed = dkim_key_generate(DKIM_ED25519), *rsa = dkim_key_generate(DKIM_RSA);
    sbuf_t *ed_pem = sbuf_new(0), *rsa_pem = sbuf_new(0), *err = sbuf_new(0);
    if (!ed || !rsa || dkim_key_private_pem(ed, ed_pem) || dkim_key_private_pem(rsa, rsa_pem))
        return 1;
    dkim_signer_t *signer = dkim_signer_new(err);
    if (!signer) {
        fprintf(stderr, "bench_dkim: %s\n", sbuf_data(err));
        return 1;
    }
    dkim_sign_key_t keys[2] = {{"example.com", "ed", sbuf_data(ed_pem), 1},
                               {"example.com", "rsa", sbuf_data(rsa_pem), 0}};
    struct {
        const char *name;
        size_t first, nkeys;
    } modes[] = {{"ed25519", 0, 1}, {"rsa", 1, 1}, {"both", 0, 2}};
    size_t sizes[] = {2 * 1024, 100 * 1024};

    printf("DKIM signing, one thread, median of %d runs of %d messages\n", runs, n);
    printf("%-8s %-8s %12s %12s\n", "size", "keys", "us/message", "messages/s");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        sbuf_t *msg = sbuf_new(sizes[s] + 256);
        s_message(sizes[s], msg);
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            double t = s_run(signer, keys + modes[m].first, modes[m].nkeys, msg, n, runs);
            printf("%-8zu %-8s %12.1f %12.0f\n", sbuf_len(msg), modes[m].name, t / n * 1e6, n / t);
        }
        sbuf_destroy(&msg);
    }
    double bed = s_bare(ed, n, runs), brsa = s_bare(rsa, n, runs);
    printf("bare dkim_key_sign: ed25519 %.1f us (%.0f/s), rsa2048 %.1f us (%.0f/s)\n",
           bed / n * 1e6, n / bed, brsa / n * 1e6, n / brsa);
    double speed = s_openssl_speed();
    printf("openssl speed -seconds 3 rsa2048: %.1f sign/s (one core); 0.6 of it over both "
           "cores: %.0f/s\n",
           speed, 0.6 * 2 * speed);

    dkim_signer_destroy(&signer);
    dkim_key_destroy(&ed);
    dkim_key_destroy(&rsa);
    sbuf_destroy(&ed_pem);
    sbuf_destroy(&rsa_pem);
    sbuf_destroy(&err);
    return 0;
}
