#!/usr/bin/env python3
"""keyraft cluster benchmark: prints figures, asserts nothing.

Starts fresh clusters of `--nodes` (default 3) `keyraft serve` processes on free loopback ports,
each with a temporary data directory, and measures (every figure is the median of `--repeat`
runs; each write run uses a fresh cluster so every submission is a new certificate):

  1. write latency p50/p99 of POST /pks/add with real Debian certificates, one per request:
     1 client (sequential) and 16 clients, through the leader and through a follower (which
     forwards to the leader over gRPC);
  2. write throughput (certs/s) at 64 clients, through the leader and spread over all nodes;
  3. op=get lookups with wrk (rotating over all fingerprints of debian-keyring.gpg): against one
     node (a follower), and against every node at once (one wrk per node in parallel, summed);
  4. failover: kill -9 of the leader, time until the first successful write through a surviving
     node (the killed node is restarted and caught up between repetitions); on a cluster loaded
     by `keyraft import` (200 certificates per Raft entry) and on one loaded one certificate per
     entry (`--batch 1`);
  5. catch-up: a cluster holding the whole Debian keyring (debian-keyring, -maintainers,
     -nonupload; plus `--extra-certs FILE` and/or `--generate N` generated certificates) gets a
     new member; time from spawn until its /ready is 200 and its op=stats certificate count
     equals the leader's (a run that takes longer than `--catchup-limit` counts as missed).
     Three ways: from the Raft log holding import batches of 200 certificates (default
     settings), from a log of one certificate per entry, and by installing a snapshot (small
     snapshot/log-retention settings, log purged);
  6. with mTLS between nodes (`keyraft cert`): 1-client write latency and 64-client throughput;
  7. (`--only budget`) lookups when every node has a fixed CPU budget (`--cpu-per-node`, a
     cgroup v1 CPU quota per node process), as if each ran on its own small machine: wrk
     against 1, 2, ... N nodes of one cluster. On a 2-core machine this is the only way to see
     whether serving lookups scales with nodes: unbudgeted, the nodes and wrk share two cores.

Every write is a committed Raft entry (fsynced on a majority, applied before the answer).
Nothing is measured while a cargo or rustc process runs: a background watcher polls for them,
and a run during which one was seen is discarded and repeated once the machine is quiet.

Usage: scripts/bench_cluster.py [--duration 8] [--nodes 3] [--repeat 3] [--binary PATH]
       [--extra-certs FILE] [--generate N] [--only writes,lookups,failover,catchup,mtls]
       [--catchup-limit 60] [--log info --keep]   (the last two keep every node's log)
`--nodes 1` gives a single-node baseline of the write figures with the same client.
Run on an otherwise idle machine: all nodes and the load generators share its cores.
"""
import argparse, hashlib, math, http.client, json, os, re, shutil, signal, socket, statistics
import subprocess, sys, tempfile, threading, time

KEYRING = "/usr/share/keyrings/debian-keyring.gpg"
OPTS = {"log": "warn", "keep": False}  # set from the command line
SMALL = 64 * 1024  # latency is also reported for certificates up to this size (~90 % of Debian's)
ALL_DEBIAN = ["/usr/share/keyrings/debian-keyring.gpg", "/usr/share/keyrings/debian-maintainers.gpg",
              "/usr/share/keyrings/debian-nonupload.gpg"]


# ---------------------------------------------------------------------------------------------
# OpenPGP helpers
# ---------------------------------------------------------------------------------------------

def split_keyring(data):
    """Split a binary keyring into certificates; return [(v4 fingerprint hex, bytes)].
    (The same splitter as scripts/bench.py.)"""
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


def debian_certs(files):
    """Certificates of `files`, first occurrence of each fingerprint, in file order."""
    seen, out = set(), []
    for f in files:
        for fpr, c in split_keyring(open(f, "rb").read()):
            if fpr not in seen:
                seen.add(fpr)
                out.append((fpr, c))
    return out


def _packet(tag, body):
    n = len(body)
    if n < 192:
        hdr = bytes([n])
    elif n < 8384:
        n2 = n - 192
        hdr = bytes([(n2 >> 8) + 192, n2 & 0xFF])
    else:
        hdr = b"\xff" + n.to_bytes(4, "big")
    return bytes([0xC0 | tag]) + hdr + body


def _mpi(b):
    b = b.lstrip(b"\x00")
    bits = (len(b) - 1) * 8 + b[0].bit_length() if b else 0
    return bits.to_bytes(2, "big") + b


