/*
 * authn - credentials: login tokens (JWT, HS256 only), password hashes
 * (Argon2id), and API keys.
 *
 * API keys look like "pk_<prefix>_<secret>": prefix is 12 lower-case
 * base32 characters (public, unique, the lookup key), secret 32 more
 * (160 bits of randomness, never stored). The database keeps only the
 * SHA-256 of the whole key, hex: a key has full entropy, so a slow hash
 * would add nothing but latency on every request.
 *
 * Security: JWT verification accepts only {"alg":"HS256","typ":"JWT"}
 * headers (any other alg, "none" included, is refused), compares MACs in
 * constant time, and requires exp (not past), iat, iss (= configured) and
 * sub. Secrets are wiped from memory when freed.
 */
#ifndef POSTCHI_AUTHN_H
#define POSTCHI_AUTHN_H

#include <stddef.h>
#include <stdint.h>

#define AUTHN_ID_MAX 64      /* uuid text + NUL fits */
#define AUTHN_PREFIX_LEN 12  /* characters of the public key prefix */
#define AUTHN_HASH_HEX 65    /* SHA-256 hex + NUL */

/* A signed token for user_id in org_id, valid ttl_s seconds from now.
 * Caller owns *token (free()). 0 or -1. */
int authn_jwt_issue(const char *secret, const char *issuer, int64_t ttl_s, const char *user_id,
                    const char *org_id, char **token);
/* Verify token: 0 with user_id and org_id filled (each AUTHN_ID_MAX), or
 * -1 with *why set to a short static reason ("expired", "bad signature",
 * "unsupported algorithm", "malformed", "wrong issuer"). */
int authn_jwt_verify(const char *secret, const char *issuer, const char *token, char *user_id,
                     char *org_id, const char **why);

/* Argon2id hash in the PHC string format. Caller owns *hash. 0 or -1. */
int authn_password_hash(const char *password, char **hash);
/* 1 when password matches hash, 0 when not, -1 when hash is malformed. */
int authn_password_verify(const char *hash, const char *password);

/* A new API key: *key (caller owns, shown to the user once), prefix
 * (AUTHN_PREFIX_LEN + 1) and the hex hash to store (AUTHN_HASH_HEX). */
int authn_key_generate(char **key, char *prefix, char *hash_hex);
/* 0 when token has the API-key shape, with its prefix and hash; -1 when
 * it is not an API key (then try it as a JWT). */
int authn_key_parse(const char *token, char *prefix, char *hash_hex);

/* n random bytes as lower-case hex into out (2n + 1). 0 or -1. */
int authn_random_hex(char *out, size_t n);

#endif
