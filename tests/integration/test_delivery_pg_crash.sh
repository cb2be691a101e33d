#!/bin/sh
# test_delivery_pg_crash.sh - PostgreSQL crashes in the middle of a bulk
# send and nothing is lost: tests/bench/bench_delivery_kill.sh with
# KILL_WHAT=postgres on the binary under test (BENCH_BIN: nothing built),
# 3,000 messages. The run has a PostgreSQL of its own, since the crash
# (`pg_ctl stop -m immediate`, WAL recovery at the restart) would take the
# servers fixture from every other test. A broker, two workers relaying to
# a dumping smtp-sink and an API node stay up through the crash; the
# script fails unless every row ends 'sent', every recipient reaches the
# sink, duplicates stay within the rows in flight at the crash, and both
# workers exit cleanly on SIGTERM afterwards (LeakSanitizer included in
# the sanitizer build).
set -eu
cd "${POSTCHI_SOURCE_DIR:?POSTCHI_SOURCE_DIR must name the source tree}"
BENCH_BIN=${POSTCHI_BIN:?POSTCHI_BIN must name the postchi binary} KILL_WHAT=postgres \
    KILL_RESTART_DELAY_S=2 KILL_LEASE_S=5 KILL_TIMEOUT_S=240 \
    exec sh tests/bench/bench_delivery_kill.sh 3000
