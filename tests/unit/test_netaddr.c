/*
 * test_netaddr - the public-destination classifier: every special-purpose
 * IPv4 and IPv6 block at its first and last address and just outside it,
 * IPv4 inside IPv6 (mapped, compatible, NAT64, 6to4) judged by the IPv4
 * address, sockaddr input of both families (and another family refused),
 * URL hosts in every IPv4 spelling a URL parser or inet_aton takes
 * (checked against inet_aton itself), malformed numeric hosts, bracketed
 * IPv6 hosts, localhost names, and plain names left to resolution.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <sys/un.h>

#include "netaddr.h"

static netaddr_class_t s_v4(const char *text)
{
    unsigned char a[4];
    if (inet_pton(AF_INET, text, a) != 1)
        fail_msg("bad test address %s", text);
    return netaddr_classify_v4(a);
}

static netaddr_class_t s_v6(const char *text)
{
    unsigned char a[16];
    if (inet_pton(AF_INET6, text, a) != 1)
        fail_msg("bad test address %s", text);
    return netaddr_classify_v6(a);
}

static netaddr_class_t s_host(const char *host)
{
    return netaddr_host_class(host, strlen(host));
}

typedef struct {
    const char *text;    /* an address or host */
    netaddr_class_t cls; /* what it is */
} case_t;

static void s_run(const case_t *c, size_t n, netaddr_class_t (*fn)(const char *))
{
    for (size_t i = 0; i < n; i++) {
        netaddr_class_t got = fn(c[i].text);
        if (got != c[i].cls)
            fail_msg("%s: %s, want %s", c[i].text, netaddr_class_name(got),
                     netaddr_class_name(c[i].cls));
    }
}

static void test_ipv4_blocks(void **state)
{
    (void)state;
    static const case_t C[] = {
        {"0.0.0.0", NETADDR_UNSPECIFIED},
        {"0.255.255.255", NETADDR_UNSPECIFIED},
        {"1.0.0.0", NETADDR_PUBLIC},
        {"8.8.8.8", NETADDR_PUBLIC},
        {"9.255.255.255", NETADDR_PUBLIC},
        {"10.0.0.0", NETADDR_PRIVATE},
        {"10.255.255.255", NETADDR_PRIVATE},
        {"11.0.0.0", NETADDR_PUBLIC},
        {"100.63.255.255", NETADDR_PUBLIC},
        {"100.64.0.0", NETADDR_SHARED},
        {"100.127.255.255", NETADDR_SHARED},
        {"100.128.0.0", NETADDR_PUBLIC},
        {"126.255.255.255", NETADDR_PUBLIC},
        {"127.0.0.1", NETADDR_LOOPBACK},
        {"127.255.255.254", NETADDR_LOOPBACK},
        {"128.0.0.0", NETADDR_PUBLIC},
        {"169.253.255.255", NETADDR_PUBLIC},
        {"169.254.0.0", NETADDR_LINK_LOCAL},
        {"169.254.169.254", NETADDR_LINK_LOCAL},
        {"169.254.255.255", NETADDR_LINK_LOCAL},
        {"169.255.0.0", NETADDR_PUBLIC},
        {"172.15.255.255", NETADDR_PUBLIC},
        {"172.16.0.0", NETADDR_PRIVATE},
        {"172.31.255.255", NETADDR_PRIVATE},
        {"172.32.0.0", NETADDR_PUBLIC},
        {"192.0.0.0", NETADDR_RESERVED},
        {"192.0.0.255", NETADDR_RESERVED},
        {"192.0.1.0", NETADDR_PUBLIC},
        {"192.0.2.0", NETADDR_DOCUMENTATION},
        {"192.0.2.255", NETADDR_DOCUMENTATION},
        {"192.0.3.0", NETADDR_PUBLIC},
        {"192.88.99.1", NETADDR_RESERVED},
        {"192.88.100.0", NETADDR_PUBLIC},
        {"192.167.255.255", NETADDR_PUBLIC},
        {"192.168.0.0", NETADDR_PRIVATE},
        {"192.168.255.255", NETADDR_PRIVATE},
        {"192.169.0.0", NETADDR_PUBLIC},
        {"198.17.255.255", NETADDR_PUBLIC},
        {"198.18.0.0", NETADDR_RESERVED},
        {"198.19.255.255", NETADDR_RESERVED},
        {"198.20.0.0", NETADDR_PUBLIC},
        {"198.51.100.7", NETADDR_DOCUMENTATION},
        {"198.51.101.0", NETADDR_PUBLIC},
        {"203.0.113.255", NETADDR_DOCUMENTATION},
        {"203.0.114.0", NETADDR_PUBLIC},
        {"223.255.255.255", NETADDR_PUBLIC},
        {"224.0.0.0", NETADDR_MULTICAST},
        {"239.255.255.255", NETADDR_MULTICAST},
        {"240.0.0.0", NETADDR_RESERVED},
        {"255.255.255.254", NETADDR_RESERVED},
        {"255.255.255.255", NETADDR_BROADCAST},
    };
    s_run(C, sizeof C / sizeof C[0], s_v4);
}

