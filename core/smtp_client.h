/*
 * smtp_client - a non-blocking SMTP client connection: a state machine the
 * caller drives from its own poll loop, so one thread can keep many
 * connections going at once and no thread is ever parked on a socket.
 *
 * How it is used:
 *
 *   c = smtp_conn_new("192.0.2.7", 25, &opts, err);   // starts the connect
 *   loop:
 *     pfd = {smtp_conn_fd(c), smtp_conn_events(c)}; poll(.., until smtp_conn_deadline(c))
 *     switch (smtp_conn_step(c, pfd.revents)) {        // revents 0 on a timeout
 *     case SMTP_STEP_IDLE:   smtp_conn_submit(c, from, rcpts, n, msg, len, 0) or smtp_conn_quit(c)
 *     case SMTP_STEP_RESULT: smtp_conn_take_result(c, &r) ... smtp_result_clear(&r)
 *     case SMTP_STEP_CLOSED: smtp_conn_error(c); smtp_conn_destroy(&c)
 *     case SMTP_STEP_AGAIN:  keep polling
 *     }
 *
 * The session: greeting, EHLO (HELO when EHLO gets a 5xx), STARTTLS when
 * asked for and offered (then EHLO again), AUTH PLAIN or LOGIN when
 * credentials are given, then IDLE. A transaction is MAIL FROM, RCPT TO for
 * each recipient, DATA and the dot-stuffed message; with PIPELINING all the
 * commands up to DATA go in one write (RFC 2920), else one at a time. Every
 * transaction that smtp_conn_submit accepts produces exactly one RESULT,
 * whatever happens to the connection (code 0 when the connection failed
 * under it: the caller defers). A failed transaction is followed by RSET;
 * after max_messages transactions the client sends QUIT and closes.
 *
 * Timeouts are RFC 5321 4.5.3.2's (greeting 5 min, MAIL/RCPT/other commands
 * 5 min, DATA 2 min, each data block 3 min, final dot 10 min) unless set
 * smaller; connect defaults to 30 s.
 *
 * What can go wrong: refused or slow connections, replies that are garbage,
 * over-long (a line over 4096 bytes, a reply over 64 KiB), or missing
 * (server closes mid-DATA): each ends the connection with a one-line error
 * and, mid-transaction, a code-0 result; never a crash or a hang past the
 * deadline. Locally refused transactions (message over the server's SIZE,
 * SMTPUTF8 needed but not offered, an address holding CR/LF) give a 5xx
 * result with result.local = 1 and leave the connection IDLE.
 *
 * Security: server text is sanitized (printable ASCII only) before it goes
 * into a result or an error. AUTH is refused on a connection without TLS
 * unless auth_plaintext is set (a loopback relay). Bytes the server sends
 * after its STARTTLS reply and before the handshake are treated as an
 * injection attempt and end the connection. Verified TLS checks the chain
 * against the system CAs (or tls_ca_file) and the name tls_name.
 *
 * A connection is used by one thread at a time.
 */
#ifndef POSTCHI_SMTP_CLIENT_H
#define POSTCHI_SMTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

typedef struct smtp_conn smtp_conn_t;

typedef enum {
    SMTP_TLS_OPPORTUNISTIC = 0, /* STARTTLS when offered, plain otherwise (the default) */
    SMTP_TLS_OFF,               /* never STARTTLS */
    SMTP_TLS_REQUIRED           /* close unless STARTTLS succeeds */
} smtp_tls_t;

typedef struct {
    const char *helo_name;   /* EHLO/HELO argument; NULL: "localhost" */
    smtp_tls_t tls;          /* STARTTLS policy */
    int tls_verify;          /* 1: verify chain and name (implies REQUIRED) */
    const char *tls_name;    /* name to verify and send as SNI (the MX host); NULL: host */
    const char *tls_ca_file; /* PEM trust anchors instead of the system's; NULL: system */
    const char *auth_user;   /* AUTH PLAIN (LOGIN when only that is offered); NULL: none */
    const char *auth_pass;   /* password for auth_user */
    int auth_plaintext;      /* 1: allow AUTH without TLS (loopback relay) */
    int connect_timeout_ms;  /* 0: 30 s */
    int greeting_timeout_ms; /* 0: 5 min */
    int command_timeout_ms;  /* EHLO, MAIL, RCPT, RSET, STARTTLS, AUTH, QUIT; 0: 5 min */
    int data_timeout_ms;     /* DATA reply and each data block; 0: 2 min and 3 min */
    int final_timeout_ms;    /* reply to the final dot; 0: 10 min */
    int max_messages;        /* transactions per connection before QUIT; 0: no limit */
} smtp_opts_t;

