/*
 * unsub_token - the unforgeable name of one message row that a recipient
 * uses to unsubscribe (List-Unsubscribe, RFC 2369 / RFC 8058), and the one
 * statement that acts on it, shared by the HTTPS endpoint (api/unsubscribe.c)
 * and the mailto route (actors/inbound.c).
 *
 * A token is the row's uuid (16 bytes) followed by the first
 * UNSUB_TOKEN_MAC_LEN bytes of HMAC-SHA256(subkey, uuid), where subkey =
 * HMAC-SHA256(secret_key, "postchi unsubscribe v1"): a key of its own, so a
 * token can never double as anything else made with secret_key. The 26
 * bytes are written in lower-case RFC 4648 base32 without padding
 * (UNSUB_TOKEN_LEN characters, a-z and 2-7): safe in a URL path and in an
 * email local part ("unsubscribe+<token>@..."), and read back in either
 * case because MTAs may change a local part's case.
 *
 * Security: only a holder of secret_key can make a token; checking compares
 * the MAC in constant time, and the unused low bits of the last character
 * must be zero, so no two texts name the same row. Everything the unsubscribe
 * statement touches is keyed by the named row (its organization_id), never
 * by anything else the requester sends. A token does not expire: RFC 8058
 * wants the link to keep working, and rotating secret_key revokes them all.
 */
#ifndef POSTCHI_UNSUB_TOKEN_H
#define POSTCHI_UNSUB_TOKEN_H

#include <stddef.h>

#include "config.h"
#include "db.h"
#include "sbuf.h"

#define UNSUB_TOKEN_KEY_LEN 32 /* secret_key bytes (see secretbox.h) */
#define UNSUB_TOKEN_MAC_LEN 10 /* truncated HMAC bytes: 80 bits */
#define UNSUB_TOKEN_LEN 42     /* characters: ceil((16 + 10) * 8 / 5) */
#define UNSUB_LOCAL "unsubscribe" /* local part of the mailto address */
#define UNSUB_PATH "/api/v1/u/"   /* the endpoint's path, under public_url */

/* The token for the row whose canonical uuid text is uuid_text, into
 * out[UNSUB_TOKEN_LEN + 1]. 0, or -1 when uuid_text is not a uuid (out is
 * then ""). */
int unsub_token_make(const unsigned char key[UNSUB_TOKEN_KEY_LEN], const char *uuid_text,
                     char out[UNSUB_TOKEN_LEN + 1]);

/* When text (NUL-terminated, any case) is a token made with key, write the
 * row's uuid text (lower case) into uuid_out[37] and return 0; else -1
 * (wrong length, a character outside the alphabet, stray bits, or a MAC
 * that does not match), with uuid_out "". */
int unsub_token_check(const unsigned char key[UNSUB_TOKEN_KEY_LEN], const char *text,
                      char uuid_out[37]);

/* What unsub_token_apply found. */
typedef enum {
    UNSUB_NOT_FOUND = 0, /* bad token, or no such row (nothing written) */
    UNSUB_DONE = 1,      /* unsubscribed now, or already before */
    UNSUB_ERROR = -1     /* the database failed (nothing written): retry */
} unsub_result_t;

/* Unsubscribe the recipient of the row the token names, in one statement:
 * the row's contact (its contact_id, else the organization's contact with
 * the recipient's address) goes from 'subscribed' to 'unsubscribed' with an
 * events row 'unsubscribed' (the trigger outbox), a message_events row
 * 'unsubscribed' and an audit_log row (actor_type 'system'). With no contact
 * at all the address is suppressed instead (reason 'unsubscribe'). A
 * contact already not subscribed is left as it is and nothing is written, so
 * a repeat is harmless. via ("https" / "mailto") and ip (may be NULL) go
 * into the detail. On UNSUB_DONE, email (when not NULL) gets the recipient
 * address, org (when not NULL, >= 37 bytes) the row's organization, and
 * *event_id the events row written now or 0. */
unsub_result_t unsub_token_apply(db_t *db, const unsigned char key[UNSUB_TOKEN_KEY_LEN],
                                 const char *token, const char *via, const char *ip,
                                 sbuf_t *email, char *org, long long *event_id, sbuf_t *err);

/* Read-only: the recipient of the row the token names into email, and
 * whether its contact is still subscribed (*subscribed 1/0). Same results
 * as unsub_token_apply, never a write. */
unsub_result_t unsub_token_lookup(db_t *db, const unsigned char key[UNSUB_TOKEN_KEY_LEN],
                                  const char *token, sbuf_t *email, int *subscribed, sbuf_t *err);

/* The base URL recipients' links start with: the public_url setting
 * without trailing slashes, or "http://<api_bind>:<api_port>" when it is
 * empty. Caller frees. NULL with err naming the setting when public_url is
 * not an http:// or https:// URL with a host and no blanks, quotes,
 * brackets, commas, query or fragment (or out of memory). */
char *unsub_token_base_url(const config_t *cfg, sbuf_t *err);

#endif
