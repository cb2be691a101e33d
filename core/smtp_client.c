/*
 * smtp_client - non-blocking SMTP client state machine (see smtp_client.h).
 *
 * How it works: the connection is in one state at a time (connecting,
 * waiting for a reply to some command, TLS handshake, sending the body,
 * idle, closed). smtp_conn_step flushes what is queued for the server,
 * reads what has arrived, cuts complete replies out of the input and feeds
 * each to s_on_reply, which moves the state on and queues the next
 * command; it loops while anything moves. I/O goes through s_io_read /
 * s_io_write, which hide whether the bytes pass through OpenSSL and record
 * what the socket must wait for (TLS can want POLLOUT to read).
 *
 * A pipelined transaction sends MAIL, every RCPT and DATA at once; the
 * replies come back in order and txn_next counts which one is due. Without
 * PIPELINING the same counter picks the next command after each reply.
 *
 * What can go wrong: every failure goes through s_fail, which closes the
 * socket, keeps a one-line sanitized reason and, when a transaction is in
 * flight, turns it into a code-0 result, so no transaction is ever lost
 * without a result.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "smtp_client.h"

#define SMTP_MAX_LINE 4096   /* longest reply line we accept (RFC says 512) */
#define SMTP_MAX_REPLY 65536 /* longest multi-line reply we accept */
#define SMTP_TEXT_MAX 511    /* result text is cut here */
/* most we keep unparsed from the server: replies are cut out as they come,
 * so more than this is a peer writing where no reply is due */
#define SMTP_MAX_IN (SMTP_MAX_LINE + SMTP_MAX_REPLY)

typedef enum {
    ST_CONNECTING, /* waiting for the non-blocking connect */
    ST_GREETING,   /* waiting for 220 */
    ST_EHLO,       /* EHLO sent */
    ST_HELO,       /* HELO sent after EHLO got a 5xx */
    ST_STARTTLS,   /* STARTTLS sent */
    ST_HANDSHAKE,  /* TLS handshake in progress */
    ST_AUTH,       /* AUTH PLAIN sent, or AUTH LOGIN's last step */
    ST_AUTH_USER,  /* AUTH LOGIN sent, waiting for the user prompt */
    ST_AUTH_PASS,  /* user sent, waiting for the password prompt */
    ST_IDLE,       /* ready for a transaction */
    ST_TXN,        /* MAIL/RCPT/DATA replies due */
    ST_BODY,       /* writing the message */
    ST_FINAL,      /* waiting for the reply to the final dot */
    ST_ABORT_DOT,  /* DATA got 354 with no recipient accepted: sent "." */
    ST_RSET,       /* RSET sent after a failed transaction */
    ST_QUIT,       /* QUIT sent */
    ST_CLOSED      /* socket closed */
} s_state_t;

static const char *s_state_name[] = {
    "connect",     "greeting",    "EHLO", "HELO", "STARTTLS",       "TLS handshake",
    "AUTH",        "AUTH",        "AUTH", "idle", "MAIL/RCPT/DATA", "message data",
    "end of data", "end of data", "RSET", "QUIT", "closed"};

struct smtp_conn {
    int fd;            /* the socket, -1 once closed */
    s_state_t state;   /* where the session is */
    char *host;        /* the peer address, for errors and the default TLS name */
    smtp_opts_t opts;  /* caller's options; strings below are our copies */
    char *helo_name;   /* copy of opts.helo_name */
    char *tls_name;    /* copy of opts.tls_name */
    char *tls_ca_file; /* copy of opts.tls_ca_file */
    char *auth_user;   /* copy of opts.auth_user */
    char *auth_pass;   /* copy of opts.auth_pass */
    SSL_CTX *ctx;      /* TLS context (own one when tls_ca_file, else shared) */
    SSL *ssl;          /* the TLS session once STARTTLS begins, else NULL */
    short want;        /* events the last blocked I/O waits for */
    int64_t deadline;  /* when the current step times out; -1 none */
    sbuf_t *in;        /* bytes read, not yet cut into replies */
    sbuf_t *out;       /* commands queued for the server */
    size_t out_off;    /* bytes of out already written */
    sbuf_t *body;      /* the dot-stuffed message of the transaction */
    size_t body_off;   /* bytes of body already written */
    sbuf_t *lines;     /* the reply being assembled: text of each line, NUL after each */
    int nlines;        /* lines in it */
    int reply_code;    /* its code */
    /* what the server offers (from EHLO) */
    int ext_esmtp;               /* EHLO succeeded */
    int ext_pipelining;          /* PIPELINING */
    int ext_8bitmime;            /* 8BITMIME */
    int ext_smtputf8;            /* SMTPUTF8 */
    int ext_starttls;            /* STARTTLS */
    int ext_auth_plain;          /* AUTH ... PLAIN */
    int ext_auth_login;          /* AUTH ... LOGIN */
    int ext_size;                /* SIZE offered */
    unsigned long long size_max; /* SIZE limit, 0 when none */
    /* the transaction */
    int txn_active;       /* a submitted transaction has no result yet */
    char *mail_from;      /* envelope sender */
    char **rcpts;         /* envelope recipients */
    size_t nrcpt;         /* how many */
    int mail_params_8bit; /* send BODY=8BITMIME */
    int mail_params_utf8; /* send SMTPUTF8 */
    size_t txn_next;      /* replies consumed: 0 MAIL, 1..nrcpt RCPT, nrcpt+1 DATA */
    size_t txn_sent;      /* commands sent (pipelining sends all at once) */
    int mail_code;        /* MAIL reply */
    int rcpt_ok;          /* RCPTs accepted */
    int messages;         /* transactions submitted */
    smtp_result_t result; /* the result being built or waiting to be taken */
    int result_state;     /* 0 none, 1 ready and not yet reported, 2 reported */
    int tls_active;       /* the handshake finished */
    int authed;           /* AUTH succeeded */
    sbuf_t *err;          /* why the connection ended (sanitized), empty when fine */
    int err_code;         /* reply code that ended it, or 0 */
};

/* ---- small helpers ----------------------------------------------------- */

int64_t smtp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *s_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Append len bytes of peer text to dst with everything outside printable
 * ASCII replaced by '?', up to SMTP_TEXT_MAX bytes in dst. */
