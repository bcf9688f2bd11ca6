//! Real multi-process clusters of the built binary on loopback: formation by join, writes on
//! followers (forwarded, read-your-writes), kill -9 of the leader, catch-up after restart,
//! refusal of a wrong cluster secret. (A separate test binary from `tests/it` for now.)
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyraft::client::{request, Response};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Member {
    http: SocketAddr,
    raft: SocketAddr,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn new(dir: &Path, name: &str, join: Option<SocketAddr>, secret: &Path) -> Member {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let raft: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data = dir.join(name);
        let mut args = vec![
            "serve".to_string(),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            http.to_string(),
            "--raft-listen".into(),
            raft.to_string(),
            "--insecure-plaintext".into(),
            "--secret-file".into(),
            secret.display().to_string(),
        ];
        if let Some(j) = join {
            args.extend(["--join".into(), j.to_string()]);
        }
        Member {
            http,
            raft,
            log: dir.join(format!("{name}.log")),
            args,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_keyraft"))
                .args(&self.args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn get(&self, target: &str) -> Option<Response> {
        request(self.http, "GET", target, &[], b"", Duration::from_secs(10)).ok()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.get("/ready").is_some_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} not ready:\n{}",
            self.http,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// POST one certificate; retries (bounded) while the cluster elects a leader.
    fn post(&self, cert: &[u8]) -> Response {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = request(
                self.http,
                "POST",
                "/pks/add?options=mr",
                &[("Content-Type", "application/pgp-keys")],
                cert,
                Duration::from_secs(20),
            );
            match r {
                Ok(r) if r.status == 200 || Instant::now() > deadline => return r,
                _ if Instant::now() > deadline => panic!("no answer from {}", self.http),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn certs() -> Vec<(String, Vec<u8>)> {
    use sequoia_openpgp::parse::Parse;
    let bytes =
        std::fs::read("/usr/share/keyrings/debian-keyring.gpg").expect("debian-keyring installed");
    keyraft::pgp::CertSplitter::new(bytes.as_slice())
        .take(10)
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

fn log_index(r: &Response) -> u64 {
    r.header("x-keyraft-log-index")
        .expect("writes return their log index")
        .parse()
        .unwrap()
}

/// A read that waits (bounded, server side) until the member applied `index`.
fn served(m: &Member, fpr: &str, index: u64) -> bool {
    m.get(&format!(
        "/pks/lookup?op=get&search=0x{fpr}&min_index={index}"
    ))
    .is_some_and(|r| r.status == 200)
}

#[test]
fn three_nodes_form_by_join_forward_writes_survive_leader_kill9_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-for-tests\n").unwrap();
    let certs = certs();

    eprintln!("--- bootstrap n1, then n2 and n3 join it");
    let mut n1 = Member::new(dir.path(), "n1", None, &secret);
    n1.spawn();
    n1.wait_ready();
    let mut n2 = Member::new(dir.path(), "n2", Some(n1.raft), &secret);
    let mut n3 = Member::new(dir.path(), "n3", Some(n1.raft), &secret);
    n2.spawn();
    n3.spawn();
    n2.wait_ready();
    n3.wait_ready();
    let stats = n1.get("/pks/lookup?op=stats&options=mr").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(v["node"]["voters"].as_array().unwrap().len(), 3, "{v}");

    eprintln!("--- every node names the same leader and lists three voters");
    let leaders: Vec<serde_json::Value> = [&n1, &n2, &n3]
        .iter()
        .map(|m| serde_json::from_slice(&m.get("/cluster/leader").unwrap().body).unwrap())
        .collect();
    assert!(
        leaders
            .iter()
            .all(|l| l["id"] == leaders[0]["id"] && l["name"] == "n1"),
        "{leaders:?}"
    );
    let nodes: serde_json::Value =
        serde_json::from_slice(&n3.get("/cluster/nodes").unwrap().body).unwrap();
    let names: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(
        ["n1", "n2", "n3"].iter().all(|n| names.contains(n)),
        "{names:?}"
    );
    assert!(nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["voter"] == true));
    assert_eq!(n2.get("/cluster/health").unwrap().status, 200);

    eprintln!("--- write on a follower; read it on every node");
    let r = n3.post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert!(
        n3.get(&format!("/pks/lookup?op=get&search=0x{}", certs[0].0))
            .unwrap()
            .status
            == 200,
        "read-your-writes on n3"
    );
    for m in [&n1, &n2, &n3] {
        assert!(served(m, &certs[0].0, index), "{} serves the write", m.http);
    }

    eprintln!("--- kill -9 the leader (n1); writes go on through n2");
    n1.kill9();
    let r = n2.post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert!(served(&n3, &certs[1].0, index));

    eprintln!("--- restart n1: it catches up by itself (no re-join, no re-initialisation)");
    n1.spawn();
    n1.wait_ready();
    assert!(served(&n1, &certs[1].0, index), "n1 caught up");
    assert!(served(&n1, &certs[0].0, index));
    let r = n1.post(&certs[2].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in [&n1, &n2, &n3] {
        assert!(
            served(m, &certs[2].0, index),
            "{} serves the write made through n1",
            m.http
        );
    }

    eprintln!("--- a node with the wrong secret is refused and exits");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret").unwrap();
    let mut n4 = Member::new(dir.path(), "n4", Some(n2.raft), &wrong);
    n4.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = n4.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "n4 should give up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&n4.log).unwrap();
    assert!(log.contains("wrong cluster secret"), "{log}");
    n4.child = None;
    let members = n2.get("/pks/lookup?op=stats&options=mr").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&members.body).unwrap();
    assert_eq!(
        v["node"]["voters"].as_array().unwrap().len(),
        3,
        "n4 was not admitted"
    );
    assert!(v["node"]["learners"].as_array().unwrap().is_empty());
}

#[test]
fn five_voters_then_a_sixth_node_stays_a_learner_and_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "another-secret").unwrap();
    let certs = certs();
    let mut first = Member::new(dir.path(), "m1", None, &secret);
    first.spawn();
    first.wait_ready();
    let seed = first.raft;
    let mut members = vec![first];
    for i in 2..=6 {
        eprintln!("--- m{i} joins");
        let mut m = Member::new(dir.path(), &format!("m{i}"), Some(seed), &secret);
        m.spawn();
        m.wait_ready();
        members.push(m);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&members[0].get("/cluster/status").unwrap().body).unwrap();
    assert_eq!(v["status"]["voters"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!(v["status"]["learners"].as_array().unwrap().len(), 1, "{v}");
    eprintln!("--- a write through the learner is forwarded and readable everywhere");
    let r = members[5].post(&certs[3].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert!(served(m, &certs[3].0, index), "{} serves the write", m.http);
    }
}
