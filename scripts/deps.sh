#!/usr/bin/env bash
# Install the Debian packages keyraft needs, idempotently: nothing happens when they are all
# present. Build: libclang-dev (bindgen for RocksDB), g++ (C++20), nettle-dev and pkg-config
# (Sequoia's crypto backend). Tests and benchmarks: gnupg, dirmngr, sq, debian-keyring,
# openssl (a private CA for hkps), wrk, curl, iptables and iproute2 (partition tests drop
# node-to-node traffic of test-only loopback addresses), haproxy (the shipped HAProxy config
# is run against a node).
set -euo pipefail
need=(libclang-dev g++ make pkg-config nettle-dev python3 gnupg dirmngr sq debian-keyring openssl wrk curl ca-certificates util-linux iptables iproute2 haproxy)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2; exit 1; }
