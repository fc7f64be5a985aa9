#!/usr/bin/env bash
# Quick start, step 1: installs what is missing (Debian packages), builds, and starts the
# daemon in the foreground on this host's devices (the CPU when there is no GPU).
# Arguments go to `gpumgr serve`, e.g. scripts/setup.sh --simulate 2x24GiB
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
exec build/src/cli/gpumgr serve "$@"
