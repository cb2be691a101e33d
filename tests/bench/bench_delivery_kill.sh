#!/bin/sh
# bench_delivery_kill.sh - issue 4's fault run: kill -9 of a worker in the
# middle of a big bulk send, then a replacement; nothing lost, duplicates
# bounded by what was in flight.
#   tests/bench/bench_delivery_kill.sh [messages]    (default 100,000)
#   KILL_WHAT=postgres tests/bench/bench_delivery_kill.sh [messages]
# With KILL_WHAT=postgres the crash is PostgreSQL's instead (`pg_ctl stop
# -m immediate`: no shutdown checkpoint, recovery from the WAL at the next
# start), down for KILL_RESTART_DELAY_S, then started again with the same
# options; the broker, workers and API node stay up and must find their
# way back on their own.
#
# Two workers relay to one smtp-sink that dumps every transaction to its
# own file. N contacts over 8 recipient domains get one bulk send
# (POST /messages with to_list). Once about a third of the rows is 'sent',
# worker 1 gets SIGKILL and a replacement starts with the same settings
# (node id included, as a supervisor's restart would). Rows the dead worker
# held come back when their lease (delivery_lease_s, KILL_LEASE_S, default
# 20 s) runs out. At the end the sink's files are tallied by recipient
# (X-Rcpt-Args; every row has its own recipient) and only files holding the
# body's last line count as received.
#
# Prints: rows, rows sent, messages received, distinct recipients,
# duplicates (received - rows), transactions cut short, and the rows in
# flight at the kill ('sending' just before and just after it: rows the
# dead worker held stay 'sending' until their lease ends, so the larger is
# an upper bound). Exits 1 when a row is not 'sent' within the timeout
# (KILL_TIMEOUT_S, default 600 + messages/100), a recipient never arrived,
# or duplicates exceed the rows in flight at the kill.
# Knobs: KILL_LEASE_S, KILL_TIMEOUT_S, KILL_FRACTION (default 3: kill at
# 1/3 sent), KILL_RESTART_DELAY_S (1), KILL_NODE_ID (the replacement's node
# id, default bw1 = the killed one's), BENCH_SESSIONS (8 in all),
# BENCH_BUILD (build-bench).
set -eu
cd "$(dirname "$0")/../.."
N=${1:-100000}
LEASE=${KILL_LEASE_S:-20}
TIMEOUT=${KILL_TIMEOUT_S:-$((600 + N / 100))}
FRACTION=${KILL_FRACTION:-3}
RESTART_DELAY=${KILL_RESTART_DELAY_S:-1}
NEW_NODE=${KILL_NODE_ID:-bw1}
WHAT=${KILL_WHAT:-worker}
[ "$WHAT" = worker ] || [ "$WHAT" = postgres ] || { echo "KILL_WHAT is worker or postgres" >&2; exit 2; }
SESSIONS=${BENCH_SESSIONS:-8}
[ "$N" -ge 10 ] || { echo "usage: $0 [messages >= 10]" >&2; exit 2; }
END_MARK=END-OF-BULK-BODY

. tests/bench/delivery_env.sh
bench_init "${BENCH_BUILD:-build-bench}"
echo "bench_delivery_kill: $N messages, lease $LEASE s, kill of the $WHAT at 1/$FRACTION sent; logs in $W"

SINK=$(free_port)
bench_sink sink "$SINK" "$W/mail"
bench_broker
PER_WORKER=$((SESSIONS / 2))
bench_worker worker1 bw1 "$SINK" "$PER_WORKER" POSTCHI_DELIVERY_LEASE_S="$LEASE"
W1=$LAST_PID
bench_worker worker2 bw2 "$SINK" "$PER_WORKER" POSTCHI_DELIVERY_LEASE_S="$LEASE"
W2=$LAST_PID
bench_api
bench_wait_live 2
bench_account
bench_domain send.example both >/dev/null

# N contacts over 8 recipient domains, one list.
LIST=$(sql "WITH c AS (INSERT INTO contacts (organization_id, email)
             SELECT '$ORG', 'k' || i || '@d' || (i % 8) || '.example'
               FROM generate_series(1, $N) i RETURNING id),
           l AS (INSERT INTO lists (organization_id, name) VALUES ('$ORG', 'kill') RETURNING id),
           m AS (INSERT INTO list_members (organization_id, list_id, contact_id)
                 SELECT '$ORG', l.id, c.id FROM l, c RETURNING list_id)
           SELECT id FROM l")
