/*
 * smtp_fake_util - see smtp_fake_util.h. Test code: a peer that misbehaves
 * just gets its connection closed.
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
} fconn_t;

static int s_write(fconn_t *c, const char *s)
{
    size_t len = strlen(s);
    if (c->ssl)
        return SSL_write(c->ssl, s, (int)len) == (int)len ? 0 : -1;
    return send(c->fd, s, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* One line, CRLF stripped, into buf; -1 at EOF. */
static int s_line(fconn_t *c, char *buf, size_t size)
{
    size_t n = 0;
    for (;;) {
        char ch;
        int r = c->ssl ? SSL_read(c->ssl, &ch, 1) : (int)recv(c->fd, &ch, 1, 0);
        if (r <= 0)
            return -1;
        if (ch == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = ch;
    }
    if (n && buf[n - 1] == '\r')
        n--;
    buf[n] = 0;
    return (int)n;
}

/* 1 when base64 text in decodes to "\0user\0pass" (AUTH PLAIN). */
static int s_plain_ok(const smtp_fake_t *f, const char *in)
{
    unsigned char raw[600];
    size_t il = strlen(in);
    if (!f->user || il >= 800)
        return 0;
    int n = EVP_DecodeBlock(raw, (const unsigned char *)in, (int)il);
    while (n > 0 && il > 0 && in[il - 1] == '=')
        n--, il--;
    char want[600];
    int wl = snprintf(want, sizeof want, "%c%s%c%s", 0, f->user, 0, f->pass);
    return n == wl && memcmp(raw, want, (size_t)n) == 0;
}

static void s_count(smtp_fake_t *f, int *field)
{
    pthread_mutex_lock(&f->lock);
    (*field)++;
    pthread_mutex_unlock(&f->lock);
}

static void *s_serve(void *arg)
{
    fconn_t *c = arg;
    smtp_fake_t *f = c->f;
    char line[2048];
    int authed = 0, in_data = 0;
    sbuf_t *msg = sbuf_new(0);
    s_write(c, "220 fake ESMTP\r\n");
    while (s_line(c, line, sizeof line) >= 0) {
        if (in_data) {
            if (strcmp(line, ".") != 0) {
                sbuf_append_str(msg, line);
                sbuf_append(msg, "\n", 1);
                continue;
            }
            in_data = 0;
            pthread_mutex_lock(&f->lock);
            f->messages++;
            sbuf_append(f->data, sbuf_data(msg), sbuf_len(msg));
            pthread_mutex_unlock(&f->lock);
            sbuf_reset(msg);
            s_write(c, "250 2.0.0 queued\r\n");
        } else if (!strncasecmp(line, "EHLO", 4)) {
            s_write(c, "250-fake\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n");
            if (f->offer_tls && !c->ssl)
                s_write(c, "250-STARTTLS\r\n");
            s_write(c, "250 8BITMIME\r\n");
        } else if (!strcasecmp(line, "STARTTLS") && f->offer_tls && !c->ssl) {
            s_write(c, "220 2.0.0 go ahead\r\n");
            c->ctx = SSL_CTX_new(TLS_server_method());
            if (!c->ctx || SSL_CTX_use_certificate_file(c->ctx, f->cert, SSL_FILETYPE_PEM) != 1 ||
                SSL_CTX_use_PrivateKey_file(c->ctx, f->key, SSL_FILETYPE_PEM) != 1)
                break;
            c->ssl = SSL_new(c->ctx);
            SSL_set_fd(c->ssl, c->fd);
            if (SSL_accept(c->ssl) != 1)
                break; /* a client refusing our certificate ends here */
            s_count(f, &f->tls_ok);
        } else if (!strncasecmp(line, "AUTH", 4)) {
            s_count(f, &f->auth_tries);
            if (!strncasecmp(line, "AUTH PLAIN ", 11) && s_plain_ok(f, line + 11)) {
                authed = 1;
                s_count(f, &f->auth_ok);
                s_write(c, "235 2.7.0 authenticated\r\n");
            } else {
                s_write(c, "535 5.7.8 authentication failed\r\n");
            }
        } else if (!strncasecmp(line, "MAIL", 4)) {
            s_write(c, f->user && !authed ? "530 5.7.0 authentication required\r\n"
                                          : "250 2.1.0 ok\r\n");
        } else if (!strncasecmp(line, "RCPT", 4)) {
            s_write(c, "250 2.1.5 ok\r\n");
        } else if (!strcasecmp(line, "DATA")) {
            in_data = 1;
            s_write(c, "354 go\r\n");
        } else if (!strcasecmp(line, "QUIT")) {
            s_write(c, "221 2.0.0 bye\r\n");
            break;
        } else {
            s_write(c, "250 ok\r\n");
        }
    }
    sbuf_destroy(&msg);
    if (c->ssl)
        SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
    free(c);
    return NULL;
}

static void *s_accept(void *arg)
{
    smtp_fake_t *f = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = f->lfd, .events = POLLIN}, {.fd = f->stop[0], .events = POLLIN}};
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
    pthread_mutex_init(&f->lock, NULL);
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (!f->data || f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(f->lfd, 16) != 0 || getsockname(f->lfd, (struct sockaddr *)&sa, &sl) != 0 ||
        pipe(f->stop) != 0)
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
    pthread_mutex_destroy(&f->lock);
}

int smtp_fake_get(smtp_fake_t *f, const int *field)
{
    pthread_mutex_lock(&f->lock);
    int v = *field;
    pthread_mutex_unlock(&f->lock);
    return v;
}
