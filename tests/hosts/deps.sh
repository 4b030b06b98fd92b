#!/bin/bash
# deps.sh - install what tests/hosts/testhosts needs on a fresh Debian 12 machine (idempotent).
# Run as root: bash tests/hosts/deps.sh
set -euo pipefail

PKGS=(systemd-container mmdebstrap gcc make iproute2 openssh-client curl ca-certificates)

missing() {
  local p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"
  done
}

main() {
  local todo
  todo=$(missing)
  [ -z "$todo" ] && { echo "tests/hosts deps: all installed"; return; }
  # Other sessions may hold the dpkg lock: wait for it rather than fail.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  # shellcheck disable=SC2086  # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq $todo >/dev/null
  echo "tests/hosts deps: installed $todo"
}

main "$@"