static void test_ipv6_blocks(void **state)
{
    (void)state;
    static const case_t C[] = {
        {"::", NETADDR_UNSPECIFIED},
        {"::1", NETADDR_LOOPBACK},
        {"::2", NETADDR_UNSPECIFIED}, /* compatible 0.0.0.2 */
        {"2606:4700:4700::1111", NETADDR_PUBLIC},
        {"2a00:1450:4001::1", NETADDR_PUBLIC},
        {"2000::", NETADDR_PUBLIC},
        {"3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NETADDR_PUBLIC},
        {"3fff::", NETADDR_DOCUMENTATION},
        {"3fff:0fff:ffff:ffff:ffff:ffff:ffff:ffff", NETADDR_DOCUMENTATION},
        {"3fff:1000::", NETADDR_PUBLIC},
        {"1fff:ffff::", NETADDR_RESERVED},
        {"4000::1", NETADDR_RESERVED},
        {"100::1", NETADDR_RESERVED},
        {"2001::1", NETADDR_RESERVED},         /* Teredo */
        {"2001:1ff:ffff::", NETADDR_RESERVED}, /* end of 2001::/23 */
        {"2001:200::1", NETADDR_PUBLIC},       /* just after */
        {"2001:db8::1", NETADDR_DOCUMENTATION},
        {"2001:db8:ffff:ffff::", NETADDR_DOCUMENTATION},
        {"2001:db9::1", NETADDR_PUBLIC},
        {"fc00::1", NETADDR_PRIVATE},
        {"fd12:3456::1", NETADDR_PRIVATE},
        {"fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NETADDR_PRIVATE},
        {"fe80::1", NETADDR_LINK_LOCAL},
        {"febf:ffff::1", NETADDR_LINK_LOCAL},
        {"fec0::1", NETADDR_RESERVED},
        {"ff02::1", NETADDR_MULTICAST},
        {"ff05::1:3", NETADDR_MULTICAST},
        {"64:ff9b:1::1", NETADDR_PRIVATE},
        /* IPv4 inside: mapped, compatible, NAT64, 6to4 */
        {"::ffff:127.0.0.1", NETADDR_LOOPBACK},
        {"::ffff:7f00:1", NETADDR_LOOPBACK},
        {"::ffff:10.1.2.3", NETADDR_PRIVATE},
        {"::ffff:169.254.169.254", NETADDR_LINK_LOCAL},
        {"::ffff:8.8.8.8", NETADDR_PUBLIC},
        {"::127.0.0.1", NETADDR_LOOPBACK},
        {"::192.168.1.1", NETADDR_PRIVATE},
        {"::8.8.8.8", NETADDR_PUBLIC},
        {"64:ff9b::127.0.0.1", NETADDR_LOOPBACK},
        {"64:ff9b::a9fe:a9fe", NETADDR_LINK_LOCAL},
        {"64:ff9b::100.64.0.1", NETADDR_SHARED},
        {"64:ff9b::8.8.4.4", NETADDR_PUBLIC},
        {"2002:7f00:1::", NETADDR_LOOPBACK},
        {"2002:c0a8:101::1", NETADDR_PRIVATE},
        {"2002:808:808::1", NETADDR_PUBLIC},
        {"::ffff:0:127.0.0.1", NETADDR_RESERVED}, /* SIIT: not a form we unwrap */
    };
    s_run(C, sizeof C / sizeof C[0], s_v6);
}

static void test_sockaddr(void **state)
{
    (void)state;
    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
    assert_int_equal(netaddr_classify((struct sockaddr *)&in), NETADDR_LOOPBACK);
    inet_pton(AF_INET, "93.184.216.34", &in.sin_addr);
    assert_int_equal(netaddr_classify((struct sockaddr *)&in), NETADDR_PUBLIC);
    assert_true(netaddr_is_public(netaddr_classify((struct sockaddr *)&in)));
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:169.254.169.254", &in6.sin6_addr);
    assert_int_equal(netaddr_classify((struct sockaddr *)&in6), NETADDR_LINK_LOCAL);
    assert_false(netaddr_is_public(netaddr_classify((struct sockaddr *)&in6)));
    inet_pton(AF_INET6, "2606:4700::1", &in6.sin6_addr);
    assert_int_equal(netaddr_classify((struct sockaddr *)&in6), NETADDR_PUBLIC);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    assert_int_equal(netaddr_classify((struct sockaddr *)&un), NETADDR_MALFORMED);
    assert_int_equal(netaddr_classify(NULL), NETADDR_MALFORMED);
}

static void test_url_hosts(void **state)
{
    (void)state;
    static const case_t C[] = {
        /* every spelling of 127.0.0.1 */
        {"127.0.0.1", NETADDR_LOOPBACK},
        {"127.1", NETADDR_LOOPBACK},
        {"127.0.1", NETADDR_LOOPBACK},
        {"2130706433", NETADDR_LOOPBACK},
        {"0x7f000001", NETADDR_LOOPBACK},
        {"0X7F.1", NETADDR_LOOPBACK},
        {"0x7f.1", NETADDR_LOOPBACK},
        {"017700000001", NETADDR_LOOPBACK},
        {"0177.0.0.01", NETADDR_LOOPBACK},
        {"0x7f.0x0.0x0.0x1", NETADDR_LOOPBACK},
        {"127.0.0.1.", NETADDR_LOOPBACK},
        /* others */
        {"0", NETADDR_UNSPECIFIED},
        {"0x", NETADDR_UNSPECIFIED},
        {"0.0.0.0", NETADDR_UNSPECIFIED},
        {"3232235777", NETADDR_PRIVATE},       /* 192.168.1.1 */
        {"0xa9fea9fe", NETADDR_LINK_LOCAL},    /* 169.254.169.254 */
        {"169.254.43518", NETADDR_LINK_LOCAL}, /* 169.254.169.254 */
        {"0251.0376.0251.0376", NETADDR_LINK_LOCAL},
        {"4294967295", NETADDR_BROADCAST},
        {"10.0.0.1", NETADDR_PRIVATE},
        {"8.8.8.8", NETADDR_PUBLIC},
        {"134744072", NETADDR_PUBLIC}, /* 8.8.8.8 */
        /* numbers that are no address */
        {"4294967296", NETADDR_MALFORMED},
        {"1.2.3.256", NETADDR_MALFORMED},
        {"1.2.65536", NETADDR_MALFORMED},
        {"256.1.1.1", NETADDR_MALFORMED},
        {"1.2.3.4.5", NETADDR_MALFORMED},
        {"1..2", NETADDR_MALFORMED},
        {"08.1.1.1", NETADDR_MALFORMED}, /* 8 is no octal digit */
        {"0x1g.1", NETADDR_MALFORMED},
        {"1.0x1g", NETADDR_NAME}, /* the last label is no number */
        {"a.1", NETADDR_MALFORMED},
        {"example.com.1", NETADDR_MALFORMED},
        {"99999999999999999999", NETADDR_MALFORMED},
        /* IPv6 literals as URLs write them */
        {"[::1]", NETADDR_LOOPBACK},
        {"[::]", NETADDR_UNSPECIFIED},
        {"[::ffff:127.0.0.1]", NETADDR_LOOPBACK},
        {"[::ffff:7f00:1]", NETADDR_LOOPBACK},
        {"[fe80::1]", NETADDR_LINK_LOCAL},
        {"[fd00:ec2::254]", NETADDR_PRIVATE},
        {"[64:ff9b::7f00:1]", NETADDR_LOOPBACK},
        {"[2606:4700::1]", NETADDR_PUBLIC},
        {"[::1", NETADDR_MALFORMED},
        {"[]", NETADDR_MALFORMED},
        {"[1:2:3]", NETADDR_MALFORMED},
        {"[127.0.0.1]", NETADDR_MALFORMED},
        /* names */
        {"localhost", NETADDR_LOCAL_NAME},
        {"LocalHost", NETADDR_LOCAL_NAME},
        {"localhost.", NETADDR_LOCAL_NAME},
        {"api.localhost", NETADDR_LOCAL_NAME},
        {"a.b.LOCALHOST.", NETADDR_LOCAL_NAME},
        {"localhost.example.com", NETADDR_NAME},
        {"notlocalhost", NETADDR_NAME},
        {"hooks.example.com", NETADDR_NAME},
        {"1e100.net", NETADDR_NAME},
        {"a1.b2", NETADDR_NAME},
        {"", NETADDR_MALFORMED},
    };
    s_run(C, sizeof C / sizeof C[0], s_host);
}

/* The legacy spellings parse as inet_aton parses them (the resolver a
 * sender would hand the host to), on a spread of inputs. */
static void test_ipv4_parse_matches_inet_aton(void **state)
{
    (void)state;
    static const char *const IN[] = {
        "1",          "255",        "256",         "65535",           "16777216",
        "4294967295", "1.2",        "1.16777215",  "1.2.65535",       "1.2.3.4",
        "0x1.0x2",    "0x00000001", "00000000001", "012.034.056.070", "0xff.0xff.0xff.0xff",
        "1.2.3.4.",   "0.0",        "00",
    };
    for (size_t i = 0; i < sizeof IN / sizeof IN[0]; i++) {
        unsigned char ours[4];
        struct in_addr theirs;
        if (inet_aton(IN[i], &theirs) == 0 && strcmp(IN[i], "1.2.3.4.") != 0)
            fail_msg("inet_aton refuses %s", IN[i]);
        assert_int_equal(netaddr_parse_ipv4(IN[i], strlen(IN[i]), ours), 0);
        if (strcmp(IN[i], "1.2.3.4.") != 0 && memcmp(ours, &theirs, 4) != 0)
            fail_msg("%s: %u.%u.%u.%u", IN[i], ours[0], ours[1], ours[2], ours[3]);
    }
    unsigned char a[4];
    assert_int_equal(netaddr_parse_ipv4("", 0, a), -1);
    assert_int_equal(netaddr_parse_ipv4(".", 1, a), -1);
    assert_int_equal(netaddr_parse_ipv4("1.2.3.4..", 9, a), -1);
    assert_int_equal(netaddr_parse_ipv4("-1", 2, a), -1);
    assert_int_equal(netaddr_parse_ipv4("1.2.3.4", 5, a), 0); /* length is honoured: "1.2.3" */
    assert_memory_equal(a, "\x01\x02\x00\x03", 4);
}

static void test_names(void **state)
{
    (void)state;
    for (int c = NETADDR_PUBLIC; c <= NETADDR_MALFORMED; c++)
        assert_non_null(strstr(netaddr_class_name((netaddr_class_t)c), "a"));
    assert_string_equal(netaddr_class_name(NETADDR_LOOPBACK), "a loopback address");
    assert_false(netaddr_is_public(NETADDR_NAME));
    assert_false(netaddr_is_public(NETADDR_MALFORMED));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_blocks),
        cmocka_unit_test(test_ipv6_blocks),
        cmocka_unit_test(test_sockaddr),
        cmocka_unit_test(test_url_hosts),
        cmocka_unit_test(test_ipv4_parse_matches_inet_aton),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
