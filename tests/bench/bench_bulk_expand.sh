#!/bin/sh
# bench_bulk_expand.sh - a bulk send to one list of N contacts (default
# 1,000,000), PostgreSQL durable:
#   tests/bench/bench_bulk_expand.sh [contacts]
# Reports how long the POST took (the batch and its first step of
# bulk_chunk members, BENCH_CHUNK to change it) and how long until every
# member has its row (status 'expanded'), and checks there is one row per
# member. The send is scheduled far ahead, so this measures writing the
# outbox alone, not delivery (bench_delivery.sh measures that).
#
# Set-up: PostgreSQL + Redis (servers.sh, durable), a broker, one worker
# (its tenant actor writes the steps), an API node; contacts written in SQL.
# Every process is stopped on exit, failure included (delivery_env.sh).
set -eu
cd "$(dirname "$0")/../.."
N=${1:-1000000}
[ "$N" -gt 0 ] || { echo "usage: $0 [contacts > 0]" >&2; exit 2; }
CHUNK=${BENCH_CHUNK:-5000}
. tests/bench/delivery_env.sh
bench_init "${BENCH_BUILD:-build-bench}"
echo "bench_bulk_expand: $(nproc) CPUs, $(uname -r); logs in $W"
SINK=$(free_port)
bench_sink sink "$SINK"
bench_broker
bench_worker worker1 bw1 "$SINK" 4 POSTCHI_BULK_CHUNK="$CHUNK"
COMMON="$COMMON POSTCHI_BULK_CHUNK=$CHUNK"
bench_api
bench_wait_live 1
bench_account
bench_domain send.example both >/dev/null
echo "== set-up: a list of $N contacts (SQL, not measured)"
LIST=$(bench_list big "$N" dest.example)
sql "VACUUM ANALYZE" >/dev/null

echo "== POST /messages to_list ($N members, bulk_chunk $CHUNK, send_at next year)"
T0=$(python3 -c 'import time; print(time.time())')
curl -sf "$U/messages" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d "{\"from\":{\"email\":\"news@send.example\"},\"to_list\":\"$LIST\",\"subject\":\"Big\",
         \"text\":\"Hello\",\"send_at\":\"$(date -u -d '+1 year' +%Y-%m-%dT%H:%M:%SZ)\"}" >"$W/post.json"
T1=$(python3 -c 'import time; print(time.time())')
BATCH=$(jfield batch_id <"$W/post.json")
echo "  202 after $(python3 -c "print('%.2f' % ($T1 - $T0))") s: $(cat "$W/post.json")"
# Polled (a server-side DO loop would hold one snapshot for the whole run).
DEADLINE=$(($(date +%s) + 900))
while [ "$(sql "SELECT status FROM batches WHERE id = '$BATCH'")" = expanding ] &&
    [ "$(date +%s)" -lt "$DEADLINE" ]; do
    sleep 0.2
done
STATUS=$(sql "SELECT status || ' ' || total || ' ' || extract(epoch FROM updated_at) FROM batches WHERE id = '$BATCH'")
set -- $STATUS
[ "$1" = expanded ] || bench_die "the batch is still $1 after 900 s ($2 rows)"
ROWS=$(sql "SELECT count(*) FROM messages WHERE batch_id = '$BATCH'")
MEMBERS=$(sql "SELECT count(DISTINCT contact_id) FROM messages WHERE batch_id = '$BATCH'")
[ "$ROWS" = "$N" ] && [ "$MEMBERS" = "$N" ] || bench_die "$ROWS rows for $MEMBERS members, expected $N"
# What a client polling the batch's progress waits for (GET, 5 times).
sql "VACUUM ANALYZE messages" >/dev/null
GETS=$(for i in 1 2 3 4 5; do
    curl -sf -o /dev/null -w '%{time_total}\n' "$U/messages/batches/$BATCH" -H "Authorization: Bearer $KEY"
done | sort -n | sed -n 3p)
echo "  GET /messages/batches/{id} (counts by status of $N rows): median $GETS s of 5"
python3 - "$T0" "$T1" "$3" "$N" "$CHUNK" <<'PY'
import sys
t0, t1, done, n, chunk = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print("  every member has its row %.1f s after the POST: %.0f rows/s, one row per member" % (done - t0, n / (done - t0)))
print()
print("| members | bulk_chunk | 202 after | whole after | rows/s |")
print("| --- | --- | --- | --- | --- |")
print("| %d | %d | %.2f s | %.1f s | %.0f |" % (n, chunk, t1 - t0, done - t0, n / (done - t0)))
PY