def generate_certs(n, path, tag="bench"):
    """Write `n` minimal v4 certificates (Ed25519 primary key, one user id, a positive
    certification self-signature) to `path` as a binary keyring. Needs python3-cryptography."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    created = int(time.time()) - 86400
    with open(path, "wb") as out:
        for i in range(n):
            sk = Ed25519PrivateKey.generate()
            pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            key = (b"\x04" + created.to_bytes(4, "big") + bytes([22]) + b"\x09\x2b\x06\x01\x04\x01\xda\x47\x0f\x01"
                   + _mpi(b"\x40" + pk))
            fpr = hashlib.sha1(b"\x99" + len(key).to_bytes(2, "big") + key).digest()
            uid = f"Bench {tag} {i} <{tag}-{i}@keyraft.test>".encode()
            hashed = (bytes([5, 2]) + created.to_bytes(4, "big")  # signature creation time
                      + bytes([2, 27, 0x03])  # key flags: certify, sign
                      + bytes([22, 33, 4]) + fpr)  # issuer fingerprint
            head = bytes([4, 0x13, 22, 8]) + len(hashed).to_bytes(2, "big") + hashed
            h = hashlib.sha256(b"\x99" + len(key).to_bytes(2, "big") + key
                               + b"\xb4" + len(uid).to_bytes(4, "big") + uid
                               + head + b"\x04\xff" + len(head).to_bytes(4, "big")).digest()
            sig = sk.sign(h)
            unhashed = bytes([9, 16]) + fpr[-8:]  # issuer key id
            body = head + len(unhashed).to_bytes(2, "big") + unhashed + h[:2] + _mpi(sig[:32]) + _mpi(sig[32:])
            out.write(_packet(6, key) + _packet(13, uid) + _packet(2, body))


# ---------------------------------------------------------------------------------------------
# Build watcher: no figure is kept if cargo or rustc ran while it was measured
# ---------------------------------------------------------------------------------------------

def build_running():
    for name in ("cargo", "rustc"):
        if subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0:
            return name
    return None


class BuildWatch:
    def __init__(self):
        self.seen = 0
        self._stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._stop:
            if build_running():
                self.seen += 1
            time.sleep(0.5)

    def wait_quiet(self, limit):
        deadline = time.monotonic() + limit
        while (b := build_running()):
            if time.monotonic() > deadline:
                raise SystemExit(f"{b} still running after {limit} s; not measuring")
            print(f"  ({b} is running; waiting)", flush=True)
            time.sleep(30)

    def measure(self, what, fn, limit):
        """Run `fn()` until it completes with no build seen during it (at most 3 tries)."""
        for attempt in range(3):
            self.wait_quiet(limit)
            before = self.seen
            result = fn()
            if self.seen == before and not build_running():
                return result
            print(f"  (a build ran during {what}; discarded, will repeat)", flush=True)
        raise SystemExit(f"{what}: builds kept running; no figure")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def request(port, method, path, body=None, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read(), r
    finally:
        c.close()


def get_json(port, path, timeout=5):
    try:
        st, body, _ = request(port, "GET", path, timeout=timeout)
        return json.loads(body) if st == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


class Node:
    def __init__(self, binary, root, name, secret, tls=None, env=None):
        self.binary, self.name, self.secret, self.tls = binary, name, secret, tls
        self.data = os.path.join(root, name)
        self.logpath = os.path.join(root, name + ".log")
        self.http, self.raft = free_port(), free_port()
        self.env = {**os.environ, "RUST_LOG": OPTS["log"], **(env or {})}
        self.join = []
        self.proc = None

    def start(self, join=None):
        if join is not None:
            self.join = join
        args = [self.binary, "serve", "--name", self.name, "--data-dir", self.data,
                "--listen", f"127.0.0.1:{self.http}", "--raft-listen", f"127.0.0.1:{self.raft}",
                "--secret-file", self.secret]
        args += ["--cluster-tls-dir", self.tls] if self.tls else ["--insecure-plaintext"]
        if self.join:
            args += ["--join", ",".join(f"127.0.0.1:{p}" for p in self.join)]
        log = open(self.logpath, "a")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        log.close()

    def ready(self):
        try:
            return request(self.http, "GET", "/ready", timeout=2)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def wait_ready(self, limit=120):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} not ready; log tail:\n" + self.log_tail())

    def log_tail(self, n=30):
        try:
            return "".join(open(self.logpath).readlines()[-n:])
        except OSError:
            return ""

    def count(self):
        v = get_json(self.http, "/pks/lookup?op=stats&options=mr")
        return v.get("certificates") if v else None

    def kill9(self):
        if self.proc:
            self.proc.kill()  # SIGKILL to the PID we spawned
            self.proc.wait()
            self.proc = None

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Cluster:
    """`n` members: the first bootstraps, the others join it one after the other."""

    def __init__(self, binary, n, tls=False, env=None):
        self.binary = binary
        self.root = tempfile.mkdtemp(prefix="keyraft-bench-cluster-")
        self.secret = os.path.join(self.root, "secret")
        with open(self.secret, "w") as f:
            f.write(os.urandom(24).hex() + "\n")
        self.tls, self.env, self.nodes = tls, env, []
        if tls:
            ca = os.path.join(self.root, "ca")
            subprocess.run([binary, "cert", "init", ca], check=True, capture_output=True)
            self.ca = ca
        try:
            for i in range(n):
                self.add(f"n{i + 1}").wait_ready()
            self.wait_voters(n)
        except BaseException:
            self.close(failed=True)
            raise

    def add(self, name, env=None):
        tls = None
        if self.tls:
            tls = os.path.join(self.root, "tls-" + name)
            subprocess.run([self.binary, "cert", "issue", "--ca", self.ca, "--name", name, "--out", tls],
                           check=True, capture_output=True)
        node = Node(self.binary, self.root, name, self.secret, tls, {**(self.env or {}), **(env or {})})
        node.start(join=[self.nodes[0].http] if self.nodes else [])
        self.nodes.append(node)
        return node

    def alive(self):
        return [n for n in self.nodes if n.proc]

    def leader(self, among=None, limit=30):
        """The member every live node (or `among`) names as leader."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            names = set()
            for n in among or self.alive():
                v = get_json(n.http, "/cluster/leader", timeout=2)
                names.add(v.get("name") if v else None)
            if len(names) == 1 and None not in names:
                name = names.pop()
                for n in self.nodes:
                    if n.name == name and n.proc:
                        return n
            time.sleep(0.05)
        raise SystemExit("no agreed leader")

    def followers(self):
        lead = self.leader()
        return [n for n in self.alive() if n is not lead]

    def wait_voters(self, n, limit=60):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            v = get_json(self.leader().http, "/cluster/nodes")
            if v and sum(1 for m in v.get("nodes", []) if m.get("voter")) >= n:
                return
            time.sleep(0.1)
        raise SystemExit(f"cluster did not reach {n} voters")

    def wait_same_count(self, limit=120):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            counts = [n.count() for n in self.alive()]
            if None not in counts and len(set(counts)) == 1:
                return counts[0]
            time.sleep(0.1)
        raise SystemExit(f"replicas did not converge: {[n.count() for n in self.alive()]}")

    def load(self, files, batch=None):
        args = [self.binary, "import", "--quiet", "--server", f"127.0.0.1:{self.leader().http}"]
        if batch:
            args += ["--batch", str(batch)]
        subprocess.run(args + list(files), check=True, capture_output=True)
        return self.wait_same_count()

    def close(self, failed=False):
        for n in self.nodes:
            n.stop()
        if OPTS["keep"]:
            print(f"  (kept {self.root}{' of a failed run' if failed else ''}, with the nodes' logs)", flush=True)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

