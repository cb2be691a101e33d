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
python3 python3-dkim python3-nacl python3-dnspython
clang libclang-rt-14-dev valgrind wrk procps iproute2 curl"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# The OpenAPI validator tests/integration/test_openapi.sh runs: @redocly/cli,
# pinned in ops/tools/package.json and package-lock.json, installed into
# ops/tools/node_modules (ignored by git). It needs Node.js 20 or later; when
# node or npm is missing, Debian's packages are installed first (a machine
# that already has its own Node.js keeps it). Skipped when it is there at the
# pinned version, so running this again changes nothing.
TOOLS=$(cd "$(dirname "$0")" && pwd)/tools
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
fi
want=$(node -p "require('$TOOLS/package.json').dependencies['@redocly/cli']")
have=$(node -p "try { require('$TOOLS/node_modules/@redocly/cli/package.json').version } catch (e) { '' }")
if [ "$want" != "$have" ]; then
    node -e "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)" ||
        echo "install-deps: warning: Node.js $(node --version) is older than 20; @redocly/cli may refuse to run" >&2
    npm ci --prefix "$TOOLS" --no-audit --no-fund --loglevel=error
fi
