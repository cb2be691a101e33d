/*
 * test_hashring - ownership by weighted rendezvous hashing.
 *
 * Balance, minimal movement when nodes leave or join, weights, determinism
 * (including pinned hash values, since every process must agree forever),
 * and the edge cases of the API. Keys are "contact/<n>", as actors use.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hashring.h"

#define NKEYS 100000

/* Tags handed to the ring as node data; lookups return one of them. */
static int s_tags[8];

static size_t s_key(char *buf, size_t size, int i)
{
    int n = snprintf(buf, size, "contact/%d", i);
    assert_true(n > 0 && (size_t)n < size);
    return (size_t)n;
}

/* Owner index (position in s_tags) of key i. */
static int s_owner(const hashring_t *ring, int i)
{
    char key[32];
    size_t len = s_key(key, sizeof key, i);
    int *tag = hashring_lookup(ring, key, len, NULL);
    assert_non_null(tag);
    return (int)(tag - s_tags);
}

/* Owners of keys 0..n-1, a snapshot to compare with after a change. */
static int *s_owners(const hashring_t *ring, int n)
{
    int *owners = malloc((size_t)n * sizeof *owners);
    assert_non_null(owners);
    for (int i = 0; i < n; i++)
        owners[i] = s_owner(ring, i);
    return owners;
}

static hashring_t *s_ring(int nodes, const uint32_t *weights)
{
    hashring_t *ring = hashring_new();
    assert_non_null(ring);
    for (int i = 0; i < nodes; i++) {
        char id[32]; /* "worker-" and any int */
        snprintf(id, sizeof id, "worker-%d", i);
        assert_int_equal(hashring_add(ring, id, weights ? weights[i] : 1, &s_tags[i]), 0);
    }
    assert_int_equal(hashring_size(ring), (size_t)nodes);
    return ring;
}

static void test_empty_and_lifecycle(void **state)
{
    (void)state;
    hashring_t *ring = hashring_new();
    assert_non_null(ring);
    const char *id = "untouched";
    assert_null(hashring_lookup(ring, "k", 1, &id));
    assert_string_equal(id, "untouched");
    assert_int_equal(hashring_size(ring), 0);
    assert_int_equal(hashring_remove(ring, "nobody"), -1);
    assert_int_equal(hashring_add(ring, "w", 0, &s_tags[0]), -1); /* weight 0 */
    assert_int_equal(hashring_add(ring, "", 1, &s_tags[0]), -1);  /* empty id */
    assert_int_equal(hashring_size(ring), 0);

    assert_int_equal(hashring_add(ring, "only", 1, &s_tags[3]), 0);
    assert_ptr_equal(hashring_lookup(ring, "k", 1, &id), &s_tags[3]);
    assert_string_equal(id, "only");
    assert_ptr_equal(hashring_lookup(ring, NULL, 0, NULL), &s_tags[3]); /* empty key */
    assert_int_equal(hashring_remove(ring, "only"), 0);
    assert_int_equal(hashring_remove(ring, "only"), -1);
    assert_null(hashring_lookup(ring, "k", 1, NULL));

    hashring_destroy(&ring);
    assert_null(ring);
    hashring_destroy(&ring); /* idempotent */
    hashring_destroy(NULL);
}

/* The hash is part of the wire contract between processes: pin it. */
static void test_hash_pinned_and_seeded(void **state)
{
    (void)state;
    static const struct {
        const char *in;  /* input bytes */
        uint64_t seed;   /* seed */
        uint64_t expect; /* value fixed when the hash was written */
    } pins[] = {
        {"", 0, 0xfd14fd79be47226bULL},
        {"a", 0, 0x50e8164ed8d59056ULL},
        {"contact/1", 0, 0xda960890ccb2501fULL},
        {"node/worker-1 with a longer id", 7, 0xbef6af7c551ac77bULL},
    };
    for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
        uint64_t h = hashring_hash(pins[i].in, strlen(pins[i].in), pins[i].seed);
        if (h != pins[i].expect)
            fail_msg("hash(\"%s\", %llu) = 0x%016llx", pins[i].in, (unsigned long long)pins[i].seed,
                     (unsigned long long)h);
    }
    assert_true(hashring_hash("abc", 3, 0) != hashring_hash("abc", 3, 1));
    /* Zero padding of the tail must not collide with real zero bytes. */
    assert_true(hashring_hash("a", 1, 0) != hashring_hash("a\0", 2, 0));
    assert_true(hashring_hash("", 0, 0) != hashring_hash("\0", 1, 0));
}

