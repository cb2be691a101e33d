/*
 * netaddr - is an address one that an outbound request made on a user's
 * behalf (a webhook) may go to: a public unicast destination, not
 * loopback, a private or shared network, link-local (cloud metadata at
 * 169.254.169.254), multicast, broadcast, unspecified, reserved or
 * documentation space, in IPv4 or IPv6, including IPv4 carried in IPv6
 * (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, NAT64 64:ff9b::/96, 6to4
 * 2002::/16), which is judged by the IPv4 address inside.
 *
 * Used twice: when a URL is registered (netaddr_host_class on its host:
 * literal addresses in any spelling, localhost names), and by the sender
 * at connect time (netaddr_classify on every address the host resolves
 * to, right before connecting to that address). The second check is the
 * one that holds: a name that resolved to a public address when it was
 * registered may resolve to 127.0.0.1 later (DNS rebinding), so the sender
 * must check the very sockaddr it connects to, and not resolve again
 * between the check and the connect; the same for every redirect it
 * follows.
 *
 * Pure functions over their arguments: no DNS, no allocation, thread-safe.
 */
#ifndef POSTCHI_NETADDR_H
#define POSTCHI_NETADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

typedef enum {
    NETADDR_PUBLIC,        /* public unicast: may be used */
    NETADDR_UNSPECIFIED,   /* 0.0.0.0/8, :: */
    NETADDR_LOOPBACK,      /* 127/8, ::1 */
    NETADDR_PRIVATE,       /* RFC 1918, IPv6 ULA fc00::/7, NAT64 local-use */
    NETADDR_SHARED,        /* 100.64/10, carrier-grade NAT */
    NETADDR_LINK_LOCAL,    /* 169.254/16, fe80::/10 */
    NETADDR_MULTICAST,     /* 224/4, ff00::/8 */
    NETADDR_BROADCAST,     /* 255.255.255.255 */
    NETADDR_DOCUMENTATION, /* TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20 */
    NETADDR_RESERVED,      /* any other special-purpose or unallocated block */
    NETADDR_LOCAL_NAME,    /* host name localhost or *.localhost */
    NETADDR_NAME,          /* a host name: judge what it resolves to */
    NETADDR_MALFORMED,     /* not an address, and not a usable name */
} netaddr_class_t;

/* The class of a socket address (AF_INET or AF_INET6; any other family is
 * NETADDR_MALFORMED). */
netaddr_class_t netaddr_classify(const struct sockaddr *sa);

/* netaddr_classify for 4 bytes in network order. */
netaddr_class_t netaddr_classify_v4(const unsigned char a[4]);
/* netaddr_classify for 16 bytes in network order. */
netaddr_class_t netaddr_classify_v6(const unsigned char a[16]);

/* The class of a URL host as written (len bytes at host, not NUL-
 * terminated; an IPv6 literal in its brackets): an IPv6 literal, an IPv4
 * address in any spelling a URL parser or inet_aton takes (1 to 4 parts,
 * each decimal, octal with a leading 0, or hex with 0x: 2130706433,
 * 0x7f.1, 017700000001, 127.1), a localhost name, or a name. A host whose
 * last label is a number but that is no valid IPv4 address (1.2.3.256,
 * 1.2.3.4.5) is NETADDR_MALFORMED: clients disagree on what it means. */
netaddr_class_t netaddr_host_class(const char *host, size_t len);

/* Parse s[0..len) the way the WHATWG URL standard's IPv4 parser (and
 * inet_aton) does: 0 with *out (network order), or -1. */
int netaddr_parse_ipv4(const char *s, size_t len, unsigned char out[4]);

/* 1 when cls is NETADDR_PUBLIC. */
int netaddr_is_public(netaddr_class_t cls);

/* A short phrase for a refusal: "a loopback address", "a private network
 * address", ... */
const char *netaddr_class_name(netaddr_class_t cls);

#endif
