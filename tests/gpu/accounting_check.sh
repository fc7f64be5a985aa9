#!/usr/bin/env bash
# GPU check of the accounting model on real hardware (needs an idle GPU 0, its driver and
# python3; no network). Two cases:
#  1. outside use: a process holding 10 GiB without a lease shows as foreign_bytes, and the
#     admissible memory drops by exactly that;
#  2. attribution: `gpumgr run --vram 12GiB -- hold_vram.py 8` through the daemon: the child's
#     8 GiB belong to the lease (it is the lease holder's descendant), so foreign_bytes stays
#     near 0 while leased_bytes is 12 GiB.
# Usage: tests/gpu/accounting_check.sh BIN_DIR   (BIN_DIR holds the gpumgr binary)
# Prints one line per check and RESULT: PASS/FAIL; exits 0 or 1.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gpumgr="${1:?usage: accounting_check.sh BIN_DIR}/gpumgr"
unset GPUMGR_SIMULATE GPUMGR_SOCKET GPUMGR_NVML_LIBRARY
work=$(mktemp -d)
fail=0
judge() {  # judge NAME PYTHON-EXPRESSION-OVER-d (the status JSON)
  if python3 - "$work/$1.json" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
dev = d["devices"][0]
ok = eval(sys.argv[2], {"d": d, "dev": dev, "GiB": 1 << 30})
print(f"  leased {dev['leased_bytes']} foreign {dev['foreign_bytes']} used {dev['used_bytes']}"
      f" capacity {dev['capacity_bytes']} admissible {dev['admissible_bytes']}")
sys.exit(0 if ok else 1)
PY
  then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi
}
wait_for_line() {  # wait_for_line FILE PATTERN
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# 1. outside use
python3 "$here/hold_vram.py" 10 > "$work/hold.out" &
holder=$!
wait_for_line "$work/hold.out" ready || { echo "FAIL hold_vram did not start"; exit 1; }
"$gpumgr" status --json --device cuda > "$work/outside.json"
judge outside "dev['foreign_bytes'] >= 10 * GiB and dev['admissible_bytes'] == dev['capacity_bytes'] - dev['foreign_bytes']"
kill $holder; wait $holder 2>/dev/null

# 2. a lease holder's child
sock="$work/gpumgr.sock"
"$gpumgr" serve --socket "$sock" --no-http --device cuda --quiet &
daemon=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
GPUMGR_SOCKET="$sock" "$gpumgr" run --vram 12GiB --job-id child-job -- \
  python3 "$here/hold_vram.py" 8 --seconds 8 > "$work/run.out" &
runner=$!
wait_for_line "$work/run.out" ready || { echo "FAIL gpumgr run did not start its command"; fail=1; }
sleep 1  # let the daemon's next reading see the child's memory
GPUMGR_SOCKET="$sock" "$gpumgr" status --json > "$work/child.json"
judge child "dev['leased_bytes'] == 12 * GiB and dev['foreign_bytes'] < 1 * GiB and dev['used_bytes'] >= 8 * GiB and d['leases'][0]['job_id'] == 'child-job'"
wait $runner
GPUMGR_SOCKET="$sock" "$gpumgr" status --json > "$work/released.json"
judge released "dev['leased_bytes'] == 0 and len(d['leases']) == 0"
kill $daemon; wait $daemon 2>/dev/null
[ $fail -eq 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL"
exit $fail
