#!/usr/bin/env bash
# Installs what om needs on a fresh Debian machine (idempotent; root needed).
set -euo pipefail
need=()
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# The C fixtures (fixtures/c) are built by their tests.
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# A real multi-threaded program the thread tests move.
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
# omctl sim: ip (netns, veth, bridge); nsenter, unshare, mount, setpriv.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing: install a Rust toolchain (rustup)" >&2; exit 1; }
