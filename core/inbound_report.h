/*
 * inbound_report - read one message received on the return path and say
 * whether it is a delivery status notification (RFC 3464 DSN), a complaint
 * (RFC 5965 ARF feedback report) or neither, with the fields the delivery
 * code needs to map it back to a message (VERP token, original Message-ID)
 * and to act on it (recipient, status, hard or not).
 *
 * What is understood:
 *  - multipart/report; report-type=delivery-status (or global-delivery-status,
 *    RFC 6533): the message/delivery-status part is read as its per-message
 *    block followed by per-recipient blocks. With several recipients the one
 *    reported is the first whose Action is "failed" with a 5.x.x status, else
 *    the first "failed", else the first block; n_recipients says how many
 *    blocks there were. (With VERP, one return path stands for one message
 *    and recipient, so several blocks are the exception.)
 *  - multipart/report; report-type=feedback-report: the message/feedback-report
 *    part (Feedback-Type, Original-Rcpt-To, Original-Mail-From).
 *  - the original message as message/rfc822 or text/rfc822-headers, for its
 *    Message-ID (and its Return-Path, a VERP candidate).
 *  - a legacy plain-text bounce (no multipart/report) only when it is clearly
 *    one: sent by MAILER-DAEMON or postmaster, and one body line holds both a
 *    5.x.x enhanced status and an <address>. It is then reported as a DSN with
 *    action "failed" and legacy = 1. Anything vaguer is kind NONE.
 *
 * VERP: the token is taken from the first of these that has the shape
 * "<verp_local>+<token>@<verp_domain>" by the one VERP address rule,
 * mime_verp_parse in core/mime.c (token of letters, digits, '-' and '_', at
 * most 64 of them here; local and domain compared case-insensitively; a
 * NULL verp_local or verp_domain matches any): the envelope recipient, the
 * ARF Original-Mail-From, the original message's Return-Path, the report's
 * own To: header. The token is only extracted here, not checked: whether it
 * is one we made is core/verp.h's question (verp_token_check). Every
 * candidate that has the shape is kept too (verp_candidates, at most
 * INBOUND_REPORT_MAX_CANDIDATES, the To: header giving at most one), so a
 * caller whose first candidate fails the check can try the next: a
 * feedback loop delivers to a fixed address, and the report's own fields
 * then carry the token.
 *
 * Every string field is NUL-terminated, truncated to fit (at a UTF-8 boundary)
 * and sanitized: no control characters, invalid UTF-8 replaced by '?', runs of
 * white space folded to one space. They can go to logs, JSON and SQL text as
 * they are. Message-IDs are stored without their angle brackets; recipient
 * addresses without "rfc822;" and without angle brackets; the diagnostic
 * without its "smtp;" type.
 *
 * What can go wrong: everything here is hostile input from anyone on the
 * Internet. Input over INBOUND_REPORT_MAX_BYTES, with more than
 * INBOUND_REPORT_MAX_HEADERS Content-Type headers (which bounds MIME nesting,
 * and with it GMime's recursion), with more than
 * INBOUND_REPORT_MAX_DASH_LINES lines starting with "--" or
 * INBOUND_REPORT_MAX_FIELD_LINES lines shaped like a header field, or with a
 * line longer than INBOUND_REPORT_MAX_LINE is refused before GMime sees it
 * (inbound_report_check): GMime builds the whole tree before anything is
 * walked, and a 10 MB message of empty parts or one-line headers costs it
 * seconds of CPU and gigabytes. A real report has a few dozen of each. At most
 * INBOUND_REPORT_MAX_PARTS parts are walked, no deeper than
 * INBOUND_REPORT_MAX_DEPTH, and at most INBOUND_REPORT_MAX_FIELDS bytes of a
 * status or feedback part are read.
 *
 * GMime (and glib under it) is initialized once per process on first use;
 * inbound_report_shutdown() releases it at exit (for leak checkers), after
 * which this module must not be used again.
 */
#ifndef POSTCHI_INBOUND_REPORT_H
#define POSTCHI_INBOUND_REPORT_H

#include <stddef.h>

#include "sbuf.h"

#define INBOUND_REPORT_MAX_BYTES (10u * 1024 * 1024) /* whole message */
#define INBOUND_REPORT_MAX_HEADERS 256               /* Content-Type headers in the raw bytes */
#define INBOUND_REPORT_MAX_LINE (1024u * 1024)       /* any one line, bytes */
#define INBOUND_REPORT_MAX_PARTS 100                 /* MIME parts walked */
#define INBOUND_REPORT_MAX_DEPTH 16                  /* MIME nesting walked */
#define INBOUND_REPORT_MAX_FIELDS (64u * 1024)       /* bytes of a status/feedback part read */
#define INBOUND_REPORT_MAX_DASH_LINES 2000           /* lines starting with "--" (boundary-like) */
#define INBOUND_REPORT_MAX_FIELD_LINES 20000         /* lines shaped like "Name:" (header-like) */
#define INBOUND_REPORT_MAX_CANDIDATES 4              /* VERP tokens kept, in the order above */

typedef enum { REPORT_NONE, REPORT_DSN, REPORT_ARF } report_kind_t;

typedef struct {
    report_kind_t kind;
    char verp_token[128];          /* from the envelope recipient (VERP) when given, else from the report */
    char verp_candidates[INBOUND_REPORT_MAX_CANDIDATES][128]; /* every candidate's token, that order */
    int n_candidates;              /* how many; verp_token is the first (or "" when none) */
    char original_message_id[256]; /* Message-ID of the original, without <> */
    char recipient[320];           /* Final-Recipient / Original-Recipient (DSN), or ARF Original-Rcpt-To */
    char action[16];               /* DSN: failed / delayed / delivered / relayed / expanded */
    char status[16];               /* DSN enhanced status "5.1.1" */
    char diagnostic[512];          /* Diagnostic-Code without its type, sanitized */
    char feedback_type[32];        /* ARF: abuse / fraud / virus / other / not-spam ... (lower case) */
    int hard;                      /* 1: DSN action failed with a 5.x.x status (suppress); ARF abuse (complaint) */
    int n_recipients;              /* DSN: per-recipient blocks seen (the reported one is described above) */
    int legacy;                    /* 1: a non-standard plain-text bounce, read by the heuristic above */
} inbound_report_t;

/* Parse raw[0..len) (a whole message as received on the return path; need
 * not be NUL-terminated, may hold NULs). envelope_rcpt (may be NULL) is the
 * RCPT TO address, with or without <>, used for VERP; verp_local and
 * verp_domain (each may be NULL: any) are our return-path local part and
 * domain. Returns 0 with *out filled (kind NONE when the message is neither a
 * DSN nor an ARF report), or -1 with a short reason appended to err (when not
 * NULL) when the input is refused (too large, too deeply nested, not a
 * message at all) or memory ran out; *out is then zeroed, kind NONE. */
int inbound_report_parse(const char *raw, size_t len, const char *envelope_rcpt, const char *verp_local,
                         const char *verp_domain, inbound_report_t *out, sbuf_t *err);

/* The cheap linear check inbound_report_parse runs before GMime: 0 when
 * raw[0..len) is within the limits above, else -1 with the reason ("message
 * too large", "line too long", "too many MIME parts", "too many header
 * lines") appended to err (when not NULL). A caller can run it on its own
 * to refuse such input outright instead of treating it as "not a report". */
int inbound_report_check(const char *raw, size_t len, sbuf_t *err);

/* Release GMime's global state (tests and leak checkers call it once at the
 * end). Idempotent; inbound_report_parse must not be called afterwards. */
void inbound_report_shutdown(void);

#endif
