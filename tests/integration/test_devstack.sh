#!/bin/sh
# test_devstack.sh - `postchi up` / `postchi down` end to end, on their own
# data dir and free ports (independent of the servers fixture):
#   - up --services-only starts PostgreSQL, Redis and smtp-sink that answer;
#   - a second up succeeds and reuses them (same postmaster and Redis pids);
#   - a mail sent with smtp-source lands as a file under data/mail;
#   - up with the mesh (one worker) opens the worker's return-path listener
#     on up_inbound_port (it answers SMTP), and a third up reuses the mesh;
#   - the README's first steps: a domain verifies without DNS in the dev
#     stack and a message sent through the API lands signed in data/mail;
#   - down leaves alone a pid file whose pid runs some other program;
#   - down stops everything, and a second down exits 0;
#   - a bad setting stops up with a message naming the setting.
# A trap always runs down, so a failing check leaves no server behind.
set -eu

bin=${POSTCHI_BIN:?POSTCHI_BIN must name the postchi binary}
tmp=$(mktemp -d /tmp/postchi-devstack.XXXXXX)
chmod 755 "$tmp" # the postgres user must reach data/pg
data=$tmp/data
decoy=

cleanup() {
    "$bin" down --data-dir "$data" >/dev/null 2>&1 || true
    [ -z "$decoy" ] || kill "$decoy" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
# Alive and not a zombie (a container's pid 1 may never reap them).
alive() {
    st=$(ps -o stat= -p "$1" 2>/dev/null || true)
    case $st in "" | Z*) return 1 ;; *) return 0 ;; esac
}

