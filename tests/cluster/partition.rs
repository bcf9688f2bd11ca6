//! Partitions: three nodes whose node-to-node traffic runs on their own loopback addresses
//! (listener and source address), so iptables can cut one off while its HKP listener on
//! 127.0.0.1 stays reachable. The isolated leader is replaced, the majority takes writes, a
//! write on the isolated node is answered 503, and after healing all replicas are identical.
//! A follower restarted while cut off from the leader answers `/ready` 503 until it hears from
//! it.
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// An index in `/cluster/consensus`: a number, or a log id object with an `index`.
fn index_in(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v["index"].as_u64())
}

/// iptables rules in the OUTPUT chain (all loopback traffic passes it), tagged with this test
/// process's id, removed by `heal` or on drop.
pub(crate) struct Rules {
    specs: Vec<Vec<String>>,
}

impl Rules {
    fn new() -> Rules {
        Rules { specs: Vec::new() }
    }

    fn iptables(op: &str, spec: &[String]) -> bool {
        Command::new("iptables")
            .args(["-w", op, "OUTPUT"])
            .args(spec)
            .status()
            .unwrap()
            .success()
    }

    /// Insert one rule (`spec` without the comment).
    fn add(&mut self, spec: &[&str]) {
        let comment = format!("keyraft-test-{}", std::process::id());
        let spec: Vec<String> = spec
            .iter()
            .map(|s| s.to_string())
            .chain(["-m".into(), "comment".into(), "--comment".into(), comment])
            .collect();
        assert!(Self::iptables("-I", &spec), "iptables -I {spec:?}");
        self.specs.push(spec);
    }

    /// Drop every packet from and to `ip`.
    pub(crate) fn isolate(ip: IpAddr) -> Rules {
        let ip = ip.to_string();
        let mut r = Rules::new();
        r.add(&["-s", &ip, "-j", "DROP"]);
        r.add(&["-d", &ip, "-j", "DROP"]);
        r
    }

    pub(crate) fn heal(&mut self) {
        for spec in self.specs.drain(..) {
            assert!(Self::iptables("-D", &spec), "iptables -D {spec:?}");
        }
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        for spec in self.specs.drain(..) {
            Self::iptables("-D", &spec);
        }
    }
}

