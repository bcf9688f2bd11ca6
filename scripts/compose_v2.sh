#!/usr/bin/env bash
# Compose v2 for scripts/container_test.sh on Debian bookworm, whose docker-compose package is
# v1 (1.29): installs the docker-compose of Debian trixie (2.x, a static Go binary that needs
# glibc 2.34 or later) as a docker CLI plugin, /usr/local/lib/docker/cli-plugins/docker-compose.
# Fetched by apt from deb.debian.org with a package list of its own in a temporary directory:
# the system's sources and caches are not changed. Idempotent: nothing happens when
# `docker compose version` answers. Run as root.
set -euo pipefail
if docker compose version >/dev/null 2>&1; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
echo "deb http://deb.debian.org/debian trixie main" >"$tmp/sources.list"
apt_private=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=- -o APT::Sandbox::User=root
  -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o APT::Get::List-Cleanup=0)
apt-get -qq "${apt_private[@]}" update
(cd "$tmp" && apt-get -qq "${apt_private[@]}" download docker-compose)
deb=$(ls "$tmp"/docker-compose_2*.deb 2>/dev/null | head -1)
[[ -n $deb ]] || { echo "compose_v2.sh: trixie has no docker-compose 2.x" >&2; exit 1; }
dpkg-deb -x "$deb" "$tmp/x"
plugin=$(find "$tmp/x" -type f -name docker-compose -perm -u+x | head -1)
[[ -n $plugin ]] || { echo "compose_v2.sh: no docker-compose binary in $deb" >&2; exit 1; }
install -D -m 0755 "$plugin" /usr/local/lib/docker/cli-plugins/docker-compose
echo "compose_v2.sh: installed $(basename "$deb") as /usr/local/lib/docker/cli-plugins/docker-compose" >&2
