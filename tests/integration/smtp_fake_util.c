/*
 * smtp_fake_util - see smtp_fake_util.h. One thread per connection reads
 * a line at a time (into an sbuf: no limit on what the client sends) and
 * hands it to the command table; the modes hook in at the greeting, at
 * EHLO, at MAIL, RCPT and DATA and inside DATA. Test code: a peer that misbehaves just gets its
 * connection closed.
 */
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "smtp_fake_util.h"

typedef struct {
    smtp_fake_t *f; /* the server */
    int fd;         /* this connection */
    SSL_CTX *ctx;   /* once STARTTLS ran */
    SSL *ssl;       /* likewise */
    sbuf_t *line;   /* the line being handled, CRLF stripped */
    sbuf_t *msg;    /* the message being received */
    int authed;     /* an AUTH matched user/pass */
    int in_data;    /* between DATA and the final dot */
    int messages;   /* accepted on this connection */
    int open;       /* counted in the server's active */
} fconn_t;

/* The connection stops counting as open (at QUIT, before the 221 the
 * client waits for, so its next connection never overlaps this one in
 * the count; or at the end). */
static void s_closed(fconn_t *c)
{
    pthread_mutex_lock(&c->f->lock);
    c->f->active -= c->open;
    c->open = 0;
    pthread_mutex_unlock(&c->f->lock);
}