static void s_sanitize_into(sbuf_t *dst, const char *src, size_t len)
{
    for (size_t i = 0; i < len && sbuf_len(dst) < SMTP_TEXT_MAX; i++) {
        unsigned char ch = (unsigned char)src[i];
        char o = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
        sbuf_append(dst, &o, 1);
    }
}

static int s_timeout(int v, int dflt)
{
    return v > 0 ? v : dflt;
}

static void s_set_deadline(smtp_conn_t *c, int ms)
{
    c->deadline = ms < 0 ? -1 : smtp_now_ms() + ms;
}

static int s_cmd_timeout(const smtp_conn_t *c)
{
    return s_timeout(c->opts.command_timeout_ms, 300000);
}

/* ---- results and failure ------------------------------------------------ */

/* Finish the transaction with code/enhanced/text (text sanitized, may be
 * NULL). The rcpt_codes filled so far stay. */
static void s_finish(smtp_conn_t *c, int code, const char *enhanced, const char *text,
                     size_t textlen, int local)
{
    smtp_result_t *r = &c->result;
    r->code = code;
    r->local = local;
    snprintf(r->enhanced, sizeof r->enhanced, "%s", enhanced ? enhanced : "");
    sbuf_t *t = sbuf_new(textlen + 1);
    if (t && text)
        s_sanitize_into(t, text, textlen);
    free(r->text);
    r->text = t ? sbuf_detach(t, NULL) : NULL;
    sbuf_destroy(&t);
    if (!r->text)
        r->text = strdup("");
    c->txn_active = 0;
    c->result_state = 1;
}

static void s_close(smtp_conn_t *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    c->deadline = -1;
    c->tls_active = 0;
}

static int s_early_reply(smtp_conn_t *c);

/* 1 when the server has already refused the whole transaction while
 * pipelined replies are still due: MAIL refused, or every RCPT answered
 * and none accepted. */
static int s_refused(const smtp_conn_t *c)
{
    if (c->mail_code != 0 && (c->mail_code < 200 || c->mail_code >= 300))
        return 1;
    return c->result.code != 0 && c->rcpt_ok == 0 && c->txn_next > c->nrcpt;
}

/* End the connection with a reason; a transaction in flight gets code 0
 * (or code when the server gave one, e.g. 421), unless the server has
 * refused it already: a blocklist 554 to MAIL followed by a hang-up is
 * still a 554, to bounce once rather than retry until expiry; so is a 552
 * sent before the end of the body (s_early_reply). */
static void s_fail(smtp_conn_t *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void s_fail(smtp_conn_t *c, int code, const char *fmt, ...)
{
    if (c->state == ST_CLOSED)
        return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sbuf_reset(c->err);
    s_sanitize_into(c->err, line, strlen(line));
    c->err_code = code;
    if (c->txn_active && c->state == ST_BODY)
        s_early_reply(c);
    if (c->txn_active && s_refused(c)) {
        c->txn_active = 0;
        c->result_state = 1;
    } else if (c->txn_active) {
        /* only a 4xx (421) ends a connection with a reply; anything else
         * that ends it mid-transaction is not the message's fault: defer */
        int rc = code >= 400 && code < 500 ? code : 0;
        s_finish(c, rc, "", line, strlen(line), 0);
    }
    s_close(c);
}

/* ---- TLS ---------------------------------------------------------------- */

static pthread_once_t s_tls_once = PTHREAD_ONCE_INIT;
static SSL_CTX *s_shared_ctx; /* system CAs loaded once; verify mode is set per session */

static SSL_CTX *s_ctx_make(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void s_tls_init(void)
{
    s_shared_ctx = s_ctx_make(NULL);
}

/* The OpenSSL error queue's last entry as text, and the queue cleared. */
static const char *s_ssl_err(char *buf, size_t size)
{
    unsigned long e = ERR_get_error(), last = e;
    while (e) {
        last = e;
        e = ERR_get_error();
    }
    if (!last)
        snprintf(buf, size, "%s", strerror(errno ? errno : EIO));
    else
        ERR_error_string_n(last, buf, size);
    return buf;
}

static int s_tls_start(smtp_conn_t *c)
{
    SSL_CTX *ctx = c->ctx;
    if (!ctx) {
        pthread_once(&s_tls_once, s_tls_init);
        ctx = s_shared_ctx;
    }
    char eb[256];
    if (!ctx || !(c->ssl = SSL_new(ctx))) {
        s_fail(c, 0, "TLS setup failed: %s", s_ssl_err(eb, sizeof eb));
        return -1;
    }
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    const char *name = c->tls_name ? c->tls_name : c->host;
    struct in6_addr a6;
    struct in_addr a4;
    int is_ip = inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(c->ssl, name);
    if (c->opts.tls_verify) {
        SSL_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
        SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(c->ssl, name) != 1) {
            s_fail(c, 0, "TLS setup failed: bad name to verify");
            return -1;
        }
    } else {
        SSL_set_verify(c->ssl, SSL_VERIFY_NONE, NULL);
    }
    c->state = ST_HANDSHAKE;
    s_set_deadline(c, s_cmd_timeout(c));
    return 0;
}

/* ---- I/O ---------------------------------------------------------------- */

/* Read into in. >0 bytes read, 0 would block (c->want set), -1 EOF or
 * error (connection failed). in is capped at SMTP_MAX_IN in every state:
 * while the body goes out nothing is parsed, and a server flooding then
 * would otherwise grow it as fast as the network delivers. */
static ssize_t s_io_read(smtp_conn_t *c)
{
    char buf[16384];
    ssize_t n;
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, buf, sizeof buf);
        if (r > 0) {
            n = r;
        } else {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                c->want |= e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
                return 0;
            }
            char eb[256];
            if (c->state == ST_QUIT)
                s_close(c); /* the server hung up on QUIT: done */
            else if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && r == 0))
                s_fail(c, 0, "connection closed by the server during %s", s_state_name[c->state]);
            else
                s_fail(c, 0, "TLS read failed during %s: %s", s_state_name[c->state],
                       s_ssl_err(eb, sizeof eb));
            return -1;
        }
    } else {
        n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            c->want |= POLLIN;
            return 0;
        }
        if (n <= 0) {
            if (c->state == ST_QUIT)
                s_close(c); /* the server hung up on QUIT: done */
            else if (n == 0)
                s_fail(c, 0, "connection closed by the server during %s", s_state_name[c->state]);
            else
                s_fail(c, 0, "read failed during %s: %s", s_state_name[c->state], strerror(errno));
            return -1;
        }
    }
    if (sbuf_append(c->in, buf, (size_t)n) != 0) {
        s_fail(c, 0, "out of memory");
        return -1;
    }
    if (sbuf_len(c->in) > SMTP_MAX_IN) {
        s_fail(c, 0, "the server sent more than %d bytes before a reply was due, during %s",
               SMTP_MAX_IN, s_state_name[c->state]);
        return -1;
    }
    return n;
}

