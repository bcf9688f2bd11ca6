#!/usr/bin/env bash
# Chaos for a cluster: three `keyraft serve` processes on loopback take certificates from two
# writers while a nemesis kills (SIGKILL, by the PID it started), freezes (SIGSTOP) or cuts
# off (iptables on the node's own test loopback address) one member at a time, the leader half
# of the time, and now and then kills all three at once; snapshots every 50 entries, so a
# member that was away often comes back by one.
# A Debian certificate with several user ids goes in as two halves at once through two
# members (concurrent updates, united by the merge policy).
# Checks: every acknowledged write is on every member afterwards with all its acknowledged
# user ids, a linearizable read on another member right after an acknowledgement finds the
# write (or answers 503), nothing unsubmitted is stored, no conflict is left open, and all
# members end with the same state digest.
# This is the cluster test `nemesis` with more faults (the test suite runs 8).
# Usage: chaos/nemesis.sh [FAULTS=40] [SEED]. Needs root (iptables). Bounded: it stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export KEYRAFT_NEMESIS_ROUNDS="${1:-40}"
if [ -n "${2:-}" ]; then export KEYRAFT_NEMESIS_SEED="$2"; fi
exec cargo test --locked --test cluster nemesis -- --nocapture --test-threads 1
