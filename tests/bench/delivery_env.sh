# delivery_env.sh - the set-up the delivery benchmarks share (sourced by
# bench_delivery.sh and bench_delivery_kill.sh, POSIX sh, run from the
# repository root with `set -eu`).
#
# bench_init builds the Release binary, starts PostgreSQL (durable: real
# commits) and Redis with tests/integration/servers.sh, migrates, and sets
# an EXIT/INT/TERM trap that stops every process started through
# bench_spawn (SIGTERM, then SIGKILL after 10 s) and the servers, whatever
# way the script ends. The work directory ($W) keeps the logs; it is
# removed on success and kept (its path printed) on failure.
#
# What can go wrong: a build or server start failure stops the script
# (set -e) and the trap cleans up; a process that does not come up in time
# makes bench_die print the tail of its log.

PSQL_BIN=/usr/lib/postgresql/15/bin/psql # Debian's `psql` is a perl wrapper
KEYHEX=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
PIDS=""

bench_die() {
    echo "bench: $*" >&2
    exit 1
}

# Every process bench_spawn started: SIGTERM, up to 10 s, then SIGKILL.
bench_cleanup() {
    rc=$?
    trap - EXIT INT TERM
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ -n "${S:-}" ]; then
        POSTCHI_BIN=$BIN "$ROOT/tests/integration/servers.sh" stop "$S" >/dev/null 2>&1 || true
    fi
    if [ -n "${W:-}" ] && [ -d "$W" ]; then
        rm -rf "$W/mail" 2>/dev/null || true
        if [ "$rc" -eq 0 ]; then rm -rf "$W"; else echo "bench: failed (status $rc); logs kept in $W" >&2; fi
    fi
    exit "$rc"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_init BUILD_DIR: build, servers, migrate; sets ROOT BIN S W PG PSQL COMMON.
# With BENCH_BIN set (a test running a bench on the binary under test) that
# binary is used as it is, nothing is built, and the servers live in $W, so
# runs side by side do not share them.
bench_init() {
    ROOT=$PWD
    B=$1
    W=$(mktemp -d /tmp/postchi-bench.XXXXXX)
    chmod 755 "$W"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [ -n "${BENCH_BIN:-}" ]; then
        BIN=$BENCH_BIN
        S=$W/servers
    else
        cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release >/dev/null
        cmake --build "$B" -j2 --target postchi >/dev/null
        BIN=$ROOT/$B/postchi
        S=$ROOT/$B/bench-delivery-servers
    fi
    SERVERS_DURABLE=1 POSTCHI_BIN=$BIN tests/integration/servers.sh start "$S" >"$W/servers.log" 2>&1 ||
        bench_die "servers.sh start failed: $(tail -5 "$W/servers.log")"
    . "$S/servers.env"
    PG="host=$PG_HOST port=$PG_PORT user=$PG_USER dbname=$PG_DATABASE"
    PSQL="$PSQL_BIN -X -q -v ON_ERROR_STOP=1 -d"
    env POSTCHI_PG_PORT="$PG_PORT" POSTCHI_REDIS_PORT="$REDIS_PORT" "$BIN" migrate >/dev/null
    BROKER=$(free_port)
    BROKER_METRICS=$(free_port)
    COMMON="POSTCHI_PG_PORT=$PG_PORT POSTCHI_REDIS_PORT=$REDIS_PORT POSTCHI_BROKER_ENDPOINT=tcp://127.0.0.1:$BROKER POSTCHI_LOG_LEVEL=warn"
}

# One value from SQL.
sql() { $PSQL "$PG" -tAc "$1"; }

# bench_spawn NAME CMD...: run in the background, log to $W/NAME.log; sets
# LAST_PID and records it in $W/NAME.pid and PIDS.
bench_spawn() {
    name=$1
    shift
    "$@" >"$W/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS="$PIDS $LAST_PID"
    echo "$LAST_PID" >"$W/$name.pid"
}

# bench_stop PID [SIGNAL]: signal (TERM) one process bench_spawn started,
# wait for it and forget it; returns its exit status.
bench_stop() {
    kill -"${2:-TERM}" "$1" 2>/dev/null || true
    st=0
    wait "$1" 2>/dev/null || st=$?
    np=""
    for p in $PIDS; do [ "$p" = "$1" ] || np="$np $p"; done
    PIDS=$np
    return $st
}

