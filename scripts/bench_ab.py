#!/usr/bin/env python3
"""A/B of 1-client write latency between keyraft binaries, rounds interleaved.

Each run starts a fresh 3-node cluster from one binary (scripts/bench_cluster.py's Cluster)
and submits every Debian certificate (1,172) once, in one fixed shuffled order, through one
client to the leader (or, with --via follower, to a follower, which forwards them); it prints p50, p99 and how many requests took over 25 ms. Runs
alternate between the binaries, so drift of this shared VM hits both alike.

    cp "$CARGO_TARGET_DIR/debug/keyraft" /tmp/keyraft-new   # and build the other one likewise
    scripts/bench_ab.py --rounds 4 /tmp/keyraft-old /tmp/keyraft-new

With --as-gpg, each certificate is sent as `gpg --send-keys` sends it: armored, as the
form field `keytext`, percent-encoded (otherwise binary, as application/pgp-keys).

With --split, the node taking the writes logs how long each one spent being prepared (parsed,
cleaned, merged into what the replica holds) and being committed (proposed or forwarded,
replicated, applied on that node), and the slowest requests are printed with that split.
"""
import argparse
import base64
import http.client
import os
import random
import re
import statistics
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cluster as b  # noqa: E402


def duration_ms(text):
    m = re.fullmatch(r"([\d.]+)(ns|µs|ms|s)", text)
    return float(m.group(1)) * {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def print_split(lat, sizes, log_text, worst=16):
    """The slowest requests, each split into prepare and commit from the node's debug log."""
    split = [(duration_ms(p), duration_ms(c))
             for p, c in re.findall(r"prepared=(\S+) committed=(\S+) index=\d+", log_text)]
    if len(split) != len(lat):
        print(f"  (split unavailable: {len(split)} log lines for {len(lat)} requests)")
        return
    rows = sorted(zip(lat, sizes, split), reverse=True)[:worst]
    for total, size, (prep, commit) in rows:
        print(f"  {total:5.1f} ms  {size // 1024:4d} KB  prepare {prep:5.1f}  commit {commit:5.1f}  "
              f"rest {total - prep - commit:4.1f}")


def crc24(data):
    """The OpenPGP armor checksum (RFC 4880 section 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def as_gpg_sends(binary_cert):
    """(body, content type) of `gpg --send-keys` for one binary certificate."""
    b64 = base64.b64encode(binary_cert).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    crc = base64.b64encode(crc24(binary_cert).to_bytes(3, "big")).decode()
    armored = ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + "\n".join(lines)
               + f"\n={crc}\n-----END PGP PUBLIC KEY BLOCK-----\n")
    body = "keytext=" + urllib.parse.quote(armored, safe="")
    return body.encode(), "application/x-www-form-urlencoded"


def one_run(binary, certs, via="leader", dump=False, split=False):
    with b.Cluster(binary, 3) as c:
        target = c.leader() if via == "leader" else c.followers()[0]
        conn = http.client.HTTPConnection("127.0.0.1", target.http, timeout=60)
        lat = []
        for _, body, ctype in certs:
            t = time.monotonic()
            conn.request("POST", "/pks/add?options=mr", body=body,
                         headers={"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"{binary}: HTTP {r.status}")
            lat.append((time.monotonic() - t) * 1000)
        if dump:
            for n in c.alive():
                print(n.name, b.get_json(n.http, "/cluster/performance"), flush=True)
        if split:
            time.sleep(0.5)
            with open(target.logpath) as f:
                print_split(lat, [len(body) for _, body, _ in certs], f.read())
    lat.sort()
    n = len(lat)
    return lat[n // 2], lat[min(n - 1, int(n * 0.99))], sum(1 for x in lat if x > 25), n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--via", choices=["leader", "follower"], default="leader",
                    help="send the writes to the leader (default) or to a follower")
    ap.add_argument("--dump", action="store_true",
                    help="print every node's /cluster/performance after each run")
    ap.add_argument("--as-gpg", action="store_true",
                    help="send each certificate armored in a form, as gpg --send-keys does")
    ap.add_argument("--split", action="store_true",
                    help="print the slowest requests split into prepare and commit")
    args = ap.parse_args()
    b.OPTS["log"] = "warn,keyraft::raft::keys=debug" if args.split else "warn"
    certs = [(fpr, *(as_gpg_sends(c) if args.as_gpg else (c, "application/pgp-keys")))
             for fpr, c in b.debian_certs(b.ALL_DEBIAN)]
    random.Random(1).shuffle(certs)
    p99s = {x: [] for x in args.binaries}
    for r in range(1, args.rounds + 1):
        for binary in args.binaries:
            p50, p99, over, n = one_run(binary, certs, args.via, args.dump, args.split)
            p99s[binary].append(p99)
            print(f"round {r} {binary}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                  f"{over} of {n} over 25 ms", flush=True)
    for binary, xs in p99s.items():
        print(f"{binary}: median p99 {statistics.median(xs):.1f} ms over {len(xs)} runs")


if __name__ == "__main__":
    main()
