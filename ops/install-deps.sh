#!/bin/sh
# install-deps.sh - install the Debian 12 packages Postchi builds and tests with.
#
# Idempotent: apt-get skips what is already there. Runs as root (CI, fresh
# machines) or through sudo. Postfix is preseeded to "No configuration" because
# Postchi only needs its smtp-sink / smtp-source tools, never a running MTA.
set -eu

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

PKGS="build-essential cmake pkg-config git ca-certificates
libzmq3-dev libczmq-dev libpq-dev libhiredis-dev libmsgpack-dev
libcivetweb-dev libssl-dev libopendkim-dev libjansson-dev libargon2-dev
libcurl4-openssl-dev libc-ares-dev libgmime-3.0-dev libcmocka-dev
postgresql redis-server postfix dnsmasq-base prometheus
python3 python3-dkim
clang libclang-rt-14-dev valgrind wrk procps iproute2 curl"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
[ -n "$missing" ] || exit 0

echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
