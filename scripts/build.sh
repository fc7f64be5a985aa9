#!/usr/bin/env bash
# Configures and builds gpu-manager into $BUILD_DIR (default: build).
# Extra CMake arguments: CMAKE_ARGS="-DGPUMGR_SANITIZE=thread" scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" \
  -DPython3_EXECUTABLE=/usr/bin/python3 ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir"
