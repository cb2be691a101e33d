/*
 * smtp_fake_util - a small ESMTP server in threads: the one fake SMTP peer
 * of the integration tests, for what no SMTP server installable here
 * offers. smtp-sink has neither STARTTLS nor AUTH, and its faults stop at
 * refusals and hang-ups at a command; Postfix's smtpd would need a whole
 * Postfix instance plus a Cyrus SASL plugin and password database, and no
 * correct server sends a malformed reply on demand. Tests that need a
 * correct server and its refusals use smtp-sink; this fake is for
 * STARTTLS with a certificate the test makes, AUTH it checks, and the
 * faults below. Every connection gets its own thread, so a client keeping
 * one connection idle does not block the next.
 *
 * It speaks just enough: EHLO (PIPELINING, an AUTH line, STARTTLS when
 * offered and not yet on, any extra lines the test gives, 8BITMIME),
 * STARTTLS, AUTH PLAIN with an initial response and AUTH LOGIN with its two
 * prompts (checked against user/pass: 235 or 535; with no user every AUTH
 * gets 535), MAIL (530 before AUTH when auth is required), RCPT, DATA,
 * QUIT; anything else gets 250. What it saw is counted and recorded under
 * a mutex.
 *
 * Modes, each a fault no real server here produces on demand:
 *   SMTP_FAKE_NORMAL     the server above.
 *   SMTP_FAKE_GARBAGE    greets with a line that is not SMTP (it holds
 *                        control bytes) and hangs up.
 *   SMTP_FAKE_LONG_LINE  answers EHLO with a 10,000-byte reply line.
 *   SMTP_FAKE_DROP_DATA  hangs up once more than 20 bytes of a message
 *                        arrived, without a reply.
 *   SMTP_FAKE_REPLY      answers the command odd_at ("MAIL", "RCPT",
 *                        "DATA", or "." for the final dot) with odd_reply
 *                        instead (a 250 to DATA, a 354 to MAIL, a 554 to
 *                        MAIL); with odd_close it then hangs up (FIN, and
 *                        reads to EOF). DATA answered so is not data mode.
 *   SMTP_FAKE_FLOOD_BODY after its 354 stops reading and writes 'x' until
 *                        64 MiB went out or the client hung up (flooded
 *                        counts the bytes), then closes.
 *   SMTP_FAKE_EARLY_220  answers EHLO (with STARTTLS) and a 220 to a
 *                        STARTTLS not yet sent, in one write; then reads
 *                        and drops everything until EOF.
 *   SMTP_FAKE_EARLY_552  once more than 20 bytes of a message arrived,
 *                        answers 552 before the end of the data and hangs
 *                        up with the rest unread (a reset).
 *
 * With max_sessions set, in any mode, a connection beyond that many open
 * at once is greeted with a 421 and closed, as relays that cap
 * connections per client do (counted in refused).
 *
 * Test code: a peer that misbehaves just gets its connection closed.
 */
#ifndef POSTCHI_TEST_SMTP_FAKE_UTIL_H
#define POSTCHI_TEST_SMTP_FAKE_UTIL_H

#include <pthread.h>

#include "sbuf.h"

#define SMTP_FAKE_MAX_CONNS 32

typedef enum {
    SMTP_FAKE_NORMAL = 0, /* a small but correct ESMTP server */
    SMTP_FAKE_GARBAGE,    /* greeting is not SMTP, then a hang-up */
    SMTP_FAKE_LONG_LINE,  /* EHLO reply line of 10,000 bytes */
    SMTP_FAKE_DROP_DATA,  /* hangs up in the middle of a message */
    SMTP_FAKE_REPLY,      /* odd_reply to odd_at, then a hang-up when odd_close */
    SMTP_FAKE_FLOOD_BODY, /* floods the client after 354 */
    SMTP_FAKE_EARLY_220,  /* 220 to STARTTLS in the same write as the EHLO reply */
    SMTP_FAKE_EARLY_552   /* 552 in the middle of a message, then a reset */
} smtp_fake_mode_t;

typedef struct {
    /* set before smtp_fake_start (all may stay 0) */
    smtp_fake_mode_t mode;  /* behaviour */
    int offer_tls;          /* announce STARTTLS */
    const char *cert, *key; /* PEM files for STARTTLS */
    const char *user;       /* required AUTH user; NULL: no AUTH needed */
    const char *pass;       /* its password */
    const char *ehlo_auth;  /* the EHLO AUTH line; NULL: "250-AUTH PLAIN LOGIN\r\n" */
    const char *ehlo_extra; /* more EHLO lines ("250-SIZE 100\r\n") or NULL */
    const char *odd_at;     /* SMTP_FAKE_REPLY: the verb answered oddly, "." the final dot */
    const char *odd_reply;  /* its reply, CRLF included */
    int odd_close;          /* hang up after odd_reply */
    int max_sessions;       /* > 0: a connection past this many open at once gets
                               "421 4.7.0 too many connections" at the greeting */
    /* run state */
    int lfd;                              /* listening socket */
    int port;                             /* its 127.0.0.1 port */
    int stop[2];                          /* pipe: a byte stops accepting */
    pthread_t acceptor;                   /* accepting thread */
    pthread_t conns[SMTP_FAKE_MAX_CONNS]; /* one per connection */
    int nconns;                           /* started so far */
    pthread_mutex_t lock;                 /* guards what follows */
    int tls_ok;                           /* TLS handshakes that succeeded */
    int ehlo_tls;                         /* EHLO commands over TLS */
    int auth_ok;                          /* AUTH commands that matched user/pass */
    int auth_tries;                       /* AUTH commands of any kind */
    int messages;                         /* messages accepted */
    int max_per_conn;                     /* the most accepted on one connection */
    int active;                           /* connections open now */
    int max_active;                       /* the most open at once (refused ones not counted) */
    int refused;                          /* connections refused by max_sessions */
    long long flooded;                    /* bytes SMTP_FAKE_FLOOD_BODY got out */
    sbuf_t *data;                         /* every accepted message, concatenated */
    sbuf_t *mail;                         /* the last MAIL command line */
    sbuf_t *auth;                         /* the last AUTH's credentials as decoded: PLAIN
                                             "authzid:user:pass", LOGIN "login:user:pass" */
} smtp_fake_t;

/* Listen on a free 127.0.0.1 port and start accepting. 0 or -1. */
int smtp_fake_start(smtp_fake_t *f);
/* Stop accepting, wait for the connection threads (clients must have
 * closed or be closed by now: each thread ends at EOF), free. The counters
 * stay readable as plain fields (no thread is left); the texts are freed,
 * so read them with smtp_fake_text before. */
void smtp_fake_stop(smtp_fake_t *f);
/* A counter read under the lock. */
int smtp_fake_get(smtp_fake_t *f, const int *field);
/* A copy of a recorded text (mail, auth, data) taken under the lock;
 * caller owns the result (free() it). NULL when out of memory. */
char *smtp_fake_text(smtp_fake_t *f, sbuf_t *const *field);

#endif
