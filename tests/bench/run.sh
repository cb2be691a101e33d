#!/bin/sh
# run.sh - build and run the mesh benchmarks against a fresh set of servers.
#   tests/bench/run.sh [build dir]
# The figures go to stdout; docs/BENCHMARKS.md records them with this command.
set -eu
cd "$(dirname "$0")/../.."
B=${1:-build-bench}
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$B" -j2 >/dev/null
S="$PWD/$B/test-servers"
SERVERS_DURABLE=1 POSTCHI_BIN="$PWD/$B/postchi" tests/integration/servers.sh start "$S"
trap 'POSTCHI_BIN="$PWD/$B/postchi" tests/integration/servers.sh stop "$S"' EXIT
echo "== broker throughput (1,000,000 messages x 5 rounds)"
"$B"/tests/bench_broker 1000000 5
echo "== request/reply latency at 10,000/s for 10 s"
"$B"/tests/bench_rpc 10000 10 2
echo "== memory per idle actor (1,000,000 actors)"
"$B"/tests/bench_actor_memory 1000000