static int s_send(fconn_t *c, const char *s, size_t len)
{
    if (c->ssl)
        return SSL_write(c->ssl, s, (int)len) == (int)len ? 0 : -1;
    return send(c->fd, s, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

static int s_write(fconn_t *c, const char *s)
{
    return s_send(c, s, strlen(s));
}

/* One line, CRLF stripped, into c->line; -1 at EOF or out of memory. */
static int s_line(fconn_t *c)
{
    sbuf_reset(c->line);
    for (;;) {
        char ch;
        int r = c->ssl ? SSL_read(c->ssl, &ch, 1) : (int)recv(c->fd, &ch, 1, 0);
        if (r <= 0)
            return -1;
        if (ch == '\n')
            break;
        if (sbuf_append(c->line, &ch, 1) != 0)
            return -1;
    }
    size_t n = sbuf_len(c->line);
    if (n && sbuf_data(c->line)[n - 1] == '\r')
        sbuf_truncate(c->line, n - 1);
    return 0;
}

static void s_count(smtp_fake_t *f, int *field)
{
    pthread_mutex_lock(&f->lock);
    (*field)++;
    pthread_mutex_unlock(&f->lock);
}

/* Replace a recorded text with len bytes of s, under the lock. */
static void s_record(smtp_fake_t *f, sbuf_t *field, const char *s, size_t len)
{
    pthread_mutex_lock(&f->lock);
    sbuf_reset(field);
    sbuf_append(field, s, len);
    pthread_mutex_unlock(&f->lock);
}

/* Base64 text in, decoded, into out (emptied first). -1 when it is not
 * base64 or memory runs out. */
static int s_b64(const char *in, sbuf_t *out)
{
    size_t il = strlen(in);
    sbuf_reset(out);
    if (il == 0 || il % 4 || il > 1 << 20)
        return il == 0 ? 0 : -1;
    unsigned char *raw = malloc(il / 4 * 3 + 1);
    if (!raw)
        return -1;
    int n = EVP_DecodeBlock(raw, (const unsigned char *)in, (int)il);
    while (n > 0 && in[il - 1] == '=') /* DecodeBlock counts the padding */
        n--, il--;
    int rc = n < 0 || sbuf_append(out, raw, (size_t)n) != 0 ? -1 : 0;
    free(raw);
    return rc;
}

/* 1 when b holds exactly the string s. */
static int s_is(const sbuf_t *b, const char *s)
{
    return s && sbuf_len(b) == strlen(s) && memcmp(sbuf_data(b), s, sbuf_len(b)) == 0;
}

/* AUTH PLAIN <"authzid\0user\0pass" in base64>: 1 when it matches
 * user/pass with an empty authzid, else 0. The credentials go to seen,
 * NULs shown as ':'. */
static int s_auth_plain(fconn_t *c, const char *arg, sbuf_t *seen)
{
    const smtp_fake_t *f = c->f;
    sbuf_t *raw = sbuf_new(0);
    int ok = 0;
    if (raw && s_b64(arg, raw) == 0) {
        const char *d = sbuf_data(raw);
        size_t n = sbuf_len(raw), ul = f->user ? strlen(f->user) : 0;
        ok = f->user && f->pass && n == ul + 2 + strlen(f->pass) && d[0] == 0 &&
             memcmp(d + 1, f->user, ul) == 0 && d[ul + 1] == 0 &&
             memcmp(d + ul + 2, f->pass, n - ul - 2) == 0;
        for (size_t i = 0; i < n; i++)
            sbuf_append(seen, d[i] ? d + i : ":", 1);
    }
    sbuf_destroy(&raw);
    return ok;
}

/* AUTH LOGIN: user name and password each answer a 334 prompt. The
 * credentials go to *seen as "login:user:pass"; -1 when the client hangs
 * up in between. */
static int s_auth_login(fconn_t *c, sbuf_t *seen)
{
    static const char *const prompts[] = {"334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n"};
    const char *want[] = {c->f->user, c->f->pass};
    sbuf_t *v = sbuf_new(0);
    if (!v)
        return -1;
    int ok = sbuf_append_str(seen, "login") == 0;
    for (int i = 0; i < 2; i++) {
        if (s_write(c, prompts[i]) != 0 || s_line(c) != 0) {
            ok = -1;
            break;
        }
        if (s_b64(sbuf_data(c->line), v) != 0 || !s_is(v, want[i]))
            ok = 0;
        sbuf_append(seen, ":", 1);
        sbuf_append(seen, sbuf_data(v), sbuf_len(v));
    }
    sbuf_destroy(&v);
    return ok;
}

/* Read and drop what the client sends until it closes. */
static void s_drain(fconn_t *c)
{
    char buf[4096];
    while (recv(c->fd, buf, sizeof buf, 0) > 0)
        ;
}

/* Hang up politely (FIN) and wait for the client to close, so what it
 * sent after is read and the close is never turned into a reset. */
static void s_hangup(fconn_t *c)
{
    shutdown(c->fd, SHUT_WR);
    s_drain(c);
}

/* SMTP_FAKE_REPLY: 1 when verb is the one answered oddly (then *rc is
 * what the command returns), else 0. */
static int s_odd(fconn_t *c, const char *verb, int *rc)
{
    const smtp_fake_t *f = c->f;
    if (f->mode != SMTP_FAKE_REPLY || !f->odd_at || strcasecmp(f->odd_at, verb) != 0)
        return 0;
    *rc = s_write(c, f->odd_reply);
    if (f->odd_close) {
        s_hangup(c);
        *rc = -1;
    }
    return 1;
}

/* ---- commands: each returns 0 to go on, -1 to end the connection ---- */

static int s_ehlo(fconn_t *c)
{
    smtp_fake_t *f = c->f;
    if (f->mode == SMTP_FAKE_LONG_LINE) {
        char chunk[1000];
        memset(chunk, 'x', sizeof chunk);
        s_write(c, "250-");
        for (int i = 0; i < 10; i++)
            s_send(c, chunk, sizeof chunk);
        return s_write(c, "\r\n250 ok\r\n");
    }
    if (f->mode == SMTP_FAKE_EARLY_220) {
        /* one write, so the client reads the 220 with the EHLO reply */
        s_write(c, "250-fake\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
                   "220 2.0.0 go ahead\r\n");
        s_drain(c); /* the handshake never comes: the client must not spin */
        return -1;
    }
    if (c->ssl)
        s_count(f, &f->ehlo_tls);
    s_write(c, "250-fake\r\n250-PIPELINING\r\n");
    s_write(c, f->ehlo_auth ? f->ehlo_auth : "250-AUTH PLAIN LOGIN\r\n");
    if (f->offer_tls && !c->ssl)
        s_write(c, "250-STARTTLS\r\n");
    if (f->ehlo_extra)
        s_write(c, f->ehlo_extra);
    return s_write(c, "250 8BITMIME\r\n");
}

static int s_starttls(fconn_t *c)
{
    smtp_fake_t *f = c->f;
    if (!f->offer_tls || c->ssl)
        return s_write(c, "454 4.7.0 TLS not available\r\n");
    s_write(c, "220 2.0.0 go ahead\r\n");
    c->ctx = SSL_CTX_new(TLS_server_method());
    if (!c->ctx || SSL_CTX_use_certificate_file(c->ctx, f->cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(c->ctx, f->key, SSL_FILETYPE_PEM) != 1)
        return -1;
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl)
        return -1;
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_accept(c->ssl) != 1)
        return -1; /* a client refusing our certificate ends here */
    s_count(f, &f->tls_ok);
    return 0;
}

static int s_auth(fconn_t *c)
{
    smtp_fake_t *f = c->f;
    const char *line = sbuf_data(c->line);
    sbuf_t *seen = sbuf_new(0);
    if (!seen)
        return -1;
    s_count(f, &f->auth_tries);
    int ok = 0;
    if (!strncasecmp(line, "AUTH PLAIN ", 11))
        ok = s_auth_plain(c, line + 11, seen);
    else if (!strcasecmp(line, "AUTH LOGIN"))
        ok = s_auth_login(c, seen);
    if (ok >= 0)
        s_record(f, f->auth, sbuf_data(seen), sbuf_len(seen));
    sbuf_destroy(&seen);
    if (ok < 0)
        return -1;
    if (ok) {
        c->authed = 1;
        s_count(f, &f->auth_ok);
        return s_write(c, "235 2.7.0 authenticated\r\n");
    }
    return s_write(c, "535 5.7.8 authentication failed\r\n");
}

static int s_mail(fconn_t *c)
{
    smtp_fake_t *f = c->f;
    s_record(f, f->mail, sbuf_data(c->line), sbuf_len(c->line));
    int rc;
    if (s_odd(c, "MAIL", &rc))
        return rc;
    return s_write(c, f->user && !c->authed ? "530 5.7.0 authentication required\r\n"
                                            : "250 2.1.0 ok\r\n");
}

static int s_rcpt(fconn_t *c)
{
    int rc;
    if (s_odd(c, "RCPT", &rc))
        return rc;
    return s_write(c, "250 2.1.5 ok\r\n");
}

/* SMTP_FAKE_FLOOD_BODY: the body goes unread while the client is flooded. */
static int s_flood(fconn_t *c)
{
    smtp_fake_t *f = c->f;
    char chunk[65536];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 1024 && s_send(c, chunk, sizeof chunk) == 0; i++) {
        pthread_mutex_lock(&f->lock);
        f->flooded += (long long)sizeof chunk;
        pthread_mutex_unlock(&f->lock);
    }
    return -1;
}