/* Write len bytes of p. >0 written, 0 would block (c->want set), -1 failed. */
static ssize_t s_io_write(smtp_conn_t *c, const char *p, size_t len)
{
    if (len > 1 << 20)
        len = 1 << 20;
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_write(c->ssl, p, (int)len);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            c->want |= e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
            return 0;
        }
        char eb[256];
        s_fail(c, 0, "TLS write failed during %s: %s", s_state_name[c->state],
               s_ssl_err(eb, sizeof eb));
        return -1;
    }
    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        c->want |= POLLOUT;
        return 0;
    }
    if (n <= 0) {
        s_fail(c, 0, "write failed during %s: %s", s_state_name[c->state],
               n < 0 ? strerror(errno) : "no progress");
        return -1;
    }
    return n;
}

/* Queue a command line (CRLF added). */
static int s_queue(smtp_conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_queue(smtp_conn_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = sbuf_vappendf(c->out, fmt, ap);
    va_end(ap);
    if (rc == 0)
        rc = sbuf_append(c->out, "\r\n", 2);
    if (rc != 0)
        s_fail(c, 0, "out of memory");
    return rc;
}

/* Write queued commands, then the body when in ST_BODY. 1 when something
 * was written, 0 not, -1 failed. */
static int s_flush(smtp_conn_t *c)
{
    int moved = 0;
    while (c->out_off < sbuf_len(c->out)) {
        ssize_t n = s_io_write(c, sbuf_data(c->out) + c->out_off, sbuf_len(c->out) - c->out_off);
        if (n < 0)
            return -1;
        if (n == 0)
            return moved;
        c->out_off += (size_t)n;
        moved = 1;
    }
    sbuf_reset(c->out);
    c->out_off = 0;
    if (c->state == ST_BODY) {
        while (c->body_off < sbuf_len(c->body)) {
            ssize_t n =
                s_io_write(c, sbuf_data(c->body) + c->body_off, sbuf_len(c->body) - c->body_off);
            if (n < 0)
                return -1;
            if (n == 0)
                return moved;
            c->body_off += (size_t)n;
            moved = 1;
            s_set_deadline(c, s_timeout(c->opts.data_timeout_ms, 180000));
        }
        c->state = ST_FINAL;
        s_set_deadline(c, s_timeout(c->opts.final_timeout_ms, 600000));
        moved = 1;
    }
    return moved;
}

/* ---- reply parsing ------------------------------------------------------ */

/* Cut one complete reply out of in into lines/nlines/reply_code.
 * 1 a reply is ready, 0 need more bytes, -1 the input is no reply: why
 * says so, and the caller fails the connection (s_early_reply, already
 * failing it, keeps its own reason). */
static int s_parse_reply(smtp_conn_t *c, char *why, size_t size)
{
    for (;;) {
        const char *data = sbuf_data(c->in);
        size_t len = sbuf_len(c->in);
        const char *nl = memchr(data, '\n', len);
        if (!nl) {
            if (len > SMTP_MAX_LINE) {
                snprintf(why, size, "reply line longer than %d bytes during %s", SMTP_MAX_LINE,
                         s_state_name[c->state]);
                return -1;
            }
            return 0;
        }
        size_t linelen = (size_t)(nl - data), used = linelen + 1;
        if (linelen > 0 && data[linelen - 1] == '\r')
            linelen--;
        if (linelen > SMTP_MAX_LINE) {
            snprintf(why, size, "reply line longer than %d bytes during %s", SMTP_MAX_LINE,
                     s_state_name[c->state]);
            return -1;
        }
        int ok = linelen >= 3 && data[0] >= '2' && data[0] <= '5' && data[1] >= '0' &&
                 data[1] <= '9' && data[2] >= '0' && data[2] <= '9' &&
                 (linelen == 3 || data[3] == ' ' || data[3] == '-');
        if (!ok) {
            sbuf_t *t = sbuf_new(80);
            if (t)
                s_sanitize_into(t, data, linelen < 60 ? linelen : 60);
            snprintf(why, size, "malformed reply during %s: \"%s\"", s_state_name[c->state],
                     t ? sbuf_data(t) : "");
            sbuf_destroy(&t);
            return -1;
        }
        int code = (data[0] - '0') * 100 + (data[1] - '0') * 10 + (data[2] - '0');
        if (c->nlines > 0 && code != c->reply_code) {
            snprintf(why, size, "inconsistent codes in a multi-line reply during %s",
                     s_state_name[c->state]);
            return -1;
        }
        c->reply_code = code;
        int last = linelen == 3 || data[3] == ' ';
        const char *text = linelen > 4 ? data + 4 : "";
        size_t tlen = linelen > 4 ? linelen - 4 : 0;
        if (sbuf_len(c->lines) + tlen + 1 > SMTP_MAX_REPLY) {
            snprintf(why, size, "reply longer than %d bytes during %s", SMTP_MAX_REPLY,
                     s_state_name[c->state]);
            return -1;
        }
        if (sbuf_append(c->lines, text, tlen) != 0 || sbuf_append(c->lines, "", 1) != 0) {
            snprintf(why, size, "out of memory");
            return -1;
        }
        c->nlines++;
        /* drop the consumed line from in */
        size_t rest = len - used;
        memmove((char *)sbuf_data(c->in), data + used, rest);
        sbuf_truncate(c->in, rest);
        if (last)
            return 1;
    }
}

static void s_reply_reset(smtp_conn_t *c)
{
    sbuf_reset(c->lines);
    c->nlines = 0;
    c->reply_code = 0;
}

/* Enhanced status code at the start of the reply's first line when its
 * class matches the reply code: copied to out, else out is "". Returns how
 * many bytes of text it took (with the following space). */
static size_t s_enhanced(const smtp_conn_t *c, char *out, size_t size)
{
    const char *t = sbuf_data(c->lines);
    out[0] = 0;
    if (t[0] != '0' + c->reply_code / 100 || t[1] != '.')
        return 0;
    size_t i = 2;
    for (int part = 0; part < 2; part++) { /* subject, then detail: 1-3 digits */
        size_t d = 0;
        while (t[i] >= '0' && t[i] <= '9' && d < 3)
            i++, d++;
        int end_ok = part == 0 ? t[i] == '.' : (t[i] == ' ' || t[i] == 0);
        if (d == 0 || !end_ok)
            return 0;
        if (part == 0)
            i++;
    }
    if (i >= size)
        return 0;
    memcpy(out, t, i);
    out[i] = 0;
    return t[i] == ' ' ? i + 1 : i;
}

/* The reply's text, lines joined by " ", into a new result. */
static void s_finish_reply(smtp_conn_t *c)
{
    char enh[16];
    size_t skip = s_enhanced(c, enh, sizeof enh);
    sbuf_t *t = sbuf_new(128);
    if (!t) {
        s_finish(c, c->reply_code, enh, NULL, 0, 0);
        return;
    }
    sbuf_appendf(t, "%d ", c->reply_code);
    const char *p = sbuf_data(c->lines), *end = p + sbuf_len(c->lines);
    for (int i = 0; p < end; p += strlen(p) + 1, i++) {
        if (i > 0)
            sbuf_append(t, " ", 1);
        sbuf_append_str(t, i == 0 ? p + skip : p);
    }
    s_finish(c, c->reply_code, enh, sbuf_data(t), sbuf_len(t), 0);
    sbuf_destroy(&t);
}

/* The connection fails while the body goes out (a reset, a hang-up, a
 * timeout): a server that refused the message early (552 too big, then a
 * reset) has answered, and that answer is the result rather than a code-0
 * deferral. Takes what the socket still holds (a plain one; a TLS session
 * that failed cannot be read), then a complete 4xx/5xx reply at the start
 * of in finishes the transaction. 1 when it did. */
static int s_early_reply(smtp_conn_t *c)
{
    if (!c->ssl && c->fd >= 0) {
        char buf[4096];
        ssize_t n;
        while (sbuf_len(c->in) < SMTP_MAX_IN &&
               (n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT)) > 0)
            if (sbuf_append(c->in, buf, (size_t)n) != 0)
                break;
    }
    char why[200];
    s_reply_reset(c);
    if (s_parse_reply(c, why, sizeof why) != 1 || c->reply_code < 400)
        return 0;
    s_finish_reply(c);
    return 1;
}

