#!/usr/bin/env bash
# Prepares a fresh Debian machine for vpcni: the venv with Python deps and, as root, the Debian
# packages the datapath needs (bcc from Debian, never PyPI), go and libcni's source for
# tests/test_libcni.py, containerd + runc + the reference CNI plugins and gcc (a static pause
# binary) for the CRI tests (tests/containerd_runtime.py), iperf3 and sockperf for the traffic
# and SNAT benchmarks, plus the two bcc workarounds from
# ../shared/ENVIRONMENT.md (kernel headers symlink, bcc linked into the venv).
# Idempotent and quiet: re-running only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
DEB_PKGS="python3-bpfcc libbpfcc linux-headers-amd64 iproute2 iptables nftables tcpdump iputils-ping
  golang-go golang-github-appc-cni-dev containerd runc containernetworking-plugins gcc libc6-dev
  iperf3 sockperf"

if [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $DEB_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if ! "$PY" -m venv --help >/dev/null 2>&1; then missing="$missing python3-venv"; fi
  if [ -n "$missing" ]; then
    echo "bootstrap: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq $missing >/dev/null
  fi
  # bcc looks for headers under /lib/modules/$(uname -r); Debian's header package is for its own
  # kernel, whose UAPI structs are all tc programs need. Glob: the version moves with updates.
  kdir=/lib/modules/$(uname -r)
  if [ ! -e "$kdir/build" ]; then
    hdr=$(ls -d /lib/modules/*-amd64 2>/dev/null | grep -v "^$kdir\$" | sort -V | tail -1 || true)
    if [ -n "$hdr" ] && [ -e "$hdr/build" ]; then
      ln -sfn "$hdr" "$kdir"
    fi
  fi
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.deps-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'
  rm -f "$VENV"/.deps-*
  touch "$stamp"
fi

# bcc's Python side is ctypes over libbcc: link only that package into the venv, not all of
# dist-packages (Debian's old pip/cryptography would shadow the venv's).
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
  ln -s /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
