#!/usr/bin/env bash
# Installs what gpu-manager needs to build and test on Debian 12, if it is missing.
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

packages=(
  build-essential cmake ninja-build clang libclang-rt-14-dev
  nlohmann-json3-dev libcli11-dev libxxhash-dev libasio-dev libcpp-httplib-dev libsqlite3-dev
  libtomlplusplus-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-dev python3-pytest pybind11-dev python3-prometheus-client
  tmux chromium nodejs
  # A two-node Slurm cluster on this machine (tests/slurm) and the SPANK plugin's headers.
  slurmctld slurmd slurm-client munge libslurm-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: everything is installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