/* Flipping one input bit should flip about half of the output bits. */
static void test_hash_avalanche(void **state)
{
    (void)state;
    uint64_t total = 0, samples = 0;
    for (int i = 0; i < 2000; i++) {
        uint8_t buf[24];
        size_t len = 1 + (size_t)i % sizeof buf;
        for (size_t j = 0; j < len; j++)
            buf[j] = (uint8_t)(i * 31 + j * 17);
        uint64_t h = hashring_hash(buf, len, 0);
        size_t bit = (size_t)i * 7 % (len * 8);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        total += (uint64_t)__builtin_popcountll(h ^ hashring_hash(buf, len, 0));
        samples++;
    }
    double mean = (double)total / (double)samples;
    if (mean < 30.0 || mean > 34.0)
        fail_msg("mean flipped bits %.2f", mean);
}

static void test_deterministic_whatever_the_order(void **state)
{
    (void)state;
    hashring_t *a = s_ring(5, NULL);
    hashring_t *b = hashring_new();
    for (int i = 4; i >= 0; i--) {
        char id[16];
        snprintf(id, sizeof id, "worker-%d", i);
        assert_int_equal(hashring_add(b, id, 1, &s_tags[i]), 0);
    }
    /* Churn b so its internal order differs further. */
    assert_int_equal(hashring_remove(b, "worker-2"), 0);
    assert_int_equal(hashring_add(b, "worker-2", 1, &s_tags[2]), 0);
    for (int i = 0; i < 20000; i++)
        assert_int_equal(s_owner(a, i), s_owner(b, i));
    /* Same key, same answer, and the id matches the data. */
    const char *id;
    hashring_lookup(a, "contact/7", 9, &id);
    char expect[16];
    snprintf(expect, sizeof expect, "worker-%d", s_owner(a, 7));
    assert_string_equal(id, expect);
    hashring_destroy(&a);
    hashring_destroy(&b);
}

static void s_assert_share(size_t got, double expect, double tolerance)
{
    if ((double)got < expect * (1 - tolerance) || (double)got > expect * (1 + tolerance))
        fail_msg("share %zu, expected %.0f +- %.0f%%", got, expect, tolerance * 100);
}

static void test_balance_three_equal(void **state)
{
    (void)state;
    hashring_t *ring = s_ring(3, NULL);
    size_t count[3] = {0};
    for (int i = 0; i < NKEYS; i++)
        count[s_owner(ring, i)]++;
    for (int n = 0; n < 3; n++)
        s_assert_share(count[n], NKEYS / 3.0, 0.10);
    hashring_destroy(&ring);
}

static void test_leave_moves_only_its_keys(void **state)
{
    (void)state;
    hashring_t *ring = s_ring(3, NULL);
    int *before = s_owners(ring, NKEYS);
    assert_int_equal(hashring_remove(ring, "worker-1"), 0);
    size_t moved_to[3] = {0};
    for (int i = 0; i < NKEYS; i++) {
        int now = s_owner(ring, i);
        assert_int_not_equal(now, 1);
        if (before[i] != 1)
            assert_int_equal(now, before[i]); /* exactly: nobody else moves */
        else
            moved_to[now]++;
    }
    /* The leaver's keys spread over the two that stay. */
    size_t orphans = moved_to[0] + moved_to[2];
    s_assert_share(moved_to[0], orphans / 2.0, 0.10);
    free(before);
    hashring_destroy(&ring);
}

