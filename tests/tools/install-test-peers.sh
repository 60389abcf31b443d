#!/usr/bin/env bash
# Install the system programs the tests run as real peers, where this machine lets us.
#
#   tests/tools/install-test-peers.sh          # make test runs it; .ci/run too
#
# Each peer is a Debian package: sshd (the deploy and collector tests log in over a real sshd on
# 127.0.0.1), systemd-analyze (the units are verified by it), prometheus (the Grafana dashboard's
# PromQL runs on it), chromium (tpw-ab's HTML report is opened in it), tinyproxy (the exporters
# reach a collector through a real HTTP proxy), a C compiler and the libc headers (the tests
# compile the stand-in libnvidia-ml.so.1). As root with apt-get, what is missing is installed;
# otherwise one line names what to install and the tests that need it skip (TPW_REQUIRE_PEERS=1,
# as .ci/run sets it, turns those skips into failures).
set -euo pipefail

say() { printf 'test-peers: %s\n' "$*"; }

# command -> Debian package(s) that provide it
PEERS=(
  "sshd:openssh-server"
  "ssh:openssh-client"
  "ssh-keygen:openssh-client"
  "systemd-analyze:systemd"
  "prometheus:prometheus"
  "chromium:chromium"
  "tinyproxy:tinyproxy"
  "cc:gcc"
  "/usr/include/stdio.h:libc6-dev"
)

# a command on PATH or in /usr/sbin, or a file given by its absolute path
have() {
  [[ $1 == /* ]] && { [[ -e $1 ]]; return; }
  command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]
}

missing_packages() {
  local peer command package
  for peer in "${PEERS[@]}"; do
    command=${peer%%:*}
    package=${peer#*:}
    have "$command" || printf '%s\n' "$package"
  done | sort -u
}

main() {
  local missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]}: the tests that need them will skip." \
        "Install them with: sudo apt-get install ${missing[*]}"
    return 0
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

main "$@"