static int s_data(fconn_t *c)
{
    int rc;
    if (s_odd(c, "DATA", &rc))
        return rc;
    c->in_data = 1;
    rc = s_write(c, "354 go\r\n");
    return rc == 0 && c->f->mode == SMTP_FAKE_FLOOD_BODY ? s_flood(c) : rc;
}

static int s_quit(fconn_t *c)
{
    s_closed(c);
    s_write(c, "221 2.0.0 bye\r\n");
    return -1;
}

/* A line between DATA and the final dot (still dot-stuffed). */
static int s_data_line(fconn_t *c)
{
    smtp_fake_t *f = c->f;
    if (f->mode == SMTP_FAKE_DROP_DATA && sbuf_len(c->msg) > 20)
        return -1;
    if (f->mode == SMTP_FAKE_EARLY_552 && sbuf_len(c->msg) > 20) {
        s_write(c, "552 5.3.4 message too big\r\n");
        return -1; /* closed with the rest of the message unread: a reset */
    }
    if (strcmp(sbuf_data(c->line), ".") != 0) {
        sbuf_append(c->msg, sbuf_data(c->line), sbuf_len(c->line));
        return sbuf_append(c->msg, "\n", 1);
    }
    c->in_data = 0;
    int rc;
    if (s_odd(c, ".", &rc)) {
        sbuf_reset(c->msg);
        return rc;
    }
    pthread_mutex_lock(&f->lock);
    f->messages++;
    if (++c->messages > f->max_per_conn)
        f->max_per_conn = c->messages;
    sbuf_append(f->data, sbuf_data(c->msg), sbuf_len(c->msg));
    pthread_mutex_unlock(&f->lock);
    sbuf_reset(c->msg);
    return s_write(c, "250 2.0.0 queued\r\n");
}

static const struct {
    const char *verb; /* command name, case-insensitive */
    int whole;        /* the line must be just the verb (else it is a prefix) */
    int (*handle)(fconn_t *c);
} S_COMMANDS[] = {
    {"EHLO", 0, s_ehlo}, {"STARTTLS", 1, s_starttls}, {"AUTH", 0, s_auth}, {"MAIL", 0, s_mail},
    {"RCPT", 0, s_rcpt}, {"DATA", 1, s_data},         {"QUIT", 1, s_quit},
};