sql "VACUUM ANALYZE" >/dev/null

count() { # rows of the batch in a status, or all of them (index messages_batch)
    if [ -n "${1:-}" ]; then
        sql "SELECT count(*) FROM messages WHERE batch_id = '$BATCH' AND status = '$1'"
    else
        sql "SELECT count(*) FROM messages WHERE batch_id = '$BATCH'"
    fi
}

T0=$(date +%s.%N)
curl -sf "$U/messages" -H "Authorization: Bearer $KEY" -H "$J" -H 'Expect:' \
    -d "{\"from\":{\"email\":\"bulk@send.example\"},\"to_list\":\"$LIST\",\"subject\":\"kill run\",\"text\":\"Hello from the kill run.\\n$END_MARK\"}" \
    >"$W/post.json" || bench_die "the bulk POST failed"
BATCH=$(jfield batch_id <"$W/post.json")
# The send is written in steps (bulk_chunk) by a tenant actor, which may be
# on the worker about to die: the last check is one row per contact.
echo "accepted: $(count) rows so far ($(cat "$W/post.json"))"

# Until a third is sent: a short psql every 0.1 s (a server-side DO loop
# would hold one snapshot, and so every dead row version, until the kill).
KILL_AT=$((N / FRACTION))
DEADLINE=$(($(date +%s) + TIMEOUT))
while [ "$(count sent)" -lt "$KILL_AT" ] && [ "$(date +%s)" -lt "$DEADLINE" ]; do
    sleep 0.1
done
BEFORE=$(count sending)
if [ "$WHAT" = worker ]; then
    kill -9 "$W1"
    wait "$W1" 2>/dev/null || true
    PIDS=$(echo "$PIDS" | tr ' ' '\n' | grep -vx "$W1" | tr '\n' ' ')
    AFTER=$(count sending)
    SENT_AT_KILL=$(count sent)
    T_KILL=$(date +%s.%N)
    echo "kill -9 worker 1 (pid $W1) with $SENT_AT_KILL of $N sent; 'sending' $BEFORE just before, $AFTER just after"
    [ "$SENT_AT_KILL" -lt "$N" ] || bench_die "every row was sent before the kill: nothing in flight to test (use more messages)"
    sleep "$RESTART_DELAY"
    bench_worker worker1b "$NEW_NODE" "$SINK" "$PER_WORKER" POSTCHI_DELIVERY_LEASE_S="$LEASE"
    W1B=$LAST_PID
    echo "replacement worker (node id $NEW_NODE, pid $W1B) started $RESTART_DELAY s after the kill"
else
    PGD=$(cat "$S/data.path")
    as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    as_pg /usr/lib/postgresql/15/bin/pg_ctl -D "$PGD/pg" -m immediate -w stop >/dev/null ||
        bench_die "pg_ctl stop -m immediate failed"
    T_KILL=$(date +%s.%N)
    echo "PostgreSQL crashed (pg_ctl stop -m immediate) at about $KILL_AT of $N sent; 'sending' $BEFORE just before"
    sleep "$RESTART_DELAY"
    # restart reuses postmaster.opts: the port and socket directory of before.
    as_pg /usr/lib/postgresql/15/bin/pg_ctl -D "$PGD/pg" -w -t 60 -l "$PGD/log/postgresql.log" restart >"$W/pg_restart.log" 2>&1 ||
        bench_die "PostgreSQL did not start again: $(tail -3 "$PGD/log/postgresql.log")"
    AFTER=$(count sending)
    SENT_AT_KILL=$(count sent)
    echo "PostgreSQL up again after $(python3 -c "print(round($(date +%s.%N) - $T_KILL, 1))") s (down $RESTART_DELAY s, then WAL recovery): $SENT_AT_KILL sent, $AFTER sending"
    W1B=$W1
fi

# Until every row is sent (progress every 5 s; a psql every 2 s).
DEADLINE=$(($(date +%s) + TIMEOUT))
last=0
while :; do
    SENT=$(count sent)
    [ "$SENT" -ge "$N" ] && break
    [ "$(date +%s)" -lt "$DEADLINE" ] || break
    kill -0 "$W2" 2>/dev/null || bench_die "worker 2 died: $(tail -3 "$W/worker2.log")"
    kill -0 "$W1B" 2>/dev/null || bench_die "worker 1 (or its replacement) died"
    now=$(date +%s)
    if [ $((now - last)) -ge 5 ]; then
        echo "  $(python3 -c "print(round($(date +%s.%N) - $T_KILL))") s after the kill: $SENT sent, $(count sending) sending, live workers $(bench_live)"
        last=$now
    fi
    sleep 2