# Six free ports, then a base for three consecutive status ports, all three
# checked free and taken below the kernel's ephemeral range (32768 and up),
# so no port another test gets by binding port 0 can land on them.
set -- $(python3 -c '
import random, socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
while True:
    base = random.randrange(20000, 30000)
    trial = [socket.socket() for _ in range(3)]
    try:
        for i, t in enumerate(trial):
            t.bind(("127.0.0.1", base + i))
        break
    except OSError:
        pass
    finally:
        for t in trial:
            t.close()
print(" ".join(str(s.getsockname()[1]) for s in socks), base)')
export POSTCHI_PG_PORT=$1 POSTCHI_REDIS_PORT=$2 POSTCHI_SMTP_SINK_PORT=$3
export POSTCHI_PG_USER=postchi POSTCHI_PG_DATABASE=devstack_test
# The mesh: one worker; the status ports are up_metrics_port + 0..2.
export POSTCHI_UP_WORKERS=1 POSTCHI_UP_INBOUND_PORT=$4 POSTCHI_API_PORT=$5
export POSTCHI_BROKER_ENDPOINT=tcp://127.0.0.1:$6 POSTCHI_UP_METRICS_PORT=$7

echo "== up (first)"
"$bin" up --services-only --no-sync --data-dir "$data" > "$tmp/up1.out" || fail "first up failed"
cat "$tmp/up1.out"
grep -q "stop with: postchi down --data-dir $data" "$tmp/up1.out" || fail "summary lacks the stop hint"
pg1=$(head -1 "$data/pg/postmaster.pid")
redis1=$(cat "$data/run/redis.pid")
sink1=$(cat "$data/run/smtp-sink.pid")
alive "$pg1" && alive "$redis1" && alive "$sink1" || fail "a server is not running after up"

[ "$(psql -h 127.0.0.1 -p "$POSTCHI_PG_PORT" -U postchi -d devstack_test -tAc 'select 42')" = 42 ] \
    || fail "PostgreSQL does not answer in database devstack_test"
[ "$(redis-cli -h 127.0.0.1 -p "$POSTCHI_REDIS_PORT" ping)" = PONG ] || fail "Redis does not answer"

echo "== up (second: must reuse)"
"$bin" up --services-only --data-dir "$data" > "$tmp/up2.out" 2> "$tmp/up2.err" \
    || { cat "$tmp/up2.err"; fail "second up failed"; }
[ "$(head -1 "$data/pg/postmaster.pid")" = "$pg1" ] || fail "second up restarted PostgreSQL"
[ "$(cat "$data/run/redis.pid")" = "$redis1" ] || fail "second up restarted Redis"
[ "$(cat "$data/run/smtp-sink.pid")" = "$sink1" ] || fail "second up restarted smtp-sink"
grep -q "already runs" "$tmp/up2.err" || fail "second up did not say it reused the servers"

echo "== mail to the sink"
/usr/sbin/smtp-source -s 1 -m 1 -c -f a@x -t b@y "127.0.0.1:$POSTCHI_SMTP_SINK_PORT" \
    || fail "smtp-source could not deliver"
found=
for _ in $(seq 50); do
    found=$(grep -rl 'b@y' "$data/mail" 2>/dev/null | head -1 || true)
    [ -n "$found" ] && break
    sleep 0.1
done
[ -n "$found" ] || fail "no mail file under $data/mail"
echo "mail captured in $found"

echo "== up with the mesh: the worker listens for bounces"
"$bin" up --data-dir "$data" > "$tmp/up3.out" 2> "$tmp/up3.err" \
    || { cat "$tmp/up3.err"; tail -n 20 "$data"/log/*.log; fail "up with the mesh failed"; }
cat "$tmp/up3.out"
grep -q "bounces smtp://127.0.0.1:$POSTCHI_UP_INBOUND_PORT" "$tmp/up3.out" \
    || fail "summary does not say where bounces go"
greeting=
for _ in $(seq 100); do
    greeting=$(python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
print(s.recv(200).decode(errors="replace").strip())' "$POSTCHI_UP_INBOUND_PORT" 2>/dev/null || true)
    [ -n "$greeting" ] && break
    sleep 0.1
done
case $greeting in 220*) echo "inbound listener: $greeting" ;;
    *) tail -n 20 "$data/log/worker-1.log"; fail "no SMTP greeting on up_inbound_port" ;; esac
worker1=$(cat "$data/run/worker-1.pid")
"$bin" up --data-dir "$data" > /dev/null 2> "$tmp/up4.err" || { cat "$tmp/up4.err"; fail "third up failed"; }
[ "$(cat "$data/run/worker-1.pid")" = "$worker1" ] || fail "third up restarted the worker"

echo "== first steps: a domain verified in the dev stack, a message in data/mail"
# The README's flow: register, an API key, a domain (verify needs no DNS in
# the dev stack), a send; the signed message lands as a file.
python3 - "$POSTCHI_API_PORT" "$data/mail" <<'PY' || fail "the first send did not reach data/mail"
import json, os, sys, time, urllib.request
port, maildir = sys.argv[1], sys.argv[2]
u = "http://127.0.0.1:%s/api/v1" % port
def call(path, body, auth=None):
    h = {"Content-Type": "application/json"}
    if auth:
        h["Authorization"] = "Bearer " + auth
    req = urllib.request.Request(u + path, json.dumps(body).encode(), h)
    return json.load(urllib.request.urlopen(req, timeout=10))
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:%s/readyz" % port, timeout=2)
        break
    except Exception:
        time.sleep(0.1)
tok = call("/auth/register", {"email": "dev@example.com", "password": "a long password",
                              "organization": "Dev"})["token"]
key = call("/api-keys", {"name": "dev", "scope": "full"}, tok)["key"]
dom = call("/domains", {"name": "first.example"}, key)
ver = call("/domains/%s/verify" % dom["id"], {}, key)
assert ver["status"] == "verified", ver
call("/messages", {"from": {"email": "hello@first.example"}, "to": "ada@example.com",
                   "subject": "first-steps-check", "text": "Hello from the dev stack"}, key)
deadline = time.time() + 20
while time.time() < deadline:
    for root, _, files in os.walk(maildir):
        for f in files:
            body = open(os.path.join(root, f), errors="replace").read()
            if "first-steps-check" in body and "DKIM-Signature:" in body:
                print("delivered and signed:", os.path.join(root, f))
                sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
PY

echo "== down ignores a pid file naming another program"
sleep 300 &
decoy=$!
echo "$decoy" > "$data/run/worker-9.pid"

echo "== down"
"$bin" down --data-dir "$data" || fail "down failed"
for p in "$pg1" "$redis1" "$sink1" "$worker1"; do
    alive "$p" && fail "pid $p still runs after down"
done
alive "$decoy" || fail "down killed pid $decoy which is not a postchi worker"
ls "$data"/run/*.pid 2>/dev/null && fail "pid files left after down"
"$bin" down --data-dir "$data" || fail "second down did not exit 0"

echo "== bad setting"
if POSTCHI_PG_PORT=99999 "$bin" up --services-only --data-dir "$data" 2> "$tmp/bad.err"; then
    fail "up accepted pg_port=99999"
fi
grep -q pg_port "$tmp/bad.err" || { cat "$tmp/bad.err"; fail "the error does not name pg_port"; }
echo "PASS"
