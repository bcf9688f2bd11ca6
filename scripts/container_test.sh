#!/usr/bin/env bash
# Runs deploy/compose for real, in containers, with an image built from deploy/Dockerfile around a
# prebuilt keyraft binary, and checks it end to end:
#   - installs what is missing from apt (docker.io, docker-compose, debootstrap, debian-keyring,
#     gpg/dirmngr, curl) and starts dockerd if none answers (and stops it again at the end);
#   - builds debian:bookworm-slim with debootstrap if the image is missing (no Docker Hub here),
#     keyraft:local (deploy/Dockerfile, --build-arg BINARY_FROM=prebuilt) and
#     keyraft-haproxy:local (deploy/compose/haproxy.Dockerfile, Debian's HAProxy);
#   - in a temporary copy of deploy/compose, under a unique project name, runs the recipe of
#     docs/operations.md: `run --rm setup` (twice: the second keeps everything), then `up -d`;
#   - stops n1 and n3 while the cluster forms (each must exit on SIGTERM within 10 s), restarts
#     them;
#   - waits until n1..n3 are healthy and HAProxy answers /ready, checks /cluster/status (three
#     voters, a leader), uploads a Debian developer's key with `gpg --send-keys` through HAProxy
#     and reads it from every node's own port, checks that HAProxy refuses POST /cluster/*;
#   - SIGKILLs the leader's container (docker kill), uploads a second key through HAProxy (bounded
#     retries), restarts the killed container and checks it comes back under its old Raft id
#     with the second key, and that HAProxy has all three nodes in its /ready pool again;
#   - `keyraft export` in a container (the backup command of the docs);
#   - tears everything down (`down -v`) and prints PASS or FAIL (exit status 1).
#
# Run as root from anywhere:  scripts/container_test.sh
# Environment:
#   KEYRAFT_BIN   the binary to put in the image (default /var/tmp/keyraft-target/debug/keyraft);
#                 built on Debian bookworm (glibc 2.36) or older
#   DEADLINE      seconds allowed for each wait (default 180)
#   KEEP_WORKDIR  1: keep the temporary directory (compose copy, logs) after a PASS too
#   COMPOSE       v1: docker-compose (Debian's 1.29); v2: docker compose (the CLI plugin, from
#                 Debian trixie by scripts/compose_v2.sh when missing); default: v2 when it
#                 answers, else v1. ./test.sh runs both.
# Not covered: the build-from-source stage of deploy/Dockerfile (rust:bookworm cannot be pulled
# here), the official haproxy image (likewise) and deploy/k8s.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${KEYRAFT_BIN:-/var/tmp/keyraft-target/debug/keyraft}"
deadline_secs="${DEADLINE:-180}"
project="keyraft-ct-$$"
started_at=$SECONDS

