/*
 * email_addr - check and normalize one email address as a person typed it
 * (contacts, suppressions, list membership by email).
 *
 * What passes: local@domain after trimming surrounding spaces and tabs,
 * at most EMAIL_ADDR_MAX bytes. The local part is 1..64 bytes of RFC 5322
 * atext (letters, digits, !#$%&'*+-/=?^_`{|}~), dots between atoms, and
 * UTF-8 (RFC 6531) when it is valid. The domain has at least two labels of
 * 1..63 bytes each, made of ASCII letters, digits and hyphens (never first
 * or last in a label) or valid UTF-8 (IDN labels are kept as typed, never
 * converted to punycode). Quoted local parts ("a b"@x.org) and address
 * literals (a@[192.0.2.1]) are refused: real sign-ups do not use them and
 * they are how header-injection and parser-confusion attacks travel. CR, LF,
 * NUL and every other control character are refused anywhere.
 *
 * Normalizing lower-cases the ASCII letters of the domain only: the local
 * part is case-sensitive by the RFC, and the database compares lower(email)
 * for uniqueness anyway.
 */
#ifndef POSTCHI_EMAIL_ADDR_H
#define POSTCHI_EMAIL_ADDR_H

#include <stddef.h>

#define EMAIL_ADDR_MAX 254       /* whole address, bytes (RFC 5321 path limit) */
#define EMAIL_ADDR_LOCAL_MAX 64  /* local part, bytes */
#define EMAIL_ADDR_LABEL_MAX 63  /* one domain label, bytes */

/* Check in[0..len) (need not be NUL-terminated, may contain NULs, which are
 * refused) and write the normalized address, NUL-terminated, to out.
 * out_size of EMAIL_ADDR_MAX + 1 always suffices. Returns 0, or -1 with
 * *why (when why is not NULL) set to a short static reason such as
 * "missing @" or "domain has no dot"; out is then an empty string when
 * out_size > 0. */
int email_normalize(const char *in, size_t len, char *out, size_t out_size, const char **why);

#endif