typedef struct {
    int code;          /* 250 accepted; 4xx deferred; 5xx bounced; 0 connection-level failure */
    char enhanced[16]; /* "5.1.1" when the server (or the client, when local) gave one, else "" */
    char *text;        /* sanitized server text or client reason; owned, never NULL after take */
    int *rcpt_codes;   /* RCPT reply per recipient, submit order; 0 when never answered; owned */
    size_t nrcpt;      /* entries in rcpt_codes */
    int local;         /* 1: decided by the client without asking the server */
} smtp_result_t;

enum {
    SMTP_STEP_AGAIN = 0, /* keep polling */
    SMTP_STEP_IDLE,      /* ready for smtp_conn_submit (or smtp_conn_quit) */
    SMTP_STEP_RESULT,    /* a transaction finished: smtp_conn_take_result, then step again */
    SMTP_STEP_CLOSED /* finished or failed: smtp_conn_error says why (NULL after a clean QUIT) */
};

/* Start a non-blocking connect to host (a numeric IPv4 or IPv6 address:
 * DNS is the caller's job, see mx.h) and port. opts is copied (strings
 * too). NULL with err set when host is not an address or no socket can be
 * made; a refused connect shows later as CLOSED. Caller destroys. */
smtp_conn_t *smtp_conn_new(const char *host, int port, const smtp_opts_t *opts, sbuf_t *err);
/* NULL-safe and idempotent; closes without QUIT; sets *self_p to NULL. */
void smtp_conn_destroy(smtp_conn_t **self_p);

/* The socket to poll (-1 once closed), and the events wanted now (POLLIN,
 * POLLOUT or both; 0 when closed). */
int smtp_conn_fd(const smtp_conn_t *self);
short smtp_conn_events(const smtp_conn_t *self);
/* Monotonic ms (CLOCK_MONOTONIC) when the current step times out; -1 for
 * none (IDLE: the caller decides how long to keep an idle connection). */
int64_t smtp_conn_deadline(const smtp_conn_t *self);
/* Monotonic clock in ms, the one deadlines use. */
int64_t smtp_now_ms(void);

/* Advance on readiness: revents from poll, or 0 when woken by the deadline
 * (safe to call any time). Does all the work that can be done without
 * blocking, then returns one of SMTP_STEP_*. RESULT is returned once per
 * transaction; call step again afterwards (it then goes on to RSET/IDLE/
 * QUIT). */
int smtp_conn_step(smtp_conn_t *self, short revents);

/* Start a transaction; only when IDLE. rcpts (nrcpt >= 1) and all strings
 * are copied; data is the whole message (lines ending CRLF or LF; the
 * client writes CRLF, dot-stuffs and adds the final CRLF.CRLF). smtputf8:
 * 1 when the envelope or headers need SMTPUTF8 (an 8-bit envelope address
 * or an 8-bit byte in the header section, up to the first empty line, turns
 * it on too). BODY=8BITMIME is sent when the message has 8-bit bytes and the
 * server offers it. Returns SMTP_STEP_AGAIN (sent: keep polling),
 * SMTP_STEP_RESULT (refused locally: take the result now; still IDLE), or
 * -1 when not IDLE or arguments are missing (programmer error) or memory
 * runs out. */
int smtp_conn_submit(smtp_conn_t *self, const char *mail_from, const char *const *rcpts,
                     size_t nrcpt, const char *data, size_t len, int smtputf8);

/* Move the finished transaction's result into *out (caller clears it with
 * smtp_result_clear): 0, or -1 when there is none. */
int smtp_conn_take_result(smtp_conn_t *self, smtp_result_t *out);
/* Free what a result owns and zero it; NULL-safe, idempotent. */
void smtp_result_clear(smtp_result_t *r);

/* Polite end: when IDLE, send QUIT and close after the reply (step until
 * CLOSED); otherwise close now (a transaction in flight gets a code-0
 * result). */
void smtp_conn_quit(smtp_conn_t *self);

/* Why the connection closed or failed (sanitized, one line), or NULL. */
const char *smtp_conn_error(const smtp_conn_t *self);
/* The server's reply code that ended the connection (e.g. 554 greeting,
 * 421), or 0 when it was not a reply (network, timeout, protocol, policy). */
int smtp_conn_error_code(const smtp_conn_t *self);
/* 1 when the session runs over TLS. */
int smtp_conn_tls_active(const smtp_conn_t *self);
/* Transactions submitted on this connection so far (local refusals excluded). */
int smtp_conn_messages(const smtp_conn_t *self);

#endif
