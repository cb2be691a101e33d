/*
 * delivery_util - see delivery_util.h. Test code: failures print a line
 * and return NULL / -1 so the calling assertion fails where the test can
 * say what it expected (dl_dkim_verify_both, a whole check, fails the test
 * itself).
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdarg.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delivery_util.h"
#include "dkim_verify_py.h"

#define TEST_SECRET_KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

int dsink_init(dsink_t *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/postchi-sink-XXXXXX");
    if (!mkdtemp(s->dir))
        return -1;
    chmod(s->dir, 0777); /* smtp-sink writes as nobody */
    s->port = harness_free_port();
    return s->port > 0 ? 0 : -1;
}

/* 1 when something accepts a TCP connection on port. */
static int s_listening(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int dsink_start(dsink_t *s, const char *const *opts)
{
    char listen[64], tmpl[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", s->port);
    snprintf(tmpl, sizeof tmpl, "%s/%%M.", s->dir);
    char *argv[24];
    int n = 0;
    argv[n++] = "/usr/sbin/smtp-sink";
    argv[n++] = "-u";
    argv[n++] = "nobody";
    argv[n++] = "-d";
    argv[n++] = tmpl;
    for (int i = 0; opts && opts[i] && n < 20; i++)
        argv[n++] = (char *)opts[i];
    argv[n++] = listen;
    argv[n++] = "100";
    argv[n] = NULL;
    s->proc = harness_spawn("smtp-sink", argv, NULL);
    if (!s->proc)
        return -1;
    int64_t deadline = harness_now_ms() + 5000;
    while (!s_listening(s->port)) {
        if (harness_now_ms() > deadline || !harness_alive(s->proc)) {
            fprintf(stderr, "smtp-sink did not start (log %s)\n", harness_log_path(s->proc));
            return -1;
        }
        usleep(20 * 1000);
    }
    return 0;
}

void dsink_stop(dsink_t *s)
{
    if (s->proc)
        harness_stop(s->proc, SIGTERM, 5000);
    s->proc = NULL;
}

void dsink_destroy(dsink_t *s)
{
    dsink_stop(s);
    if (!s->dir[0])
        return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s->dir);
    s->dir[0] = 0;
}

void dsink_each(const dsink_t *s, void (*fn)(const char *text, void *arg), void *arg)
{
    DIR *d = opendir(s->dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        sbuf_t *b = sbuf_new(4096);
        char buf[8192];
        size_t r;
        while ((r = fread(buf, 1, sizeof buf, f)) > 0)
            sbuf_append(b, buf, r);
        fclose(f);
        if (b)
            fn(sbuf_data(b), arg);
        sbuf_destroy(&b);
    }
    if (d)
        closedir(d);
}

typedef struct {
    const char *needle;
    int n;
} count_t;

static void s_count(const char *text, void *arg)
{
    count_t *c = arg;
    if (strstr(text, c->needle))
        c->n++;
}

int dsink_count(const dsink_t *s, const char *needle)
{
    count_t c = {needle, 0};
    dsink_each(s, s_count, &c);
    return c.n;
}

char *dl_sql(api_env_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = api_vsqlf(e, fmt, ap);
    va_end(ap);
    return out;
}

char *dl_verified_domain(api_env_t *e, const char *domain)
{
    api_resp_t r;
    api_callf(e, "POST", "/api/v1/domains", e->key_full, &r, "{\"name\":\"%s\"}", domain);
    const char *id = r.json ? json_string_value(json_object_get(r.json, "id")) : NULL;
    char *out = r.status == 201 && id ? strdup(id) : NULL;
    if (!out)
        fprintf(stderr, "dl_verified_domain: %d %s\n", r.status, r.raw ? sbuf_data(r.raw) : "");
    api_resp_free(&r);
    if (out)
        free(dl_sql(e, "UPDATE domains SET status = 'verified' WHERE id = '%s'", out));
    return out;
}

int dl_send(api_env_t *e, char *id, const char *fmt, ...)
{
    sbuf_t *b = sbuf_new(256);
    va_list ap;
    va_start(ap, fmt);
    sbuf_vappendf(b, fmt, ap);
    va_end(ap);
    api_resp_t r;
    api_call(e, "POST", "/api/v1/messages", e->key_send, b ? sbuf_data(b) : "", NULL, &r);
    sbuf_destroy(&b);
    json_t *first = r.json ? json_array_get(json_object_get(r.json, "messages"), 0) : NULL;
    const char *mid = json_string_value(json_object_get(first, "id"));
    id[0] = 0;
    if (mid)
        snprintf(id, 64, "%s", mid);
    else
        fprintf(stderr, "dl_send: %d %s\n", r.status, r.raw ? sbuf_data(r.raw) : "");
    int st = r.status;
    api_resp_free(&r);
    return st;
}

char *dl_status(api_env_t *e, const char *id)
{
    return dl_sql(e, "SELECT status FROM messages WHERE id = '%s'", id);
}

char *dl_wait_status(api_env_t *e, const char *id, const char *want, int ms)
{
    int64_t deadline = harness_now_ms() + ms;
    char *st = NULL;
    while (harness_now_ms() < deadline) {
        free(st);
        st = dl_status(e, id);
        if (st && strcmp(st, want) == 0)
            break;
        usleep(100 * 1000);
    }
    return st;
}

int dl_env_start(api_env_t *e, dsink_t *s, int start_sink)
{
    if (dsink_init(s) != 0 || (start_sink && dsink_start(s, NULL) != 0))
        return -1;
    char relay[64];
    snprintf(relay, sizeof relay, "127.0.0.1:%d", s->port);
    /* Workers inherit the environment (the harness passes it on). */
    setenv("POSTCHI_SMTP_RELAY", relay, 1);
    return dl_env_start_api(e);
}

int dl_env_start_api(api_env_t *e)
{
    setenv("POSTCHI_SECRET_KEY", TEST_SECRET_KEY, 1);
    if (api_env_start(e, NULL) != 0)
        return -1;
    char *d = dl_verified_domain(e, "send.example");
    free(d);
    return d ? 0 : -1;
}

int dl_smtp_deliver(int port, const char *from, const char *rcpt, const char *file)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import smtplib\n"
             "s=smtplib.SMTP(\"127.0.0.1\", %d, timeout=20)\n"
             "try:\n"
             "    s.sendmail(\"%s\", [\"%s\"], open(\"%s\",\"rb\").read())\n"
             "    print(250)\n"
             "except smtplib.SMTPDataError as e:\n"
             "    print(e.smtp_code)\n"
             "except smtplib.SMTPRecipientsRefused as e:\n"
             "    print(list(e.recipients.values())[0][0])\n"
             "s.quit()'",
             port, from, rcpt, file);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    int code = -1;
    if (fscanf(p, "%d", &code) != 1)
        code = -1;
    pclose(p);
    return code;
}