static void test_join_takes_a_fair_share_only(void **state)
{
    (void)state;
    hashring_t *ring = s_ring(3, NULL);
    int *before = s_owners(ring, NKEYS);
    assert_int_equal(hashring_add(ring, "worker-3", 1, &s_tags[3]), 0);
    size_t moved = 0;
    for (int i = 0; i < NKEYS; i++) {
        int now = s_owner(ring, i);
        if (now != before[i]) {
            assert_int_equal(now, 3); /* only to the newcomer */
            moved++;
        }
    }
    s_assert_share(moved, NKEYS / 4.0, 0.10);
    free(before);
    hashring_destroy(&ring);
}

static void test_weights(void **state)
{
    (void)state;
    static const uint32_t w[] = {1, 2};
    hashring_t *ring = s_ring(2, w);
    size_t count[2] = {0};
    for (int i = 0; i < NKEYS; i++)
        count[s_owner(ring, i)]++;
    s_assert_share(count[0], NKEYS / 3.0, 0.05);
    s_assert_share(count[1], 2 * NKEYS / 3.0, 0.05);

    /* Uneven weights over more nodes: 1:2:3:4 of the keys. */
    static const uint32_t w4[] = {1, 2, 3, 4};
    hashring_t *four = s_ring(4, w4);
    size_t c4[4] = {0};
    for (int i = 0; i < NKEYS; i++)
        c4[s_owner(four, i)]++;
    for (int n = 0; n < 4; n++)
        s_assert_share(c4[n], NKEYS * (n + 1) / 10.0, 0.08);
    hashring_destroy(&four);
    hashring_destroy(&ring);
}

static void test_readd_updates(void **state)
{
    (void)state;
    hashring_t *ring = s_ring(2, NULL);
    /* New data: every key worker-0 owned now returns the new pointer. */
    assert_int_equal(hashring_add(ring, "worker-0", 1, &s_tags[5]), 0);
    assert_int_equal(hashring_size(ring), 2);
    size_t count[8] = {0};
    for (int i = 0; i < 30000; i++)
        count[s_owner(ring, i)]++;
    assert_int_equal(count[0], 0);
    s_assert_share(count[5], 15000, 0.10);

    /* New weight: worker-0 now gets 3 of every 4 keys, and only keys move
     * towards it (the exponential race keeps earlier winners). */
    int *before = s_owners(ring, 30000);
    assert_int_equal(hashring_add(ring, "worker-0", 3, &s_tags[5]), 0);
    size_t heavy = 0;
    for (int i = 0; i < 30000; i++) {
        int now = s_owner(ring, i);
        if (before[i] == 5)
            assert_int_equal(now, 5);
        heavy += now == 5;
    }
    free(before);
    s_assert_share(heavy, 22500, 0.05);
    hashring_destroy(&ring);
}

static void test_many_nodes(void **state)
{
    (void)state;
    enum { NODES = 40 };
    hashring_t *ring = hashring_new();
    int tags[NODES];
    size_t count[NODES] = {0};
    for (int i = 0; i < NODES; i++) {
        char id[32];
        snprintf(id, sizeof id, "node/host-%02d.example", i);
        assert_int_equal(hashring_add(ring, id, 1, &tags[i]), 0);
    }
    for (int i = 0; i < 200000; i++) {
        char key[32];
        size_t len = s_key(key, sizeof key, i);
        int *tag = hashring_lookup(ring, key, len, NULL);
        count[tag - tags]++;
    }
    for (int i = 0; i < NODES; i++)
        s_assert_share(count[i], 200000.0 / NODES, 0.10);
    hashring_destroy(&ring);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_lifecycle),
        cmocka_unit_test(test_hash_pinned_and_seeded),
        cmocka_unit_test(test_hash_avalanche),
        cmocka_unit_test(test_deterministic_whatever_the_order),
        cmocka_unit_test(test_balance_three_equal),
        cmocka_unit_test(test_leave_moves_only_its_keys),
        cmocka_unit_test(test_join_takes_a_fair_share_only),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_readd_updates),
        cmocka_unit_test(test_many_nodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