/* A reply ends the connection: the reason is the reply, sanitized. */
static void s_fail_reply(smtp_conn_t *c, const char *what)
{
    sbuf_t *t = sbuf_new(128);
    if (t) {
        const char *first = sbuf_data(c->lines);
        s_sanitize_into(t, first, strlen(first));
    }
    s_fail(c, c->reply_code, "%s: server said %d %s", what, c->reply_code, t ? sbuf_data(t) : "");
    sbuf_destroy(&t);
}

/* ---- session ------------------------------------------------------------ */

static void s_ehlo_parse(smtp_conn_t *c)
{
    c->ext_esmtp = 1;
    c->ext_pipelining = c->ext_8bitmime = c->ext_smtputf8 = c->ext_starttls = 0;
    c->ext_auth_plain = c->ext_auth_login = c->ext_size = 0;
    c->size_max = 0;
    const char *p = sbuf_data(c->lines), *end = p + sbuf_len(c->lines);
    p += strlen(p) + 1; /* the first line is the greeting text */
    for (; p < end; p += strlen(p) + 1) {
        size_t kw = strcspn(p, " =");
        if (kw == 10 && strncasecmp(p, "PIPELINING", kw) == 0)
            c->ext_pipelining = 1;
        else if (kw == 8 && strncasecmp(p, "8BITMIME", kw) == 0)
            c->ext_8bitmime = 1;
        else if (kw == 8 && strncasecmp(p, "SMTPUTF8", kw) == 0)
            c->ext_smtputf8 = 1;
        else if (kw == 8 && strncasecmp(p, "STARTTLS", kw) == 0)
            c->ext_starttls = 1;
        else if (kw == 4 && strncasecmp(p, "SIZE", kw) == 0) {
            c->ext_size = 1;
            if (p[kw] == ' ')
                c->size_max = strtoull(p + kw + 1, NULL, 10);
        } else if (kw == 4 && strncasecmp(p, "AUTH", kw) == 0) {
            for (const char *m = p + kw; *m;) {
                m += strspn(m, " =");
                size_t ml = strcspn(m, " ");
                if (ml == 5 && strncasecmp(m, "PLAIN", 5) == 0)
                    c->ext_auth_plain = 1;
                if (ml == 5 && strncasecmp(m, "LOGIN", 5) == 0)
                    c->ext_auth_login = 1;
                m += ml;
            }
        }
    }
}

static void s_send_ehlo(smtp_conn_t *c)
{
    c->state = ST_EHLO;
    s_set_deadline(c, s_cmd_timeout(c));
    s_queue(c, "EHLO %s", c->helo_name);
}

static char *s_b64(const char *p, size_t len)
{
    char *o = malloc(4 * ((len + 2) / 3) + 1);
    if (o)
        EVP_EncodeBlock((unsigned char *)o, (const unsigned char *)p, (int)len);
    return o;
}

