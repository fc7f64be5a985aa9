#!/usr/bin/env bash
# Overuse on a real GPU (called by run.sh; also on its own): tests/gpu/overuse_check.sh GPUMGR
#
# A daemon on GPU 0 (NVML's per-process list), a `gpumgr run --vram 1GiB` whose command
# (hold_vram.py, through the CUDA driver) holds 3 GiB:
#  1. report: the lease shows ~3 GiB used (within 256 MiB: the CUDA context), is flagged
#     overused, the device's overuse is >= 1.75 GiB, and a request of what would have fit
#     without overuse (admissible + 1.5 GiB) is refused at once;
#  2. terminate (grace 2 s): the holder is ended (exit 143) within grace + 3 s and its lease
#     freed.
# Exits 0 (pass), 1 (fail), 77 (skip: no GPU). Prints one line per check.
set -u -o pipefail
GPUMGR="${1:?usage: overuse_check.sh GPUMGR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
command -v nvidia-smi >/dev/null 2>&1 || { echo "overuse_check: skip: no nvidia-smi"; exit 77; }
TMP="$(mktemp -d)"
DAEMON=""
trap '[ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

start() {  # start POLICY: a daemon on GPU 0 with this overuse policy
  "$GPUMGR" serve --device cuda:0 --socket "$TMP/s.sock" --no-http --state-dir "$TMP/state" \
    --on-overuse "$1" --overuse-grace 2 --poll-interval 0.25 2>"$TMP/serve-$1.log" &
  DAEMON=$!
  for _ in $(seq 100); do [ -S "$TMP/s.sock" ] && return 0; sleep 0.1; done
  echo "FAIL: the daemon did not start: $(cat "$TMP/serve-$1.log")"; exit 1
}
stop() { kill "$DAEMON"; wait "$DAEMON"; DAEMON=""; }
field() {  # field PYTHON-EXPRESSION over the status JSON `s`
  "$GPUMGR" status --json --socket "$TMP/s.sock" | "$PY" -c "import json,sys; s=json.load(sys.stdin); print($1)"
}

start report
"$GPUMGR" run --socket "$TMP/s.sock" --vram 1GiB --job-id over -- "$PY" "$HERE/hold_vram.py" 3 --seconds 60 >"$TMP/hold.out" &
HOLDER=$!
for _ in $(seq 100); do grep -q ready "$TMP/hold.out" 2>/dev/null && break; sleep 0.1; done
sleep 1  # a few polls
used="$(field 's["leases"][0]["usage"][0]["used_bytes"] or 0')"
check "the lease shows its holder's use: $used bytes (3 GiB held)" \
  "[ \"$used\" -ge $((3 * 1024**3)) ] && [ \"$used\" -le $((3 * 1024**3 + 256 * 1024**2)) ]"
check "the lease is flagged overused" "[ \"$(field 's["leases"][0]["overused"]')\" = True ]"
overuse="$(field 's["devices"][0]["overuse_bytes"]')"
check "the device's overuse counts: $overuse bytes" "[ \"$overuse\" -ge $((7 * 1024**3 / 4)) ]"
ask="$(field 's["devices"][0]["admissible_bytes"] + 3 * 2**29')"
"$GPUMGR" run --socket "$TMP/s.sock" --vram "${ask}B" --timeout 0 -- true 2>"$TMP/refused.err"
check "a request that fits only without the overuse is refused (exit $?)" "grep -q 'no lease' '$TMP/refused.err'"
check "the overuse is logged" "grep -q \"overuse: job 'over'\" '$TMP/serve-report.log'"
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null
stop

start terminate
"$GPUMGR" run --socket "$TMP/s.sock" --vram 1GiB --job-id greedy -- "$PY" "$HERE/hold_vram.py" 3 --seconds 60 >"$TMP/hold2.out" &
HOLDER=$!
began=$(date +%s.%N)
wait "$HOLDER"; code=$?
took="$("$PY" -c "import time; print(round(time.time() - $began, 1))")"
check "terminate ends the holder (exit $code, after ${took} s; grace 2 s)" \
  "[ $code -eq 143 ] && $PY -c 'import sys; sys.exit(0 if $took < 8 else 1)'"
check "its lease is freed" "[ \"$(field 'len(s["leases"])')\" = 0 ]"
check "the termination is logged" "grep -q \"terminating: job 'greedy'\" '$TMP/serve-terminate.log'"
stop
exit $fail
