#!/usr/bin/env bash
# Install everything Jumping needs on a fresh Debian 12 machine. Idempotent: packages already
# present are not reinstalled, and a second run does nothing but check.
#
#   bash scripts/setup.sh          # system packages + Rust components
#   JUMPING_SETUP_FUZZ=1 bash scripts/setup.sh   # also cargo-fuzz (needs the nightly toolchain)
set -euo pipefail

# System packages, by purpose:
#  - build: C toolchain and pkg-config for -sys crates (ring, aws-lc-rs).
#  - XDP/AF_XDP: clang-19 and llvm-19 compile the C XDP programs (-target bpf); libelf, zlib,
#    m4 and make build libxdp for xsk-rs; libbpf-dev and linux-libc-dev give the BPF headers;
#    bpftool inspects loaded programs and pinned maps.
#  - network namespaces and NAT for tests and the demo: iproute2, nftables, conntrack, procps
#    (sysctl, inside namespaces).
#  - measurement and NIC settings (tests turn off checksum offload): iperf3, ethtool; the
#    userspace WireGuard peer of `cargo xtask bench peers` (wireguard-go, wireguard-tools;
#    boringtun and gotatun come from crates.io: scripts/setup-peers.sh).
PACKAGES=(
  build-essential pkg-config cmake
  clang-19 llvm-19 libelf-dev zlib1g-dev m4 make libbpf-dev linux-libc-dev bpftool
  iproute2 nftables conntrack procps
  iperf3 ethtool curl wireguard-go wireguard-tools
)

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

. "$(dirname "$0")/apt-packages.sh"
apt_install_missing setup

# xsk-rs builds libxdp with `clang` from PATH; Debian installs clang-19 only as clang-19.
if ! command -v clang >/dev/null 2>&1 && command -v clang-19 >/dev/null 2>&1; then
  $SUDO ln -sf "$(command -v clang-19)" /usr/local/bin/clang
fi
# libxdp's build also runs `llc` on clang-19's IR; Debian's unversioned `llc` may be an older
# LLVM (14 here) that cannot read it, so put llc-19 first on PATH.
if command -v llc-19 >/dev/null 2>&1 && ! llc --version 2>/dev/null | grep -q 'LLVM version 19'; then
  $SUDO ln -sf "$(command -v llc-19)" /usr/local/bin/llc
fi

# Rust: stable with rustfmt and clippy (the toolchain itself comes with the machine).
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

if [ "${JUMPING_SETUP_FUZZ:-0}" = "1" ]; then
  rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
fi
echo "setup: done"
