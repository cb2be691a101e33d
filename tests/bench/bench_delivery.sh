#!/bin/sh
# bench_delivery.sh - end-to-end delivery throughput, from API acceptance to
# the SMTP server's receipt, with PostgreSQL durability, beside its
# baselines measured in the same run:
#   tests/bench/bench_delivery.sh [messages] [build dir]
# - Postfix's smtp-source sending the same message size to the same
#   smtp-sink with the same session count;
# - `openssl speed rsa2048` sign/s (every message carries an RSA-2048 and an
#   Ed25519 signature; RSA is the floor of the cost).
# Postchi: broker, 2 workers (relay = the sink), API; N contacts on a list,
# one bulk send (POST /messages with to_list); time from the POST to the
# last row recorded 'sent'. Prints the rates and ratios.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-20000}
B=${2:-build-bench}
SIZE=2048
SESSIONS=4

cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$B" -j2 --target postchi >/dev/null
BIN=$ROOT/$B/postchi
S=$ROOT/$B/bench-delivery-servers
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
. "$S/servers.env"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SINK=$(free_port)
/usr/sbin/smtp-sink -u nobody -c 127.0.0.1:$SINK 1000 >/dev/null 2>&1 &
PIDS="$PIDS $!"
sleep 0.3

echo "== baseline: smtp-source, $N messages of $SIZE bytes, $SESSIONS sessions"
t0=$(date +%s.%N)
/usr/sbin/smtp-source -s $SESSIONS -m "$N" -l $SIZE -c -f bench@send.example -t rcpt@dest.example \
    127.0.0.1:$SINK >/dev/null
t1=$(date +%s.%N)
SRC_RATE=$(python3 -c "print(round($N/($t1-$t0)))")
echo "smtp-source: $SRC_RATE msg/s"

echo "== baseline: openssl speed rsa2048 (sign/s, one core)"
RSA=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print $6}')
echo "openssl rsa2048: $RSA sign/s per core; target for both signatures: 0.6 x 2 cores = $(python3 -c "print(round(0.6*2*$RSA))") msg/s"

PG="host=$PG_HOST port=$PG_PORT user=$PG_USER dbname=$PG_DATABASE"
env POSTCHI_PG_PORT=$PG_PORT POSTCHI_REDIS_PORT=$REDIS_PORT "$BIN" migrate >/dev/null
BROKER=$(free_port)
API=$(free_port)
COMMON="POSTCHI_PG_PORT=$PG_PORT POSTCHI_REDIS_PORT=$REDIS_PORT POSTCHI_BROKER_ENDPOINT=tcp://127.0.0.1:$BROKER POSTCHI_LOG_LEVEL=warn"
KEYHEX=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
env $COMMON "$BIN" broker >"$W/broker.log" 2>&1 &
PIDS="$PIDS $!"
for i in 1 2; do
    env $COMMON POSTCHI_NODE_ID=bw$i POSTCHI_SMTP_RELAY=127.0.0.1:$SINK POSTCHI_SECRET_KEY=$KEYHEX \
        POSTCHI_DELIVERY_CONNECTIONS=$SESSIONS POSTCHI_SHAPING_RATE=1000000 POSTCHI_SHAPING_BURST=1000000 "$BIN" worker >"$W/worker$i.log" 2>&1 &
    PIDS="$PIDS $!"
done
env $COMMON POSTCHI_API_PORT=$API POSTCHI_JWT_SECRET=bench-secret-0123456789abcdef0123456789 \
    POSTCHI_SECRET_KEY=$KEYHEX POSTCHI_RATE_LIMIT_RPS=1000000 POSTCHI_RATE_LIMIT_BURST=1000000 \
    "$BIN" api >"$W/api.log" 2>&1 &
PIDS="$PIDS $!"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$API/readyz" >/dev/null && break; sleep 0.2; done

U="http://127.0.0.1:$API/api/v1"
J='Content-Type: application/json'
TOKEN=$(curl -s "$U/auth/register" -H "$J" -d '{"email":"bench@example.com","password":"bench password 1","organization":"Bench"}' |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])')
KEY=$(curl -s "$U/api-keys" -H "Authorization: Bearer $TOKEN" -H "$J" -d '{"name":"b","scope":"full"}' |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["key"])')
DID=$(curl -s "$U/domains" -H "Authorization: Bearer $KEY" -H "$J" -d '{"name":"send.example"}' |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
psql "$PG" -qc "UPDATE domains SET status = 'verified' WHERE id = '$DID'"
LID=$(curl -s "$U/lists" -H "Authorization: Bearer $KEY" -H "$J" -d '{"name":"all"}' |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
python3 - "$N" "$U" "$KEY" "$LID" <<'PY'
import json, sys, urllib.request
n, u, key, lid = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
for start in range(0, n, 10000):
    emails = ["r%d@dest.example" % i for i in range(start, min(n, start + 10000))]
    req = urllib.request.Request(u + "/lists/" + lid + "/contacts", json.dumps({"emails": emails}).encode(), h)
    urllib.request.urlopen(req).read()
PY
BODY=$(python3 -c "print('x' * ($SIZE - 600))")
echo "== postchi: $N messages of about $SIZE bytes signed Ed25519 + RSA-2048, bulk send to a list"
t0=$(date +%s.%N)
curl -s "$U/messages" -H "Authorization: Bearer $KEY" -H "$J" -H 'Expect:' \
    -d "{\"from\":{\"email\":\"news@send.example\"},\"to_list\":\"$LID\",\"subject\":\"Bench\",\"text\":\"$BODY\"}" >/dev/null
while :; do
    SENT=$(psql "$PG" -tAc "SELECT count(*) FROM messages WHERE status = 'sent'")
    [ "$SENT" -ge "$N" ] && break
    sleep 0.2
done
t1=$(date +%s.%N)
RATE=$(python3 -c "print(round($N/($t1-$t0)))")
echo "postchi: $RATE msg/s (acceptance to receipt, durable)"
echo "ratio to smtp-source: $(python3 -c "print(round($RATE/$SRC_RATE, 2))") (target >= 0.5 with Ed25519 only)"
echo "ratio to 2 cores of rsa2048 signing: $(python3 -c "print(round($RATE/(2*$RSA), 2))") (target >= 0.6)"
