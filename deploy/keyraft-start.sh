#!/usr/bin/env bash
# Container entry point for a cluster node; deploy/Dockerfile installs it as
# /usr/local/bin/keyraft-start (used by deploy/compose and deploy/k8s).
#
#   keyraft-start serve [FLAGS]   decide between "join" and "create a new cluster", then
#                                 exec keyraft serve [FLAGS] (+ --join when joining)
#   keyraft-start ARGS...         anything else: exec keyraft ARGS... (export, leave, cert, ...)
#
# Configuration is keyraft's own (KEYRAFT_<SECTION>__<KEY>, docs/configuration.md), plus:
#   KEYRAFT_CLUSTER__NAME  required: this node's name (its certificate must carry it)
#   SEED_PEERS       comma-separated HTTP host:port of the initial members; entries whose host is
#                    this node's name (or starts with "NAME.") are dropped
#   BOOTSTRAP_NAME   the one node allowed to create a new cluster (n1, keyraft-0). Every other
#                    node always starts with --join SEED_PEERS (keyraft ignores --join once it
#                    has cluster state, so restarts are unaffected).
#   BOOTSTRAP_WAIT   seconds the bootstrap node, with an empty data directory, asks the peers for
#                    a leader before it creates a new cluster (default 30). If a peer knows a
#                    leader it joins instead (a wiped node 0 rejoins under a new id); if a peer
#                    has cluster state but no leader it refuses and exits (the orchestrator
#                    restarts it). Remaining risk: node 0 wiped while every peer is down or
#                    unreachable creates a second, empty cluster. See docs/operations.md.
#   TLS_BUNDLE_DIR   optional: a directory holding ca.pem, NAME.pem and NAME.key for every node
#                    (one Kubernetes Secret); this node's files are copied to
#                    $KEYRAFT_CLUSTER__TLS_DIR as ca.pem, node.pem, node.key (mode 0600).
set -euo pipefail

log() { echo "keyraft-start: $*" >&2; }

if [[ "${1:-}" != serve ]]; then
  exec keyraft "$@"
fi
shift

name="${KEYRAFT_CLUSTER__NAME:?KEYRAFT_CLUSTER__NAME must be set}"
data="${KEYRAFT_NODE__DATA_DIR:-./data}"
wait_secs="${BOOTSTRAP_WAIT:-30}"

if [[ -n "${TLS_BUNDLE_DIR:-}" ]]; then
  tls="${KEYRAFT_CLUSTER__TLS_DIR:?TLS_BUNDLE_DIR needs KEYRAFT_CLUSTER__TLS_DIR}"
  for f in ca.pem "$name.pem" "$name.key"; do
    [[ -r "$TLS_BUNDLE_DIR/$f" ]] || { log "missing $TLS_BUNDLE_DIR/$f (issue it with deploy/make-certs.sh)"; exit 1; }
  done
  mkdir -p "$tls"
  install -m 0644 "$TLS_BUNDLE_DIR/ca.pem" "$tls/ca.pem"
  install -m 0600 "$TLS_BUNDLE_DIR/$name.pem" "$tls/node.pem"
  install -m 0600 "$TLS_BUNDLE_DIR/$name.key" "$tls/node.key"
  log "TLS material for $name copied to $tls"
fi

peers=()
IFS=, read -r -a seeds <<<"${SEED_PEERS:-}"
for p in "${seeds[@]}"; do
  p="${p// /}"
  host="${p%:*}"
  [[ -z "$p" || "$host" == "$name" || "$host" == "$name".* ]] && continue
  peers+=("$p")
done
join=$(IFS=,; echo "${peers[*]}")

start() {
  if [[ -n "$1" ]]; then
    log "$name: keyraft serve --join $1"
    exec keyraft serve "${@:2}" --join "$1"
  fi
  log "$name: keyraft serve (no --join: creates a new cluster if the data directory is empty)"
  exec keyraft serve "${@:2}"
}

if [[ "$name" != "${BOOTSTRAP_NAME:-}" ]]; then
  [[ -n "$join" ]] || { log "SEED_PEERS lists no other node and $name is not BOOTSTRAP_NAME; refusing to create a cluster"; exit 1; }
  start "$join" "$@"
fi

# The bootstrap node. With cluster state, keyraft resumes and ignores --join; passing it anyway
# means a data directory without membership (interrupted first start) joins rather than
# creating a second cluster.
has_state() { # anything in the data directory but lost+found (a fresh ext4 volume has it)
  local f
  for f in "$data"/* "$data"/.[!.]*; do
    [[ -e "$f" && "${f##*/}" != lost+found ]] && return 0
  done
  return 1
}
if has_state; then
  start "$join" "$@"
fi
if ((${#peers[@]} == 0)); then
  start "" "$@"
fi

deadline=$((SECONDS + wait_secs))
while :; do
  fresh=0 existing=""
  for p in "${peers[@]}"; do
    if curl -fsS --max-time 2 -o /dev/null "http://$p/cluster/leader" 2>/dev/null; then
      log "$p knows a leader: joining the existing cluster (new node id, same name)"
      start "$join" "$@"
    fi
    if body=$(curl -fsS --max-time 2 "http://$p/cluster/nodes" 2>/dev/null); then
      # A node that holds no Raft state at all ("fresh": true; an admitted joiner still
      # installing its snapshot also shows no members, but it is not fresh).
      if [[ "${body// /}" == *'"fresh":true'* ]]; then fresh=$((fresh + 1)); else existing="$p"; fi
    fi
  done
  if [[ -z "$existing" && $fresh == "${#peers[@]}" ]]; then
    log "every peer answered that it holds no cluster state: creating a new cluster"
    start "" "$@"
  fi
  if ((SECONDS >= deadline)); then
    if [[ -n "$existing" ]]; then
      log "$existing has cluster state but no leader; refusing to create a second cluster (exit, retry on restart)"
      exit 1
    fi
    log "no peer knows a leader after ${wait_secs}s: creating a new cluster"
    start "" "$@"
  fi
  sleep 2
done