int dl_env_stop(api_env_t *e, dsink_t *s)
{
    int bad = api_env_stop(e);
    dsink_destroy(s);
    return bad;
}

void dl_dkim_verify_both(api_env_t *e, const char *domain, const char *msg)
{
    char *keys = dl_sql(e,
                        "SELECT dkim_ed25519_selector || '|' || dkim_ed25519_public || '|' ||"
                        " dkim_rsa_selector || '|' || dkim_rsa_public FROM domains"
                        " WHERE name = '%s' AND organization_id = '%s'",
                        domain, e->org_id);
    assert_non_null(keys);
    char *sel_e = strtok(keys, "|"), *pub_e = strtok(NULL, "|"), *sel_r = strtok(NULL, "|"),
         *pub_r = strtok(NULL, "|");
    assert_non_null(pub_r);
    char name_e[300], name_r[300], val_e[256], val_r[1024];
    snprintf(name_e, sizeof name_e, "%s._domainkey.%s", sel_e, domain);
    snprintf(name_r, sizeof name_r, "%s._domainkey.%s", sel_r, domain);
    snprintf(val_e, sizeof val_e, "v=DKIM1; k=ed25519; p=%s", pub_e);
    snprintf(val_r, sizeof val_r, "v=DKIM1; k=rsa; p=%s", pub_r);
    const char *names[] = {name_e, name_r}, *values[] = {val_e, val_r};
    const char *msgs[] = {msg};
    size_t lens[] = {strlen(msg)};
    int want[] = {2};
    sbuf_t *out = sbuf_new(256);
    int ok = dkim_verify_py(msgs, lens, want, 1, names, values, 2, 0, out);
    if (ok != 1)
        fail_msg("dkimpy did not verify both signatures: %s", sbuf_data(out));
    sbuf_destroy(&out);
    free(keys);
}
