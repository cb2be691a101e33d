#!/bin/sh
# test.sh - THE test command (CI runs exactly this through .ci/run).
#
# Installs the Debian packages, builds two trees - build (normal) and
# build-asan (AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer)
# - and runs the whole ctest suite against each: first the sanitizer tree,
# then the normal one, so the output ends with ctest's summary. Each suite
# starts its own PostgreSQL, Redis and smtp-sink on free ports through
# `postchi up --services-only` (the "servers" fixture) and stops them after.
# Exits non-zero when a build or either suite fails.
set -eu
cd "$(dirname "$0")/.."

jobs=$(nproc 2>/dev/null || echo 2)

./ops/install-deps.sh

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOSTCHI_SANITIZE=ON
cmake --build build-asan -j"$jobs"
# The fuzz targets, built with clang's libFuzzer, each fuzzing for a bounded
# time (tests/fuzz/CMakeLists.txt) from its checked-in corpus.
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo
fuzz_targets=$(sed -n 's/^postchi_fuzz(\([a-z_]*\).*/fuzz_\1/p' tests/fuzz/CMakeLists.txt)
# shellcheck disable=SC2086
cmake --build build-fuzz -j"$jobs" --target $fuzz_targets

export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

set +e
echo "=== libFuzzer runs (build-fuzz)"
ctest --test-dir build-fuzz --output-on-failure -L fuzz
fuzz_rc=$?
echo "=== ctest: sanitizer build (build-asan)"
ctest --test-dir build-asan --output-on-failure -j2
asan_rc=$?
if [ $asan_rc -eq 0 ]; then asan_word=passed; else asan_word=FAILED; fi
echo "=== sanitizer suite $asan_word; now the normal build (build)"
ctest --test-dir build --output-on-failure -j2
rc=$?
set -e

if [ $asan_rc -ne 0 ]; then
    echo "(the sanitizer suite above FAILED)"
    exit 1
fi
if [ $fuzz_rc -ne 0 ]; then
    echo "(the libFuzzer runs above FAILED)"
    exit 1
fi
exit $rc
