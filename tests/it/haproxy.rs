//! The shipped HAProxy config (`deploy/compose/haproxy.cfg`) in front of a real node, with only
//! its addresses and check intervals rewritten for loopback: HAProxy health-checks `/ready`,
//! proxies lookups, and takes the node's weight from its agent (`hkp.agent_listen`), so a
//! `PUT /cluster/routing` weight reaches HAProxy, and weight 0 drains the node.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyraft::client::request;

use crate::common::{free_port, TestNode};

const TOKEN: &str = "haproxy-t0ken";

/// HAProxy, stopped by the PID this test started.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped config with n1 at `node`, n2 and n3 at closed ports, the agent port, the front
/// end and the stats page on loopback, 200 ms check intervals and a smaller `maxconn`.
fn config(node: u16, agent: u16, front: u16, stats: u16) -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/compose/haproxy.cfg"
    ))
    .unwrap();
    assert!(
        shipped.contains("agent-check agent-port 11373"),
        "the shipped config uses the agent"
    );
    shipped
        .replace("bind :11371", &format!("bind 127.0.0.1:{front}"))
        .replace("bind :8404", &format!("bind 127.0.0.1:{stats}"))
        .replace("n1:11371", &format!("127.0.0.1:{node}"))
        .replace("n2:11371", &format!("127.0.0.1:{}", free_port()))
        .replace("n3:11371", &format!("127.0.0.1:{}", free_port()))
        .replace("agent-port 11373", &format!("agent-port {agent}"))
        .replace("inter 2s", "inter 200ms")
        // 20,000 connections need more file descriptors than a test process may raise to.
        .replace("maxconn 20000", "maxconn 1000")
}

/// keyraft_ready/n1's row of HAProxy's CSV statistics, by column name.
fn n1_stats(stats: u16) -> Option<std::collections::HashMap<String, String>> {
    // curl: HAProxy sends the page chunked.
    let out = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://127.0.0.1:{stats}/;csv")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()?
        .trim_start_matches("# ")
        .split(',')
        .map(String::from)
        .collect();
    let row = lines.find(|l| l.starts_with("keyraft_ready,n1,"))?;
    Some(
        header
            .into_iter()
            .zip(row.split(',').map(String::from))
            .collect(),
    )
}

/// Poll HAProxy's view of n1 until `ok` holds (bounded: 20 s); the last row seen on failure.
fn wait_for(
    stats: u16,
    what: &str,
    ok: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(row) = n1_stats(stats) {
            if ok(&row) {
                return;
            }
            last = Some(row);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("HAProxy never showed {what}; n1: {last:?}");
}

fn put_weight(node: &TestNode, name: &str, weight: u16) {
    let bearer = format!("Bearer {TOKEN}");
    let body = format!("{{\"weights\": {{\"{name}\": {weight}}}}}");
    let r = request(
        node.addr,
        "PUT",
        "/cluster/routing",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        body.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_shipped_haproxy_config_checks_ready_proxies_and_follows_routing_weights() {
    let conf = tempfile::tempdir().unwrap();
    let token = conf.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let agent = free_port();
    let config_path = conf.path().join("hkp.toml");
    std::fs::write(
        &config_path,
        format!(
            "[hkp]\nagent_listen = \"127.0.0.1:{agent}\"\n[cluster]\nadmin_token_file = {:?}\n",
            token.display().to_string()
        ),
    )
    .unwrap();
    let node = TestNode::start(&["--config", config_path.to_str().unwrap()]);
    let status = node.get("/cluster/status").unwrap().text();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let name = status["node"]["name"]
        .as_str()
        .expect("a node name")
        .to_string();

    eprintln!("--- the agent answers with the default weight");
    let line = {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", agent)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert_eq!(line, "up ready 100%\n");

    eprintln!("--- HAProxy with the shipped config, rewritten for loopback");
    let (front, stats) = (free_port(), free_port());
    let cfg = conf.path().join("haproxy.cfg");
    std::fs::write(&cfg, config(node.addr.port(), agent, front, stats)).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(stats, "n1 up at weight 100", |r| {
        r["status"] == "UP" && r["weight"] == "100"
    });
    let front_addr = format!("127.0.0.1:{front}").parse().unwrap();
    // A lookup through HAProxy; true when the fallback backend (no ready node) answered it.
    let degraded_lookup = || {
        let target = "/pks/lookup?op=stats&options=mr";
        let r = request(front_addr, "GET", target, &[], b"", Duration::from_secs(10)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-keyraft-degraded").is_some()
    };
    assert!(!degraded_lookup(), "served by the ready backend");
    let r = request(
        front_addr,
        "PUT",
        "/cluster/routing",
        &[],
        b"{}",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 403, "the front end refuses operator calls");

    eprintln!("--- a routing weight of 50 reaches HAProxy through the agent");
    put_weight(&node, &name, 50);
    wait_for(stats, "n1 at weight 50", |r| {
        r["status"] == "UP" && r["weight"] == "50"
    });

    eprintln!("--- weight 0 drains n1: out of the ready backend, reads fall back to live nodes");
    put_weight(&node, &name, 0);
    wait_for(stats, "n1 drained or down", |r| r["status"] != "UP");
    assert!(degraded_lookup(), "served by the fallback backend");

    eprintln!("--- back to weight 100");
    put_weight(&node, &name, 100);
    wait_for(stats, "n1 up at weight 100 again", |r| {
        r["status"] == "UP" && r["weight"] == "100"
    });
}
