/*
 * devstack - `postchi up` / `postchi down`: the embedded defaults a new user
 * (and the test suite) runs on.
 *
 * `up` creates, under data_dir, a PostgreSQL cluster (initdb run as the
 * unprivileged `postgres` user when we are root), a Redis server and an
 * smtp-sink capture sink that keeps every received mail as a file under
 * data_dir/mail; applies the migrations; then starts one broker, two workers
 * and the API node as background processes. Every process it starts has a
 * pid file under data_dir/run; run again, it reuses what exists and starts
 * only what is not running. `down` stops exactly the processes named by
 * those pid files (checking each pid still runs the expected program).
 */
#ifndef POSTCHI_DEVSTACK_H
#define POSTCHI_DEVSTACK_H

#include "config.h"

/* argv after the subcommand. Flags: --services-only (PostgreSQL, Redis,
 * smtp-sink, migrations; no mesh), --no-sync (initdb --no-sync and
 * fsync=off: for throw-away test clusters), --data-dir DIR (overrides the
 * data_dir setting). Returns the process exit status. */
int devstack_up(const config_t *cfg, int argc, char **argv);
int devstack_down(const config_t *cfg, int argc, char **argv);
/* `postchi migrate`: connect with db_conninfo_from_config (retrying for
 * startup_wait_ms), apply the embedded migrations, print how many ran. */
int devstack_migrate(const config_t *cfg, int argc, char **argv);

#endif
