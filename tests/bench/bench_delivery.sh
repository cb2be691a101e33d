#!/bin/sh
# bench_delivery.sh - end-to-end delivery benchmarks of issue 4, from API
# acceptance to the SMTP server's receipt, with PostgreSQL durability, each
# beside its baseline measured in the same run:
#   tests/bench/bench_delivery.sh [messages]        (default 20,000)
# 1. 2 KB, Ed25519 only (a domain with "signing": "ed25519") vs Postfix's
#    smtp-source: same size, same sink, same session count (target >= 0.5);
# 2. 2 KB, both signatures (the default) vs `openssl speed -multi 2
#    rsa2048` sign/s, both cores (target >= 0.6; one core printed too);
# 3. 100 KB, both signatures (target >= 1,000 msg/s), smtp-source at 100 KB
#    as context;
# 4. p99 from acceptance to the 'sent' record at 1,000 msg/s offered: a
#    bulk send of 100 every 100 ms, open loop (target < 250 ms).
# Throughput scenarios run BENCH_RUNS times (baseline and Postchi
# interleaved) and report medians and the ratio of medians; a warm-up send
# precedes each. The last lines are a Markdown table for docs/BENCHMARKS.md.
#
# Knobs (environment): BENCH_SCENARIOS (comma list of ed25519,both,100k,
# latency; default all), BENCH_RUNS (3), BENCH_N100 (100 KB messages,
# default messages/4), BENCH_SESSIONS (SMTP sessions in all, split over
# the 2 workers; smtp-source gets the same; default 8), BENCH_LAT_SECONDS
# (20), BENCH_BUILD (build dir, build-bench).
#
# Set-up: PostgreSQL + Redis (servers.sh, durable), two smtp-sinks (a
# dumping one for the size calibration, a counting-nothing one for the
# runs), a broker, 2 workers relaying to the sink, an API node; contacts
# and lists are written in SQL (set-up, not measured). Message sizes: one
# message of each kind goes through the dumping sink first and the text is
# sized so Postchi's message is as long as smtp-source's at -l 2048 /
# -l 102400. Every process is stopped on exit, failure included (trap in
# delivery_env.sh).
set -eu
cd "$(dirname "$0")/../.."
N=${1:-20000}
N100=${BENCH_N100:-$((N / 4))}
RUNS=${BENCH_RUNS:-3}
SESSIONS=${BENCH_SESSIONS:-8}
SCENARIOS=${BENCH_SCENARIOS:-ed25519,both,100k,latency}
LAT_SECONDS=${BENCH_LAT_SECONDS:-20}
[ "$N" -gt 0 ] && [ "$N100" -gt 0 ] && [ "$RUNS" -gt 0 ] || { echo "usage: $0 [messages > 0]" >&2; exit 2; }
[ "$SESSIONS" -ge 2 ] && [ $((SESSIONS % 2)) -eq 0 ] || { echo "BENCH_SESSIONS must be even and >= 2" >&2; exit 2; }
WARM_N=$((N / 10 < 500 ? N / 10 + 1 : 500))
CMDLINE="tests/bench/bench_delivery.sh${1:+ $*}"
for v in BENCH_SCENARIOS BENCH_RUNS BENCH_N100 BENCH_SESSIONS BENCH_LAT_SECONDS; do
    eval "val=\${$v:-}"
    [ -z "$val" ] || CMDLINE="$v=$val $CMDLINE"
done

. tests/bench/delivery_env.sh
bench_init "${BENCH_BUILD:-build-bench}"
echo "bench_delivery: $(nproc) CPUs, $(uname -r); logs in $W"

SINK=$(free_port)
CAL_SINK=$(free_port)
bench_sink sink "$SINK"
bench_sink calsink "$CAL_SINK" "$W/mail"
bench_broker
PER_WORKER=$((SESSIONS / 2))
start_workers() { # relay port
    bench_worker worker1 bw1 "$1" "$PER_WORKER"
    W1=$LAST_PID
    bench_worker worker2 bw2 "$1" "$PER_WORKER"
    W2=$LAST_PID
}
start_workers "$CAL_SINK"
bench_api
bench_wait_live 2
bench_account
bench_domain send.example both >/dev/null
bench_domain ed.send.example ed25519 >/dev/null

echo "== set-up: lists (contacts written in SQL)"
LIST_ED=$(bench_list ed "$N" ed.dest.example)
LIST_BOTH=$(bench_list both "$N" both.dest.example)
LIST_100K=$(bench_list big "$N100" big.dest.example)
LIST_LAT=$(bench_list lat 100 lat.dest.example)
WARM_ED=$(bench_list warm-ed "$WARM_N" ed.dest.example)
WARM_BOTH=$(bench_list warm-both "$WARM_N" both.dest.example)
WARM_100K=$(bench_list warm-big "$((WARM_N / 5 + 1))" big.dest.example)
sql "VACUUM ANALYZE" >/dev/null

export PSQL_BIN PG U KEY SINK CAL_SINK SIZE=2048 SIZE100=102400 SESSIONS N N100 RUNS \
    FROM_ED=news@ed.send.example FROM_BOTH=news@send.example CAL_DIR="$W/mail"
echo "== calibration: message sizes through a dumping smtp-sink"
CAL=$(python3 tests/bench/bench_delivery.py calibrate)
eval "export $CAL"

# The runs relay to the sink that dumps nothing: restart the workers.
bench_stop "$W1" || echo "bench: worker 1 exited with status $? on SIGTERM" >&2
bench_stop "$W2" || echo "bench: worker 2 exited with status $? on SIGTERM" >&2
bench_wait_live 0
start_workers "$SINK"
bench_wait_live 2

export LIST_ED LIST_BOTH LIST_100K LIST_LAT WARM_ED WARM_BOTH WARM_100K WARM_N \
    BENCH_RUNS="$RUNS" BENCH_SCENARIOS="$SCENARIOS" LAT_SECONDS RCPT_LAT=lat.dest.example \
    BENCH_COMMAND="$CMDLINE"
python3 tests/bench/bench_delivery.py run

# Errors the processes logged (warn level and above) during the run.
for f in "$W"/worker1.log "$W"/worker2.log "$W"/api.log "$W"/broker.log; do
    n=$(grep -c 'level=error\|level=fatal' "$f" || true)
    w=$(grep 'level=warn' "$f" | grep -vc 'reason=said bye' || true) # bye: the calibration restart
    [ "$n" -eq 0 ] && [ "$w" -eq 0 ] || { echo "bench: $(basename "$f"): $n error and $w warning lines, first:"; grep 'level=error\|level=fatal\|level=warn' "$f" | grep -v 'reason=said bye' | head -3; }
done