/* After EHLO/HELO: STARTTLS, AUTH or IDLE, as policy and offers say. */
static void s_after_hello(smtp_conn_t *c)
{
    int need_tls = c->opts.tls == SMTP_TLS_REQUIRED || c->opts.tls_verify;
    if (!c->tls_active && c->opts.tls != SMTP_TLS_OFF && c->ext_starttls) {
        c->state = ST_STARTTLS;
        s_set_deadline(c, s_cmd_timeout(c));
        s_queue(c, "STARTTLS");
        return;
    }
    if (!c->tls_active && need_tls) {
        s_fail(c, 0, "TLS is required but the server does not offer STARTTLS");
        return;
    }
    if (c->auth_user && !c->authed) {
        if (!c->tls_active && !c->opts.auth_plaintext) {
            s_fail(c, 0, "refusing to send credentials without TLS");
            return;
        }
        if (c->ext_auth_plain) {
            size_t ul = strlen(c->auth_user), pl = strlen(c->auth_pass);
            char *raw = malloc(ul + pl + 2);
            char *b = NULL;
            if (raw) {
                raw[0] = 0;
                memcpy(raw + 1, c->auth_user, ul);
                raw[ul + 1] = 0;
                memcpy(raw + ul + 2, c->auth_pass, pl);
                b = s_b64(raw, ul + pl + 2);
                OPENSSL_cleanse(raw, ul + pl + 2);
                free(raw);
            }
            if (!b) {
                s_fail(c, 0, "out of memory");
                return;
            }
            c->state = ST_AUTH;
            s_set_deadline(c, s_cmd_timeout(c));
            s_queue(c, "AUTH PLAIN %s", b);
            OPENSSL_cleanse(b, strlen(b));
            free(b);
            return;
        }
        if (c->ext_auth_login) {
            c->state = ST_AUTH_USER;
            s_set_deadline(c, s_cmd_timeout(c));
            s_queue(c, "AUTH LOGIN");
            return;
        }
        s_fail(c, 0, "the server offers neither AUTH PLAIN nor AUTH LOGIN");
        return;
    }
    c->state = ST_IDLE;
    c->deadline = -1;
}

static int s_has_8bit(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] & 0x80)
            return 1;
    return 0;
}

/* 1 when the header section (up to the first empty line) has an 8-bit
 * byte. Callers' bodies are 7-bit, but a raw UTF-8 address in To, Cc,
 * From or Reply-To makes the header 8-bit, and that needs SMTPUTF8
 * (RFC 6532) even when every envelope address is ASCII. Line ends as
 * s_stuff reads them: CRLF, LF or CR. */
static int s_header_8bit(const char *p, size_t len)
{
    int bol = 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\r' || ch == '\n') {
            if (ch == '\r' && i + 1 < len && p[i + 1] == '\n')
                i++;
            if (bol)
                return 0;
            bol = 1;
            continue;
        }
        if (ch & 0x80)
            return 1;
        bol = 0;
    }
    return 0;
}

/* Queue the next transaction command (sent = how many are out already). */
static void s_txn_send_next(smtp_conn_t *c)
{
    size_t i = c->txn_sent;
    if (i == 0) {
        sbuf_t *params = sbuf_new(64);
        if (!params) {
            s_fail(c, 0, "out of memory");
            return;
        }
        if (c->ext_size)
            sbuf_appendf(params, " SIZE=%zu", sbuf_len(c->body));
        if (c->mail_params_8bit)
            sbuf_append_str(params, " BODY=8BITMIME");
        if (c->mail_params_utf8)
            sbuf_append_str(params, " SMTPUTF8");
        s_queue(c, "MAIL FROM:<%s>%s", c->mail_from, sbuf_data(params));
        sbuf_destroy(&params);
    } else if (i <= c->nrcpt) {
        s_queue(c, "RCPT TO:<%s>", c->rcpts[i - 1]);
    } else {
        s_queue(c, "DATA");
    }
    c->txn_sent++;
}

/* Next state after a result: RSET after failure, QUIT at the limit, else IDLE. */
static void s_after_txn(smtp_conn_t *c, int failed)
{
    if (c->opts.max_messages > 0 && c->messages >= c->opts.max_messages) {
        c->state = ST_QUIT;
        s_set_deadline(c, s_cmd_timeout(c));
        s_queue(c, "QUIT");
    } else if (failed) {
        c->state = ST_RSET;
        s_set_deadline(c, s_cmd_timeout(c));
        s_queue(c, "RSET");
    } else {
        c->state = ST_IDLE;
        c->deadline = -1;
    }
}

/* A reply that settles a command: 2xx, 4xx or 5xx. Anything else to
 * MAIL, RCPT or the final dot (or other than 354 to DATA) is a broken or
 * hostile peer; passed on as the result, a 2xx would record a message as
 * sent that was never written, so it fails the connection (code 0,
 * deferred) instead. */
static int s_final_class(int code)
{
    return code / 100 == 2 || code / 100 == 4 || code / 100 == 5;
}

/* One reply of the MAIL/RCPT/DATA sequence. */
static void s_on_txn_reply(smtp_conn_t *c)
{
    int code = c->reply_code;
    size_t k = c->txn_next++;
    if (k <= c->nrcpt && !s_final_class(code)) {
        s_fail(c, 0, "unexpected reply %d to %s", code, k == 0 ? "MAIL" : "RCPT");
        return;
    }
    if (k == 0) {
        c->mail_code = code;
        if (code < 200 || code >= 300) {
            s_finish_reply(c); /* the MAIL reply is the answer */
            c->txn_active = 1; /* still collecting the pipelined replies */
            c->result_state = 0;
        }
    } else if (k <= c->nrcpt) {
        c->result.rcpt_codes[k - 1] = code;
        if (code >= 200 && code < 300) {
            c->rcpt_ok++;
        } else if (c->mail_code >= 200 && c->mail_code < 300) {
            /* remember the first refusal, a 4xx over a 5xx (one to retry wins) */
            int prev = c->result.code;
            if (prev == 0 || (prev >= 500 && code < 500)) {
                s_finish_reply(c);
                c->txn_active = 1;
                c->result_state = 0;
            }
        }
    } else {
        /* DATA */
        int usable = c->mail_code >= 200 && c->mail_code < 300 && c->rcpt_ok > 0;
        if (code == 354 && usable) {
            c->state = ST_BODY;
            s_set_deadline(c, s_timeout(c->opts.data_timeout_ms, 180000));
            c->body_off = 0;
            return;
        }
        if (code == 354) {
            /* a server that takes DATA with no recipient: end it empty */
            c->state = ST_ABORT_DOT;
            s_set_deadline(c, s_timeout(c->opts.final_timeout_ms, 600000));
            s_queue(c, ".");
            return;
        }
        if (code < 400) {
            s_fail(c, 0, "unexpected reply %d to DATA", code);
            return;
        }
        if (usable)
            s_finish_reply(c); /* else the MAIL or RCPT refusal is the answer */
        c->txn_active = 0;
        c->result_state = 1;
        s_after_txn(c, 1);
        return;
    }
    if (!c->ext_pipelining) {
        /* lock-step: skip straight to DATA verdict when MAIL failed */
        if (k == 0 && (code < 200 || code >= 300)) {
            c->txn_active = 0;
            c->result_state = 1;
            s_after_txn(c, 1);
            return;
        }
        if (k == c->nrcpt && c->rcpt_ok == 0) {
            c->txn_active = 0;
            c->result_state = 1;
            s_after_txn(c, 1);
            return;
        }
        s_txn_send_next(c);
    }
    /* the next reply due: DATA's has its own (shorter) limit */
    s_set_deadline(c, c->txn_next == c->nrcpt + 1 ? s_timeout(c->opts.data_timeout_ms, 120000)
                                                  : s_cmd_timeout(c));
}

