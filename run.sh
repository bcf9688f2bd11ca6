#!/usr/bin/env bash
# The first command: install what is missing, build, and start a node with ./hkp.toml
# (one-member cluster, data in ./data, HKP on 127.0.0.1:11371). Extra arguments go to
# `keyraft serve` (e.g. ./run.sh --listen 127.0.0.1:11380).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/env.sh
scripts/deps.sh
cargo build --locked --bin keyraft
exec "$KEYRAFT_BIN" serve --config hkp.toml "$@"
