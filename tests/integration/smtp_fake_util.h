/*
 * smtp_fake_util - a small ESMTP server in threads, for the few tests that
 * need what no SMTP server installable here offers: STARTTLS with a
 * certificate the test makes, and AUTH it checks. (smtp-sink has neither;
 * Postfix's smtpd would need a whole Postfix instance plus a Cyrus SASL
 * plugin and password database.) Every connection gets its own thread, so
 * a client keeping one connection idle does not block the next.
 *
 * It speaks just enough: EHLO (PIPELINING, AUTH PLAIN LOGIN, STARTTLS when
 * offered and not yet on), STARTTLS, AUTH PLAIN (checked against
 * user/pass: 235 or 535), MAIL (530 before AUTH when auth is required),
 * RCPT, DATA, RSET, NOOP, QUIT. What it saw is counted under a mutex.
 */
#ifndef POSTCHI_TEST_SMTP_FAKE_UTIL_H
#define POSTCHI_TEST_SMTP_FAKE_UTIL_H

#include <pthread.h>

#include "sbuf.h"

#define SMTP_FAKE_MAX_CONNS 32

typedef struct {
    /* set before smtp_fake_start */
    int offer_tls;          /* announce STARTTLS */
    const char *cert, *key; /* PEM files for STARTTLS */
    const char *user;       /* required AUTH user; NULL: no AUTH needed */
    const char *pass;       /* its password */
    /* run state */
    int lfd;                                  /* listening socket */
    int port;                                 /* its 127.0.0.1 port */
    int stop[2];                              /* pipe: a byte stops accepting */
    pthread_t acceptor;                       /* accepting thread */
    pthread_t conns[SMTP_FAKE_MAX_CONNS];     /* one per connection */
    int nconns;                               /* started so far */
    pthread_mutex_t lock;                     /* guards what follows */
    int tls_ok;       /* TLS handshakes that succeeded */
    int auth_ok;      /* AUTH commands that matched user/pass */
    int auth_tries;   /* AUTH commands of any kind */
    int messages;     /* messages accepted */
    sbuf_t *data;     /* every accepted message, concatenated */
} smtp_fake_t;

/* Listen on a free 127.0.0.1 port and start accepting. 0 or -1. */
int smtp_fake_start(smtp_fake_t *f);
/* Stop accepting, wait for the connection threads (clients must have
 * closed or be closed by now: each thread ends at EOF), free. */
void smtp_fake_stop(smtp_fake_t *f);
/* A counter read under the lock. */
int smtp_fake_get(smtp_fake_t *f, const int *field);

#endif