/* Dispatch one complete reply by state. */
static void s_on_reply(smtp_conn_t *c)
{
    int code = c->reply_code;
    if (code == 421 && c->state != ST_QUIT) {
        s_fail_reply(c, "the server is closing the connection");
        return;
    }
    switch (c->state) {
    case ST_GREETING:
        if (code != 220)
            s_fail_reply(c, "greeting refused");
        else
            s_send_ehlo(c);
        break;
    case ST_EHLO:
        if (code == 250) {
            s_ehlo_parse(c);
            s_after_hello(c);
        } else if (code >= 500) {
            c->state = ST_HELO;
            s_set_deadline(c, s_cmd_timeout(c));
            s_queue(c, "HELO %s", c->helo_name);
        } else {
            s_fail_reply(c, "EHLO refused");
        }
        break;
    case ST_HELO:
        if (code != 250) {
            s_fail_reply(c, "HELO refused");
            break;
        }
        c->ext_esmtp = 0;
        s_after_hello(c);
        break;
    case ST_STARTTLS:
        if (code == 220) {
            if (sbuf_len(c->in) > 0) {
                s_fail(c, 0, "the server sent data after its STARTTLS reply (injection?)");
                break;
            }
            s_tls_start(c);
        } else if (c->opts.tls == SMTP_TLS_REQUIRED || c->opts.tls_verify) {
            s_fail_reply(c, "STARTTLS refused and TLS is required");
        } else {
            c->ext_starttls = 0; /* go on in plain text */
            s_after_hello(c);
        }
        break;
    case ST_AUTH:
        if (code == 235) {
            c->authed = 1;
            s_after_hello(c);
        } else {
            s_fail_reply(c, "authentication failed");
        }
        break;
    case ST_AUTH_USER:
    case ST_AUTH_PASS: {
        if (code != 334) {
            s_fail_reply(c, "authentication failed");
            break;
        }
        const char *secret = c->state == ST_AUTH_USER ? c->auth_user : c->auth_pass;
        char *b = s_b64(secret, strlen(secret));
        if (!b) {
            s_fail(c, 0, "out of memory");
            break;
        }
        c->state = c->state == ST_AUTH_USER ? ST_AUTH_PASS : ST_AUTH;
        s_set_deadline(c, s_cmd_timeout(c));
        s_queue(c, "%s", b);
        OPENSSL_cleanse(b, strlen(b));
        free(b);
        break;
    }
    case ST_TXN:
        s_on_txn_reply(c);
        break;
    case ST_FINAL:
        if (!s_final_class(code)) {
            s_fail(c, 0, "unexpected reply %d to the end of data", code);
            break;
        }
        s_finish_reply(c);
        s_after_txn(c, code < 200 || code >= 300);
        break;
    case ST_ABORT_DOT:
        c->txn_active = 0;
        c->result_state = 1;
        s_after_txn(c, 1);
        break;
    case ST_RSET:
        if (code != 250) {
            s_fail_reply(c, "RSET refused");
            break;
        }
        c->state = ST_IDLE;
        c->deadline = -1;
        break;
    case ST_QUIT:
        s_close(c);
        break;
    case ST_IDLE:
        s_fail_reply(c, "unexpected reply while idle");
        break;
    default:
        s_fail(c, 0, "unexpected reply during %s", s_state_name[c->state]);
        break;
    }
}

/* ---- public ------------------------------------------------------------- */

smtp_conn_t *smtp_conn_new(const char *host, int port, const smtp_opts_t *opts, sbuf_t *err)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t sl;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (!host || port <= 0 || port > 65535) {
        sbuf_append_str(err, "smtp_conn_new: host and port 1-65535 are needed");
        return NULL;
    }
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        sl = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sl = sizeof *s6;
    } else {
        sbuf_append_str(err, "smtp_conn_new: host must be a numeric IPv4 or IPv6 address");
        return NULL;
    }
    smtp_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        sbuf_append_str(err, "smtp_conn_new: out of memory");
        return NULL;
    }
    c->fd = -1;
    if (opts)
        c->opts = *opts;
    c->host = strdup(host);
    c->helo_name = strdup(c->opts.helo_name ? c->opts.helo_name : "localhost");
    c->tls_name = s_strdup(c->opts.tls_name);
    c->tls_ca_file = s_strdup(c->opts.tls_ca_file);
    c->auth_user = s_strdup(c->opts.auth_user);
    c->auth_pass =
        s_strdup(c->opts.auth_user ? (c->opts.auth_pass ? c->opts.auth_pass : "") : NULL);
    c->opts.helo_name = c->opts.tls_name = c->opts.tls_ca_file = NULL;
    c->opts.auth_user = c->opts.auth_pass = NULL;
    c->in = sbuf_new(1024);
    c->out = sbuf_new(1024);
    c->body = sbuf_new(0);
    c->lines = sbuf_new(256);
    c->err = sbuf_new(128);
    if (!c->host || !c->helo_name || (opts && opts->tls_name && !c->tls_name) ||
        (opts && opts->tls_ca_file && !c->tls_ca_file) || !c->in || !c->out || !c->body ||
        !c->lines || !c->err || (c->auth_user && !c->auth_pass)) {
        sbuf_append_str(err, "smtp_conn_new: out of memory");
        smtp_conn_destroy(&c);
        return NULL;
    }
    if (strpbrk(c->helo_name, "\r\n") || (c->auth_user && strpbrk(c->auth_user, "\r\n"))) {
        sbuf_append_str(err, "smtp_conn_new: CR or LF in helo_name or auth_user");
        smtp_conn_destroy(&c);
        return NULL;
    }
    if (c->tls_ca_file && !(c->ctx = s_ctx_make(c->tls_ca_file))) {
        char eb[256];
        sbuf_appendf(err, "smtp_conn_new: cannot load tls_ca_file: %s", s_ssl_err(eb, sizeof eb));
        smtp_conn_destroy(&c);
        return NULL;
    }
    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        sbuf_appendf(err, "smtp_conn_new: socket: %s", strerror(errno));
        smtp_conn_destroy(&c);
        return NULL;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_CONNECTING;
    s_set_deadline(c, s_timeout(c->opts.connect_timeout_ms, 30000));
    if (connect(c->fd, (struct sockaddr *)&ss, sl) != 0 && errno != EINPROGRESS) {
        /* shown as CLOSED at the first step, like a refusal that comes later */
        s_fail(c, 0, "connect to %s port %d failed: %s", host, port, strerror(errno));
    }
    return c;
}

