#!/bin/sh
# up.sh - from a fresh checkout to a running Postchi in one command:
# install the Debian packages, build, then `postchi up` (arguments are passed
# on, e.g. --services-only or --data-dir DIR). Stop with ./build/postchi down.
set -eu
cd "$(dirname "$0")/.."
./ops/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)"
exec ./build/postchi up "$@"
