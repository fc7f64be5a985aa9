#!/usr/bin/env bash
# ctest's wrapper for the dashboard browser test: skips (77) with a reason where node or
# Chromium is missing, installs playwright-core (never a browser) if node_modules is missing.
#   run.sh HTTP_FIXTURE [SCREENSHOT]      the dashboard over http_fixture (takes the screenshot)
#   run.sh --daemon GPUMGR_BINARY         the dashboard over `gpumgr serve` and `gpumgr run`
# SCREENSHOT defaults to $GPUMGR_SCREENSHOT, else dashboard.png in the current directory
# (ctest runs in the build tree); to refresh the README's picture:
#   GPUMGR_SCREENSHOT=$PWD/docs/dashboard.png ctest --test-dir build -L browser
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
daemon=false
if [[ ${1:-} == --daemon ]]; then
  daemon=true
  shift
fi
binary=${1:?usage: run.sh HTTP_FIXTURE [SCREENSHOT] | run.sh --daemon GPUMGR_BINARY}
screenshot=${2:-${GPUMGR_SCREENSHOT:-$PWD/dashboard.png}}
chromium=${GPUMGR_CHROMIUM:-/usr/bin/chromium}

if ! command -v node >/dev/null; then
  echo "SKIP: node is not installed (apt-get install nodejs)"
  exit 77
fi
if [[ ! -x $chromium ]]; then
  echo "SKIP: no Chromium at $chromium (apt-get install chromium, or set GPUMGR_CHROMIUM)"
  exit 77
fi
if [[ ! -d $here/node_modules/playwright-core ]]; then
  echo "installing playwright-core from package-lock.json (no browser download)"
  if ! (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund); then
    echo "SKIP: npm ci failed in $here (no registry?); run it there by hand"
    exit 77
  fi
fi
if $daemon; then
  exec node "$here/dashboard_daemon.test.js" "$binary"
fi
exec node "$here/dashboard.test.js" "$binary" "$screenshot"