# bench_sink NAME PORT [DUMPDIR]: smtp-sink on PORT (dumping one file per
# transaction into DUMPDIR when given); waits until it accepts.
bench_sink() {
    if [ $# -ge 3 ]; then
        mkdir -p "$3"
        chmod 777 "$3"
        bench_spawn "$1" /usr/sbin/smtp-sink -u nobody -d "$3/%H%M." 127.0.0.1:"$2" 1000
    else
        bench_spawn "$1" /usr/sbin/smtp-sink -u nobody 127.0.0.1:"$2" 1000
    fi
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $2), 1).close()" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 50 ] || bench_die "smtp-sink on $2 did not start: $(tail -3 "$W/$1.log")"
        sleep 0.1
    done
}

bench_broker() {
    bench_spawn broker env $COMMON POSTCHI_METRICS_PORT="$BROKER_METRICS" "$BIN" broker
}

# Workers the broker counts as live.
bench_live() {
    curl -s "http://127.0.0.1:$BROKER_METRICS/metrics" 2>/dev/null |
        awk '$1 == "postchi_broker_workers_live" {print int($2)}'
}

# bench_wait_live N: until the broker counts N live workers (30 s).
bench_wait_live() {
    i=0
    while [ "$(bench_live)" != "$1" ]; do
        i=$((i + 1))
        [ $i -lt 300 ] || bench_die "the broker does not count $1 live workers (it counts '$(bench_live)')"
        sleep 0.1
    done
}

# bench_worker NAME NODE_ID RELAY_PORT CONNECTIONS [VAR=VALUE...]: a worker
# relaying everything to 127.0.0.1:RELAY_PORT, shaping out of the way (the
# benchmarks measure the pipeline, not a destination's budget).
bench_worker() {
    name=$1 node=$2 relay=$3 conns=$4
    shift 4
    bench_spawn "$name" env $COMMON POSTCHI_NODE_ID="$node" POSTCHI_SMTP_RELAY=127.0.0.1:"$relay" \
        POSTCHI_SECRET_KEY=$KEYHEX POSTCHI_DELIVERY_CONNECTIONS="$conns" \
        POSTCHI_SHAPING_RATE=1000000 POSTCHI_SHAPING_BURST=1000000 "$@" "$BIN" worker
}

# bench_api: an API node on a free port; sets U (the /api/v1 base URL).
bench_api() {
    API=$(free_port)
    bench_spawn api env $COMMON POSTCHI_API_PORT="$API" \
        POSTCHI_JWT_SECRET=bench-secret-0123456789abcdef0123456789 POSTCHI_SECRET_KEY=$KEYHEX \
        POSTCHI_RATE_LIMIT_RPS=1000000 POSTCHI_RATE_LIMIT_BURST=1000000 "$BIN" api
    i=0
    until curl -sf "http://127.0.0.1:$API/readyz" >/dev/null; do
        i=$((i + 1))
        [ $i -lt 100 ] || bench_die "the API did not become ready: $(tail -3 "$W/api.log")"
        sleep 0.2
    done
    U="http://127.0.0.1:$API/api/v1"
}

# A JSON field of stdin.
jfield() { python3 -c "import sys, json; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

# bench_account: register an organization; sets KEY (full scope) and ORG.
bench_account() {
    J='Content-Type: application/json'
    TOKEN=$(curl -sf "$U/auth/register" -H "$J" \
        -d '{"email":"bench@example.com","password":"bench password 1","organization":"Bench"}' | jfield token)
    KEY=$(curl -sf "$U/api-keys" -H "Authorization: Bearer $TOKEN" -H "$J" \
        -d '{"name":"bench","scope":"full"}' | jfield key)
    ORG=$(sql "SELECT id FROM organizations ORDER BY created_at LIMIT 1")
}

# bench_domain NAME SIGNING: a sending domain (both|ed25519), marked
# verified (no DNS here); prints its id.
bench_domain() {
    id=$(curl -sf "$U/domains" -H "Authorization: Bearer $KEY" -H "$J" \
        -d "{\"name\":\"$1\",\"signing\":\"$2\"}" | jfield id)
    sql "UPDATE domains SET status = 'verified' WHERE id = '$id'" >/dev/null
    echo "$id"
}

# bench_list NAME COUNT RCPT_DOMAIN: a list of COUNT new contacts
# <name>-<i>@RCPT_DOMAIN written straight in SQL (set-up, not measured);
# prints the list id.
bench_list() {
    sql "WITH c AS (INSERT INTO contacts (organization_id, email)
           SELECT '$ORG', '$1-' || i || '@$3' FROM generate_series(1, $2) i RETURNING id),
         l AS (INSERT INTO lists (organization_id, name) VALUES ('$ORG', '$1') RETURNING id),
         m AS (INSERT INTO list_members (organization_id, list_id, contact_id)
               SELECT '$ORG', l.id, c.id FROM l, c RETURNING list_id)
         SELECT id FROM l"
}
