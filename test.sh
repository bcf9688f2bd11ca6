#!/usr/bin/env bash
# The second command: install what is missing, then run every test (unit, storage suite,
# HTTP in process and over sockets, real gpg/sq against the built binary, durability under
# kill -9, bad input, the compose recipe in containers), plus formatting and clippy. `.ci/run`
# runs exactly this.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/env.sh
scripts/deps.sh
cargo fmt --all -- --check
cargo build --locked --bins --tests
cargo test --locked --no-fail-fast -- --test-threads 2
# deploy/: the compose recipe in real containers (Docker from apt, a debootstrapped base image),
# around the binary just built, with Compose v1 (Debian's docker-compose) and v2 (the plugin).
KEYRAFT_BIN="$KEYRAFT_BIN" COMPOSE=v1 scripts/container_test.sh
KEYRAFT_BIN="$KEYRAFT_BIN" COMPOSE=v2 scripts/container_test.sh
cargo clippy --locked --all-targets -- -D warnings
