#!/usr/bin/env bash
# Quick start, step 2: installs what is missing, builds, and runs the whole test suite
# (GoogleTest, pytest, the browser and terminal tests) with CTest. GPU-only tests skip
# themselves where there is no GPU. Extra arguments go to ctest, e.g. -L unit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
cd "${BUILD_DIR:-build}"
exec ctest --output-on-failure -j"${CTEST_JOBS:-2}" "$@"
