#!/usr/bin/env bash
# `gpumgr watch` in a real terminal: tmux runs it on simulated devices, the test reads the
# screen (capture-pane), resizes the window (the view must follow: SIGWINCH), presses q and
# checks the exit status. Also: with stdout not a terminal it prints one snapshot and exits;
# and over a daemon, a lease whose holder uses more than the lease shows its use, its bar
# with the overuse in magenta and the OVER line, while a command full of escape sequences is
# shown escaped (the pane's title and screen stay untouched).
#   watch_tmux_test.sh GPUMGR_BINARY
# Exit codes: 0 passed, 1 failed, 77 skipped (no tmux).
set -euo pipefail
gpumgr=${1:?usage: watch_tmux_test.sh GPUMGR_BINARY}
if ! command -v tmux >/dev/null; then
  echo "SKIP: tmux is not installed (apt-get install tmux)"
  exit 77
fi

work=$(mktemp -d)
sock=$work/tmux.sock  # a private tmux server: nothing of the user's sessions is touched
daemon_pid=
cleanup() {
  tmux -S "$sock" kill-server 2>/dev/null || true
  if [[ -n $daemon_pid ]]; then
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  echo "--- screen ---"
  tmux -S "$sock" capture-pane -p -t watch 2>/dev/null || true
  exit 1
}

# Polls until the screen matches a pattern (grep -E), or fails after 20 s.
wait_screen() {
  local pattern=$1 what=$2
  for _ in $(seq 200); do
    if tmux -S "$sock" capture-pane -p -t watch 2>/dev/null | grep -Eq -- "$pattern"; then return 0; fi
    sleep 0.1
  done
  fail "$what: no line matching /$pattern/ within 20 s"
}

# The longest memory bar on the screen, in cells.
bar_cells() {
  tmux -S "$sock" capture-pane -p -t watch | grep -oE '\[[.#!%|]+\]' | awk '{ n = length($0) - 2; if (n > m) m = n } END { print m + 0 }'
}

# 1. Not a terminal: one snapshot, exit 0.
out=$(env -u GPUMGR_SOCKET timeout 20 "$gpumgr" --simulate 2x24GiB watch | cat) ||
  fail "gpumgr watch | cat exited $?"
grep -q "Simulated GPU (24 GiB)" <<<"$out" || fail "no device in the non-terminal snapshot: $out"
[[ $out != *$'\033['* ]] || fail "colour codes in the non-terminal snapshot"

# 2. A terminal: 150 columns, then 100.
tmux -S "$sock" -f /dev/null new-session -d -s watch -x 150 -y 40 \
  "env -u GPUMGR_SOCKET TERM=xterm-256color '$gpumgr' watch --simulate 2x24GiB; echo \$? > '$work/exit'"
wait_screen '^0 +Simulated GPU \(24 GiB\)' "device 0"
wait_screen '^1 +Simulated GPU \(24 GiB\)' "device 1"
wait_screen 'gpumgr watch' "the title line"
wide=$(bar_cells)
# render_status gives the bar the width beyond 80 columns, between 10 and 60 cells.
[[ $wide -eq 60 ]] || fail "memory bar is $wide cells at 150 columns, expected 60"

tmux -S "$sock" resize-window -t watch -x 100 -y 30
for _ in $(seq 200); do
  narrow=$(bar_cells)
  [[ $narrow -eq 20 ]] && break
  sleep 0.1
done
[[ $narrow -eq 20 ]] || fail "memory bar is $narrow cells after resizing to 100 columns, expected 20"

# 3. q quits, with exit status 0, and the terminal is given back (no alternate screen left).
tmux -S "$sock" send-keys -t watch q
for _ in $(seq 200); do
  [[ -s $work/exit ]] && break
  sleep 0.1
done
[[ -s $work/exit ]] || fail "gpumgr watch did not quit on q within 20 s"
status=$(cat "$work/exit")
[[ $status == 0 ]] || fail "gpumgr watch exited $status after q"

# 4. Over a daemon: a lease over its size, and a command that tries to drive the terminal.
procs=$work/procs.txt
: >"$procs"
env -u GPUMGR_SOCKET GPUMGR_SIMULATE_PROCESSES="$procs" "$gpumgr" serve --simulate 24GiB \
  --socket "$work/d.sock" --state-dir "$work/state" --no-http >"$work/serve.log" 2>&1 &
daemon_pid=$!
export GPUMGR_SOCKET=$work/d.sock
for _ in $(seq 200); do
  "$gpumgr" status >/dev/null 2>&1 && break
  sleep 0.1
done
"$gpumgr" run --vram 4GiB --job-id tmux-over --kind demo -- sleep 120 >/dev/null 2>&1 &
over_pid=$!
"$gpumgr" run --vram 2GiB --job-id tmux-evil -- sh -c 'sleep 120' $'\e]0;owned\a\e[2J\e[31m' \
  >/dev/null 2>&1 &
evil_pid=$!
for _ in $(seq 200); do
  [[ $("$gpumgr" status 2>/dev/null | grep -c '^  tmux-') == 2 ]] && break
  sleep 0.1
done
echo "0 $over_pid 6GiB" >"$procs"
tmux -S "$sock" -f /dev/null new-session -d -s watch -x 200 -y 40 \
  "TERM=xterm-256color GPUMGR_SOCKET='$work/d.sock' '$gpumgr' watch; echo \$? > '$work/exit2'"
wait_screen '^  tmux-over +demo +0 +4 GiB +6 GiB +6 GiB +\[#{7}!{3}\] ' "the overused lease's row and bar"
wait_screen '^      OVER its lease for [0-9.]+s: uses 6 GiB of 4 GiB$' "the OVER line"
wait_screen '^  tmux-evil .* sh -c sleep 120 \\x1b\]0;owned\\x07\\x1b\[2J\\x1b\[31m$' "the escaped command"
wait_screen '^STATS ' "the statistics (the screen was not cleared)"
wait_screen 'overuse events 1, terminations 0' "the overuse count"
# The cells beyond the lease are magenta (SGR 35), the ones within green (32).
tmux -S "$sock" capture-pane -e -p -t watch | grep '^  tmux-over' | grep -q $'\e\[35m!' ||
  fail "the overuse cells of the lease bar are not magenta"
title=$(tmux -S "$sock" display-message -p -t watch '#{pane_title}')
[[ $title != *owned* ]] || fail "a lease's command set the pane title to '$title'"
tmux -S "$sock" send-keys -t watch q
for _ in $(seq 200); do
  [[ -s $work/exit2 ]] && break
  sleep 0.1
done
[[ $(cat "$work/exit2" 2>/dev/null) == 0 ]] || fail "gpumgr watch over the daemon did not quit with 0"
kill "$over_pid" "$evil_pid" 2>/dev/null || true
wait "$over_pid" "$evil_pid" 2>/dev/null || true

echo "gpumgr watch: devices shown, followed a resize (bar $wide -> $narrow cells), quit on q;" \
  "lease use, overuse and escaped commands shown over a daemon"
