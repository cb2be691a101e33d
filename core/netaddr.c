/*
 * netaddr - public-destination checks for outbound requests (see
 * netaddr.h for the contract).
 *
 * How: the special-purpose blocks are rows of two tables (IANA's IPv4 and
 * IPv6 special-purpose registries, RFC 6890 and successors, plus multicast
 * and the documentation ranges), matched by prefix; the first match
 * decides. IPv6 forms that carry an IPv4 address are unwrapped first and
 * judged by it. Outside 2000::/3 no IPv6 address is global unicast today,
 * so everything there is reserved: a block allocated later is refused
 * until this table learns it, which fails safe.
 *
 * What can go wrong: nothing at run time (no allocation, no I/O). Missing
 * a block would let a request reach it; the unit test walks each row and
 * each spelling.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "netaddr.h"

/* One special-purpose block. */
typedef struct {
    unsigned char prefix[16]; /* network order; IPv4 uses the first 4 */
    int bits;                 /* prefix length */
    netaddr_class_t cls;      /* what an address in it is */
} block_t;

/* First match wins: 255.255.255.255 before 240/4. */
static const block_t V4_BLOCKS[] = {
    {{0}, 8, NETADDR_UNSPECIFIED},   /* "this network" */
    {{10}, 8, NETADDR_PRIVATE},      /* RFC 1918 */
    {{100, 64}, 10, NETADDR_SHARED}, /* RFC 6598 */
    {{127}, 8, NETADDR_LOOPBACK},
    {{169, 254}, 16, NETADDR_LINK_LOCAL},        /* cloud metadata lives here */
    {{172, 16}, 12, NETADDR_PRIVATE},            /* RFC 1918 */
    {{192, 0, 0}, 24, NETADDR_RESERVED},         /* IETF protocol assignments */
    {{192, 0, 2}, 24, NETADDR_DOCUMENTATION},    /* TEST-NET-1 */
    {{192, 88, 99}, 24, NETADDR_RESERVED},       /* 6to4 relay anycast */
    {{192, 168}, 16, NETADDR_PRIVATE},           /* RFC 1918 */
    {{198, 18}, 15, NETADDR_RESERVED},           /* benchmarking */
    {{198, 51, 100}, 24, NETADDR_DOCUMENTATION}, /* TEST-NET-2 */
    {{203, 0, 113}, 24, NETADDR_DOCUMENTATION},  /* TEST-NET-3 */
    {{224}, 4, NETADDR_MULTICAST},
    {{255, 255, 255, 255}, 32, NETADDR_BROADCAST}, /* limited broadcast */
    {{240}, 4, NETADDR_RESERVED},                  /* future use */
};

/* Checked after the forms that carry IPv4 are unwrapped. */
static const block_t V6_BLOCKS[] = {
    {{0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48, NETADDR_PRIVATE}, /* NAT64 local use */
    {{0x01, 0x00}, 64, NETADDR_RESERVED},                        /* discard-only */
    {{0x20, 0x01, 0x0d, 0xb8}, 32, NETADDR_DOCUMENTATION},
    {{0x20, 0x01}, 23, NETADDR_RESERVED},      /* IETF: Teredo, ORCHID, ... */
    {{0x3f, 0xff}, 20, NETADDR_DOCUMENTATION}, /* RFC 9637 */
    {{0xfc}, 7, NETADDR_PRIVATE},              /* unique local */
    {{0xfe, 0x80}, 10, NETADDR_LINK_LOCAL},
    {{0xfe, 0xc0}, 10, NETADDR_RESERVED}, /* site-local, deprecated */
    {{0xff}, 8, NETADDR_MULTICAST},
};

/* Forms with an IPv4 address inside: where its 4 bytes start. */
typedef struct {
    unsigned char prefix[16]; /* network order */
    int bits;                 /* prefix length */
    int v4_at;                /* offset of the IPv4 address */
} wrap_t;

static const wrap_t V6_WRAPS[] = {
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 96, 12}, /* mapped ::ffff:a.b.c.d */
    {{0}, 96, 12},                                        /* compatible ::a.b.c.d */
    {{0x00, 0x64, 0xff, 0x9b}, 96, 12},                   /* NAT64 64:ff9b::a.b.c.d */
    {{0x20, 0x02}, 16, 2},                                /* 6to4 2002:AABB:CCDD:: */
};

static int s_match(const unsigned char *a, const unsigned char *prefix, int bits)
{
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(a, prefix, (size_t)whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[whole] & mask) == (prefix[whole] & mask);
}

netaddr_class_t netaddr_classify_v4(const unsigned char a[4])
{
    for (size_t i = 0; i < sizeof V4_BLOCKS / sizeof V4_BLOCKS[0]; i++)
        if (s_match(a, V4_BLOCKS[i].prefix, V4_BLOCKS[i].bits))
            return V4_BLOCKS[i].cls;
    return NETADDR_PUBLIC;
}

netaddr_class_t netaddr_classify_v6(const unsigned char a[16])
{
    static const unsigned char zero[16] = {0};
    if (memcmp(a, zero, 15) == 0 && a[15] <= 1)
        return a[15] ? NETADDR_LOOPBACK : NETADDR_UNSPECIFIED;
    for (size_t i = 0; i < sizeof V6_WRAPS / sizeof V6_WRAPS[0]; i++)
        if (s_match(a, V6_WRAPS[i].prefix, V6_WRAPS[i].bits))
            return netaddr_classify_v4(a + V6_WRAPS[i].v4_at);
    for (size_t i = 0; i < sizeof V6_BLOCKS / sizeof V6_BLOCKS[0]; i++)
        if (s_match(a, V6_BLOCKS[i].prefix, V6_BLOCKS[i].bits))
            return V6_BLOCKS[i].cls;
    return (a[0] & 0xe0) == 0x20 ? NETADDR_PUBLIC : NETADDR_RESERVED; /* 2000::/3 */
}

