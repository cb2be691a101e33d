/*
 * actor_ping - the mesh's probe: answers every request with the node that
 * hosts it and how many messages this activation has seen.
 *
 * Reply body (text, so a human can read it in a trace): "<node id> <count>".
 * The count starts at 1 on a fresh activation, which lets tests see that an
 * actor moved (its count restarts on the survivor) or was passivated.
 */
#include <stdio.h>
#include <stdlib.h>

#include "actor.h"

typedef struct {
    uint64_t count; /* messages handled by this activation */
} ping_state_t;

static int s_activate(actor_ctx_t *ctx, void **state_p)
{
    (void)ctx;
    *state_p = calloc(1, sizeof(ping_state_t));
    return *state_p ? 0 : -1;
}

static int s_receive(actor_ctx_t *ctx, void *state, const envelope_t *msg)
{
    ping_state_t *s = state;
    s->count++;
    if (msg->corr == 0)
        return 0;
    char body[320];
    int n = snprintf(body, sizeof body, "%s %llu", actor_node_id(ctx),
                     (unsigned long long)s->count);
    return actor_reply(ctx, body, (size_t)n);
}

static void s_passivate(void *state)
{
    free(state);
}

const actor_kind_t actor_kind_ping = {"ping", s_activate, s_receive, s_passivate};
