/*
 * inbound - the return-path SMTP listener: MTAs deliver bounces (RFC 3464
 * DSNs) and complaint reports (RFC 5965 ARF) for our VERP addresses
 * ("bounces+<token>@<return path host>") here, and each one updates the
 * message it is about, its contact and the organization's suppressions.
 *
 * One thread per worker runs poll() over the listening socket and every
 * client; after the final dot it parses the message and hands the database
 * work to a second thread with its own PostgreSQL session, so a slow or
 * locked statement never holds up the other sessions. The session waits
 * for the result: 250 only once the work committed, 451 when PostgreSQL
 * failed or timed out (the sending MTA keeps the report and retries), 451
 * at once when INBOUND_DB_QUEUE reports already wait.
 *
 * What can go wrong: every byte here comes from anyone on the Internet.
 * Sessions are bounded (INBOUND_MAX_CONNS, INBOUND_MAX_PER_CLIENT,
 * INBOUND_MAX_MESSAGE bytes, INBOUND_MAX_BUFFERED bytes of DATA across all
 * sessions, INBOUND_MAX_LINE per command line, INBOUND_IDLE_MS of silence,
 * INBOUND_MAX_RCPTS, INBOUND_MAX_ERRORS bad commands); past a bound a
 * client gets an SMTP error or is disconnected, never more memory. A VERP
 * recipient whose token fails its MAC is refused at RCPT, so only mail for
 * our own messages (or to the feedback-loop address) is ever parsed. A
 * verified token alone selects the message row; the report's own addresses
 * are never used to pick an organization.
 */
#ifndef POSTCHI_INBOUND_H
#define POSTCHI_INBOUND_H

#include "config.h"
#include "sbuf.h"

#define INBOUND_MAX_CONNS 256                   /* sessions at once; more get 421 */
#define INBOUND_MAX_MESSAGE (10u * 1024 * 1024) /* DATA bytes after unstuffing (SIZE) */
#define INBOUND_MAX_LINE 1000                   /* command line, CRLF included (RFC 5321) */
#define INBOUND_IDLE_MS 60000                   /* silence before a session is closed */
#define INBOUND_MAX_RCPTS 100                   /* RCPT TO per transaction */
#define INBOUND_MAX_ERRORS 20                   /* bad commands before 421 and close */
#define INBOUND_MAX_PER_CLIENT 8                /* sessions at once from one IPv4 address or IPv6 /64 */
#define INBOUND_MAX_BUFFERED (32u * 1024 * 1024) /* DATA bytes held across all sessions */
#define INBOUND_DB_QUEUE 32                     /* reports waiting for the database; more get 451 */
#define INBOUND_DB_WAIT_MS 60000                /* longest wait for the database, then 451 */

typedef struct inbound inbound_t;

/* Register the listener's metrics (always, so they are exported even when
 * it is off) and, when cfg's inbound_port > 0, bind inbound_bind:inbound_port
 * and start the thread. The thread connects to PostgreSQL (cfg's pg_*
 * settings) when a report needs it. Returns an instance (caller stops it
 * with inbound_stop), or NULL with err set when the socket or the thread
 * cannot be made. */
inbound_t *inbound_start(const config_t *cfg, sbuf_t *err);
/* Stop both threads (a report being recorded finishes first, the queued
 * ones are abandoned unanswered), close every session and free everything.
 * NULL-safe, idempotent, sets *self_p NULL. */
void inbound_stop(inbound_t **self_p);
#endif
