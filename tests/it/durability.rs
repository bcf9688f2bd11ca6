//! Acknowledged writes survive kill -9; restarts never lose or change stored bytes.
use std::sync::{Arc, Mutex};

use super::common::{debian_certs, TestNode};

fn get_body(node: &TestNode, fpr: &str) -> Option<Vec<u8>> {
    let r = node
        .get(&format!("/pks/lookup?op=get&options=mr&search=0x{fpr}"))
        .unwrap();
    (r.status == 200).then_some(r.body)
}

#[test]
fn kill9_during_a_bulk_load_loses_no_acknowledged_certificate() {
    let certs = debian_certs();
    let (first, rest) = certs.split_at(100);
    let mut node = TestNode::start(&[]);
    eprintln!("--- load 100 certificates and remember their bytes");
    let body: Vec<u8> = first.iter().flat_map(|(_, c)| c.clone()).collect();
    let r = node.post_keys(&body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let before: Vec<(String, Vec<u8>)> = first
        .iter()
        .map(|(f, _)| {
            (
                f.clone(),
                get_body(&node, f).expect("acknowledged key is served"),
            )
        })
        .collect();

    eprintln!("--- post the rest in batches of 20 while the node is killed");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let addr = node.addr;
    let poster = {
        let acked = acked.clone();
        let batches: Vec<Vec<(String, Vec<u8>)>> = rest.chunks(20).map(|c| c.to_vec()).collect();
        std::thread::spawn(move || {
            for batch in batches {
                let body: Vec<u8> = batch.iter().flat_map(|(_, c)| c.clone()).collect();
                let r = keyraft::client::request(
                    addr,
                    "POST",
                    "/pks/add?options=mr",
                    &[("Content-Type", "application/pgp-keys")],
                    &body,
                    std::time::Duration::from_secs(30),
                );
                match r {
                    Ok(r) if r.status == 200 => acked
                        .lock()
                        .unwrap()
                        .extend(batch.iter().map(|(f, _)| f.clone())),
                    _ => return,
                }
            }
        })
    };
    // Bounded wait for at least 5 acknowledged batches.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 100 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    node.kill9();
    poster.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "some batches were acknowledged before the kill"
    );

    eprintln!("--- restart: everything acknowledged is there, the first 100 byte-identical");
    node.restart();
    for (f, bytes) in &before {
        assert_eq!(
            get_body(&node, f).as_ref(),
            Some(bytes),
            "{f} changed across kill -9"
        );
    }
    for f in &acked {
        assert!(get_body(&node, f).is_some(), "acknowledged {f} lost");
    }
    let stats = node.get("/pks/lookup?op=stats&options=mr").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert!(v["certificates"].as_u64().unwrap() >= (100 + acked.len()) as u64);

    eprintln!("--- export while running holds every acknowledged certificate");
    // Export reads what the node has flushed: apply skips RocksDB's WAL and the node flushes
    // once writes pause for a second, so the export catches up within seconds (bounded).
    let out = node.dir.path().join("dump.gpg");
    let mut dumped = 0;
    for _ in 0..20 {
        let st = std::process::Command::new(env!("CARGO_BIN_EXE_keyraft"))
            .args(["export", "--data-dir"])
            .arg(node.dir.path().join("data"))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        dumped = keyraft::pgp::CertSplitter::new(std::fs::read(&out).unwrap().as_slice()).count();
        if dumped >= 100 + acked.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(dumped >= 100 + acked.len(), "export has {dumped}");
}

#[test]
fn keyraft_import_loads_the_debian_keyring_and_survives_a_sigterm_restart() {
    let mut node = TestNode::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyraft"))
        .args([
            "import",
            "--quiet",
            "--server",
            &node.addr.to_string(),
            "/usr/share/keyrings/debian-keyring.gpg",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = debian_certs().len();
    assert!(
        text.contains(&format!(
            "new {expected}, updated 0, unchanged 0, rejected 0"
        )),
        "{text}"
    );
    eprintln!("--- importing again changes nothing");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyraft"))
        .args([
            "import",
            "--quiet",
            "--server",
            &node.addr.to_string(),
            "/usr/share/keyrings/debian-keyring.gpg",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(
        "new 0, updated 0, unchanged {expected}, rejected 0"
    )));
    eprintln!("--- SIGTERM: a clean exit that closes the database; then start again");
    let status = node.terminate();
    let log = std::fs::read_to_string(node.log_path()).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("stopped; database closed"), "{log}");
    node.start_again();
    let stats = node.get("/pks/lookup?op=stats&options=mr").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(v["certificates"].as_u64().unwrap(), expected as u64);
}

/// After snapshots and log purges (the log before the snapshot is gone), a `kill -9` and a
/// restart leave every acknowledged certificate with the same bytes: the state machine
/// (written by apply without RocksDB's WAL) and the fsynced log come back consistent.
#[test]
fn kill9_after_snapshots_and_purges_rebuilds_every_acknowledged_certificate() {
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("hkp.toml");
    std::fs::write(&conf_file, "[raft]\nsnapshot_every = 20\nkeep_logs = 0\n").unwrap();
    let mut node = TestNode::start(&["--config", conf_file.to_str().unwrap()]);
    eprintln!("--- 400 certificates, one Raft entry each: a snapshot every 20, the log purged");
    let certs: Vec<(String, Vec<u8>)> = debian_certs().into_iter().take(400).collect();
    for (f, c) in &certs {
        let r = node.post_keys(c).unwrap();
        assert_eq!(r.status, 200, "{f}: {}", r.text());
    }
    let before: Vec<Vec<u8>> = certs
        .iter()
        .map(|(f, _)| get_body(&node, f).expect("acknowledged key is served"))
        .collect();
    let consensus = |node: &TestNode| -> serde_json::Value {
        serde_json::from_slice(&node.get("/cluster/consensus").unwrap().body).unwrap()
    };
    let c = consensus(&node);
    assert!(
        c["purged"].as_u64().unwrap_or(0) > 0,
        "the log was purged before the kill: {c}"
    );
    let applied = c["applied"].as_u64().unwrap();

    eprintln!("--- kill -9, restart: the same bytes for every certificate");
    node.kill9();
    node.start_again();
    for ((f, _), bytes) in certs.iter().zip(&before) {
        assert_eq!(
            get_body(&node, f).as_ref(),
            Some(bytes),
            "{f} changed across kill -9"
        );
    }
    let stats = node.get("/pks/lookup?op=stats&options=mr").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(v["certificates"].as_u64(), Some(certs.len() as u64), "{v}");
    let c = consensus(&node);
    assert!(c["applied"].as_u64().unwrap() >= applied, "{c}");
}
