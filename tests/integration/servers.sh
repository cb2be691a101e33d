#!/bin/sh
# servers.sh start|stop DIR - the "servers" ctest fixture.
#
# start: brings up PostgreSQL, Redis and smtp-sink on free ports with
# `postchi up --services-only` (so every test run also exercises `up`), then
# writes DIR/servers.env (KEY=VALUE lines read by tests/integration/harness.c
# and the shell tests). stop: `postchi down` on the same data dir.
#
# The data dir is DIR/data, unless we are root and the postgres user cannot
# traverse DIR's parents (a checkout under /root): then a fresh directory
# under /tmp is used. DIR/data.path always names the one in use, so stop and
# a later start find it. A start that finds an old stack running stops it.
# POSTCHI_BIN names the binary (ctest sets it); default DIR/../postchi.
set -eu

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$2
bin=${POSTCHI_BIN:-$dir/../postchi}
[ -x "$bin" ] || { echo "servers.sh: no postchi binary at $bin (set POSTCHI_BIN)" >&2; exit 1; }

stop_old() {
    if [ -f "$dir/data.path" ]; then
        old=$(cat "$dir/data.path")
        "$bin" down --data-dir "$old"
        rm -rf "$old"
        rm -f "$dir/data.path"
    fi
    rm -f "$dir/servers.env"
}

# Three distinct ports that were free a moment ago: bound together, so the
# kernel cannot hand out one twice.
free_ports() {
    python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

# Tests run PostgreSQL without fsync (throwaway clusters); benchmarks set
# SERVERS_DURABLE=1 so their figures include real commits.
sync_flag=--no-sync
[ "${SERVERS_DURABLE:-0}" = 1 ] && sync_flag=

case $action in
start)
    mkdir -p "$dir"
    stop_old
    data=$dir/data
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$dir"; then
        data=$(mktemp -d /tmp/postchi-servers.XXXXXX)
        chmod 755 "$data"
    fi
    rm -rf "$data"
    printf '%s\n' "$data" > "$dir/data.path"
    tries=0
    while :; do
        set -- $(free_ports)
        if POSTCHI_PG_PORT=$1 POSTCHI_REDIS_PORT=$2 POSTCHI_SMTP_SINK_PORT=$3 \
           POSTCHI_PG_USER=postchi POSTCHI_PG_DATABASE=postchi \
           "$bin" up --services-only $sync_flag --data-dir "$data"; then
            break
        fi
        # A port taken between choosing and binding: clean up, try others.
        "$bin" down --data-dir "$data" || true
        tries=$((tries + 1))
        [ $tries -lt 3 ] || { echo "servers.sh: postchi up failed $tries times" >&2; exit 1; }
    done
    cat > "$dir/servers.env.tmp" <<ENV
PG_HOST=127.0.0.1
PG_PORT=$1
PG_USER=postchi
PG_DATABASE=postchi
REDIS_HOST=127.0.0.1
REDIS_PORT=$2
SMTP_HOST=127.0.0.1
SMTP_PORT=$3
SMTP_DIR=$data/mail
ENV
    mv "$dir/servers.env.tmp" "$dir/servers.env"
    echo "servers.sh: servers up, see $dir/servers.env"
    ;;
stop)
    if [ -f "$dir/data.path" ]; then
        "$bin" down --data-dir "$(cat "$dir/data.path")"
    fi
    rm -f "$dir/servers.env"
    ;;
*)
    usage
    ;;
esac
