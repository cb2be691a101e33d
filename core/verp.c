/*
 * verp - VERP tokens: row uuid + truncated HMAC-SHA256, in hex (see verp.h
 * for the layout and why).
 *
 * How it is used: actors/actor_mailer.c makes a token for each message it
 * hands to delivery; actors/inbound.c checks the token of every report that
 * comes back before it writes anything.
 *
 * What can go wrong: nothing from the peer reaches memory beyond its own
 * string: a token is checked for length and charset before it is decoded.
 * The subkey is derived per call (two short HMACs, far below the cost of
 * the SMTP work around it) and wiped after use, as is every MAC.
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "secretbox.h"
#include "verp.h"

/* Callers pass the parsed secret_key. */
_Static_assert(VERP_KEY_LEN == SECRETBOX_KEY_LEN, "verp key is secret_key");

#define S_UUID_LEN 16 /* uuid bytes */
static const char S_LABEL[] = "postchi verp v1"; /* subkey derivation label */

/* n bytes from 2n hex digits of hex (either case): 0, or -1. */
static int s_unhex(const char *hex, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = OPENSSL_hexchar2int((unsigned char)hex[2 * i]);
        int lo = OPENSSL_hexchar2int((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static void s_hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
}

/* The uuid's 16 bytes from its canonical text (8-4-4-4-12): 0, or -1. */
static int s_uuid_parse(const char *text, unsigned char uuid[S_UUID_LEN])
{
    static const size_t groups[] = {8, 4, 4, 4, 12};
    size_t k = 0;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        if (g > 0 && *text++ != '-')
            return -1;
        if (strnlen(text, groups[g]) < groups[g] || s_unhex(text, groups[g] / 2, uuid + k) != 0)
            return -1;
        text += groups[g];
        k += groups[g] / 2;
    }
    return *text == '\0' ? 0 : -1;
}

/* The first VERP_MAC_LEN bytes of HMAC(subkey, uuid) into mac: 0, or -1. */
static int s_mac(const unsigned char key[VERP_KEY_LEN], const unsigned char uuid[S_UUID_LEN],
                 unsigned char mac[VERP_MAC_LEN])
{
    unsigned char sub[EVP_MAX_MD_SIZE], full[EVP_MAX_MD_SIZE];
    unsigned int sublen = 0, fulllen = 0;
    int rc = -1;
    if (HMAC(EVP_sha256(), key, VERP_KEY_LEN, (const unsigned char *)S_LABEL, sizeof S_LABEL - 1,
             sub, &sublen) &&
        HMAC(EVP_sha256(), sub, (int)sublen, uuid, S_UUID_LEN, full, &fulllen) &&
        fulllen >= VERP_MAC_LEN) {
        memcpy(mac, full, VERP_MAC_LEN);
        rc = 0;
    }
    OPENSSL_cleanse(sub, sizeof sub);
    OPENSSL_cleanse(full, sizeof full);
    return rc;
}

int verp_token_make(const unsigned char key[VERP_KEY_LEN], const char *uuid_text, char *out,
                    size_t size)
{
    if (!out || size == 0)
        return -1;
    out[0] = '\0';
    unsigned char uuid[S_UUID_LEN], mac[VERP_MAC_LEN];
    if (!key || !uuid_text || size < VERP_TOKEN_LEN + 1 || s_uuid_parse(uuid_text, uuid) != 0 ||
        s_mac(key, uuid, mac) != 0)
        return -1;
    s_hex(uuid, S_UUID_LEN, out);
    s_hex(mac, VERP_MAC_LEN, out + 2 * S_UUID_LEN);
    out[VERP_TOKEN_LEN] = '\0';
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

int verp_token_check(const unsigned char key[VERP_KEY_LEN], const char *token,
                     char uuid_out[VERP_UUID_SIZE])
{
    if (uuid_out)
        uuid_out[0] = '\0';
    unsigned char uuid[S_UUID_LEN], got[VERP_MAC_LEN], want[VERP_MAC_LEN];
    if (!key || !token || !uuid_out || strnlen(token, VERP_TOKEN_LEN + 1) != VERP_TOKEN_LEN ||
        s_unhex(token, S_UUID_LEN, uuid) != 0 ||
        s_unhex(token + 2 * S_UUID_LEN, VERP_MAC_LEN, got) != 0 || s_mac(key, uuid, want) != 0)
        return -1;
    int ok = CRYPTO_memcmp(got, want, VERP_MAC_LEN) == 0;
    OPENSSL_cleanse(want, sizeof want);
    if (!ok)
        return -1;
    /* Canonical text: 8-4-4-4-12, lower case. */
    size_t j = 0;
    for (size_t i = 0; i < S_UUID_LEN; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            uuid_out[j++] = '-';
        s_hex(uuid + i, 1, uuid_out + j);
        j += 2;
    }
    uuid_out[j] = '\0';
    return 0;
}
