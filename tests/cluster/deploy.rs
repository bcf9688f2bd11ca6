//! The container recipes' own logic, run without a container runtime (none on these machines):
//! `deploy/make-certs.sh` issues the CA and the node certificates, idempotently, and
//! `deploy/keyraft-start.sh`, the images' entry point, forms a 3-node mTLS cluster configured
//! only through the environment, the way deploy/compose configures it: the bootstrap node waits
//! for its peers, then creates the cluster; the others join. One node reads its TLS material
//! from a Kubernetes-style bundle (`TLS_BUNDLE_DIR`, as deploy/k8s mounts it). A restarted
//! bootstrap node resumes as itself instead of creating a second cluster.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

fn deploy(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(script)
}

#[test]
fn the_container_entry_point_and_make_certs_form_an_mtls_cluster_from_the_environment() {
    let t = TestDir::new();
    let certs = t.path().join("certs");
    let make_certs = || {
        let o = Command::new(deploy("make-certs.sh"))
            .env("KEYRAFT", BIN)
            .arg(&certs)
            .args(["n1", "n2", "n3"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "make-certs.sh: {text}");
        text
    };

    tracing_phase("make-certs.sh: a CA and three node certificates; a second run keeps them");
    let first = make_certs();
    assert!(first.contains("CA: created"), "{first}");
    for n in ["n1", "n2", "n3"] {
        assert!(first.contains(&format!("{n}: issued")), "{first}");
        assert!(certs.join(n).join("node.key").exists());
    }
    let key_before = std::fs::read(certs.join("n1/node.key")).unwrap();
    let second = make_certs();
    assert!(
        second.contains("CA: kept") && second.contains("n1: kept"),
        "{second}"
    );
    assert_eq!(
        std::fs::read(certs.join("n1/node.key")).unwrap(),
        key_before,
        "a second run changes nothing"
    );

    tracing_phase("n3's material as one bundle, the way deploy/k8s mounts its Secret");
    let bundle = t.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::copy(certs.join("ca/ca.pem"), bundle.join("ca.pem")).unwrap();
    std::fs::copy(certs.join("n3/node.pem"), bundle.join("n3.pem")).unwrap();
    std::fs::copy(certs.join("n3/node.key"), bundle.join("n3.key")).unwrap();

    tracing_phase("keyraft-start serve on three nodes at once, configured by the environment only");
    let secret = t.file("cluster.secret", "a-cluster-secret");
    let names = ["n1", "n2", "n3"];
    let http: Vec<SocketAddr> = names
        .iter()
        .map(|_| SocketAddr::new(LOCALHOST, free_port(LOCALHOST)))
        .collect();
    let raft: Vec<SocketAddr> = names
        .iter()
        .map(|_| SocketAddr::new(LOCALHOST, free_port(LOCALHOST)))
        .collect();
    let mut members: Vec<Member> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // As the compose file's SEED_PEERS after the entry point drops this node's own name.
            let peers: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| http[j].to_string())
                .collect();
            let mut env: Vec<(String, String)> = vec![
                ("KEYRAFT_CLUSTER__NAME".into(), name.to_string()),
                (
                    "KEYRAFT_NODE__DATA_DIR".into(),
                    t.path().join(name).display().to_string(),
                ),
                ("KEYRAFT_HKP__LISTEN".into(), http[i].to_string()),
                ("KEYRAFT_CLUSTER__RAFT_LISTEN".into(), raft[i].to_string()),
                (
                    "KEYRAFT_CLUSTER__SECRET_FILE".into(),
                    secret.display().to_string(),
                ),
                ("SEED_PEERS".into(), peers.join(",")),
                ("BOOTSTRAP_NAME".into(), "n1".into()),
                // Long: n1 must not wait it out. n2 and n3 answer HTTP while they try to join, so
                // n1 sees that no cluster exists yet and creates it at once.
                ("BOOTSTRAP_WAIT".into(), "90".into()),
            ];
            if *name == "n3" {
                let tls = t.path().join("n3-tls");
                env.push(("KEYRAFT_CLUSTER__TLS_DIR".into(), tls.display().to_string()));
                env.push(("TLS_BUNDLE_DIR".into(), bundle.display().to_string()));
            } else {
                let tls = certs.join(name);
                env.push(("KEYRAFT_CLUSTER__TLS_DIR".into(), tls.display().to_string()));
            }
            t.spec(name)
                .entrypoint(&deploy("keyraft-start.sh"), http[i], raft[i], env)
        })
        .collect();
    for m in members.iter_mut() {
        m.spawn();
    }
    for m in &members {
        m.wait_ready();
    }

    tracing_phase("one cluster of three voters over mTLS; n1 created it, n2 and n3 joined");
    let list = members[0].members();
    assert_eq!(list.len(), 3, "{list:?}");
    for name in names {
        assert!(list.iter().any(|m| m.1 == name && m.2), "{list:?}");
    }
    let logs: Vec<String> = members.iter().map(|m| m.log_text()).collect();
    assert!(
        logs[0]
            .contains("every peer answered that it holds no cluster state: creating a new cluster"),
        "{}",
        logs[0]
    );
    for log in &logs[1..] {
        assert!(log.contains("keyraft serve --join"), "{log}");
    }
    assert!(
        logs[2].contains("TLS material for n3 copied"),
        "{}",
        logs[2]
    );
    for log in &logs {
        assert!(
            !log.contains("INSECURE"),
            "node-to-node traffic is mTLS: {log}"
        );
    }

    tracing_phase("a write through n3 is read on every node");
    let cert = &debian_certs(1)[0];
    let r = members[2].post(&cert.1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert!(served(m, &cert.0, index), "{} serves the write", m.name);
    }

    tracing_phase("kill -9 and restart n1 through the entry point: it resumes as itself");
    let id = members[0].id();
    members[0].kill9();
    members[0].spawn();
    members[0].wait_ready();
    assert_eq!(members[0].id(), id, "same Raft id after the restart");
    let log = members[0].log_text();
    assert_eq!(
        log.matches("creating a new cluster").count(),
        1,
        "the restart did not create a second cluster: {log}"
    );
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let r = members[leader].post(&debian_certs(2)[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(served(&members[0], &debian_certs(2)[1].0, log_index(&r)));
}