done
T_END=$(date +%s.%N)
ROWS=$(count)
MEMBERS=$(sql "SELECT count(DISTINCT contact_id) FROM messages WHERE batch_id = '$BATCH'")
[ "$ROWS" -eq "$N" ] && [ "$MEMBERS" -eq "$N" ] || bench_die "$ROWS rows for $MEMBERS of $N contacts"
LEFT=$(sql "SELECT coalesce(string_agg(status || '=' || n, ','), 'none') FROM (SELECT status, count(*) n
             FROM messages WHERE batch_id = '$BATCH' AND status <> 'sent' GROUP BY status) s")
REDRIVEN=$(sql "SELECT count(*) FROM messages WHERE batch_id = '$BATCH' AND attempts > 1")
ATTEMPTS=$(sql "SELECT coalesce(string_agg(attempts || ':' || n, ' '), '') FROM (SELECT attempts, count(*) n
                 FROM messages WHERE batch_id = '$BATCH' GROUP BY attempts ORDER BY attempts) s")
echo "all rows sent after $(python3 -c "print(round($T_END - $T0, 1))") s (from the POST; $(python3 -c "print(round($T_END - $T_KILL, 1))") s after the kill); not sent: $LEFT; rows by attempts: $ATTEMPTS (re-driven after the kill: $REDRIVEN)"
MULTI=$(sql "SELECT count(*) FROM messages WHERE batch_id = '$BATCH' AND attempts > 2")
[ "$MULTI" -eq 0 ] || echo "WARNING: $MULTI rows were claimed more than twice: a lease ($LEASE s) ran out on a live worker (claims run ahead of delivery by more than the lease), a source of duplicates the kill did not cause"

# The sink's files: every transaction in flight has ended by now (the
# outcome is recorded after the 250), give it a moment to close its files.
sleep 1
python3 - "$W/mail" "$END_MARK" "$N" "$SENT" "$BEFORE" "$AFTER" <<'PY' || RC=$?
import os, sys
d, mark, n, sent, before, after = sys.argv[1], sys.argv[2].encode(), *map(int, sys.argv[3:])
seen, complete, partial = {}, 0, 0
with os.scandir(d) as it:
    for e in it:
        with open(e.path, "rb") as f:
            data = f.read()
        i = data.find(b"X-Rcpt-Args: ")
        if i < 0 or mark not in data:
            partial += 1
            continue
        j = data.find(b"\n", i)
        r = data[i + 13:j].strip()
        complete += 1
        seen[r] = seen.get(r, 0) + 1
inflight = max(before, after)
dups = complete - n
print("rows %d, sent %d; sink: %d received (complete), %d distinct recipients, %d duplicates"
      " (received - rows), %d cut short; in flight at the kill: %d" % (
          n, sent, complete, len(seen), dups, partial, inflight))
bad = []
if sent != n:
    bad.append("%d rows not sent" % (n - sent))
if len(seen) != n:
    bad.append("%d recipients never received" % (n - len(seen)))
if dups > inflight:
    bad.append("%d duplicates exceed the %d rows in flight at the kill" % (dups, inflight))
print("FAIL: " + "; ".join(bad) if bad else "OK: every row sent once at least, duplicates within"
      " the rows in flight at the kill")
sys.exit(1 if bad else 0)
PY
RC=${RC:-0}

# Errors the processes logged, and the survivors must stop cleanly.
for f in "$W"/worker1.log "$W"/worker2.log "$W"/worker1b.log "$W"/api.log "$W"/broker.log; do
    [ -f "$f" ] || continue
    n=$(grep -c 'level=error\|level=fatal' "$f" || true)
    w=$(grep -c 'level=warn' "$f" || true)
    [ "$n" -eq 0 ] && [ "$w" -eq 0 ] || { echo "bench: $(basename "$f"): $n error and $w warning lines, first:"; grep -m3 'level=error\|level=fatal\|level=warn' "$f"; }
done
bench_stop "$W2" || { echo "bench: worker 2 exited with status $? on SIGTERM"; RC=1; }
bench_stop "$W1B" || { echo "bench: worker 1 (or its replacement) exited with status $? on SIGTERM"; RC=1; }
exit "$RC"