void smtp_conn_destroy(smtp_conn_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    smtp_conn_t *c = *self_p;
    s_close(c);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->auth_pass)
        OPENSSL_cleanse(c->auth_pass, strlen(c->auth_pass));
    free(c->host);
    free(c->helo_name);
    free(c->tls_name);
    free(c->tls_ca_file);
    free(c->auth_user);
    free(c->auth_pass);
    free(c->mail_from);
    for (size_t i = 0; i < c->nrcpt; i++)
        free(c->rcpts[i]);
    free(c->rcpts);
    smtp_result_clear(&c->result);
    sbuf_destroy(&c->in);
    sbuf_destroy(&c->out);
    sbuf_destroy(&c->body);
    sbuf_destroy(&c->lines);
    sbuf_destroy(&c->err);
    free(c);
    *self_p = NULL;
}

int smtp_conn_fd(const smtp_conn_t *self)
{
    return self->fd;
}

short smtp_conn_events(const smtp_conn_t *self)
{
    if (self->state == ST_CLOSED)
        return 0;
    if (self->state == ST_CONNECTING)
        return POLLOUT;
    short ev = POLLIN | self->want;
    /* the handshake says what it waits for; queued commands wait for it */
    if ((self->out_off < sbuf_len(self->out) && self->state != ST_HANDSHAKE) ||
        self->state == ST_BODY)
        ev |= POLLOUT;
    return ev;
}

int64_t smtp_conn_deadline(const smtp_conn_t *self)
{
    return self->deadline;
}

const char *smtp_conn_error(const smtp_conn_t *self)
{
    return sbuf_len(self->err) ? sbuf_data(self->err) : NULL;
}

int smtp_conn_error_code(const smtp_conn_t *self)
{
    return self->err_code;
}

int smtp_conn_tls_active(const smtp_conn_t *self)
{
    return self->tls_active;
}

int smtp_conn_messages(const smtp_conn_t *self)
{
    return self->messages;
}

/* Finish the non-blocking connect. */
static void s_step_connect(smtp_conn_t *c, short revents)
{
    if (!(revents & (POLLOUT | POLLERR | POLLHUP)))
        return;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        soerr = errno;
    if (soerr == EINPROGRESS)
        return;
    if (soerr) {
        s_fail(c, 0, "connect to %s failed: %s", c->host, strerror(soerr));
        return;
    }
    c->state = ST_GREETING;
    s_set_deadline(c, s_timeout(c->opts.greeting_timeout_ms, 300000));
}

static void s_step_handshake(smtp_conn_t *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->tls_active = 1;
        /* RFC 3207 4.2: forget everything learnt before TLS, ask again */
        s_send_ehlo(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->want |= e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return;
    }
    char eb[256];
    long vr = SSL_get_verify_result(c->ssl);
    if (c->opts.tls_verify && vr != X509_V_OK)
        s_fail(c, 0, "TLS certificate verification failed: %s", X509_verify_cert_error_string(vr));
    else
        s_fail(c, 0, "TLS handshake failed: %s", s_ssl_err(eb, sizeof eb));
}

int smtp_conn_step(smtp_conn_t *c, short revents)
{
    for (int guard = 0; guard < 1000; guard++) {
        if (c->result_state == 1) {
            c->result_state = 2;
            return SMTP_STEP_RESULT;
        }
        if (c->state == ST_CLOSED)
            return SMTP_STEP_CLOSED;
        s_state_t before = c->state;
        int moved = 0;
        if (c->state == ST_CONNECTING) {
            s_step_connect(c, revents);
            revents = 0;
            moved = c->state != before;
            if (!moved)
                break;
            continue;
        }
        c->want = 0;
        if (c->state == ST_HANDSHAKE) {
            s_step_handshake(c);
            if (c->state == ST_HANDSHAKE)
                break;
            continue;
        }
        int f = s_flush(c);
        if (f < 0)
            continue;
        moved |= f;
        ssize_t n = s_io_read(c);
        if (n < 0)
            continue;
        moved |= n > 0;
        /* replies are only due in states that sent something; but a reply
         * in IDLE (a 421 before the server hangs up) is read and handled */
        while (c->state != ST_CLOSED && c->state != ST_HANDSHAKE && c->state != ST_BODY &&
               c->result_state != 1) {
            char why[200];
            int r = s_parse_reply(c, why, sizeof why);
            if (r < 0)
                s_fail(c, 0, "%s", why);
            if (r <= 0)
                break;
            /* a reply read before its command was fully written answers
             * nothing we sent: a 220 to a STARTTLS still queued started
             * TLS with the command pending and spun on POLLOUT. Exceptions:
             * a pipelined group is answered in part while the rest goes
             * out, and 421 may come at any time. */
            if (c->out_off < sbuf_len(c->out) && c->reply_code != 421 &&
                !(c->state == ST_TXN && c->ext_pipelining)) {
                s_fail(c, 0, "reply %d before the %s command was sent", c->reply_code,
                       s_state_name[c->state]);
                break;
            }
            s_on_reply(c);
            s_reply_reset(c);
            moved = 1;
        }
        if (!moved && c->state == before)
            break;
    }
    if (c->result_state == 1) {
        c->result_state = 2;
        return SMTP_STEP_RESULT;
    }
    if (c->state == ST_CLOSED)
        return SMTP_STEP_CLOSED;
    if (c->deadline >= 0 && smtp_now_ms() >= c->deadline) {
        s_fail(c, 0, "timeout during %s with %s", s_state_name[c->state], c->host);
        return smtp_conn_step(c, 0);
    }
    return c->state == ST_IDLE && c->out_off >= sbuf_len(c->out) ? SMTP_STEP_IDLE : SMTP_STEP_AGAIN;
}

