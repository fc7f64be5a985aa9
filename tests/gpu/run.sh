#!/usr/bin/env bash
# GPU acceptance run (issue part 8), for a machine with an NVIDIA GPU and no network.
#
#   tests/gpu/run.sh [BUILD_DIR]
#
# 1. Finds a build: BUILD_DIR, else build-gpu/ under the repository root. Where that holds no
#    gpumgr binary and cmake is installed, configures and builds it there (cmake + ninja or
#    make). The device machine may lack cmake: then build elsewhere with
#    -static-libstdc++ -static-libgcc and carry the build directory (see README.md).
# 2. Runs the GPU-only GoogleTest binary (nvml_gpu_test, ctest label `gpu`) directly, not through
#    ctest, since a carried build directory's CTestTestfile names the paths of the machine that
#    built it. A GPU test that skips itself here counts as a failure: this machine has a GPU.
# 3. Compares `gpumgr status --json --device cuda` with nvidia-smi, GPU by GPU: index, uuid and
#    name equal, memory.total equal in MiB, memory.used within 1% of the total. Prints a table
#    last; exits non-zero on any failure.
# 4. tests/gpu/overuse_check.sh: a holder over its lease is measured, counted against
#    admission, and ended by --on-overuse terminate.
# 5. tests/gpu/torch_cap_check.py: torch capped at the lease (skips without CUDA torch).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${1:-$ROOT/build-gpu}"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
fail=0

