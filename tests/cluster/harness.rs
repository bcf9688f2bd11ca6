//! The cluster harness: `keyraft serve` processes of the built binary on loopback, each with its
//! own data directory and log file, started and killed by the PID this harness spawned (every
//! [`Member`] is killed on drop). A [`Spec`] describes one member: plaintext or mTLS, whom it
//! joins (HKP addresses), the loopback address of its node-to-node listener (also its source
//! address, so a test can cut it off with iptables), an admin token, extra environment.
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use keyraft::client::{request, Response};
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_keyraft");

/// The usual loopback address.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A free port on `ip`, below the kernel's ephemeral range (32768 and up here). A port the
/// kernel hands out for `bind(0)` comes from the range outgoing connections take their source
/// ports from, so between this harness releasing it and a member binding it, one of the
/// cluster's own connections could take it ("Address already in use"). Each call moves on from
/// the last, from an offset set by the process id, so parallel tests do not pick the same port.
pub fn free_port(ip: IpAddr) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(397) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (BASE + (start + n) % SPAN) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {BASE}..{}", BASE + SPAN)
}

/// Poll `f` every 100 ms until it yields a value or `limit` has passed (then `None`).
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test directory with a cluster secret in it. Kept (and its path printed) when the test
/// fails, so the members' logs and data can be read afterwards.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    pub secret: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret-for-tests\n").unwrap();
        TestDir {
            dir: Some(dir),
            secret,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// A member description in this directory with this directory's secret.
    pub fn spec(&self, name: &str) -> Spec {
        Spec::new(self.path(), name, &self.secret)
    }

    /// Write `content` to a file in this directory; its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("test failed: logs and data kept in {}", d.keep().display());
            }
        }
    }
}