/* Copy data into body as SMTP wants it: CRLF line ends, a '.' doubled at
 * the start of a line, CRLF.CRLF at the end. */
static int s_stuff(sbuf_t *body, const char *p, size_t len)
{
    sbuf_reset(body);
    if (sbuf_reserve(body, len + len / 32 + 8) != 0)
        return -1;
    int bol = 1, rc = 0;
    size_t run = 0; /* start of the pending run of plain bytes */
    for (size_t i = 0; i < len && rc == 0; i++) {
        char ch = p[i];
        if (bol && ch == '.') {
            rc = sbuf_append(body, p + run, i - run);
            if (rc == 0)
                rc = sbuf_append(body, ".", 1);
            run = i;
        }
        bol = 0;
        if (ch == '\n' || ch == '\r') {
            rc = rc ? rc : sbuf_append(body, p + run, i - run);
            if (rc == 0)
                rc = sbuf_append(body, "\r\n", 2);
            if (ch == '\r' && i + 1 < len && p[i + 1] == '\n')
                i++;
            run = i + 1;
            bol = 1;
        }
    }
    if (rc == 0)
        rc = sbuf_append(body, p + run, len - run);
    if (rc == 0 && !bol)
        rc = sbuf_append(body, "\r\n", 2);
    if (rc == 0)
        rc = sbuf_append(body, ".\r\n", 3);
    return rc;
}

/* An envelope address we can put between <> on a command line. */
static int s_addr_ok(const char *a)
{
    for (const unsigned char *p = (const unsigned char *)a; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '<' || *p == '>')
            return 0;
    return strlen(a) < 1000;
}

static void s_txn_clear(smtp_conn_t *c)
{
    free(c->mail_from);
    c->mail_from = NULL;
    for (size_t i = 0; i < c->nrcpt; i++)
        free(c->rcpts[i]);
    free(c->rcpts);
    c->rcpts = NULL;
    c->nrcpt = 0;
    smtp_result_clear(&c->result);
    c->result_state = 0;
}

int smtp_conn_submit(smtp_conn_t *c, const char *mail_from, const char *const *rcpts, size_t nrcpt,
                     const char *data, size_t len, int smtputf8)
{
    if (!c || c->state != ST_IDLE || !mail_from || !rcpts || nrcpt == 0 || (!data && len))
        return -1;
    s_txn_clear(c);
    c->result.rcpt_codes = calloc(nrcpt, sizeof *c->result.rcpt_codes);
    c->rcpts = calloc(nrcpt, sizeof *c->rcpts);
    c->mail_from = strdup(mail_from);
    if (!c->result.rcpt_codes || !c->rcpts || !c->mail_from)
        goto oom;
    c->result.nrcpt = nrcpt;
    int bad = !s_addr_ok(mail_from), utf8 = smtputf8 || s_has_8bit(mail_from, strlen(mail_from));
    for (size_t i = 0; i < nrcpt; i++) {
        if (!rcpts[i] || !(c->rcpts[i] = strdup(rcpts[i])))
            goto oom;
        c->nrcpt = i + 1;
        bad |= !s_addr_ok(rcpts[i]);
        utf8 |= s_has_8bit(rcpts[i], strlen(rcpts[i]));
    }
    utf8 |= s_header_8bit(data ? data : "", len);
    c->txn_active = 1;
    if (bad) {
        const char *t = "address with control characters or angle brackets (refused locally)";
        s_finish(c, 553, "5.1.3", t, strlen(t), 1);
        c->result_state = 2;
        return SMTP_STEP_RESULT;
    }
    if (utf8 && !c->ext_smtputf8) {
        const char *t = "the message needs SMTPUTF8 and the server does not offer it";
        s_finish(c, 550, "5.6.7", t, strlen(t), 1);
        c->result_state = 2;
        return SMTP_STEP_RESULT;
    }
    if (s_stuff(c->body, data ? data : "", len) != 0)
        goto oom;
    if (c->size_max > 0 && sbuf_len(c->body) > c->size_max) {
        char t[160];
        snprintf(t, sizeof t, "message of %zu bytes exceeds the server's SIZE limit of %llu",
                 sbuf_len(c->body), c->size_max);
        s_finish(c, 552, "5.3.4", t, strlen(t), 1);
        c->result_state = 2;
        return SMTP_STEP_RESULT;
    }
    c->mail_params_8bit = c->ext_8bitmime && s_has_8bit(data ? data : "", len);
    c->mail_params_utf8 = utf8;
    c->txn_next = c->txn_sent = 0;
    c->mail_code = 0;
    c->rcpt_ok = 0;
    c->messages++;
    c->state = ST_TXN;
    if (c->ext_pipelining) {
        while (c->txn_sent < c->nrcpt + 2)
            s_txn_send_next(c);
    } else {
        s_txn_send_next(c);
    }
    s_set_deadline(c, s_cmd_timeout(c));
    return c->state == ST_CLOSED ? SMTP_STEP_RESULT : SMTP_STEP_AGAIN;
oom:
    c->txn_active = 0;
    s_txn_clear(c);
    return -1;
}

int smtp_conn_take_result(smtp_conn_t *c, smtp_result_t *out)
{
    if (!c || !out || c->result_state == 0 || c->txn_active)
        return -1;
    *out = c->result;
    memset(&c->result, 0, sizeof c->result);
    c->result_state = 0;
    return 0;
}

void smtp_result_clear(smtp_result_t *r)
{
    if (!r)
        return;
    free(r->text);
    free(r->rcpt_codes);
    memset(r, 0, sizeof *r);
}

void smtp_conn_quit(smtp_conn_t *c)
{
    if (!c || c->state == ST_CLOSED)
        return;
    if (c->state == ST_IDLE) {
        c->state = ST_QUIT;
        s_set_deadline(c, s_cmd_timeout(c));
        s_queue(c, "QUIT");
        return;
    }
    s_fail(c, 0, "connection closed by the client during %s", s_state_name[c->state]);
}