say() { printf '== %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }

find_bin() {  # find_bin NAME: the first executable file NAME under $BUILD
  find "$BUILD" -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1
}

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this script is for a machine with an NVIDIA GPU and driver"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi fails: $(nvidia-smi -L 2>&1 | head -n 3)"

# --- 1. build -----------------------------------------------------------------------------
GPUMGR="$( [ -d "$BUILD" ] && find_bin gpumgr )"
GPU_TEST="$( [ -d "$BUILD" ] && find_bin nvml_gpu_test )"
if [ -z "$GPUMGR" ] || [ -z "$GPU_TEST" ]; then
  command -v cmake >/dev/null 2>&1 ||
    die "no gpumgr and nvml_gpu_test under $BUILD and no cmake here: build them elsewhere and pass the build directory"
  GEN=()
  command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
  say "building in $BUILD"
  cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DGPUMGR_BUILD_PYTHON=OFF -DGPUMGR_BUILD_BENCH=OFF || die "cmake configure failed"
  cmake --build "$BUILD" --target gpumgr_cli nvml_gpu_test -j "$(nproc 2>/dev/null || echo 2)" ||
    die "build failed"
  GPUMGR="$(find_bin gpumgr)"
  GPU_TEST="$(find_bin nvml_gpu_test)"
fi
[ -n "$GPUMGR" ] || die "no gpumgr binary under $BUILD"
[ -n "$GPU_TEST" ] || die "no nvml_gpu_test binary under $BUILD"

# The real driver, in-process: nothing from a developer's shell may redirect it.
unset GPUMGR_NVML_LIBRARY GPUMGR_CUDA_LIBRARY GPUMGR_SIMULATE GPUMGR_SOCKET GPUMGR_FAKE_NVML_SCENARIO

# --- 2. GPU tests ---------------------------------------------------------------------------
say "GPU tests: $GPU_TEST"
TEST_LOG="$(mktemp)"
trap 'rm -f "$TEST_LOG" "${SMI_CSV:-}" "${STATUS_JSON:-}"' EXIT
"$GPU_TEST" --gtest_color=no 2>&1 | tee "$TEST_LOG"
test_rc=${PIPESTATUS[0]}
if [ "$test_rc" -ne 0 ]; then
  printf 'run.sh: GPU tests failed (exit %s)\n' "$test_rc" >&2
  fail=1
elif grep -q '^\[  SKIPPED \]' "$TEST_LOG"; then
  printf 'run.sh: GPU tests skipped on a machine with a GPU (see the reasons above)\n' >&2
  fail=1
fi

# --- 3. gpumgr status vs nvidia-smi ---------------------------------------------------------
say "comparing $GPUMGR status --json --device cuda with nvidia-smi"
STATUS_JSON="$(mktemp)"
SMI_CSV="$(mktemp)"
if ! "$GPUMGR" status --json --device cuda >"$STATUS_JSON"; then
  printf 'run.sh: gpumgr status failed\n' >&2
  exit 1
fi
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used \
  --format=csv,noheader,nounits >"$SMI_CSV" || die "nvidia-smi --query-gpu failed"

"$PY" - "$STATUS_JSON" "$SMI_CSV" <<'PYEOF'
import csv, json, sys

MIB = 1024 * 1024
status = json.load(open(sys.argv[1]))
ours = {d["index"]: d for d in status["devices"]}
smi = {}
for row in csv.reader(open(sys.argv[2]), skipinitialspace=True):
    if len(row) < 5:
        continue
    smi[int(row[0])] = {"uuid": row[1].strip(), "name": row[2].strip(),
                        "total": int(row[3]), "used": int(row[4])}

problems = []
if status.get("backend", {}).get("name") != "nvml":
    problems.append("gpumgr backend is %r, not nvml" % status.get("backend", {}).get("name"))
if sorted(ours) != sorted(smi):
    problems.append("device indices differ: gpumgr %s, nvidia-smi %s" % (sorted(ours), sorted(smi)))

rows = []
for index in sorted(set(ours) | set(smi)):
    d, s = ours.get(index), smi.get(index)
    if d is None or s is None:
        rows.append((index, "-", "-", "-", "-", "MISSING"))
        continue
    total_mib = d["total_bytes"] / MIB
    used_mib = d["used_bytes"] / MIB
    bad = []
    if d["uuid"] != s["uuid"]:
        bad.append("uuid %s != %s" % (d["uuid"], s["uuid"]))
    if d["name"] != s["name"]:
        bad.append("name %r != %r" % (d["name"], s["name"]))
    # nvidia-smi prints whole MiB; accept its rounding either way.
    if s["total"] not in (int(total_mib), round(total_mib)):
        bad.append("total %.1f MiB != %d MiB" % (total_mib, s["total"]))
    if abs(used_mib - s["used"]) > 0.01 * s["total"]:
        bad.append("used %.1f MiB vs %d MiB: more than 1%% of total apart" % (used_mib, s["used"]))
    if not d.get("healthy", True):
        bad.append("unhealthy: %s" % d.get("health_reason", ""))
    problems += ["GPU %d: %s" % (index, b) for b in bad]
    rows.append((index, d["uuid"][:20], "%d/%d" % (round(total_mib), s["total"]),
                 "%d/%d" % (round(used_mib), s["used"]), d["name"][:28], "ok" if not bad else "MISMATCH"))

for p in problems:
    print("mismatch: " + p, file=sys.stderr)
print()
print("%-4s %-20s %-15s %-13s %-28s %s" % ("gpu", "uuid", "total MiB", "used MiB", "name", "result"))
print("%-4s %-20s %-15s %-13s %-28s %s" % ("", "", "gpumgr/smi", "gpumgr/smi", "", ""))
for r in rows:
    print("%-4s %-20s %-15s %-13s %-28s %s" % r)
print("backend: driver %s, CUDA %s, NVML %s" % (status["backend"].get("driver_version"),
      status["backend"].get("cuda_driver_version"), status["backend"].get("nvml_version")))
sys.exit(1 if problems else 0)
PYEOF
cmp_rc=$?
[ "$cmp_rc" -eq 0 ] || fail=1

# --- 4. overuse on the real driver: measured use, admission, terminate ----------------------
say "overuse: $ROOT/tests/gpu/overuse_check.sh"
bash "$ROOT/tests/gpu/overuse_check.sh" "$GPUMGR"
[ $? -eq 0 ] || fail=1

# --- 5. the torch cap: a child past its lease gets OOM, its neighbour runs on ----------------
# Needs gpu_manager built for an interpreter with CUDA torch (PYTHONPATH=BUILD/python); 77 is
# a skip (no CUDA torch or no module there), reported but not a failure.
say "torch cap: $ROOT/tests/gpu/torch_cap_check.py"
"$PY" "$ROOT/tests/gpu/torch_cap_check.py" --gpumgr "$GPUMGR"
cap_rc=$?
if [ "$cap_rc" -eq 77 ]; then
  echo "run.sh: torch cap check skipped (see its reason above)"
elif [ "$cap_rc" -ne 0 ]; then
  fail=1
fi

if [ "$fail" -ne 0 ]; then
  echo "RESULT: FAIL"
  exit 1
fi
echo "RESULT: PASS"
