/*
 * mime - build one RFC 5322 / MIME message (headers and body) from the
 * fields of a send request, ready for DKIM signing and SMTP DATA.
 *
 * Shape of the body: text only or html only -> a single part; html + text ->
 * multipart/alternative; inline images (parts with a content_id) ->
 * multipart/related[html, images] (inside the alternative when there is a
 * text part: alternative[text, related[html, images]]); attachments ->
 * multipart/mixed[everything above, attachments].
 *
 * Output is 7bit-clean with CRLF line ends and no line over 998 octets:
 * text parts are sent as 7bit when they already are, quoted-printable when
 * they need it, base64 when QP would be clearly (over 25%) larger;
 * attachments are base64.
 * Non-ASCII Subject, display names and custom header values become RFC 2047
 * encoded words (never splitting a UTF-8 sequence); non-ASCII attachment
 * names use RFC 2231. Header lines are folded at 78 where possible.
 * Boundaries are random and checked not to occur in what they enclose.
 *
 * Addresses are written as given: a UTF-8 address (RFC 6531) makes the
 * header section 8-bit, and the SMTP client must then use SMTPUTF8. A
 * generated Message-ID takes From's domain in its ASCII (punycode) form.
 *
 * Reply-To: reply_to (one address) or reply_to_list (nreply_to of them,
 * all written), not both.
 *
 * With no To and no Cc (a Bcc-only send) the message has no To field.
 *
 * Security: every header input is refused when it holds CR, LF or NUL, is
 * not valid UTF-8 or is longer than MIME_HEADER_VALUE_MAX; custom headers
 * may not set the structural fields this module owns. Error texts never
 * quote the input.
 */
#ifndef POSTCHI_MIME_H
#define POSTCHI_MIME_H

#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

#define MIME_HEADER_VALUE_MAX 2048 /* bytes of one header input */
#define MIME_RECIPIENTS_MAX 1000   /* To + Cc addresses in one message */
#define MIME_HEADERS_MAX 100       /* custom headers in one message */
#define MIME_MESSAGE_ID_MAX 256    /* bytes for message_id_out, with the NUL */

typedef struct {
    const char *name;  /* field name, checked by mime_custom_header_ok */
    const char *value; /* UTF-8 value, checked by mime_header_value_ok */
} mime_header_t;

typedef struct {
    const char *filename;     /* attachment name (RFC 2231 when non-ASCII); may be NULL */
    const char *content_type; /* see mime_attachment_type_ok; NULL = octet-stream */
    const void *data;         /* raw bytes (the API decodes base64 before) */
    size_t len;               /* bytes at data */
    const char *content_id;   /* non-NULL: inline image for cid:<id> (multipart/related) */
} mime_part_t;

typedef struct {
    const char *from_name, *from_addr;   /* From (from_name may be NULL) */
    const char *const *to;               /* each a bare address or "Name <addr>" */
    size_t nto;                          /* entries in to */
    const char *const *cc;               /* same form as to */
    size_t ncc;                          /* entries in cc */
    const char *reply_to;                /* one Reply-To, or NULL; same form as to */
    const char *const *reply_to_list;    /* Reply-To with several addresses (or one) */
    size_t nreply_to;                    /* entries in reply_to_list (0: none, or reply_to) */
    const char *subject;                 /* UTF-8; NULL or "" = no Subject */
    const char *html, *text;             /* either or both (NULL = absent) */
    const mime_header_t *headers;        /* custom headers (X-..., etc.) */
    size_t nheaders;                     /* entries in headers */
    const mime_part_t *attachments;      /* attachments and inline images */
    size_t nattachments;                 /* entries in attachments */
    const char *message_id;              /* full "<...@domain>" or NULL to generate one */
    const char *message_id_domain;       /* domain for a generated Message-ID (NULL = From's) */
    const char *list_unsubscribe_mailto; /* NULL or mailto address ("mailto:" optional) */
    const char *list_unsubscribe_url; /* NULL or https URL: adds List-Unsubscribe-Post (RFC 8058) */
    int64_t date;                     /* unix seconds for Date: */
} mime_msg_t;

