//! mTLS between nodes: a cluster whose members hold certificates from one CA (`keyraft cert`)
//! forms by join and forwards writes; joiners with a certificate from another CA, without TLS,
//! or with a certificate naming another node are refused, exit non-zero and say why.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::*;

fn keyraft(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn cert_init(dir: &Path) {
    let o = keyraft(&["cert", "init", &dir.display().to_string()]);
    assert!(
        o.status.success(),
        "cert init: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(dir.join("ca.pem").is_file() && dir.join("ca.key").is_file());
}

/// Issue a node certificate for `name` from the CA in `ca` into `out`.
fn cert_issue(ca: &Path, name: &str, out: &Path) -> PathBuf {
    let o = keyraft(&[
        "cert",
        "issue",
        "--ca",
        &ca.display().to_string(),
        "--name",
        name,
        "--out",
        &out.display().to_string(),
    ]);
    assert!(
        o.status.success(),
        "cert issue {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in ["ca.pem", "node.pem", "node.key"] {
        assert!(out.join(f).is_file(), "cert issue wrote {f}");
    }
    out.to_path_buf()
}

/// Start `joiner`, expect it to give up: non-zero exit (bounded), its log.
fn refused(joiner: &Member) -> String {
    let status = joiner.wait_exit(Duration::from_secs(150));
    let log = joiner.log_text();
    eprintln!(
        "{} exited with {status}: {}",
        joiner.name,
        log.lines().last().unwrap_or_default()
    );
    assert!(
        !status.success(),
        "{} should have been refused:\n{log}",
        joiner.name
    );
    log
}

fn three_voters_only(members: &[&Member]) {
    for m in members {
        let list = m.members();
        assert_eq!(list.len(), 3, "{}: {list:?}", m.name);
        assert!(list.iter().all(|x| x.2), "{}: {list:?}", m.name);
        assert!(
            list.iter()
                .all(|x| ["n1", "n2", "n3"].contains(&x.1.as_str())),
            "{}: {list:?}",
            m.name
        );
    }
}

#[test]
fn mtls_cluster_forms_forwards_writes_and_refuses_foreign_plaintext_and_misnamed_joiners() {
    let t = TestDir::new();
    let certs = debian_certs(3);
    let ca = t.path().join("ca");
    let other_ca = t.path().join("other-ca");
    cert_init(&ca);
    cert_init(&other_ca);
    assert!(
        !keyraft(&["cert", "init", &ca.display().to_string()])
            .status
            .success(),
        "cert init refuses to overwrite a CA"
    );
    let tls: Vec<PathBuf> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| cert_issue(&ca, n, &t.path().join(format!("tls-{n}"))))
        .collect();

    tracing_phase("n1 bootstraps with mTLS; n2 and n3 join it");
    let n1 = t.spec("n1").tls(&tls[0]).start();
    n1.wait_ready();
    // One after the other: concurrent joins are the formation test's business.
    let n2 = t.spec("n2").tls(&tls[1]).join(&[n1.http]).start();
    n2.wait_ready();
    let n3 = t.spec("n3").tls(&tls[2]).join(&[n1.http]).start();
    n3.wait_ready();
    three_voters_only(&[&n1, &n2, &n3]);
    for m in [&n1, &n2, &n3] {
        assert!(
            !m.log_text().contains("INSECURE"),
            "{} runs with mTLS, not plaintext",
            m.name
        );
    }

    tracing_phase("a write on a follower is forwarded over mTLS and read everywhere");
    let leader = leader_of(&[&n1, &n2, &n3]);
    let members = [&n1, &n2, &n3];
    let follower = members[(leader + 1) % 3];
    let r = follower.post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in members {
        assert!(served(m, &certs[0].0, index), "{} serves the write", m.name);
    }

    tracing_phase("a joiner with a certificate from another CA is refused");
    let foreign = cert_issue(&other_ca, "n4", &t.path().join("tls-n4-foreign"));
    let n4 = t.spec("n4").tls(&foreign).join(&[n2.http]).start();
    let log = refused(&n4);
    let lower = log.to_lowercase();
    assert!(
        ["certificate", "tls", "handshake", "issuer"]
            .iter()
            .any(|w| lower.contains(w)),
        "the log says the TLS handshake failed:\n{log}"
    );
    three_voters_only(&[&n1, &n2, &n3]);

    tracing_phase("a joiner that trusts the cluster's CA but presents another CA's certificate");
    let mixed = t.path().join("tls-n4-mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(ca.join("ca.pem"), mixed.join("ca.pem")).unwrap();
    for f in ["node.pem", "node.key"] {
        std::fs::copy(foreign.join(f), mixed.join(f)).unwrap();
    }
    let elsewhere = t.path().join("mixed");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let n4m = Spec::new(&elsewhere, "n4", &t.secret)
        .tls(&mixed)
        .join(&[n1.http])
        .start();
    let log = refused(&n4m);
    let lower = log.to_lowercase();
    assert!(
        ["certificate", "tls", "handshake", "issuer"]
            .iter()
            .any(|w| lower.contains(w)),
        "the log says why:\n{log}"
    );
    three_voters_only(&[&n1, &n2, &n3]);

    tracing_phase("a plaintext joiner is refused by the mTLS cluster");
    let n5 = t.spec("n5").join(&[n2.http]).start();
    let log = refused(&n5);
    let lower = log.to_lowercase();
    assert!(
        lower.contains("join")
            && [
                "refused",
                "tls",
                "plaintext",
                "handshake",
                "protocol",
                "certificate"
            ]
            .iter()
            .any(|w| lower.contains(w)),
        "the log says why the plaintext join failed:\n{log}"
    );
    three_voters_only(&[&n1, &n2, &n3]);

    // The binary checks its own certificate against --name before it asks anyone (the
    // leader's check of the client certificate cannot be reached by an honest binary).
    tracing_phase("a node whose certificate names n9 but whose --name is n4 does not join");
    let misnamed = cert_issue(&ca, "n9", &t.path().join("tls-n9"));
    // Its own directory: the refused n4 above left its data and log under the same name.
    let elsewhere = t.path().join("misnamed");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let n4b = Spec::new(&elsewhere, "n4", &t.secret)
        .tls(&misnamed)
        .join(&[n3.http])
        .start();
    let log = refused(&n4b);
    assert!(
        log.lines().any(|l| l.contains("n9") && l.contains("n4")),
        "the log names the certificate's name and the node's:\n{log}"
    );
    three_voters_only(&[&n1, &n2, &n3]);

    tracing_phase("a node holding a member's certificate (n2) but calling itself n6 does not join");
    let n6 = t.spec("n6").tls(&tls[1]).join(&[n1.http]).start();
    let log = refused(&n6);
    assert!(
        log.lines().any(|l| l.contains("n2") && l.contains("n6")),
        "the log names the certificate's name and the node's:\n{log}"
    );
    three_voters_only(&[&n1, &n2, &n3]);

    tracing_phase("the cluster still takes writes after the refusals");
    let r = n3.post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in members {
        assert!(served(m, &certs[1].0, index), "{} serves the write", m.name);
    }
}

/// Replace `dir`'s files: `ca.pem` from the concatenation of `cas`, and (if given) the node
/// certificate and key from `node`.
fn install(dir: &Path, cas: &[&Path], node: Option<&Path>) {
    let mut bundle = Vec::new();
    for ca in cas {
        bundle.extend(std::fs::read(ca.join("ca.pem")).unwrap());
    }
    std::fs::write(dir.join("ca.pem"), bundle).unwrap();
    if let Some(n) = node {
        for f in ["node.pem", "node.key"] {
            std::fs::copy(n.join(f), dir.join(f)).unwrap();
        }
    }
}

/// Restart every member in turn (kill -9, start, ready), and check the cluster still forwards
/// a write from each restarted member to every other.
fn rolling_restart(members: &mut [Member], certs: &[(String, Vec<u8>)], step: &str) {
    for i in 0..members.len() {
        tracing_phase(&format!("{step}: restart {}", members[i].name));
        members[i].kill9();
        members[i].spawn();
        members[i].wait_ready();
        let (fpr, cert) = &certs[i];
        let r = members[i].post(cert);
        assert_eq!(
            r.status,
            200,
            "{step}: write through {}: {}",
            members[i].name,
            r.text()
        );
        let index = log_index(&r);
        for m in members.iter() {
            assert!(served(m, fpr, index), "{step}: {} serves the write", m.name);
        }
    }
}

#[test]
fn the_cluster_ca_rotates_node_by_node_through_a_two_ca_bundle() {
    let t = TestDir::new();
    let certs = debian_certs(12);
    let (old, new) = (t.path().join("ca-old"), t.path().join("ca-new"));
    cert_init(&old);
    cert_init(&new);
    let names = ["n1", "n2", "n3"];
    let dirs: Vec<PathBuf> = names
        .iter()
        .map(|n| cert_issue(&old, n, &t.path().join(format!("tls-{n}"))))
        .collect();
    let mut members = vec![t.spec("n1").tls(&dirs[0]).start()];
    members[0].wait_ready();
    for (i, n) in names.iter().enumerate().skip(1) {
        let m = t.spec(n).tls(&dirs[i]).join(&[members[0].http]).start();
        m.wait_ready();
        members.push(m);
    }

    // 1. Every node trusts both CAs (still presenting its old certificate).
    for d in &dirs {
        install(d, &[&old, &new], None);
    }
    rolling_restart(&mut members, &certs[0..3], "trust old+new");
    // 2. Every node presents a certificate from the new CA.
    for (i, n) in names.iter().enumerate() {
        let fresh = cert_issue(&new, n, &t.path().join(format!("new-{n}")));
        install(&dirs[i], &[&old, &new], Some(&fresh));
    }
    rolling_restart(&mut members, &certs[3..6], "new certificates");
    // 3. Every node trusts the new CA only.
    for d in &dirs {
        install(d, &[&new], None);
    }
    rolling_restart(&mut members, &certs[6..9], "trust new only");
    three_voters_only(&members.iter().collect::<Vec<_>>());

    tracing_phase("a node still holding a certificate from the old CA is now refused");
    let stale = cert_issue(&old, "n4", &t.path().join("tls-n4-old"));
    install(&stale, &[&old, &new], None);
    let n4 = t.spec("n4").tls(&stale).join(&[members[1].http]).start();
    refused(&n4);
}

/// A certificate from the cluster CA opens a connection, but only a current member may act
/// for the cluster: a node that was never admitted, holding a certificate from the same CA,
/// cannot remove a member, forward a write or ask for a read index; a member can.
#[test]
fn only_a_member_certificate_may_act_through_the_cluster_service() {
    use keyraft::rpc::proto::cluster_service_client::ClusterServiceClient;
    use keyraft::rpc::proto::{ForwardRequest, LeaveRequest, ReadIndexRequest};
    use keyraft::rpc::tls::ClusterTls;
    use tonic::Code;

    let t = TestDir::new();
    let ca = t.path().join("ca");
    cert_init(&ca);
    let tls: Vec<PathBuf> = ["n1", "n2", "n9"]
        .iter()
        .map(|n| cert_issue(&ca, n, &t.path().join(format!("tls-{n}"))))
        .collect();
    let n1 = t.spec("n1").tls(&tls[0]).start();
    n1.wait_ready();
    let n2 = t.spec("n2").tls(&tls[1]).join(&[n1.http]).start();
    n2.wait_ready();
    let n2_id = n2.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A client of n1's cluster service presenting `name`'s certificate.
    let client = |name: &str, dir: &Path| {
        let tls = ClusterTls::load(dir, name).unwrap();
        rt.block_on(async {
            let channel = tonic::transport::Channel::from_shared(format!("https://{}", n1.raft))
                .unwrap()
                .tls_config(tls.client("n1"))
                .unwrap()
                .connect()
                .await
                .expect("any certificate of the cluster CA connects");
            ClusterServiceClient::new(channel)
        })
    };

    tracing_phase("n9 (same CA, never admitted) tries to remove n2, write, read an index");
    let mut stranger = client("n9", &tls[2]);
    fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
        r.map_or_else(|s| s.code(), |_| Code::Ok)
    }
    let leave = rt.block_on(stranger.leave(LeaveRequest { node_id: n2_id }));
    assert_eq!(code(leave), Code::PermissionDenied, "leave");
    let write = rt.block_on(stranger.forward_write(ForwardRequest {
        command: b"not even a command".to_vec(),
    }));
    assert_eq!(code(write), Code::PermissionDenied, "forward_write");
    let index = rt.block_on(stranger.read_index(ReadIndexRequest {}));
    assert_eq!(code(index), Code::PermissionDenied, "read_index");
    assert!(
        n1.members().iter().any(|m| m.0 == n2_id),
        "n2 is still a member"
    );
    assert!(n1
        .log_text()
        .contains("refused: the caller is not a member"));

    tracing_phase("n2, a member, may ask for a read index");
    let mut member = client("n2", &tls[1]);
    let r = rt.block_on(member.read_index(ReadIndexRequest {}));
    let r = r.expect("a member's call is served").into_inner();
    assert!(r.error.is_empty() && r.index > 0, "{r:?}");
}
