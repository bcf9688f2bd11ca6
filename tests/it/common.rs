//! Harnesses for tests that drive the real binary and the real gpg: a node on free loopback
//! ports with its own data directory (killed by the PID it started), and a gpg home per test.
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyraft::client::{request, Response};

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `keyraft serve` process.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl TestNode {
    /// Start a node with its own data directory and HKP port.
    pub fn start(extra: &[&str]) -> TestNode {
        let mut n = TestNode {
            dir: tempfile::tempdir().unwrap(),
            addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        n.spawn();
        n
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keyraft"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Poll `/ready` (bounded: 60 s).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.get("/ready") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "node not ready; log:\n{}",
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// SIGKILL by the PID this harness started.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM by the PID this harness started; the exit status (bounded wait: 60 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {}", c.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.kill().unwrap();
        c.wait().unwrap();
        panic!("no exit within 60 s of SIGTERM");
    }

    /// Start again (after [`TestNode::terminate`]) on the same data directory and port.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Start again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn get(&self, target: &str) -> std::io::Result<Response> {
        request(self.addr, "GET", target, &[], b"", Duration::from_secs(30))
    }

    /// GET with `Authorization: Bearer <token>` (the audit trail, conflicts).
    pub fn get_as_admin(&self, target: &str, token: &str) -> std::io::Result<Response> {
        let bearer = format!("Bearer {token}");
        let auth = [("Authorization", bearer.as_str())];
        request(
            self.addr,
            "GET",
            target,
            &auth,
            b"",
            Duration::from_secs(30),
        )
    }

    /// POST raw armored or binary certificates, JSON answer.
    pub fn post_keys(&self, body: &[u8]) -> std::io::Result<Response> {
        request(
            self.addr,
            "POST",
            "/pks/add?options=mr",
            &[("Content-Type", "application/pgp-keys")],
            body,
            Duration::from_secs(60),
        )
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A gpg home of its own (and so its own dirmngr), pointed at a keyserver.
pub struct Gpg {
    pub home: tempfile::TempDir,
}

impl Gpg {
    pub fn new(keyserver: &str, dirmngr_extra: &str) -> Gpg {
        let home = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            home.path().join("dirmngr.conf"),
            format!("no-use-tor\nstandard-resolver\nconnect-timeout 5\n{dirmngr_extra}"),
        )
        .unwrap();
        std::fs::write(
            home.path().join("gpg.conf"),
            format!("keyserver {keyserver}\n"),
        )
        .unwrap();
        Gpg { home }
    }

    /// Run gpg with `args` (bounded: 60 s), optionally feeding `stdin`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run_program("gpg", args, stdin)
    }

    pub fn run_program(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(program);
        cmd.env("GNUPGHOME", self.home.path())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Generate `uid` with an encryption subkey; returns (primary fpr, subkey fpr).
    pub fn gen_key(&self, uid: &str) -> (String, String) {
        let out = self.run(
            &[
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                uid,
                "ed25519",
                "sign",
                "never",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fpr = self.fingerprints(uid)[0].clone();
        let out = self.run(
            &[
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-add-key",
                &fpr,
                "cv25519",
                "encr",
                "never",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fprs = self.fingerprints(&fpr);
        (fprs[0].clone(), fprs[1].clone())
    }

    /// `fpr:` fields of `--list-keys WHO` (primary first, then subkeys); empty when unknown.
    pub fn fingerprints(&self, who: &str) -> Vec<String> {
        let out = self.run(&["--batch", "--with-colons", "--list-keys", who], None);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .map(|l| l.split(':').nth(9).unwrap().to_string())
            .collect()
    }

    pub fn has_key(&self, fpr: &str) -> bool {
        self.fingerprints(fpr).first().map(String::as_str) == Some(fpr)
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        for c in ["dirmngr", "gpg-agent"] {
            let _ = Command::new("gpgconf")
                .env("GNUPGHOME", self.home.path())
                .args(["--kill", c])
                .output();
        }
    }
}

/// Debian's keyring split into certificates: (fingerprint hex, binary).
pub fn debian_certs() -> Vec<(String, Vec<u8>)> {
    use sequoia_openpgp::parse::Parse;
    let bytes =
        std::fs::read("/usr/share/keyrings/debian-keyring.gpg").expect("debian-keyring installed");
    keyraft::pgp::CertSplitter::new(bytes.as_slice())
        .map(|c| {
            let c = c.unwrap();
            let fpr = sequoia_openpgp::Cert::from_bytes(&c)
                .unwrap()
                .fingerprint()
                .to_hex();
            (fpr, c)
        })
        .collect()
}