/* Build the message (headers + body), appending it to out. message_id_out
 * (NULL, or at least MIME_MESSAGE_ID_MAX bytes) gets the Message-ID used,
 * angle brackets included. Returns 0, or -1 with a reason appended to err
 * (when not NULL): a header value with CR or LF, a bad address, header name
 * or content type, no body at all, more than MIME_RECIPIENTS_MAX recipients,
 * inline images without html, out of memory. On failure out is exactly as it
 * was (never a partial message). */
int mime_build(const mime_msg_t *m, sbuf_t *out, char *message_id_out, sbuf_t *err);

/* The body half of a message: its top-level Content-* fields and
 * everything after the header section, built from m's html, text and
 * attachments only. Every recipient of a send gets the same body, so a
 * mailer builds it once per send and puts it under each recipient's own
 * header section (mime_build_with_body); mime_build is the two in one. */
typedef struct mime_body mime_body_t;

/* NULL with err for what mime_build refuses in a body (no body at all,
 * inline images without html, a bad attachment, out of memory). */
mime_body_t *mime_body_new(const mime_msg_t *m, sbuf_t *err);
/* NULL-safe and idempotent; sets *self_p to NULL. */
void mime_body_destroy(mime_body_t **self_p);
/* Bytes the body adds to a message (0 for NULL). */
size_t mime_body_size(const mime_body_t *self);
/* The bytes after the header section (what DKIM's bh= covers); *len set. */
const char *mime_body_data(const mime_body_t *self, size_t *len);
/* mime_build with m's header fields (its html, text and attachments are
 * not looked at) over body. Same results and guarantees as mime_build. */
int mime_build_with_body(const mime_msg_t *m, const mime_body_t *body, sbuf_t *out,
                         char *message_id_out, sbuf_t *err);

/* 1 when v is acceptable as a header value (no CR, LF or NUL, valid UTF-8,
 * <= MIME_HEADER_VALUE_MAX bytes), else 0. NULL is not acceptable. */
int mime_header_value_ok(const char *v);

/* 1 when name is a valid header field name (RFC 5322 ftext, 1..76 bytes)
 * that the user may set; 0 for the structural ones we own: From, To, Cc,
 * Bcc, Subject, Date, Message-ID, MIME-Version, Content-*, DKIM-Signature,
 * Return-Path, Received, Reply-To, Sender, List-Unsubscribe*. */
int mime_custom_header_ok(const char *name);

/* 1 when ct is a content type mime_build takes for an attachment: RFC 2045
 * type "/" subtype (tokens) then any number of "; attribute=value" with
 * value a token or a quoted-string (blanks allowed around ";" and "="; no
 * comments; printable ASCII only; no attribute twice), at most 255 bytes,
 * and not a multipart or message type (those cannot be base64 leaves). The
 * part's Content-Type carries the parameters as written; the builder adds
 * only name= from the filename, and not when ct has a name (or name*)
 * parameter. The API asks before accepting a send, so a send is never
 * refused later. */
int mime_attachment_type_ok(const char *ct);

/* 1 when cid is a Content-ID mime_build takes: 1..200 printable ASCII
 * characters, none of them a blank or one of < > " \ ( ) , ; : [ ]. */
int mime_content_id_ok(const char *cid);

/* VERP return path for a message: "<local>+<token>@<domain>" where token
 * identifies the message (letters, digits, '-' and '_' only). Caller owns
 * the result (free it); NULL when an input is invalid or memory runs out. */
char *mime_verp(const char *local, const char *token, const char *domain);

/* The inverse: when addr (optionally in angle brackets) is
 * "<local>+<token>@<domain>" (local and domain compared case-insensitively,
 * since some MTAs change case), copy token NUL-terminated into token[size]
 * and return 0; else -1 (not ours, bad token, or it does not fit). */
int mime_verp_parse(const char *addr, const char *local, const char *domain, char *token,
                    size_t size);

#endif
