#!/usr/bin/env bash
# Create the cluster CA and one node certificate per node name, with `keyraft cert`.
# Idempotent: whatever already exists is kept and reported as skipped.
#
#   deploy/make-certs.sh [options] DIR NAME...
#
#   DIR/ca/ca.pem, DIR/ca/ca.key            the CA (keyraft cert init); keep ca.key off the nodes
#   DIR/NAME/ca.pem, node.pem, node.key     one node (keyraft cert issue --name NAME): give this
#                                           directory to that node as --cluster-tls-dir
#
# Options:
#   --domain SUFFIX   also put NAME.SUFFIX in the certificate (repeatable), e.g.
#                     --domain keyraft-headless.keyraft.svc.cluster.local
#   --san HOST        also put HOST in every certificate issued by this run (repeatable)
#   --renew           re-issue the certificates of the NAMEs given (rotation from the same CA);
#                     the old directory is moved to DIR/NAME.old-YYYYmmddHHMMSS. The CA is
#                     never touched.
#   --owner UID:GID   chown each node directory to UID:GID (e.g. 10001:10001, the container
#                     user of deploy/Dockerfile); needs root
# Environment: KEYRAFT, the keyraft binary (default: keyraft on PATH).
set -euo pipefail

keyraft="${KEYRAFT:-keyraft}"
domains=() sans=() renew=0 owner=""
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --domain) domains+=("${2:?--domain needs a value}"); shift 2 ;;
    --san) sans+=("${2:?--san needs a value}"); shift 2 ;;
    --renew) renew=1; shift ;;
    --owner) owner="${2:?--owner needs UID:GID}"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "make-certs.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# >= 2)) || usage
dir="$1"; shift
command -v "$keyraft" >/dev/null || { echo "make-certs.sh: $keyraft not found (set KEYRAFT=/path/to/keyraft)" >&2; exit 1; }

for name in "$@"; do
  # The name becomes a DNS SAN: lower-case letters, digits, '-' and '.', no leading '-'/'.'.
  [[ "$name" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ && "$name" != ca && "$name" != *.old-* ]] || {
    echo "make-certs.sh: '$name' is not usable as a node name (DNS name in lower case; not 'ca')" >&2; exit 1; }
done

mkdir -p "$dir"
umask 077
if [[ -e "$dir/ca/ca.pem" && -e "$dir/ca/ca.key" ]]; then
  echo "CA: kept $dir/ca (ca.pem and ca.key exist)"
elif [[ -e "$dir/ca/ca.pem" || -e "$dir/ca/ca.key" ]]; then
  echo "make-certs.sh: $dir/ca holds only one of ca.pem and ca.key; fix or remove it by hand" >&2; exit 1
else
  "$keyraft" cert init "$dir/ca"
  echo "CA: created $dir/ca/ca.pem and $dir/ca/ca.key (keep ca.key off the nodes, ideally offline)"
fi

for name in "$@"; do
  out="$dir/$name"
  if [[ -e "$out/node.pem" && $renew == 1 ]]; then
    old="$dir/$name.old-$(date -u +%Y%m%d%H%M%S)"
    mv "$out" "$old"
    echo "$name: moved the old certificate to $old"
  fi
  if [[ -e "$out/node.pem" && -e "$out/node.key" ]]; then
    if ! cmp -s "$out/ca.pem" "$dir/ca/ca.pem"; then
      echo "$name: WARNING: $out/ca.pem differs from $dir/ca/ca.pem (issued by another CA?)" >&2
    fi
    echo "$name: kept $out (node.pem exists; --renew re-issues)"
    continue
  fi
  if [[ -d "$out" && -n "$(ls -A "$out")" ]]; then
    echo "make-certs.sh: $out exists but is incomplete (no node.pem/node.key); remove it and re-run" >&2; exit 1
  fi
  args=(--ca "$dir/ca" --name "$name" --out "$out")
  extra=()
  for d in "${domains[@]}"; do extra+=("$name.$d"); done
  extra+=("${sans[@]}")
  for s in "${extra[@]}"; do args+=(--san "$s"); done
  "$keyraft" cert issue "${args[@]}"
  if [[ -n "$owner" ]]; then chown -R "$owner" "$out"; fi
  echo "$name: issued $out/node.pem (DNS names: $name${extra[*]:+ ${extra[*]}})${owner:+, owner $owner}"
done

if command -v openssl >/dev/null; then
  for name in "$@"; do
    printf '%s: %s\n' "$name" "$(openssl x509 -noout -enddate -in "$dir/$name/node.pem" 2>/dev/null || echo 'expiry unknown')"
  done
fi