CGROUP_CPU = "/sys/fs/cgroup/cpu"


def cap_cpu(pid, cores):
    """Put process `pid` (all its threads) in a new cgroup v1 CPU group limited to `cores`."""
    d = os.path.join(CGROUP_CPU, f"keyraft-bench-{pid}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "cpu.cfs_period_us"), "w") as f:
        f.write("100000")
    with open(os.path.join(d, "cpu.cfs_quota_us"), "w") as f:
        f.write(str(int(cores * 100000)))
    with open(os.path.join(d, "cgroup.procs"), "w") as f:
        f.write(str(pid))
    return d


def uncap_cpu(d):
    """Remove a group made by cap_cpu once its process has exited (bounded wait)."""
    for _ in range(50):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))  # nearest rank
    return sorted_values[k]


def write_run(ports, certs, clients, duration):
    """`clients` threads, each with one keep-alive connection to ports[i % len(ports)], POST one
    certificate per request, taking the next one from `certs` (never the same twice), until
    `duration` seconds have passed or the certificates are used up."""
    lock = threading.Lock()
    state = {"next": 0}
    lat, errors, sent_bytes, small_lat = [], [], [0], []
    t_start = time.monotonic()
    deadline = t_start + duration

    def client(i):
        port = ports[i % len(ports)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                k = state["next"]
                if k >= len(certs) or time.monotonic() >= deadline:
                    break
                state["next"] = k + 1
            body = certs[k][1]
            t = time.monotonic()
            try:
                conn.request("POST", "/pks/add?options=mr", body=body,
                             headers={"Content-Type": "application/pgp-keys"})
                r = conn.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                status = repr(e)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            dt = time.monotonic() - t
            with lock:
                if status == 200:
                    lat.append(dt)
                    if len(body) <= SMALL:
                        small_lat.append(dt)
                    sent_bytes[0] += len(body)
                else:
                    errors.append(status)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start
    lat.sort()
    small_lat.sort()
    return {"p99_small": pct(small_lat, 99) * 1000, "n_small": len(small_lat),"ok": len(lat), "errors": len(errors), "error_kinds": sorted(set(map(str, errors)))[:3],
            "elapsed": elapsed, "rate": len(lat) / elapsed, "mbps": sent_bytes[0] / 1e6 / elapsed,
            "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000}


def wrk_cmd(port, lua, duration, connections, threads):
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", lua,
            f"http://127.0.0.1:{port}"]


def parse_wrk(out):
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit("wrk output not understood:\n" + out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(m.group(1)), lat.get("50"), lat.get("99"), int(non2xx.group(1)) if non2xx else 0


def wrk_lua(paths):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write("local paths = {\n" + ",\n".join(json.dumps(p) for p in paths) + "}\n"
              "local i = 0\n"
              "request = function()\n  i = i + 1\n"
              "  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    lua.close()
    return lua.name


def wrk_parallel(ports, lua, duration, connections, threads):
    procs = [subprocess.Popen(wrk_cmd(p, lua, duration, connections, threads), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in ports]
    outs = [p.communicate()[0] for p in procs]
    res = [parse_wrk(o) for o in outs]
    return {"rps": sum(r[0] for r in res), "each": [r[0] for r in res], "p50": [r[1] for r in res],
            "p99": [r[2] for r in res], "non2xx": sum(r[3] for r in res)}


def failover_once(cluster, small_certs, counter, limit=60):
    """kill -9 the leader; seconds until the first 200 from POST /pks/add through a survivor.
    A new attempt starts every 50 ms (alternating between the survivors; at most 16 in flight)
    while earlier ones may still wait, so the figure is the completion time of the earliest
    successful write."""
    lead = cluster.leader()
    survivors = [n for n in cluster.alive() if n is not lead]
    done = threading.Event()
    first, failures = [], {}
    lock = threading.Lock()

    def attempt(port, body):
        try:
            st, text, _ = request(port, "POST", "/pks/add?options=mr", body,
                                  {"Content-Type": "application/pgp-keys"}, timeout=30)
        except (OSError, http.client.HTTPException) as e:
            st, text = type(e).__name__, b""
        if st != 200:
            with lock:
                k = f"{st} {text[:80].decode(errors='replace').strip()}".strip()
                failures[k] = failures.get(k, 0) + 1
            return
        if st == 200:
            with lock:
                first.append((time.monotonic(), port))
            done.set()

    t0 = time.monotonic()
    lead.kill9()
    t_kill = time.monotonic()
    threads, i = [], 0
    while not done.is_set() and time.monotonic() - t0 < limit:
        if sum(1 for th in threads if th.is_alive()) >= 16:
            done.wait(0.05)
            continue
        body = small_certs[counter[0] % len(small_certs)][1]
        counter[0] += 1
        th = threading.Thread(target=attempt, args=(survivors[i % len(survivors)].http, body), daemon=True)
        th.start()
        threads.append(th)
        i += 1
        done.wait(0.05)
    # a new leader as seen by the survivors (for information)
    try:
        new_lead = cluster.leader(among=survivors).name
    except SystemExit:
        new_lead = None
    for th in threads:
        th.join(35)
    t1 = min(first)[0] if first else None
    via = next(n.name for n in survivors if n.http == min(first)[1]) if first else None
    return {"seconds": t1 - t_kill if t1 is not None and t1 - t_kill <= limit else None, "killed": lead.name,
            "new_leader": new_lead, "via": via, "attempts": len(threads), "failures": failures}


def recover(cluster, node, n):
    """Restart `node` and wait (bounded) until the cluster is whole again; False if it is not."""
    node.start()
    try:
        node.wait_ready(120)
        cluster.wait_voters(n)
        cluster.wait_same_count(120)
    except SystemExit as e:
        print(f"  (the restarted {node.name} did not recover: {str(e).splitlines()[0]})", flush=True)
        return False
    time.sleep(1)
    return True


def catchup_once(binary, n, files, env=None, batch=None, limit=120):
    """A cluster of `n` loaded with `files`; a new member joins: seconds from spawn to /ready
    and to the same certificate count as the leader (None when not within `limit` seconds);
    whether it installed a snapshot."""
    with Cluster(binary, n, env=env) as c:
        c.load(files, batch=batch)
        time.sleep(1)  # let snapshot building / log purge (if configured) finish
        lead = c.leader()
        target = lead.count()
        cons = get_json(lead.http, "/cluster/consensus") or {}
        t0 = time.monotonic()
        new = c.add(f"n{n + 1}")
        t_ready = t_full = None
        deadline = t0 + limit
        while time.monotonic() < deadline:
            if new.proc.poll() is not None:
                raise SystemExit(f"{new.name} exited; log tail:\n" + new.log_tail())
            if t_ready is None and new.ready():
                t_ready = time.monotonic() - t0
            if t_ready is not None and new.count() == target:
                t_full = time.monotonic() - t0
                break
            time.sleep(0.02)
        else:
            lag = [(m.get("node", {}).get("name"), m.get("matched_index"))
                   for m in (get_json(lead.http, "/cluster/nodes") or {}).get("nodes", [])]
            timeouts = sum(1 for line in open(lead.logpath, errors="replace")
                           if "timeout after" in line and "AppendEntries" in line)
            print(f"  {new.name} did NOT catch up within {limit} s: ready {new.ready()}, "
                  f"{new.count()} of {target} certificates; matched index per member (leader's view): {lag}; "
                  f"AppendEntries timeouts in the leader's log: {timeouts}"
                  + ("" if OPTS["log"] != "warn" or timeouts else " (RUST_LOG=warn shows them)"), flush=True)
        ncons = get_json(new.http, "/cluster/consensus") or {}
        snap = ncons.get("snapshot")
        snap_idx = snap if isinstance(snap, int) else (snap or {}).get("index") if isinstance(snap, dict) else None
        purged = cons.get("purged")
        purged_idx = purged if isinstance(purged, int) else (purged or {}).get("index") if isinstance(purged, dict) else None
        return {"ready": t_ready, "full": t_full, "certs": target, "snapshot_index": snap_idx,
                "leader_purged": purged_idx}


# ---------------------------------------------------------------------------------------------

CATCHUP = {
    "log": "default settings (snapshot_every 10000), import batches of 200 certs (over 64 entries: the leader snapshots at the join)",
    "log1": "default settings, import batches of 1 cert (one Raft entry per cert) (over 64 entries: the leader snapshots at the join)",
    "snapshot200": "snapshot_every 50, keep_logs 10, import batches of 200: the log is purged and the joiner "
                   "installs a snapshot",
    "snapshot": "snapshot_every 100, keep_logs 20, import batches of 2: the log is purged and the joiner "
                "installs a snapshot",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per write run and per wrk run")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections per node")
    target_dir = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/keyraft-target")
    ap.add_argument("--binary", default=os.path.join(target_dir, "debug", "keyraft"))
    ap.add_argument("--extra-certs", action="append", default=[],
                    help="keyring file loaded with the Debian keyring before the catch-up test")
    ap.add_argument("--generate", type=int, default=0,
                    help="generate N Ed25519 certificates (python3-cryptography) for the catch-up test")
    ap.add_argument("--only", default="writes,lookups,failover,catchup,mtls")
    ap.add_argument("--catchup-modes", default="log,log1,snapshot",
                    help="catch-up modes: log, log1, snapshot, snapshot200 (batches of 200, snapshot every "
                         "50 entries: for large --generate data sets)")
    ap.add_argument("--cpu-per-node", type=float, default=0.25,
                    help="CPU quota per node process (cores) for --only budget")
    ap.add_argument("--log", default="warn", help="RUST_LOG for the nodes")
    ap.add_argument("--failover-limit", type=int, default=60,
                    help="seconds after the kill during which new write attempts are started")
    ap.add_argument("--catchup-limit", type=int, default=60,
                    help="seconds a joining member gets to catch up before the run counts as missed")
    ap.add_argument("--keep", action="store_true", help="keep every cluster's data directories and logs (for diagnosis)")
    ap.add_argument("--build-wait", type=int, default=3600,
                    help="seconds to wait for a running cargo/rustc before giving up")
    a = ap.parse_args()
    OPTS.update(log=a.log, keep=a.keep)

    # A private copy: a rebuild during the run must not mix two builds into one set of figures.
    bin_dir = tempfile.mkdtemp(prefix="keyraft-bench-bin-")
    try:
        copy = os.path.join(bin_dir, "keyraft")
        shutil.copy2(a.binary, copy)
        digest = hashlib.sha256(open(copy, "rb").read()).hexdigest()[:16]
        print(f"binary: {a.binary} (mtime {time.ctime(os.path.getmtime(a.binary))}, sha256 {digest}...)")
        a.binary = copy
        run(a)
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)


def run(a):
    only = set(a.only.split(","))
    N = a.nodes
    watch = BuildWatch()
    meas = lambda what, fn: watch.measure(what, fn, a.build_wait)
    certs = debian_certs(ALL_DEBIAN)
    keyring_certs = split_keyring(open(KEYRING, "rb").read())
    small = sorted(certs, key=lambda c: len(c[1]))[:200]
    print(f"machine: {os.cpu_count()} cores; {N} nodes, load generators and the Python clients share them")
    print(f"data: {len(certs)} distinct certificates in {', '.join(os.path.basename(f) for f in ALL_DEBIAN)}, "
          f"{sum(len(c[1]) for c in certs) / 1e6:.1f} MB", flush=True)

    def write_once(label, tls, clients, where):
        def one():
            with Cluster(a.binary, N, tls=tls) as c:
                lead = c.leader()
                if where == "leader":
                    ports = [lead.http]
                elif where == "follower":
                    ports = [c.followers()[0].http]
                else:
                    ports = [n.http for n in c.nodes]
                return write_run(ports, certs, clients, a.duration)
        return meas(label, one)

    # Every configuration once per round, rounds repeated: slow drift of this shared machine
    # then spreads over all configurations instead of biasing the ones measured last.
    configs = []
    if "writes" in only:
        configs += [(False, c, w) for c, w in [(1, "leader"), (1, "follower"), (16, "leader"),
                                               (16, "follower"), (64, "leader"), (64, "all")]]
    if "mtls" in only:
        configs += [(True, c, w) for c, w in [(1, "leader"), (1, "follower"), (64, "leader")]]
    configs = [k for k in configs if N > 1 or k[2] == "leader"]
    W, runs = {}, {k: [] for k in configs}
    if configs:
        print("\n== writes (fresh cluster per run; each request one new certificate; "
              "configurations interleaved) ==", flush=True)
    for r in range(a.repeat):
        for k in configs:
            tls, clients, where = k
            label = f"{'mTLS' if tls else 'plaintext'} {clients} client(s) -> {where}"
            res = write_once(label, tls, clients, where)
            print(f"  round {r + 1}, {label}: {res['ok']} ok, {res['errors']} errors {res['error_kinds']}, "
                  f"{res['elapsed']:.2f} s, {res['rate']:.0f} certs/s, {res['mbps']:.1f} MB/s, "
                  f"p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms (p99 {res['p99_small']:.1f} ms over the "
                  f"{res['n_small']} certs <= {SMALL // 1024} KB)", flush=True)
            runs[k].append(res)
    for k in configs:
        W[k] = {f: med([x[f] for x in runs[k]])
                for f in ("rate", "mbps", "p50", "p99", "p99_small", "n_small", "ok", "errors", "elapsed")}

    L = {}
    if "lookups" in only:
        print("\n== lookups: op=get by fingerprint over debian-keyring.gpg, wrk ==", flush=True)
        with Cluster(a.binary, N) as c:
            n = meas("load for lookups", lambda: c.load([KEYRING]))
            print(f"  loaded {n} certificates, all replicas equal", flush=True)
            lua = wrk_lua([f"/pks/lookup?op=get&options=mr&search=0x{f}" for f, _ in keyring_certs])
            follower = (c.followers() or [c.leader()])[0]
            one, allr = [], []
            try:
                for r in range(a.repeat):
                    x = meas("wrk one node", lambda: wrk_parallel([follower.http], lua, a.duration,
                                                                   a.connections, 2))
                    print(f"  one node ({follower.name}, {'follower' if N > 1 else 'alone'}; wrk -t2 -c{a.connections}) run {r + 1}: "
                          f"{x['rps']:,.0f} req/s, p50 {x['p50'][0]}, p99 {x['p99'][0]}, non-2xx {x['non2xx']}",
                          flush=True)
                    one.append(x)
                    y = meas("wrk all nodes", lambda: wrk_parallel([m.http for m in c.nodes], lua, a.duration,
                                                                   a.connections, 1))
                    print(f"  all {N} nodes (one wrk -t1 -c{a.connections} each, in parallel) run {r + 1}: "
                          f"{y['rps']:,.0f} req/s = " + " + ".join(f"{v:,.0f}" for v in y["each"])
                          + f", p50 {y['p50']}, p99 {y['p99']}, non-2xx {y['non2xx']}", flush=True)
                    allr.append(y)
            finally:
                os.unlink(lua)
            L = {"one": med([x["rps"] for x in one]), "all": med([y["rps"] for y in allr]),
                 "one_p99": [x["p99"][0] for x in one], "all_p99": [y["p99"] for y in allr]}

    B = {}
    if "budget" in only:
        print(f"\n== lookups with a CPU budget of {a.cpu_per_node} core per node (cgroup quota), "
              f"op=get over debian-keyring.gpg, wrk ==", flush=True)
        groups = []
        with Cluster(a.binary, N) as c:
            try:
                n = meas("load for budget", lambda: c.load([KEYRING]))
                print(f"  loaded {n} certificates, all replicas equal", flush=True)
                groups = [cap_cpu(m.proc.pid, a.cpu_per_node) for m in c.nodes]
                lua = wrk_lua([f"/pks/lookup?op=get&options=mr&search=0x{f}" for f, _ in keyring_certs])
                try:
                    for k in range(1, N + 1):
                        runs = []
                        for r in range(a.repeat):
                            x = meas(f"wrk {k} nodes", lambda: wrk_parallel([m.http for m in c.nodes[:k]], lua,
                                                                              a.duration, 16, 1))
                            print(f"  {k} node(s), one wrk -t1 -c16 each, run {r + 1}: {x['rps']:,.0f} req/s = "
                                  + " + ".join(f"{v:,.0f}" for v in x["each"])
                                  + f", p99 {x['p99']}, non-2xx {x['non2xx']}", flush=True)
                            runs.append(x["rps"])
                        B[k] = med(runs)
                finally:
                    os.unlink(lua)
            finally:
                for m in c.nodes:
                    m.stop()
                for d in groups:
                    uncap_cpu(d)

    F = {}
    for batch in ([None, 1] if "failover" in only and N >= 3 else []):
        how = "import batches of 200 certs (up to 4 MiB per entry)" if batch is None else "one cert per entry"
        print(f"\n== failover: kill -9 of the leader, first successful write through a survivor; "
              f"debian-keyring.gpg loaded with {how} ==", flush=True)
        F[batch] = []
        c = None
        try:
            for r in range(a.repeat):
                if c is None:
                    c = Cluster(a.binary, N)
                    meas("load for failover", lambda: c.load([KEYRING], batch=batch))
                    counter = [0]

                def one():
                    res = failover_once(c, small, counter, a.failover_limit)
                    killed = next(n for n in c.nodes if n.name == res["killed"])
                    res["recovered"] = recover(c, killed, N)
                    return res
                res = meas("failover", one)
                took = (f"after {res['seconds']:.3f} s" if res["seconds"] is not None
                        else f"NOT within {a.failover_limit} s")
                print(f"  run {r + 1}: killed {res['killed']}, new leader {res['new_leader']}, first write "
                      f"through {res['via']} {took} ({res['attempts']} attempts started; "
                      f"failed ones: {res['failures'] or 'none'})", flush=True)
                F[batch].append(res["seconds"])
                if not res["recovered"]:
                    print("  (next repetition on a fresh cluster)", flush=True)
                    c.close(failed=True)
                    c = None
        finally:
            if c is not None:
                c.close()

    C = {}
    if "catchup" in only:
        files = list(ALL_DEBIAN) + a.extra_certs
        gen_dir = None
        if a.generate:
            gen_dir = tempfile.mkdtemp(prefix="keyraft-bench-gen-")
            path = os.path.join(gen_dir, "generated.gpg")
            t = time.monotonic()
            generate_certs(a.generate, path)
            print(f"\ngenerated {a.generate} Ed25519 certificates in {time.monotonic() - t:.1f} s", flush=True)
            files.append(path)
        try:
            modes = [
                ("log", None, None),
                ("log1", None, 1),
                ("snapshot", {"KEYRAFT_RAFT__SNAPSHOT_EVERY": "100", "KEYRAFT_RAFT__KEEP_LOGS": "20"}, 2),
                ("snapshot200", {"KEYRAFT_RAFT__SNAPSHOT_EVERY": "50", "KEYRAFT_RAFT__KEEP_LOGS": "10"}, None)]
            wanted = a.catchup_modes.split(",")
            for label, env, batch in [m for m in modes if m[0] in wanted]:
                desc = CATCHUP[label]
                print(f"\n== catch-up of a new member via {label}: {desc} ==", flush=True)
                runs = []
                for r in range(a.repeat):
                    res = meas("catch-up", lambda: catchup_once(a.binary, N, files, env, batch, a.catchup_limit))
                    sec = lambda x: f"{x:.2f} s" if x is not None else f"not within {a.catchup_limit} s"
                    print(f"  run {r + 1}: {res['certs']} certificates; /ready after {sec(res['ready'])}, "
                          f"same count as the leader after {sec(res['full'])} (joiner's snapshot index "
                          f"{res['snapshot_index']}, leader purged up to {res['leader_purged']})", flush=True)
                    runs.append(res)
                C[label] = {"ready": med([x["ready"] for x in runs]), "full": med([x["full"] for x in runs]),
                            "missed": sum(1 for x in runs if x["full"] is None), "runs": len(runs),
                            "certs": runs[0]["certs"],
                            "snapshot": all((x["snapshot_index"] or 0) > 0 for x in runs)}
        finally:
            if gen_dir:
                shutil.rmtree(gen_dir, ignore_errors=True)

    # -----------------------------------------------------------------------------------------
    print(f"\n== summary: medians of {a.repeat} runs, {N} nodes, --duration {a.duration} ==")
    print("| what | median | target (issue 3) |")
    print("|---|---|---|")

    def wrow(tls, clients, where, lat_target=""):
        w = W.get((tls, clients, where))
        if not w:
            return
        mode = "mTLS" if tls else "plaintext"
        print(f"| POST /pks/add, {clients} client{'s' if clients > 1 else ''} -> {where} ({mode}) | "
              f"p50 {w['p50']:.1f} ms, p99 {w['p99']:.1f} ms (certs <= {SMALL // 1024} KB: p99 {w['p99_small']:.1f} ms), "
              f"{w['rate']:.0f} certs/s ({w['mbps']:.1f} MB/s; "
              f"{w['ok']:.0f} certs in {w['elapsed']:.1f} s) | {lat_target} |")

    wrow(False, 1, "leader", "p99 < 25 ms")
    wrow(False, 1, "follower", "p99 < 25 ms")
    wrow(False, 16, "leader")
    wrow(False, 16, "follower")
    wrow(False, 64, "leader")
    wrow(False, 64, "all")
    wrow(True, 1, "leader", "p99 < 25 ms")
    wrow(True, 1, "follower", "p99 < 25 ms")
    wrow(True, 64, "leader")
    if L:
        print(f"| op=get, one node ({'a follower' if N > 1 else 'alone'}), wrk -t2 -c{a.connections} | {L['one']:,.0f} req/s | "
              f"grows with node count |")
        print(f"| op=get, all {N} nodes, {N} wrk -t1 -c{a.connections} in parallel, summed | {L['all']:,.0f} req/s | "
              f"grows with node count |")
    for batch, xs in F.items():
        how = "import batches of 200" if batch is None else "one cert per entry"
        runs_txt = ", ".join(f"{x:.2f}" if x is not None else f">{a.failover_limit}" for x in xs)
        missed = sum(1 for x in xs if x is None)
        m = sorted((x if x is not None else float("inf")) for x in xs)[len(xs) // 2] if xs else float("nan")
        print(f"| failover: kill -9 leader -> first 200 through a survivor (loaded with {how}) | "
              f"{f'> {a.failover_limit} s' if math.isinf(m) else f'{m:.2f} s'} (runs: {runs_txt}{f'; {missed} missed' if missed else ''}) | < 3 s |")
    for label in ("log", "log1", "snapshot", "snapshot200"):
        if label in C:
            x = C[label]
            missed = f"; {x['missed']} of {x['runs']} runs did not catch up within {a.catchup_limit} s" if x["missed"] else ""
            f2 = lambda v: "never" if math.isnan(v) else f"{v:.2f} s"
            print(f"| catch-up of a new member: {CATCHUP[label]}; {x['certs']} certs | /ready {f2(x['ready'])}, "
                  f"same count {f2(x['full'])} (median of the runs that finished{missed}; snapshot installed: "
                  f"{'yes' if x['snapshot'] else 'no'}) | < 10 s |")

    print("\nratios (of medians):")
    r = lambda x, y: x / y if y else float("nan")
    if (False, 1, "follower") in W and (False, 1, "leader") in W:
        print(f"  follower / leader, 1 client, p50 latency: {r(W[(False, 1, 'follower')]['p50'], W[(False, 1, 'leader')]['p50']):.2f}")
    if all((False, c, w) in W for c, w in [(1, "leader"), (16, "leader"), (16, "follower"), (64, "leader"), (64, "all")]):
        print(f"  16 / 1 client(s) throughput, leader: {r(W[(False, 16, 'leader')]['rate'], W[(False, 1, 'leader')]['rate']):.2f}")
        print(f"  follower / leader, 16 clients, throughput: {r(W[(False, 16, 'follower')]['rate'], W[(False, 16, 'leader')]['rate']):.2f}")
        print(f"  64 / 16 clients throughput, leader: {r(W[(False, 64, 'leader')]['rate'], W[(False, 16, 'leader')]['rate']):.2f}")
        print(f"  64 clients, all nodes / leader only, throughput: {r(W[(False, 64, 'all')]['rate'], W[(False, 64, 'leader')]['rate']):.2f}")
    if all(k in W for k in [(True, 1, "leader"), (False, 1, "leader"), (True, 1, "follower"), (False, 1, "follower"),
                            (True, 64, "leader"), (False, 64, "leader")]):
        print(f"  mTLS / plaintext, 1 client -> leader, p50: {r(W[(True, 1, 'leader')]['p50'], W[(False, 1, 'leader')]['p50']):.2f}")
        print(f"  mTLS / plaintext, 1 client -> follower, p50: {r(W[(True, 1, 'follower')]['p50'], W[(False, 1, 'follower')]['p50']):.2f}")
        print(f"  mTLS / plaintext, 64 clients -> leader, throughput: {r(W[(True, 64, 'leader')]['rate'], W[(False, 64, 'leader')]['rate']):.2f}")
    if L:
        print(f"  lookups, {N} nodes / 1 node: {r(L['all'], L['one']):.2f}")
    for k in sorted(B):
        print(f"  lookups with {a.cpu_per_node} core per node, {k} node(s): {B[k]:,.0f} req/s, "
              f"{r(B[k], B[1]):.2f} x one node")


if __name__ == "__main__":
    main()
