/*
 * kinds - the table of actor kinds a worker hosts. Adding a kind is adding
 * a row here and its module beside this file.
 */
#include "actor.h"

extern const actor_kind_t actor_kind_ping;
extern const actor_kind_t actor_kind_tenant;
extern const actor_kind_t actor_kind_mailer;

const actor_kind_t *const actor_kinds[] = {
    &actor_kind_ping,
    &actor_kind_tenant,
    &actor_kind_mailer,
    NULL,
};