/// How to start one member.
#[derive(Debug, Clone)]
pub struct Spec {
    dir: PathBuf,
    name: String,
    secret: PathBuf,
    join: Vec<SocketAddr>,
    tls: Option<PathBuf>,
    raft_ip: IpAddr,
    source_ip: bool,
    admin_token: Option<PathBuf>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Spec {
    pub fn new(dir: &Path, name: &str, secret: &Path) -> Spec {
        Spec {
            dir: dir.to_path_buf(),
            name: name.into(),
            secret: secret.to_path_buf(),
            join: Vec::new(),
            tls: None,
            raft_ip: LOCALHOST,
            source_ip: false,
            admin_token: None,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Join through these HKP addresses (members' `--listen`).
    pub fn join(mut self, http: &[SocketAddr]) -> Spec {
        self.join = http.to_vec();
        self
    }

    /// mTLS with this directory (ca.pem, node.pem, node.key) instead of `--insecure-plaintext`.
    pub fn tls(mut self, dir: &Path) -> Spec {
        self.tls = Some(dir.to_path_buf());
        self
    }

    /// Node-to-node listener on `ip`, and outgoing node-to-node connections from `ip` too.
    pub fn raft_ip(mut self, ip: IpAddr) -> Spec {
        self.raft_ip = ip;
        self.source_ip = true;
        self
    }

    pub fn admin_token(mut self, file: &Path) -> Spec {
        self.admin_token = Some(file.to_path_buf());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Spec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Allocate ports and build the command line (not started).
    pub fn build(self) -> Member {
        let http = SocketAddr::new(LOCALHOST, free_port(LOCALHOST));
        let raft = SocketAddr::new(self.raft_ip, free_port(self.raft_ip));
        let data = self.dir.join(&self.name);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--name".into(),
            self.name.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            http.to_string(),
            "--raft-listen".into(),
            raft.to_string(),
            "--secret-file".into(),
            self.secret.display().to_string(),
        ];
        match &self.tls {
            Some(t) => args.extend(["--cluster-tls-dir".into(), t.display().to_string()]),
            None => args.push("--insecure-plaintext".into()),
        }
        if !self.join.is_empty() {
            let list: Vec<String> = self.join.iter().map(|a| a.to_string()).collect();
            args.extend(["--join".into(), list.join(",")]);
        }
        if self.source_ip {
            args.extend(["--source-ip".into(), self.raft_ip.to_string()]);
        }
        if let Some(t) = &self.admin_token {
            args.extend(["--admin-token-file".into(), t.display().to_string()]);
        }
        args.extend(self.args.iter().cloned());
        let env = self.env.clone();
        self.member(PathBuf::from(BIN), (http, raft), data, args, env)
    }

    /// The member this spec names, running `program` with `args` and `env` (not started).
    fn member(
        &self,
        program: PathBuf,
        (http, raft): (SocketAddr, SocketAddr),
        data: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Member {
        Member {
            name: self.name.clone(),
            http,
            raft,
            data,
            log: self.dir.join(format!("{}.log", self.name)),
            program,
            args,
            env,
            child: RefCell::new(None),
        }
    }

    /// A member started as the container images start it: `program` (deploy/keyraft-start.sh)
    /// with `serve` and no flags, configured through `env` only (KEYRAFT_* and the entry
    /// point's own variables), with the binary's directory first on PATH. Its data directory
    /// is `KEYRAFT_NODE__DATA_DIR`; `http` and `raft` must match the listeners `env` sets.
    pub fn entrypoint(
        self,
        program: &Path,
        http: SocketAddr,
        raft: SocketAddr,
        env: Vec<(String, String)>,
    ) -> Member {
        let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
        let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
        let data = env
            .iter()
            .find(|(k, _)| k == "KEYRAFT_NODE__DATA_DIR")
            .map(|(_, v)| PathBuf::from(v))
            .expect("KEYRAFT_NODE__DATA_DIR");
        let mut env = env;
        env.push(("PATH".into(), path));
        self.member(
            program.to_path_buf(),
            (http, raft),
            data,
            vec!["serve".into()],
            env,
        )
    }

    /// Build and spawn (does not wait for readiness).
    pub fn start(self) -> Member {
        let mut m = self.build();
        m.spawn();
        m
    }
}

/// One `keyraft serve` process (or its description while stopped).
pub struct Member {
    pub name: String,
    pub http: SocketAddr,
    pub raft: SocketAddr,
    pub data: PathBuf,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: RefCell<Option<Child>>,
}

impl Member {
    pub fn spawn(&mut self) {
        assert!(
            self.child.borrow().is_none(),
            "{} is already running",
            self.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        *self.child.borrow_mut() = Some(cmd.spawn().unwrap());
    }

    /// `kill -9` (by the PID spawned) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.borrow_mut().take() {
            let _ = c.kill();
            c.wait().unwrap();
        }
    }

    /// Send `signal` (`STOP`, `CONT`) to the PID spawned.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.borrow().as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Remove the data directory (the member must be stopped).
    pub fn wipe(&self) {
        assert!(
            self.child.borrow().is_none(),
            "stop {} before wiping it",
            self.name
        );
        std::fs::remove_dir_all(&self.data).unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the process has ended by itself (it is then reaped).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child.borrow_mut();
        let s = child.as_mut()?.try_wait().unwrap()?;
        *child = None;
        Some(s)
    }

    /// Wait (bounded) for the process to exit by itself; its status.
    pub fn wait_exit(&self, limit: Duration) -> ExitStatus {
        assert!(
            self.child.borrow().is_some(),
            "{} is not running",
            self.name
        );
        match poll(limit, || self.exited()) {
            Some(s) => s,
            None => panic!(
                "{} did not exit within {limit:?}; log:\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Response> {
        request(
            self.http,
            method,
            target,
            headers,
            body,
            Duration::from_secs(60),
        )
        .ok()
    }

    pub fn get(&self, target: &str) -> Option<Response> {
        self.request("GET", target, &[], b"")
    }

    /// GET a JSON document; `None` unless 200 with JSON.
    pub fn json(&self, target: &str) -> Option<Value> {
        let r = self.get(target)?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    /// GET a JSON document as an administrator (`Authorization: Bearer <token>`): the audit
    /// trail and conflicts name uploaders, so they need admin credentials.
    pub fn admin_json(&self, target: &str, token: &str) -> Option<Value> {
        let bearer = format!("Bearer {token}");
        let r = self.request("GET", target, &[("Authorization", &bearer)], b"")?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }

    pub fn ready(&self) -> bool {
        self.get("/ready").is_some_and(|r| r.status == 200)
    }

    /// Wait (bounded: 2 minutes) for `/ready`; fails at once if the process exits.
    pub fn wait_ready(&self) {
        let mut exit = None;
        let ready = poll(Duration::from_secs(120), || {
            if self.ready() {
                return Some(true);
            }
            exit = self.exited();
            exit.is_some().then_some(false)
        });
        if ready != Some(true) {
            panic!(
                "{} not ready (exit status {exit:?}); log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.json("/cluster/status").expect("cluster status")["status"]["id"]
            .as_u64()
            .unwrap()
    }

    /// `op=stats&options=mr`.
    pub fn stats(&self) -> Value {
        self.json("/pks/lookup?op=stats&options=mr")
            .expect("stats answer")
    }

    /// The members this node lists: (id, name, voter).
    pub fn members(&self) -> Vec<(u64, String, bool)> {
        let v = self.json("/cluster/nodes").expect("cluster nodes");
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap(),
                    n["node"]["name"].as_str().unwrap().to_string(),
                    n["voter"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// The leader this node knows of: (id, name).
    pub fn leader(&self) -> Option<(u64, String)> {
        let v = self.json("/cluster/leader")?;
        Some((v["id"].as_u64()?, v["name"].as_str()?.to_string()))
    }

    /// One POST of `cert` to `/pks/add` (no retry).
    pub fn post_once(&self, cert: &[u8]) -> std::io::Result<Response> {
        request(
            self.http,
            "POST",
            "/pks/add?options=mr",
            &[("Content-Type", "application/pgp-keys")],
            cert,
            Duration::from_secs(60),
        )
    }

    /// POST one certificate; retries (bounded) while the cluster elects a leader.
    pub fn post(&self, cert: &[u8]) -> Response {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.post_once(cert) {
                Ok(r) if r.status == 200 || Instant::now() > deadline => return r,
                _ if Instant::now() > deadline => panic!("no answer from {}", self.name),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `keyraft export --data-dir` of this member (running or not): the binary keyring.
    pub fn export(&self) -> Vec<u8> {
        let out = self.data.with_extension("export.gpg");
        let o = Command::new(BIN)
            .args(["export", "--data-dir"])
            .arg(&self.data)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "export of {} failed: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read(&out).unwrap()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Start `names[0]` (bootstrap), then each further name joining it, one after the other; all
/// ready. `f` adjusts every spec.
pub fn start_cluster(t: &TestDir, names: &[&str], f: impl Fn(Spec) -> Spec) -> Vec<Member> {
    let first = f(t.spec(names[0])).start();
    first.wait_ready();
    let seed = first.http;
    let mut members = vec![first];
    for name in &names[1..] {
        tracing_phase(&format!("{name} joins"));
        let m = f(t.spec(name).join(&[seed])).start();
        m.wait_ready();
        members.push(m);
    }
    members
}

/// A phase marker in the test output.
pub fn tracing_phase(what: &str) {
    eprintln!("--- {what}");
}

/// The index of the member the running `members` agree is the leader (bounded wait).
pub fn leader_of(members: &[&Member]) -> usize {
    let found = poll(Duration::from_secs(60), || {
        let views: Vec<Option<(u64, String)>> = members.iter().map(|m| m.leader()).collect();
        let first = views[0].clone()?;
        if views.iter().any(|v| v.as_ref() != Some(&first)) {
            return None;
        }
        members.iter().position(|m| m.name == first.1)
    });
    found.expect("the members agree on a leader among them")
}

/// The first `n` certificates of the Debian keyring: (fingerprint, bytes).
pub fn debian_certs(n: usize) -> Vec<(String, Vec<u8>)> {
    use sequoia_openpgp::parse::Parse;
    let bytes =
        std::fs::read("/usr/share/keyrings/debian-keyring.gpg").expect("debian-keyring installed");
    keyraft::pgp::CertSplitter::new(bytes.as_slice())
        .take(n)
        .map(|c| {
            let c = c.unwrap();
            (
                sequoia_openpgp::Cert::from_bytes(&c)
                    .unwrap()
                    .fingerprint()
                    .to_hex(),
                c,
            )
        })
        .collect()
}

/// `n` fresh certificates (Curve25519, one user id each), generated on every core:
/// (fingerprint, binary bytes), in order of `i`.
pub fn generated_certs(n: usize, tag: &str) -> Vec<(String, Vec<u8>)> {
    use sequoia_openpgp::cert::{CertBuilder, CipherSuite};
    use sequoia_openpgp::serialize::SerializeInto;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| {
                            let (cert, _) = CertBuilder::new()
                                .set_cipher_suite(CipherSuite::Cv25519)
                                .add_userid(format!("Test {tag} {i} <{tag}-{i}@keyraft.test>"))
                                .generate()
                                .unwrap();
                            (cert.fingerprint().to_hex(), cert.to_vec().unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// The log index a successful write reports.
pub fn log_index(r: &Response) -> u64 {
    r.header("x-keyraft-log-index")
        .expect("writes return their log index")
        .parse()
        .unwrap()
}

/// Whether `m` serves `fpr` once it has applied `index` (`min_index` reads; a 503 or a failed
/// connection while the member catches up is retried for at most a minute; a 404 is final).
pub fn served(m: &Member, fpr: &str, index: u64) -> bool {
    let target = format!("/pks/lookup?op=get&search=0x{fpr}&min_index={index}");
    poll(Duration::from_secs(60), || match m.get(&target) {
        Some(r) if r.status == 200 => Some(true),
        Some(r) if r.status == 404 => Some(false),
        _ => None,
    })
    .unwrap_or(false)
}

/// How many certificates a binary keyring holds.
pub fn count_certs(keyring: &[u8]) -> usize {
    keyraft::pgp::CertSplitter::new(keyring).count()
}

/// Every member's state digest once all have applied the same index; they must agree.
pub fn same_digest(members: &[Member]) {
    let agreed = poll(Duration::from_secs(30), || {
        let d: Vec<Value> = members
            .iter()
            .map(|m| m.json("/cluster/digest"))
            .collect::<Option<_>>()?;
        let first = &d[0];
        d.iter()
            .all(|x| x["applied_index"] == first["applied_index"])
            .then(|| d.clone())
    })
    .expect("members reach the same applied index");
    for (m, d) in members.iter().zip(&agreed) {
        assert_eq!(
            d["sha256"], agreed[0]["sha256"],
            "{} differs: {agreed:?}",
            m.name
        );
    }
}