static int s_command(fconn_t *c)
{
    const char *line = sbuf_data(c->line);
    for (size_t i = 0; i < sizeof S_COMMANDS / sizeof S_COMMANDS[0]; i++) {
        const char *v = S_COMMANDS[i].verb;
        if (S_COMMANDS[i].whole ? !strcasecmp(line, v) : !strncasecmp(line, v, strlen(v)))
            return S_COMMANDS[i].handle(c);
    }
    return s_write(c, "250 ok\r\n"); /* HELO, RSET, NOOP, anything else */
}

static void *s_serve(void *arg)
{
    fconn_t *c = arg;
    smtp_fake_t *f = c->f;
    pthread_mutex_lock(&f->lock);
    int over = f->max_sessions > 0 && f->active >= f->max_sessions;
    if (over) {
        f->refused++;
    } else {
        if (++f->active > f->max_active)
            f->max_active = f->active;
        c->open = 1;
    }
    pthread_mutex_unlock(&f->lock);
    if (over) {
        /* as a relay capping connections per client does */
        s_write(c, "421 4.7.0 too many connections from your address\r\n");
        close(c->fd);
        free(c);
        return NULL;
    }
    c->line = sbuf_new(0);
    c->msg = sbuf_new(0);
    if (c->f->mode == SMTP_FAKE_GARBAGE)
        s_write(c, "HELLO THERE\x01\x02\r\n");
    else if (c->line && c->msg && s_write(c, "220 fake ESMTP\r\n") == 0)
        while (s_line(c) == 0 && (c->in_data ? s_data_line(c) : s_command(c)) == 0)
            ;
    sbuf_destroy(&c->line);
    sbuf_destroy(&c->msg);
    if (c->ssl)
        SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    s_closed(c);
    close(c->fd);
    free(c);
    return NULL;
}

static void *s_accept(void *arg)
{
    smtp_fake_t *f = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = f->lfd, .events = POLLIN},
                              {.fd = f->stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0 || p[1].revents)
            return NULL;
        int fd = accept(f->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        fconn_t *c = calloc(1, sizeof *c);
        if (!c || f->nconns >= SMTP_FAKE_MAX_CONNS) {
            free(c);
            close(fd);
            continue;
        }
        c->f = f;
        c->fd = fd;
        if (pthread_create(&f->conns[f->nconns], NULL, s_serve, c) != 0) {
            free(c);
            close(fd);
            continue;
        }
        f->nconns++;
    }
}

int smtp_fake_start(smtp_fake_t *f)
{
    f->data = sbuf_new(0);
    f->mail = sbuf_new(0);
    f->auth = sbuf_new(0);
    pthread_mutex_init(&f->lock, NULL);
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (!f->data || !f->mail || !f->auth || f->lfd < 0 ||
        bind(f->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(f->lfd, 16) != 0 ||
        getsockname(f->lfd, (struct sockaddr *)&sa, &sl) != 0 || pipe(f->stop) != 0)
        return -1;
    f->port = ntohs(sa.sin_port);
    return pthread_create(&f->acceptor, NULL, s_accept, f) == 0 ? 0 : -1;
}

void smtp_fake_stop(smtp_fake_t *f)
{
    if (write(f->stop[1], "x", 1) != 1)
        fprintf(stderr, "smtp_fake_stop: cannot wake the acceptor\n");
    pthread_join(f->acceptor, NULL);
    close(f->lfd);
    for (int i = 0; i < f->nconns; i++)
        pthread_join(f->conns[i], NULL);
    close(f->stop[0]);
    close(f->stop[1]);
    sbuf_destroy(&f->data);
    sbuf_destroy(&f->mail);
    sbuf_destroy(&f->auth);
    pthread_mutex_destroy(&f->lock);
}

int smtp_fake_get(smtp_fake_t *f, const int *field)
{
    pthread_mutex_lock(&f->lock);
    int v = *field;
    pthread_mutex_unlock(&f->lock);
    return v;
}

char *smtp_fake_text(smtp_fake_t *f, sbuf_t *const *field)
{
    pthread_mutex_lock(&f->lock);
    char *copy = strdup(sbuf_data(*field));
    pthread_mutex_unlock(&f->lock);
    return copy;
}
