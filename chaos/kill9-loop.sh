#!/usr/bin/env bash
# Chaos for a single node: submit Debian certificates one by one while killing the node with
# SIGKILL (by the PID this script started) every 0.7 s, restarting it each time. At the
# end, every certificate whose submission was acknowledged (HTTP 200) must be served.
# Usage: chaos/kill9-loop.sh [ROUNDS=5]. Bounded: ROUNDS kills, then it stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
rounds="${1:-5}"
dir=$(mktemp -d /tmp/keyraft-chaos.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {
  "$KEYRAFT_BIN" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" >>"$dir/node.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 400); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "node did not become ready" >&2; exit 1
}
cleanup() { kill -9 "$pid" 2>/dev/null || true; kill "$writer" 2>/dev/null || true; }
trap cleanup EXIT
start
python3 - "$port" "$dir/acked" <<'PY' &
import sys, http.client, time
sys.path.insert(0, "scripts")
from bench import split_keyring
port, acked = int(sys.argv[1]), open(sys.argv[2], "w")
for fpr, cert in split_keyring(open("/usr/share/keyrings/debian-keyring.gpg", "rb").read()):
    for attempt in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/pks/add", body=cert, headers={"Content-Type": "application/pgp-keys"})
            if c.getresponse().status == 200:
                acked.write(fpr + "\n"); acked.flush()
                break
        except OSError:
            time.sleep(0.1)
PY
writer=$!
for r in $(seq 1 "$rounds"); do
  sleep 0.7
  echo "--- round $r: kill -9 $pid"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  start
done
wait "$writer" || true
missing=0
while read -r fpr; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/pks/lookup?op=get&search=0x$fpr")
  [ "$code" = 200 ] || { echo "MISSING $fpr ($code)"; missing=$((missing+1)); }
done <"$dir/acked"
echo "acknowledged $(wc -l <"$dir/acked"), missing $missing after $rounds kill -9 rounds"
[ "$missing" -eq 0 ]
