#!/usr/bin/env python3
"""keyraft benchmark: prints figures, asserts nothing.

Loads Debian's keyring into a fresh single-node keyraft and measures:
  1. `keyraft import` of the whole keyring (certs/s, MB/s);
  2. concurrent `POST /pks/add` of one certificate per request (certs/s) into another fresh node;
  3. lookups with wrk at 64 connections: op=get by fingerprint (rotating over all),
     op=index by e-mail (rotating over all addresses), and a 404; requests/s, p50, p99.

Usage: scripts/bench.py [--duration 10] [--connections 64] [--binary PATH]
Run on an otherwise idle machine; the load generator shares the cores with the server.
"""
import argparse, concurrent.futures, hashlib, http.client, json, os, re, shutil, signal
import socket, subprocess, sys, tempfile, time, urllib.parse

KEYRING = "/usr/share/keyrings/debian-keyring.gpg"


def split_keyring(data):
    """Split a binary keyring into certificates; return [(v4 fingerprint hex, bytes)]."""
    certs, i, start, fpr = [], 0, None, None
    while i < len(data):
        ctb = data[i]
        if ctb & 0x40:  # new format
            tag = ctb & 0x3F
            l0 = data[i + 1]
            if l0 < 192:
                hl, ln = 2, l0
            elif l0 < 224:
                hl, ln = 3, ((l0 - 192) << 8) + data[i + 2] + 192
            else:
                hl, ln = 6, int.from_bytes(data[i + 2:i + 6], "big")
        else:
            tag, lt = (ctb >> 2) & 0x0F, ctb & 3
            hl = {0: 2, 1: 3, 2: 5}[lt]
            ln = int.from_bytes(data[i + 1:i + hl], "big")
        body = data[i + hl:i + hl + ln]
        if tag == 6:
            if start is not None:
                certs.append((fpr, data[start:i]))
            start = i
            fpr = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
        i += hl + ln
    if start is not None:
        certs.append((fpr, data[start:]))
    return certs


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="keyraft-bench-")
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "node.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", os.path.join(self.dir, "data"), "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log, env={**os.environ, "RUST_LOG": "warn"})
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("node did not become ready")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/pks/add?options=mr", body=body, headers={"Content-Type": "application/pgp-keys"})
    r = c.getresponse()
    r.read()
    return r.status


def wrk(port, paths, duration, connections):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write("local paths = {\n" + ",\n".join(json.dumps(p) for p in paths) + "}\n"
              "local i = 0\n"
              "request = function()\n  i = i + 1\n"
              "  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    lua.close()
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", lua.name,
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True).stdout
    os.unlink(lua.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, lat.get("50"), lat.get("99"), int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/keyraft-target")
    ap.add_argument("--binary", default=os.path.join(target, "debug", "keyraft"))
    a = ap.parse_args()
    data = open(KEYRING, "rb").read()
    certs = split_keyring(data)
    mb = len(data) / 1e6
    print(f"data: {KEYRING}: {len(certs)} certificates, {mb:.1f} MB")

    node = Node(a.binary)
    try:
        t = time.monotonic()
        out = subprocess.run([a.binary, "import", "--quiet", "--server", f"127.0.0.1:{node.port}", KEYRING],
                             capture_output=True, text=True, check=True).stdout
        dt = time.monotonic() - t
        print(f"keyraft import: {len(certs)} certs in {dt:.2f} s = {len(certs) / dt:.0f} certs/s, {mb / dt:.1f} MB/s")
        print("  " + out.strip().splitlines()[-1] if out.strip() else "")

        listing = subprocess.run(["gpg", "--no-default-keyring", "--keyring", KEYRING, "--with-colons",
                                  "--list-keys"], capture_output=True, text=True,
                                 env={**os.environ, "GNUPGHOME": tempfile.mkdtemp()}).stdout
        emails = sorted(set(m.lower() for m in re.findall(r"<([^<>@\s]+@[^<>\s]+)>", listing)))
        get_paths = [f"/pks/lookup?op=get&options=mr&search=0x{f}" for f, _ in certs]
        index_paths = [f"/pks/lookup?op=index&options=mr&search={urllib.parse.quote(e, safe='@+')}" for e in emails]
        for name, paths in [("op=get by fingerprint", get_paths), ("op=index by email", index_paths),
                            ("404 (unknown fingerprint)", ["/pks/lookup?op=get&search=0x" + "0" * 40])]:
            rps, p50, p99, bad = wrk(node.port, paths, a.duration, a.connections)
            note = f", {bad} non-2xx" if bad and not name.startswith("404") else ""
            print(f"{name}: {rps:,.0f} req/s, p50 {p50}, p99 {p99} ({a.connections} connections, "
                  f"{len(paths)} distinct URLs{note})")
    finally:
        node.stop()

    node = Node(a.binary)
    try:
        t = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            statuses = list(ex.map(lambda c: post(node.port, c[1]), certs))
        dt = time.monotonic() - t
        ok = statuses.count(200)
        print(f"POST /pks/add, 16 concurrent clients, one cert each: {ok}/{len(certs)} accepted in {dt:.2f} s = "
              f"{len(certs) / dt:.0f} certs/s, {mb / dt:.1f} MB/s")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
