#!/bin/sh
# bench_api_contacts.sh - the contacts API under load, on loopback:
#   tests/bench/bench_api_contacts.sh [build dir]
# Starts PostgreSQL/Redis (tests/integration/servers.sh), then postchi
# migrate, a broker, a worker and an API node (api_threads=8, rate limits
# out of the way), registers an organization and creates a full API key,
# and measures:
#   (a) GET /api/v1/contacts/{id}: wrk, 2 threads, 64 connections
#       (target >= 10,000 req/s, p99 < 20 ms);
#   (b) POST /api/v1/contacts single upserts of new addresses: wrk + Lua
#       (target >= 3,000/s);
#   (c) 1,000,000 contacts through 100 POST /api/v1/contacts/batch calls of
#       10,000 rows, PARALLEL at a time (target < 30 s in total).
# BENCH_SECONDS (default 15) sets the wrk duration, PARALLEL (default 2) the
# batch concurrency. curl is told not to send "Expect: 100-continue" (it does
# for bodies over 1 MiB and then waits 1 s for an interim answer). wrk and the servers share the machine's cores, so the
# figures are a floor for a dedicated API host. Figures go to stdout.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
B=${1:-build-bench}
SECS=${BENCH_SECONDS:-15}
PAR=${PARALLEL:-2}
command -v wrk >/dev/null || { echo "bench_api_contacts: wrk is not installed" >&2; exit 1; }

cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$B" -j2 --target postchi >/dev/null
BIN=$ROOT/$B/postchi
S=$ROOT/$B/bench-servers
W=$(mktemp -d /tmp/postchi-bench.XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    POSTCHI_BIN=$BIN "$ROOT/tests/integration/servers.sh" stop "$S" >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM
SERVERS_DURABLE=1 POSTCHI_BIN=$BIN tests/integration/servers.sh start "$S" >/dev/null

# servers.env is KEY=VALUE lines.
. "$S/servers.env"
set -- $(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
BROKER_PORT=$1 BROKER_METRICS=$2 WORKER_METRICS=$3 API_PORT=$4
export POSTCHI_PG_HOST=$PG_HOST POSTCHI_PG_PORT=$PG_PORT POSTCHI_PG_USER=$PG_USER \
       POSTCHI_PG_DATABASE=$PG_DATABASE POSTCHI_REDIS_HOST=$REDIS_HOST \
       POSTCHI_REDIS_PORT=$REDIS_PORT POSTCHI_BROKER_ENDPOINT=tcp://127.0.0.1:$BROKER_PORT \
       POSTCHI_JWT_SECRET=bench-secret-0123456789abcdef0123456789abcdef \
       POSTCHI_SECRET_KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff \
       POSTCHI_LOG_LEVEL=warn
"$BIN" migrate >"$W/migrate.log" 2>&1
POSTCHI_NODE_ID=broker POSTCHI_METRICS_PORT=$BROKER_METRICS "$BIN" broker >"$W/broker.log" 2>&1 &
PIDS="$PIDS $!"
POSTCHI_NODE_ID=w0 POSTCHI_METRICS_PORT=$WORKER_METRICS "$BIN" worker >"$W/worker.log" 2>&1 &
PIDS="$PIDS $!"
POSTCHI_NODE_ID=api0 POSTCHI_API_PORT=$API_PORT POSTCHI_API_THREADS=8 \
    POSTCHI_RATE_LIMIT_RPS=1000000 POSTCHI_RATE_LIMIT_BURST=1000000 \
    "$BIN" api >"$W/api.log" 2>&1 &
PIDS="$PIDS $!"
URL=http://127.0.0.1:$API_PORT
i=0
until curl -sf "$URL/readyz" >/dev/null; do
    i=$((i + 1))
    [ $i -lt 150 ] || { echo "bench_api_contacts: API not ready" >&2; cat "$W/api.log" >&2; exit 1; }
    sleep 0.1
done

json_get() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
TOKEN=$(curl -sf -X POST -H 'Content-Type: application/json' "$URL/api/v1/auth/register" \
    -d '{"email":"bench@example.com","password":"correct horse battery","organization":"Bench"}' |
    json_get 'd["token"]')
KEY=$(curl -sf -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
    "$URL/api/v1/api-keys" -d '{"name":"bench","scope":"full"}' | json_get 'd["key"]')
AUTH="Authorization: Bearer $KEY"
ID=$(curl -sf -X POST -H 'Content-Type: application/json' -H "$AUTH" "$URL/api/v1/contacts" \
    -d '{"email":"ada@bench.example.com","fields":{"first_name":"Ada","plan":"pro"}}' |
    json_get 'd["id"]')

# wrk output -> "req/s p99 non2xx"
wrk_figures() {
    awk '/Requests\/sec/ {r=$2} / 99% / {p=$2} /Non-2xx/ {e=$NF} END {print r, p, (e==""?0:e)}' "$1"
}

echo "== (a) GET /api/v1/contacts/{id}: wrk -t2 -c64 -d${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --latency -H "$AUTH" "$URL/api/v1/contacts/$ID" >"$W/get.txt"
set -- $(wrk_figures "$W/get.txt")
echo "   $1 req/s, p99 $2, non-2xx $3   (target >= 10000 req/s, p99 < 20ms)"

echo "== (b) POST /api/v1/contacts single upserts: wrk -t2 -c64 -d${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --latency -H "$AUTH" -s tests/bench/bench_api_contacts.lua \
    "$URL" >"$W/post.txt"
set -- $(wrk_figures "$W/post.txt")
echo "   $1 upserts/s, p99 $2, non-2xx $3   (target >= 3000/s)"

echo "== (c) 1,000,000 contacts: 100 x POST /api/v1/contacts/batch of 10,000, $PAR at a time"
python3 - "$W" <<'PY'
import json, sys
for f in range(100):
    rows = [{"email": "imp%07d@import.example.com" % (f * 10000 + i),
             "fields": {"first_name": "N%d" % i, "plan": "free", "score": i % 97}}
            for i in range(10000)]
    with open("%s/batch%03d.json" % (sys.argv[1], f), "w") as out:
        json.dump({"contacts": rows}, out)
PY
start=$(date +%s.%N)
ls "$W"/batch*.json | xargs -P "$PAR" -I{} sh -c \
    'curl -s -o {}.out -w "%{http_code} %{time_total}\n" -X POST -H "Content-Type: application/json" -H "Expect:" \
         -H "$0" --data-binary @{} "$1/api/v1/contacts/batch"' "$AUTH" "$URL" >"$W/codes.txt"
end=$(date +%s.%N)
created=$(cat "$W"/batch*.json.out | python3 -c '
import json, sys
dec = json.JSONDecoder(); s = sys.stdin.read(); i = 0; n = 0
while i < len(s):
    while i < len(s) and s[i].isspace(): i += 1
    if i >= len(s): break
    d, i = dec.raw_decode(s, i); n += d.get("created", 0)
print(n)')
bad=$(grep -vc "^200 " "$W/codes.txt" || true)
secs=$(echo "$start $end" | awk '{printf "%.2f", $2 - $1}')
rate=$(echo "$start $end $created" | awk '{printf "%.0f", $3 / ($2 - $1)}')
echo "   $created created in ${secs}s ($rate contacts/s), non-200 calls: $bad   (target < 30 s)"
stored=$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DATABASE" -Atc \
    "SELECT count(*) FROM contacts WHERE email LIKE 'imp%'" 2>/dev/null || echo "?")
echo "   rows in contacts: $stored"
awk '{t[NR] = $2} END {f = 0; l = 0; for (i = 1; i <= 10; i++) {f += t[i]; l += t[NR - i + 1]}
     printf "   seconds per call: first 10 average %.2f, last 10 average %.2f\n", f / 10, l / 10}' \
    "$W/codes.txt"
