#!/usr/bin/env bash
# Instructions per acquire+release pair and per floor operation of bench/ledger_bench,
# counted by valgrind's callgrind: a figure that, unlike wall time, a noisy or shared machine
# does not move. Clock reads done through the vDSO are not counted the same way under
# valgrind, so compare wall-time ratios too (bench/RESULTS.md).
#
#   bench/count_instructions.sh [build/bench/ledger_bench]
set -euo pipefail
bench=${1:-build/bench/ledger_bench}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$bench" ] || { echo "no benchmark binary at $bench (build with scripts/build.sh)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs one benchmark function under callgrind, collecting only inside it; prints its
# instruction total and the number of operations: the fewest calls `caller` made to any
# function it calls once per operation or more.
count() {
  local name=$1 caller=$2
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.cg" --toggle-collect="*BM_$name*" \
    "$bench" --benchmark_filter="^BM_$name/real_time/threads:1\$" --benchmark_min_time=0.05 \
    >"$work/$name.log" 2>&1
  local total calls
  total=$(grep -a 'Collected' "$work/$name.log" | awk '{print $NF}')
  # From the work folder: run where the sources are, callgrind_annotate annotates them and
  # drops some caller lines.
  calls=$(cd "$work" && callgrind_annotate --tree=caller "$name.cg" 2>/dev/null |
    grep -a "< .*$caller" | grep -aoE '\(([0-9,]+)x\)' | tr -dc '0-9\n' | sort -n | awk 'NR == 1')
  echo "$total $calls"
}

# Manager::try_acquire calls the ledger once per pair; BM_Floor locks, inserts and erases.
read -r pair_total pairs < <(count AcquireRelease 'gpumgr::Manager::try_acquire')
read -r floor_total floors < <(count Floor 'BM_Floor')
pair=$((pair_total / pairs))
floor=$((floor_total / floors))
echo "acquire+release: $pair instructions per pair ($pairs pairs)"
echo "floor: $floor instructions per insert+erase ($floors operations)"
awk -v p="$pair" -v f="$floor" 'BEGIN { printf "ratio acquire+release / floor (instructions) = %.2f\n", p / f }'
