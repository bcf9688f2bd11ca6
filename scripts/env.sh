# Shared settings for run.sh, test.sh and .ci/run: one target directory outside the clone,
# shared by every checkout on this machine, so RocksDB's C++ is compiled once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/keyraft-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
KEYRAFT_BIN="$CARGO_TARGET_DIR/debug/keyraft"
