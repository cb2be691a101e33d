/*
 * envelope - the versioned msgpack frame every process speaks.
 *
 * A frame is one ZeroMQ message holding a msgpack array of exactly 7 items:
 *   [version:uint, type:uint, target:str, sender:str, name:str, corr:uint, body:bin]
 * - version  ENVELOPE_VERSION; a frame of another version is refused.
 * - type     the frame kind (msg_type_t), what the broker acts on.
 * - target   address "kind/key" of an actor, or "node/<id>" of a process.
 * - sender   address replies go to ("node/<id>" for clients, or an actor).
 * - name     the application message ("ping", "list_added"), may be empty.
 * - corr     correlation id; 0 for one-way sends, else copied into the reply.
 * - body     opaque bytes (usually msgpack), never decoded by the broker.
 *
 * Decoding is zero-copy: the decoded envelope points into the frame, so the
 * frame must outlive it. The decoder is written for hostile input: it checks
 * every length against the bytes left, refuses truncated, oversized,
 * trailing-garbage and wrongly typed frames, and never allocates.
 */
#ifndef POSTCHI_ENVELOPE_H
#define POSTCHI_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "sbuf.h"

#define ENVELOPE_VERSION 1
/* Longest target, sender or name; addresses are short by design. */
#define ENVELOPE_ADDR_MAX 255

typedef enum {
    MSG_HELLO = 1,     /* peer -> broker: join. body: hello map (see below) */
    MSG_HEARTBEAT = 2, /* both ways. From a peer its body is the hello map too,
                          so a restarted broker relearns peers from beats. */
    MSG_BYE = 3,       /* peer -> broker: leaving cleanly */
    MSG_SEND = 4,      /* to an actor: one-way (corr 0) or a request */
    MSG_REPLY = 5,     /* answer to a request; target is the request's sender */
    MSG_ERROR = 6,     /* delivery failed; target is the original sender, corr
                          copied, body: error map (see below) */
    MSG_TYPE_MAX = 6
} msg_type_t;

typedef struct {
    uint32_t version;   /* ENVELOPE_VERSION when encoding */
    uint32_t type;      /* msg_type_t */
    const char *target; /* not NUL-terminated when decoded: use the lengths */
    size_t target_len;
    const char *sender;
    size_t sender_len;
    const char *name;
    size_t name_len;
    uint64_t corr;
    const void *body;
    size_t body_len;
} envelope_t;

/* Append the encoded frame to out. 0, or -1 when a field is too long or
 * memory runs out (out is then left as it was). */
int envelope_encode(const envelope_t *env, sbuf_t *out);

/* Decode frame into *env (pointers into frame). max_bytes bounds the whole
 * frame. 0, or -1 with *why set to a static reason ("truncated",
 * "too large", "bad version", "bad type", "not an envelope", ...). */
int envelope_decode(const void *frame, size_t len, size_t max_bytes, envelope_t *env,
                    const char **why);

/* Body helpers, msgpack maps with string keys. */
/* hello: {"role": "worker"|"client", "capacity": uint} */
int envelope_hello_encode(sbuf_t *out, const char *role, uint32_t capacity);
/* role copied into role_buf (NUL-terminated, cut to role_size - 1). */
int envelope_hello_decode(const void *body, size_t len, char *role_buf, size_t role_size,
                          uint32_t *capacity);
/* error: {"code": str, "reason": str} */
int envelope_error_encode(sbuf_t *out, const char *code, const char *reason);
int envelope_error_decode(const void *body, size_t len, char *code_buf, size_t code_size,
                          char *reason_buf, size_t reason_size);

/* Split "kind/key" at the first '/': 0 with the parts, or -1 when there is
 * no '/', the kind or key is empty, or the address is longer than
 * ENVELOPE_ADDR_MAX. */
int envelope_addr_split(const char *addr, size_t len, const char **kind, size_t *kind_len,
                        const char **key, size_t *key_len);

#endif