netaddr_class_t netaddr_classify(const struct sockaddr *sa)
{
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return netaddr_classify_v4((const unsigned char *)&in->sin_addr);
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return netaddr_classify_v6(in6->sin6_addr.s6_addr);
    }
    return NETADDR_MALFORMED;
}

static int s_digit(char c, int radix)
{
    if (c >= '0' && c <= '9')
        return c - '0' < radix ? c - '0' : -1;
    if (radix == 16 && c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (radix == 16 && c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One part of a legacy IPv4 address: decimal, 0-prefixed octal, or 0x hex
 * ("0x" alone is 0, as the URL standard has it). 0, or -1 when malformed
 * or over 2^32. */
static int s_ipv4_part(const char *s, size_t len, uint64_t *out)
{
    int radix = 10;
    if (len == 0)
        return -1;
    if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        radix = 16, s += 2, len -= 2;
    else if (len >= 2 && s[0] == '0')
        radix = 8, s += 1, len -= 1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        int d = s_digit(s[i], radix);
        if (d < 0)
            return -1;
        v = v * (uint64_t)radix + (uint64_t)d;
        if (v > UINT32_MAX)
            return -1;
    }
    *out = v;
    return 0;
}

int netaddr_parse_ipv4(const char *s, size_t len, unsigned char out[4])
{
    if (len > 1 && s[len - 1] == '.')
        len--;
    uint64_t parts[4];
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        if (n == 4 || s_ipv4_part(s + start, i - start, &parts[n]) < 0)
            return -1;
        n++;
        start = i + 1;
    }
    for (size_t i = 0; i + 1 < n; i++)
        if (parts[i] > 255)
            return -1;
    if (parts[n - 1] >= (uint64_t)1 << (8 * (5 - n)))
        return -1;
    uint32_t v = (uint32_t)parts[n - 1];
    for (size_t i = 0; i + 1 < n; i++)
        v |= (uint32_t)parts[i] << (8 * (3 - i));
    out[0] = (unsigned char)(v >> 24);
    out[1] = (unsigned char)(v >> 16);
    out[2] = (unsigned char)(v >> 8);
    out[3] = (unsigned char)v;
    return 0;
}

/* The URL standard's "ends in a number": the last label (a trailing dot
 * aside) is all digits, or 0x and hex digits. Such a host is an IPv4
 * address or nothing. */
static int s_ends_in_number(const char *s, size_t len)
{
    if (len > 1 && s[len - 1] == '.')
        len--;
    size_t start = len;
    while (start > 0 && s[start - 1] != '.')
        start--;
    const char *l = s + start;
    size_t n = len - start;
    if (n == 0)
        return 0;
    size_t i = 0;
    int radix = 10;
    if (n >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X'))
        radix = 16, i = 2;
    for (; i < n; i++)
        if (s_digit(l[i], radix) < 0)
            return 0;
    return 1;
}

netaddr_class_t netaddr_host_class(const char *host, size_t len)
{
    if (!host || len == 0)
        return NETADDR_MALFORMED;
    if (host[0] == '[') {
        char buf[INET6_ADDRSTRLEN + 1];
        unsigned char a[16];
        if (len < 3 || host[len - 1] != ']' || len - 2 >= sizeof buf)
            return NETADDR_MALFORMED;
        memcpy(buf, host + 1, len - 2);
        buf[len - 2] = '\0';
        if (inet_pton(AF_INET6, buf, a) != 1)
            return NETADDR_MALFORMED;
        return netaddr_classify_v6(a);
    }
    if (s_ends_in_number(host, len)) {
        unsigned char a[4];
        return netaddr_parse_ipv4(host, len, a) == 0 ? netaddr_classify_v4(a) : NETADDR_MALFORMED;
    }
    size_t n = len > 1 && host[len - 1] == '.' ? len - 1 : len;
    if ((n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
        (n > 10 && strncasecmp(host + n - 10, ".localhost", 10) == 0))
        return NETADDR_LOCAL_NAME;
    return NETADDR_NAME;
}

int netaddr_is_public(netaddr_class_t cls)
{
    return cls == NETADDR_PUBLIC;
}

const char *netaddr_class_name(netaddr_class_t cls)
{
    static const char *const NAMES[] = {
        [NETADDR_PUBLIC] = "a public address",
        [NETADDR_UNSPECIFIED] = "an unspecified address",
        [NETADDR_LOOPBACK] = "a loopback address",
        [NETADDR_PRIVATE] = "a private network address",
        [NETADDR_SHARED] = "a carrier-grade NAT address",
        [NETADDR_LINK_LOCAL] = "a link-local address",
        [NETADDR_MULTICAST] = "a multicast address",
        [NETADDR_BROADCAST] = "the broadcast address",
        [NETADDR_DOCUMENTATION] = "a documentation address",
        [NETADDR_RESERVED] = "a reserved address",
        [NETADDR_LOCAL_NAME] = "a localhost name",
        [NETADDR_NAME] = "a host name",
        [NETADDR_MALFORMED] = "a malformed address",
    };
    return (unsigned)cls < sizeof NAMES / sizeof NAMES[0] ? NAMES[cls] : "an unknown address";
}