say() { printf '[container_test %3ds] %s\n' "$((SECONDS - started_at))" "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[[ $EUID == 0 ]] || fail "run as root (apt-get, dockerd, debootstrap)"
[[ -x "$bin" ]] || fail "no keyraft binary at $bin (build it with cargo, or set KEYRAFT_BIN)"
# Host ports for the published ones (compose: HKP_PORT, N1_PORT..N3_PORT, STATS_PORT; defaults
# 11371, 12001-12003, 8404): free ones picked by the kernel, so a node already serving on 11371
# (the README's first command) does not get in the way.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export HKP_PORT N1_PORT N2_PORT N3_PORT STATS_PORT
HKP_PORT=$(free_port) N1_PORT=$(free_port) N2_PORT=$(free_port) N3_PORT=$(free_port)
STATS_PORT=$(free_port)

work=$(mktemp -d /tmp/keyraft-container-test.XXXXXX)
dockerd_pid="" compose=() gnupg="$work/gnupg" result=FAIL

cleanup() {
  local rc=$?
  set +e
  if ((${#compose[@]})) && [[ -d "$work/compose" ]]; then
    if [[ $result != PASS ]]; then
      (cd "$work/compose" && "${compose[@]}" logs --no-color --tail=60) > "$work/compose.log" 2>&1
      say "last container logs: $work/compose.log"
    fi
    (cd "$work/compose" && "${compose[@]}" down -v --remove-orphans) >"$work/down.log" 2>&1 \
      || say "WARNING: compose down failed, see $work/down.log"
  fi
  [[ -d "$gnupg" ]] && gpgconf --homedir "$gnupg" --kill all 2>/dev/null
  if [[ -n "$dockerd_pid" ]]; then
    say "stopping the dockerd this script started (pid $dockerd_pid)"
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  if [[ $result == PASS && $rc == 0 ]]; then
    [[ "${KEEP_WORKDIR:-0}" == 1 ]] || rm -rf "$work"
    say "PASS (wall time $((SECONDS - started_at)) s)"
  else
    say "FAIL (wall time $((SECONDS - started_at)) s; work directory kept: $work)"
    exit 1
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- packages ----------------------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
need=()
for p in debootstrap debian-keyring gpg dirmngr curl python3 ca-certificates; do
  installed "$p" || need+=("$p")
done
docker_answers() { docker info >/dev/null 2>&1; }
# An existing daemon (Docker CE, ...) is used as it is; otherwise Debian's docker.io.
if ! docker_answers && ! command -v dockerd >/dev/null; then need+=(docker.io); fi
compose_kind="${COMPOSE:-auto}"
case $compose_kind in
  v1) command -v docker-compose >/dev/null || need+=(docker-compose) ;;
  v2) ;;
  auto)
    if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
      need+=(docker-compose)
    fi ;;
  *) fail "COMPOSE is v1, v2 or unset, not '$compose_kind'" ;;
esac
if ((${#need[@]})); then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- dockerd -----------------------------------------------------------------------------------
if ! docker_answers; then
  say "starting dockerd (log: $work/dockerd.log)"
  setsid dockerd >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker_answers && break; kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  docker_answers || fail "dockerd did not come up: $(tail -5 "$work/dockerd.log")"
fi

if [[ $compose_kind == v2 ]]; then
  "$repo/scripts/compose_v2.sh" || fail "could not install Compose v2 (scripts/compose_v2.sh)"
fi
if [[ $compose_kind == v2 ]] || { [[ $compose_kind == auto ]] && docker compose version >/dev/null 2>&1; }
then compose=(docker compose -p "$project")
else compose=(docker-compose -p "$project"); fi
# BuildKit is needed: it skips the unused build stage (rust:bookworm cannot be pulled here). The
# docker CLI on PATH may be a newer one without the buildx plugin, which cannot use BuildKit;
# Debian's 20.10 CLI (/usr/bin/docker) has it built in.
if docker buildx version >/dev/null 2>&1; then build=(docker build)
elif [[ -x /usr/bin/docker ]]; then build=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else fail "no docker CLI that can build with BuildKit (install the buildx plugin)"; fi
say "daemon $(docker version -f '{{.Server.Version}}'), compose: ${compose[*]:0:2}, build: ${build[*]}"

# --- images ------------------------------------------------------------------------------------
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  say "debian:bookworm-slim missing: debootstrap --variant=minbase bookworm (about a minute)"
  rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
    >"$work/debootstrap.log" 2>&1 || fail "debootstrap failed, see $work/debootstrap.log"
  # The suites of the official image, not only bookworm main.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  rm -rf "$rootfs"
fi

say "building keyraft:local from deploy/Dockerfile with BINARY_FROM=prebuilt ($bin)"
# The documented operator path: the binary as deploy/prebuilt/keyraft in the repository's context
# (git-ignored), removed again afterwards unless it was there before.
prebuilt="$repo/deploy/prebuilt/keyraft"
placed=0
if [[ ! -e "$prebuilt" ]] || ! cmp -s "$bin" "$prebuilt"; then
  [[ -e "$prebuilt" ]] \
    && fail "$prebuilt exists and differs from $bin; remove it or set KEYRAFT_BIN=$prebuilt"
  mkdir -p "${prebuilt%/*}"
  ln -f "$bin" "$prebuilt" 2>/dev/null || cp "$bin" "$prebuilt"
  placed=1
fi
build_rc=0
"${build[@]}" -f "$repo/deploy/Dockerfile" --build-arg BINARY_FROM=prebuilt -t keyraft:local "$repo" \
  >"$work/build.log" 2>&1 || build_rc=$?
if ((placed)); then rm -f "$prebuilt"; rmdir "${prebuilt%/*}" 2>/dev/null || true; fi
((build_rc == 0)) || fail "image build failed, see $work/build.log"

say "building keyraft-haproxy:local from deploy/compose/haproxy.Dockerfile"
mkdir -p "$work/empty"
"${build[@]}" -f "$repo/deploy/compose/haproxy.Dockerfile" -t keyraft-haproxy:local "$work/empty" \
  >"$work/build-haproxy.log" 2>&1 || fail "haproxy image build failed, see $work/build-haproxy.log"

# --- compose up --------------------------------------------------------------------------------
cp -a "$repo/deploy/compose" "$work/compose"
cd "$work/compose"
export HAPROXY_IMAGE=keyraft-haproxy:local
# A daemon without CAP_SYS_RESOURCE cannot give containers more descriptors than its own hard
# limit (see the haproxy service in docker-compose.yml).
hard=$(docker run --rm debian:bookworm-slim sh -c 'ulimit -Hn')
if [[ "$hard" != unlimited ]] && ((hard < 65536)); then
  export NOFILE_LIMIT="$hard" HAPROXY_MAXCONN=$((hard / 2 - 100))
  say "the daemon's hard descriptor limit is $hard:" \
    "NOFILE_LIMIT=$NOFILE_LIMIT HAPROXY_MAXCONN=$HAPROXY_MAXCONN"
fi

say "${compose[*]} run --rm setup"
"${compose[@]}" run --rm setup >"$work/setup.log" 2>&1 || fail "setup failed: $(cat "$work/setup.log")"
grep -q 'CA: created' "$work/setup.log" || fail "setup did not create a CA: $(cat "$work/setup.log")"
"${compose[@]}" run --rm setup >"$work/setup2.log" 2>&1 \
  || fail "second setup failed: $(cat "$work/setup2.log")"
grep -q 'CA: kept' "$work/setup2.log" && grep -q 'n3: kept' "$work/setup2.log" \
  && grep -q 'secrets/admin.token: kept' "$work/setup2.log" \
  || fail "a second setup changed something: $(cat "$work/setup2.log")"

say "${compose[*]} up -d"
"${compose[@]}" up -d >"$work/up.log" 2>&1 || fail "up -d failed: $(cat "$work/up.log")"

# --- helpers -----------------------------------------------------------------------------------
declare -A port=([n1]=$N1_PORT [n2]=$N2_PORT [n3]=$N3_PORT)
hkp=127.0.0.1:$HKP_PORT
# The container of service $1, running or not (Compose v2 lists only running ones without -a).
cid() { "${compose[@]}" ps -a -q "$1"; }
is_healthy() {
  [[ $(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")" 2>/dev/null) == healthy ]]
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# wait_for DESCRIPTION COMMAND...: run COMMAND every 2 s until it succeeds or DEADLINE passes.
wait_for() {
  local what="$1" t0=$SECONDS; shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t0 < deadline_secs)) || fail "not within ${deadline_secs}s: $what"
    sleep 2
  done
  say "ok after $((SECONDS - t0))s: $what"
}
all_healthy() { is_healthy n1 && is_healthy n2 && is_healthy n3; }
kgpg() { gpg --homedir "$gnupg" --batch "$@"; }
keyring=/usr/share/keyrings/debian-keyring.gpg
# serves PORT FPR: the node at 127.0.0.1:PORT returns the certificate FPR (checked by gpg).
serves() {
  curl -fsS --max-time 5 "http://127.0.0.1:$1/pks/lookup?op=get&options=mr&search=0x$2" \
    | kgpg --show-keys --with-colons 2>/dev/null | grep -q "^fpr:.*:$2:"
}
ready_pool_full() {
  [[ $(curl -fsS --max-time 5 http://127.0.0.1:$STATS_PORT/metrics \
    | grep -c '^haproxy_server_status{proxy="keyraft_ready",server="n[123]",state="UP"} 1') == 3 ]]
}
send_key() { kgpg --keyserver "hkp://$hkp" --send-keys "$1"; }

# --- checks ------------------------------------------------------------------------------------
# SIGTERM right after start, while the cluster forms or has just formed (n1 may still be in
# keyraft-start's wait, n3 may still be joining).
# Both must stop at once (tini as PID 1), not after stop_grace_period (45 s) with SIGKILL.
sleep 3
stoppers=()
for n in n1 n3; do
  ( t0=$SECONDS; docker stop -t 30 "$(cid "$n")" >/dev/null; echo "$n $((SECONDS - t0))" ) \
    >"$work/stop-$n.txt" &
  stoppers+=($!)
done
wait "${stoppers[@]}" # not a bare `wait`: dockerd may be a child of this script
cat "$work"/stop-n[13].txt >"$work/stop.txt"
while read -r n secs; do
  ((secs <= 10)) || fail "docker stop $n during cluster formation took ${secs}s (SIGTERM ignored?)"
  say "ok: $n stopped ${secs}s after SIGTERM while the cluster was forming"
done <"$work/stop.txt"
docker start "$(cid n1)" "$(cid n3)" >/dev/null
wait_for "n1, n2 and n3 healthy (docker healthcheck: GET /ready)" all_healthy
wait_for "HAProxy answers GET /ready with 200" curl -fsS --max-time 5 "http://$hkp/ready"

# n1 created the cluster because n2 and n3 answered while joining, not after BOOTSTRAP_WAIT.
# (grep without -q reads to the end: with -q, docker logs could die of SIGPIPE under pipefail)
docker logs "$(cid n1)" 2>&1 | grep "every peer answered that it holds no cluster state" >/dev/null \
  || fail "n1 did not see fresh peers (it waited out BOOTSTRAP_WAIT?): $(docker logs "$(cid n1)" 2>&1 | tail -5)"
say "ok: n1 created the cluster as soon as n2 and n3 answered that they hold no cluster state"

status=$(curl -fsS "http://127.0.0.1:$N1_PORT/cluster/status")
members=$(json 'sum(1 for m in d["members"] if m["voter"])' <<<"$status")
leader_id=$(json 'd["status"]["leader"]' <<<"$status")
[[ $members == 3 && $leader_id =~ ^[0-9]+$ ]] || fail "/cluster/status: want 3 voters and a leader: $status"
say "ok: /cluster/status shows 3 voters, leader id $leader_id"

code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$hkp/cluster/join")
[[ $code == 403 ]] || fail "HAProxy let POST /cluster/join through (HTTP $code)"
say "ok: HAProxy refuses POST /cluster/join (403)"

# Two Debian developers' keys (primary fingerprints) from debian-keyring.
mkdir -m 0700 "$gnupg"
mapfile -t fprs < <(kgpg --no-default-keyring --keyring "$keyring" --with-colons --list-keys 2>/dev/null \
  | awk -F: '$1 == "pub" { p = 1; next } $1 == "fpr" && p { print $10; p = 0 }' | head -2)
((${#fprs[@]} == 2)) || fail "could not read two keys from $keyring"
kgpg --no-default-keyring --keyring "$keyring" --export "${fprs[@]}" | kgpg --import 2>/dev/null

say "gpg --send-keys ${fprs[0]} through HAProxy ($hkp)"
send_key "${fprs[0]}" >"$work/gpg1.log" 2>&1 || fail "gpg --send-keys failed: $(cat "$work/gpg1.log")"
for n in n1 n2 n3; do
  wait_for "$n (127.0.0.1:${port[$n]}) serves ${fprs[0]}" serves "${port[$n]}" "${fprs[0]}"
done

leader=$(curl -fsS "http://127.0.0.1:$N1_PORT/cluster/leader" | json 'd["name"]')
leader_cid=$(cid "$leader")
old_id=$(curl -fsS "http://127.0.0.1:${port[$leader]}/cluster/status" | json 'd["status"]["id"]')
say "docker kill (SIGKILL) the leader $leader (Raft id $old_id)"
docker kill "$leader_cid" >/dev/null
t0=$SECONDS attempts=0
until send_key "${fprs[1]}" >"$work/gpg2.log" 2>&1; do
  attempts=$((attempts + 1))
  ((attempts < 30 && SECONDS - t0 < deadline_secs)) \
    || fail "no upload through HAProxy after killing the leader ($attempts attempts): $(cat "$work/gpg2.log")"
  gpgconf --homedir "$gnupg" --kill dirmngr 2>/dev/null || true # forget a keyserver marked dead
  sleep 2
done
say "ok: second key uploaded through HAProxy $((SECONDS - t0))s after the kill ($attempts failed attempts)"
survivor=n1; [[ $leader == n1 ]] && survivor=n2
new_leader=$(curl -fsS "http://127.0.0.1:${port[$survivor]}/cluster/leader" | json 'd["name"]')
[[ -n $new_leader && $new_leader != "$leader" ]] || fail "no new leader after killing $leader ($new_leader)"
say "ok: $new_leader is the new leader"
for n in n1 n2 n3; do
  [[ $n == "$leader" ]] && continue
  wait_for "$n serves ${fprs[1]}" serves "${port[$n]}" "${fprs[1]}"
done

say "restarting $leader (docker start)"
docker start "$leader_cid" >/dev/null
wait_for "$leader healthy again" is_healthy "$leader"
wait_for "$leader caught up: serves ${fprs[1]}" serves "${port[$leader]}" "${fprs[1]}"
new_id=$(curl -fsS "http://127.0.0.1:${port[$leader]}/cluster/status" | json 'd["status"]["id"]')
[[ $new_id == "$old_id" ]] || fail "$leader came back as Raft id $new_id, not $old_id"
members=$(curl -fsS "http://127.0.0.1:${port[$leader]}/cluster/status" | json 'len(d["members"])')
[[ $members == 3 ]] || fail "after the restart the membership has $members members"
say "ok: $leader resumed as Raft id $old_id in the 3-member cluster"
wait_for "HAProxy's /ready pool has n1, n2 and n3 UP again" ready_pool_full

"${compose[@]}" exec -T n2 keyraft export --data-dir /var/lib/keyraft \
  >"$work/backup.gpg" 2>"$work/export.log" || fail "keyraft export failed: $(cat "$work/export.log")"
exported=$(kgpg --show-keys --with-colons "$work/backup.gpg" 2>/dev/null | grep -c '^pub:' || true)
((exported == 2)) || fail "keyraft export wrote $exported certificates, want 2"
say "ok: keyraft export in the n2 container wrote both certificates"

result=PASS
