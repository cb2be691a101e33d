/*
 * verp - the token in a VERP return path ("bounces+<token>@<return path
 * domain>") that maps a bounce or a complaint back to its messages row, made
 * so that nobody without the server's secret_key can produce one.
 *
 * A token is 52 lower-case hex digits: the row's uuid (16 bytes, 32 digits)
 * followed by the first VERP_MAC_LEN bytes of HMAC-SHA256 over those 16
 * bytes, under a subkey HMAC-SHA256(secret_key, "postchi verp v1") (so the
 * secret_key's other use, secretbox, and this one never share a key). Hex
 * survives MTAs that change the case of a local part (checking accepts
 * either case) and keeps the row id readable in logs; "bounces+" and 52
 * digits are 60 bytes, inside the 64-byte local-part limit and the token
 * charset every VERP parser accepts ([A-Za-z0-9-], at most 64).
 *
 * Security note: without the MAC anyone who knew or guessed a message id
 * could send a DSN to its return path and get the recipient suppressed. An
 * 80-bit MAC makes forging one token take ~2^79 SMTP messages on average;
 * comparison is constant-time. A token says nothing the row id does not
 * (no tenant, no address). Changing secret_key, or mail sent before tokens
 * carried a MAC, makes old tokens fail the check: their bounces are dropped
 * as unknown.
 */
#ifndef POSTCHI_VERP_H
#define POSTCHI_VERP_H

#include <stddef.h>

#define VERP_KEY_LEN 32                        /* secret_key bytes (SECRETBOX_KEY_LEN) */
#define VERP_MAC_LEN 10                        /* HMAC bytes kept in a token */
#define VERP_TOKEN_LEN (2 * (16 + VERP_MAC_LEN)) /* token characters (52) */
#define VERP_UUID_SIZE 37                      /* canonical uuid text and its NUL */

/* The token for the row uuid_text (canonical 8-4-4-4-12 hex, either case)
 * under key (the parsed secret_key), NUL-terminated into out[size]. 0, or
 * -1 when an argument is NULL, uuid_text is not a uuid, size is below
 * VERP_TOKEN_LEN + 1 or the HMAC fails (out is then ""). */
int verp_token_make(const unsigned char key[VERP_KEY_LEN], const char *uuid_text, char *out,
                    size_t size);

/* 0 when token (any case) is one verp_token_make made under key: the row
 * uuid, canonical and lower case, goes to uuid_out[VERP_UUID_SIZE]. -1 for
 * anything else - wrong length, not hex, a MAC made under another key or
 * for another uuid, a NULL argument - and uuid_out (when not NULL) is "".
 * Token is untrusted input; the MAC is compared in constant time. */
int verp_token_check(const unsigned char key[VERP_KEY_LEN], const char *token,
                     char uuid_out[VERP_UUID_SIZE]);

#endif
