#!/usr/bin/env bash
# Install the peers that `peers` (benches/src/bin/peers.rs) measures Jumping against, on the same
# namespace topology. Idempotent: what is present is not reinstalled.
#
#   bash scripts/setup-peers.sh
#
#  - Debian: wireguard-go (userspace WireGuard), wireguard-tools (`wg`, to configure it and the
#    other userspace peers), iperf3 (the traffic), conntrack (the NAT rebind).
#  - crates.io: boringtun-cli (binary `boringtun-cli`) and gotatun-cli (binary `gotatun`),
#    built with `cargo install --locked -j 1` (the machine is shared; a few minutes each).
#    A crate that fails to build is reported and skipped: the bench then marks that peer
#    "not available".
set -uo pipefail

PACKAGES=(wireguard-go wireguard-tools iperf3 conntrack)

. "$(dirname "$0")/apt-packages.sh"
apt_install_missing setup-peers || exit 1

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup-peers: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
failed=0
for pair in boringtun-cli:boringtun-cli gotatun-cli:gotatun; do
  crate="${pair%%:*}"
  binary="${pair##*:}"
  if command -v "$binary" >/dev/null 2>&1 || [ -x "$CARGO_BIN/$binary" ]; then
    echo "setup-peers: $binary present"
    continue
  fi
  echo "setup-peers: cargo install --locked -j 1 $crate"
  if ! cargo install --locked -j 1 "$crate"; then
    echo "setup-peers: $crate did not build; the bench will mark it not available" >&2
    failed=1
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "setup-peers: done, with a peer missing"
  exit 2
fi
echo "setup-peers: done"
