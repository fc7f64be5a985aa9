#!/bin/sh
# Builds the protocol fuzz target with clang and runs it for SECONDS (default 60).
#   fuzz/run_fuzz.sh 600            # ten minutes
# The corpus starts from fuzz/corpus/protocol (valid and invalid requests) and grows in
# build-fuzz/corpus; crashes land in build-fuzz/ as crash-*.
set -eu
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${GPUMGR_FUZZ_BUILD:-$root/build-fuzz}
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGPUMGR_BUILD_FUZZ=ON -DGPUMGR_BUILD_TESTS=OFF -DGPUMGR_BUILD_BENCH=OFF \
  -DGPUMGR_BUILD_PYTHON=OFF \
  "-DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
cmake --build "$build" --target protocol_fuzz
mkdir -p "$build/corpus"
cd "$build"
./fuzz/protocol_fuzz -max_total_time="$seconds" -max_len=70000 -timeout=10 \
  -print_final_stats=1 corpus "$root/fuzz/corpus/protocol"