/// Test-only loopback addresses 127.0.N.host, N from this process's id.
pub(crate) fn test_ip(host: u8) -> IpAddr {
    let net = (std::process::id() % 200 + 20) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

#[test]
fn isolated_leader_is_replaced_refuses_writes_and_converges_after_healing() {
    let t = TestDir::new();
    let certs = debian_certs(4);
    let ip = test_ip;
    let names = ["n1", "n2", "n3"];
    let mut members: Vec<Member> = {
        let first = t
            .spec(names[0])
            .raft_ip(ip(11))
            .env("KEYRAFT_HKP__WRITE_TIMEOUT_SECS", "5")
            .start();
        first.wait_ready();
        let seed = first.http;
        let mut v = vec![first];
        for (k, name) in names.iter().enumerate().skip(1) {
            let m = t
                .spec(name)
                .raft_ip(ip(11 + k as u8))
                .join(&[seed])
                .env("KEYRAFT_HKP__WRITE_TIMEOUT_SECS", "5")
                .start();
            m.wait_ready();
            v.push(m);
        }
        v
    };
    let all: Vec<&Member> = members.iter().collect();
    let r = members[1].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &all {
        assert!(served(m, &certs[0].0, index), "{}", m.name);
    }

    let old = leader_of(&all);
    let old_id = members[old].id();
    let majority: Vec<&Member> = (0..3).filter(|&i| i != old).map(|i| &members[i]).collect();
    tracing_phase(&format!(
        "isolate the leader {} ({})",
        members[old].name, members[old].raft
    ));
    let mut cut = Rules::isolate(members[old].raft.ip());

    tracing_phase("the majority elects a new leader and accepts writes");
    let new = leader_of(&majority);
    let new_leader = majority[new];
    assert_ne!(new_leader.id(), old_id, "a new leader among the majority");
    let r = majority[1 - new].post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &majority {
        assert!(served(m, &certs[1].0, index), "{}", m.name);
    }

    tracing_phase("a write on the isolated old leader is answered 503 with Retry-After");
    let r = members[old]
        .post_once(&certs[2].1)
        .expect("the isolated node answers over HTTP");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);

    tracing_phase("heal; every node converges");
    cut.heal();
    let new_id = new_leader.id();
    let follows = poll(Duration::from_secs(60), || {
        (members[old].leader()?.0 == new_id).then_some(())
    });
    assert!(
        follows.is_some(),
        "{} follows the new leader after healing:\n{}",
        members[old].name,
        members[old].log_text()
    );
    members[old].wait_ready();
    let r = new_leader.post(&certs[3].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &all {
        assert!(served(m, &certs[3].0, index), "{} caught up", m.name);
        assert!(
            served(m, &certs[1].0, index),
            "{} has the majority's write",
            m.name
        );
        let r = m
            .get(&format!(
                "/pks/lookup?op=get&search=0x{}&min_index={index}",
                certs[2].0
            ))
            .unwrap();
        assert_eq!(
            r.status, 404,
            "{}: the write refused during the partition was never committed",
            m.name
        );
    }
    let states: Vec<serde_json::Value> = all
        .iter()
        .map(|m| m.json("/cluster/consensus").expect("consensus state"))
        .collect();
    for c in &states {
        assert_eq!(
            c["term"], states[0]["term"],
            "one term everywhere: {states:?}"
        );
        assert!(
            index_in(&c["applied"]).is_some_and(|a| a >= index),
            "applied the last write: {c}"
        );
    }
    // `keyraft export` next to a running node reads what it has flushed, which it does once
    // writes pause for a second: poll (bounded) until every export holds the three.
    let mut exports: Vec<Vec<u8>> = Vec::new();
    for _ in 0..40 {
        exports = all.iter().map(|m| m.export()).collect();
        if exports.iter().all(|e| count_certs(e) == 3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(count_certs(&exports[0]), 3, "certs 0, 1 and 3");
    for (m, e) in all.iter().zip(&exports) {
        assert!(e == &exports[0], "{} differs from {}", m.name, all[0].name);
    }

    tracing_phase("a follower restarted while cut off is not ready until it hears the leader");
    let f = (leader_of(&all) + 1) % 3;
    drop(all);
    let follower = &mut members[f];
    follower.kill9();
    let mut cut = Rules::isolate(follower.raft.ip());
    follower.spawn();
    // Its saved vote names the leader and it has applied all it saved, but it has not heard
    // from the leader: for 4 s (past an election timeout) every answer is 503.
    let mut answers = 0;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        if let Some(r) = follower.get("/ready") {
            answers += 1;
            assert_eq!(
                r.status,
                503,
                "{} while cut off: {}",
                follower.name,
                r.text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answers > 0, "{} answered over HTTP", follower.name);
    cut.heal();
    follower.wait_ready();
}

#[test]
fn a_joiner_keeps_retrying_while_the_leader_refuses_its_connections_then_joins() {
    let t = TestDir::new();
    let n1 = t.spec("n1").raft_ip(test_ip(21)).start();
    n1.wait_ready();

    tracing_phase("n1's node-to-node port answers n2 with TCP resets; n2 tries to join");
    let mut reset = Rules::new();
    reset.add(&[
        "-s",
        &test_ip(22).to_string(),
        "-d",
        &test_ip(21).to_string(),
        "-p",
        "tcp",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    let n2 = t.spec("n2").raft_ip(test_ip(22)).join(&[n1.http]).start();
    let tried = poll(Duration::from_secs(60), || {
        n2.log_text().contains("retrying").then_some(())
    });
    assert!(tried.is_some(), "n2 retries:\n{}", n2.log_text());
    let exited = poll(Duration::from_secs(10), || n2.exited());
    assert!(
        exited.is_none(),
        "an unreachable leader is retried, not taken as a refusal ({exited:?}):\n{}",
        n2.log_text()
    );

    tracing_phase("connections allowed again: n2 joins");
    reset.heal();
    n2.wait_ready();
    let list = n1.members();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().any(|m| m.1 == "n2"), "{list:?}");
}
