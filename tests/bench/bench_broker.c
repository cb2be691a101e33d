/*
 * bench_broker - one-way throughput through the postchi broker, side by side
 * with a plain libzmq relay (DEALER -> ROUTER -> DEALER that decodes
 * nothing), same machine, same run, same frames.
 *
 *   bench_broker [messages per round] [rounds]
 *
 * Each round runs both relays in turn. The sender and the receiver are
 * threads of this process; each relay is its own process (the broker is
 * the real `postchi broker`). The frame is a real envelope with a 100-byte
 * body addressed to actor ping/<n>, so the broker decodes, hashes and routes
 * it; the receiver registers as a worker. Prints each round and the medians
 * and their ratio (the target is >= 0.5).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "envelope.h"
#include "harness.h"
#include "mesh_peer.h"

typedef struct {
    const char *endpoint; /* relay to connect to */
    long n;               /* messages to move */
    int postchi;          /* receiver speaks the mesh protocol */
    volatile int ready;   /* receiver registered */
    int64_t t_end;        /* when the last message arrived */
    long got;             /* messages that arrived */
} run_t;

static void s_hello(void *sock, msg_type_t type)
{
    sbuf_t *body = sbuf_new(32), *f = sbuf_new(64);
    envelope_hello_encode(body, "worker", 1);
    envelope_t env = {.version = ENVELOPE_VERSION, .type = type, .target = "broker",
                      .target_len = 6, .sender = "node/sink", .sender_len = 9,
                      .body = sbuf_data(body), .body_len = sbuf_len(body)};
    envelope_encode(&env, f);
    zmq_send(sock, sbuf_data(f), sbuf_len(f), ZMQ_DONTWAIT);
    sbuf_destroy(&body);
    sbuf_destroy(&f);
}

static void *s_receiver(void *arg)
{
    run_t *r = arg;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int hwm = 100000, zero = 0;
    zmq_setsockopt(s, ZMQ_ROUTING_ID, "sink", 4);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(s, r->endpoint);
    char buf[512];
    /* Register: the plain relay answers "ok"; the broker beats back. */
    while (!r->ready) {
        if (r->postchi)
            s_hello(s, MSG_HELLO);
        else
            zmq_send(s, "hi", 2, 0);
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 200) > 0 && zmq_recv(s, buf, sizeof buf, 0) >= 0)
            r->ready = 1;
    }
    long got = 0;
    int64_t next_beat = mesh_now_ms() + 300;
    int timeout = 1000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    int64_t give_up = mesh_now_ms() + 120000;
    while (got < r->n && mesh_now_ms() < give_up) {
        int n = zmq_recv(s, buf, sizeof buf, 0);
        if (n > 120) /* data frames; beats and replies are small */
            got++;
        if (r->postchi && (got & 1023) == 0 && mesh_now_ms() >= next_beat) {
            s_hello(s, MSG_HEARTBEAT);
            next_beat = mesh_now_ms() + 300;
        }
    }
    r->t_end = mesh_now_ms();
    r->got = got;
    zmq_close(s);
    zmq_ctx_term(ctx);
    return NULL;
}

/* The plain relay: forwards every frame from anyone but the sink to the
 * sink, decoding nothing. Runs in a child process. */
static void s_plain_relay(const char *endpoint)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    int hwm = 100000, one = 1;
    /* Lossless like the broker: a full pipe blocks the relay instead of
     * dropping (a plain ROUTER drops silently at the high-water mark). */
    zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_bind(s, endpoint);
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    for (;;) {
        zmq_msg_recv(&id, s, 0);
        zmq_msg_recv(&body, s, 0);
        if (zmq_msg_size(&id) == 4 && memcmp(zmq_msg_data(&id), "sink", 4) == 0) {
            zmq_send(s, "sink", 4, ZMQ_SNDMORE);
            zmq_send(s, "ok", 2, 0);
            continue;
        }
        zmq_send(s, "sink", 4, ZMQ_SNDMORE);
        zmq_msg_send(&body, s, 0);
    }
}

static double s_round(const char *endpoint, int postchi, long n)
{
    run_t r = {endpoint, n, postchi, 0, 0, 0};
    pthread_t th;
    pthread_create(&th, NULL, s_receiver, &r);
    while (!r.ready)
        usleep(1000);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int hwm = 100000, zero = 0;
    zmq_setsockopt(s, ZMQ_ROUTING_ID, "src", 3);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(s, endpoint);
    /* 1,000 distinct actor targets, pre-encoded so the sender costs the
     * same in both runs. */
    enum { NT = 1000 };
    static sbuf_t *frames[NT];
    char body[100];
    memset(body, 'x', sizeof body);
    for (int i = 0; i < NT; i++) {
        char target[32];
        snprintf(target, sizeof target, "ping/%d", i);
        frames[i] = sbuf_new(256);
        envelope_t env = {.version = ENVELOPE_VERSION, .type = MSG_SEND, .target = target,
                          .target_len = strlen(target), .sender = "node/src", .sender_len = 8,
                          .name = "ping", .name_len = 4, .body = body, .body_len = sizeof body};
        envelope_encode(&env, frames[i]);
    }
    int64_t t0 = mesh_now_ms();
    for (long i = 0; i < n; i++)
        zmq_send(s, sbuf_data(frames[i % NT]), sbuf_len(frames[i % NT]), 0);
    pthread_join(th, NULL);
    if (r.got < n)
        fprintf(stderr, "%s lost %ld of %ld messages\n", postchi ? "broker" : "plain relay",
                n - r.got, n);
    double rate = (double)n / ((double)(r.t_end - t0) / 1000.0);
    for (int i = 0; i < NT; i++)
        sbuf_destroy(&frames[i]);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rate;
}

static int s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    double plain[32], broker[32];
    if (rounds > 32)
        rounds = 32;
    for (int k = 0; k < rounds; k++) {
        char ep[64];
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", harness_free_port());
        pid_t relay = fork();
        if (relay == 0) {
            s_plain_relay(ep);
            _exit(0);
        }
        plain[k] = s_round(ep, 0, n);
        kill(relay, SIGKILL);
        waitpid(relay, NULL, 0);

        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", harness_free_port());
        char env_ep[96];
        snprintf(env_ep, sizeof env_ep, "POSTCHI_BROKER_ENDPOINT=%s", ep);
        char *env[] = {env_ep, "POSTCHI_LOG_LEVEL=warn", NULL};
        harness_proc_t *b = harness_spawn_postchi("bench-broker", "broker", env);
        usleep(200 * 1000);
        broker[k] = s_round(ep, 1, n);
        harness_stop(b, SIGTERM, 5000);
        printf("round %d: plain relay %.0f msg/s, postchi broker %.0f msg/s, ratio %.2f\n", k + 1,
               plain[k], broker[k], broker[k] / plain[k]);
        fflush(stdout);
    }
    qsort(plain, (size_t)rounds, sizeof plain[0], s_cmp);
    qsort(broker, (size_t)rounds, sizeof broker[0], s_cmp);
    double mp = plain[rounds / 2], mb = broker[rounds / 2];
    printf("median: plain relay %.0f msg/s, postchi broker %.0f msg/s, ratio %.2f (target >= 0.5)\n",
           mp, mb, mb / mp);
    return 0;
}
