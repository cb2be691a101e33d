#!/bin/sh
# bench_pg_floor.sh - what PostgreSQL alone costs per message, in CPU, for
# the durable writes of delivery, with no mailer, no SMTP and no signing:
#   tests/bench/bench_pg_floor.sh [messages]        (default 50,000)
# It answers one question of issue 4's both-signature target (0.6 of
# `openssl speed -multi 2 rsa2048`): how much of the 2-core budget per
# message do the database writes leave. Two write sets, each run on the
# real, migrated schema (indexes, constraints, durable commits), one
# statement per commit, in the round sizes the delivery path uses:
#   minimum  the bulk insert without 'accepted' events (steps of 5,000), no
#            claim write at all, outcome rounds of 36 rows ('sent' and its
#            event, rows named by id as the recorder names them): the least
#            any design writes that keeps a row per message, its status,
#            and an event per attempt (issue 4: "every attempt and outcome
#            is a message_events row");
#   insert   the insert alone, nothing after: a durable row per message.
# Today's write set (the 'accepted' event, a claim per row, and the
# outcome) is measured where it runs, by bench_delivery.sh's CPU sampler:
# isolated here, its claim's queue walk made the figure swing twofold from
# run to run with the dead entries it met.
# Each runs BENCH_RUNS times (3) on emptied tables after a CHECKPOINT; the
# figure is the median of the CPU time of every PostgreSQL process (from
# /proc, taken from inside the psql session so its backend is still alive)
# divided by the messages. Processes that start and end inside a run (an
# autovacuum worker) are not counted: the figures are lower bounds.
#
# Set-up: PostgreSQL + Redis durable (delivery_env.sh's bench_init), an
# organization and a batch row written in SQL. Every process is stopped
# on exit, failure included.
set -eu
cd "$(dirname "$0")/../.."
N=${1:-50000}
RUNS=${BENCH_RUNS:-3}
[ "$N" -ge 5000 ] && [ "$RUNS" -gt 0 ] || { echo "usage: $0 [messages >= 5000]" >&2; exit 2; }
. tests/bench/delivery_env.sh
bench_init "${BENCH_BUILD:-build-bench}"
echo "bench_pg_floor: $(nproc) CPUs, $N messages per run, $RUNS runs per write set"

ORG=$(sql "INSERT INTO organizations (name) VALUES ('floor') RETURNING id")
BATCH=$(sql "INSERT INTO batches (organization_id, kind, target_id)
             VALUES ('$ORG', 'list', gen_random_uuid()) RETURNING id")

# CPU ticks (utime + stime) of every postgres process, summed, into $1.
cat >"$W/snap.sh" <<'EOF'
awk '$2 == "(postgres)" { t += $14 + $15 } END { print t }' /proc/[0-9]*/stat 2>/dev/null >"$1"
EOF

# One SQL file per write set: N rows in steps of 5,000, then the rounds.
# The insert is the shape of the bulk expansion's (a wide row, the batch's
# foreign key checked); ids are derived from the send and the row's number
# so an outcome round names its 36 rows by id, as the recorder does.
insert_sql() {
    ins="INSERT INTO messages (id, organization_id, send_id, batch_id, status, from_addr, recipient, recipient_domain, to_addrs, subject, headers, metadata, size_bytes, next_attempt_at, message_id) SELECT md5('$SEND' || g)::uuid, '$ORG', '$SEND', '$BATCH', 'queued', 'news@send.example', 'c' || g || '@floor.example', 'floor.example', ARRAY['c' || g || '@floor.example'], 'The floor of the outbox', '{}', '{}', 2048, now() + g * interval '1 microsecond', '<' || gen_random_uuid() || '@send.example>' FROM generate_series(%d, %d) g"
    i=0
    while [ $i -lt $((N / 5000)) ]; do
        printf "$ins;\n" $((i * 5000)) $((i * 5000 + 4999))
        i=$((i + 1))
    done
}
rounds_sql() {
    OUTCOME="WITH m AS (UPDATE messages SET status = 'sent', lease_until = NULL, last_response = '250 2.0.0 Ok: queued as 4F2C', updated_at = now() WHERE id IN (SELECT md5('$SEND' || g)::uuid FROM generate_series(%d, %d) g) AND %s RETURNING id, organization_id, attempts) INSERT INTO message_events (organization_id, message_id, type, detail) SELECT organization_id, id, 'sent', jsonb_build_object('response', '250 2.0.0 Ok: queued as 4F2C', 'attempt', attempts) FROM m;\n"
    r=0
    while [ $r -lt $((N / 200)) ]; do
        k=0
        while [ $k -lt 200 ]; do
            hi=$((k + 35 < 199 ? k + 35 : 199))
            printf "$OUTCOME" $((r * 200 + k)) $((r * 200 + hi)) "status IN ('queued', 'deferred')"
            k=$((k + 36))
        done
        r=$((r + 1))
    done
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
TICK=$(getconf CLK_TCK)
for set in minimum insert; do
    : >"$W/$set.us"
    run=1
    while [ $run -le "$RUNS" ]; do
        SEND=$(sql "SELECT gen_random_uuid()")
        sql "TRUNCATE message_events, messages" >/dev/null
        sql "CHECKPOINT" >/dev/null
        {
            echo "\\! sh $W/snap.sh $W/t0"
            case $set in
            minimum) insert_sql; rounds_sql ;;
            insert) insert_sql ;;
            esac
            echo "\\! sh $W/snap.sh $W/t1"
        } >"$W/$set.sql"
        t=$(date +%s.%N)
        $PSQL "$PG" -f "$W/$set.sql" >/dev/null
        wall=$(echo "$(date +%s.%N) - $t" | bc)
        left=$(sql "SELECT count(*) FROM messages WHERE status <> 'sent'")
        [ "$set" = insert ] || [ "$left" -eq 0 ] || bench_die "$set: $left rows not sent"
        us=$(echo "($(cat "$W/t1") - $(cat "$W/t0")) * 1000000 / $TICK / $N" | bc -l)
        printf '%s run %d: %.1f us of PostgreSQL CPU per message (wall %.1f s)\n' "$set" "$run" "$us" "$wall"
        echo "$us" >>"$W/$set.us"
        run=$((run + 1))
    done
done

echo
echo "| write set | PostgreSQL CPU per message (median of $RUNS) |"
echo "| --- | --- |"
for set in minimum insert; do
    printf '| %s | %.1f us |\n' "$set" "$(median <"$W/$set.us")"
done
