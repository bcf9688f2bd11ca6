//! Snapshots: a three-node cluster with small snapshot and log-retention settings is loaded
//! with the Debian keyring and many generated certificates (`keyraft import`); a fourth node
//! that joins afterwards must catch up by installing a snapshot (the log it would need is
//! purged), and then holds and serves what the others hold.
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::*;

const DEBIAN: &str = "/usr/share/keyrings/debian-keyring.gpg";

/// How many certificates to generate: `KEYRAFT_TEST_CERTS`, default 20 000.
fn how_many() -> usize {
    std::env::var("KEYRAFT_TEST_CERTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// A small deterministic generator for the sample (seed printed, so a failure can be replayed).
fn sample(n: usize, of: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % of as u64) as usize
        })
        .collect()
}

fn index_in(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v["index"].as_u64())
}

#[test]
fn a_late_joiner_installs_a_snapshot_and_matches_the_others() {
    let t = TestDir::new();
    let n = how_many();
    tracing_phase(&format!("generate {n} certificates"));
    let generated = generated_certs(n, "snap");
    let ring = t.path().join("generated.gpg");
    std::fs::write(
        &ring,
        generated
            .iter()
            .flat_map(|c| c.1.clone())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    // About a thousand entries for the generated certificates whatever `n` is: many snapshots,
    // and enough purged log (openraft purges in batches of 256) that a joiner needs a snapshot.
    let batch = (n / 1000).clamp(1, 200);

    let small = |s: Spec| {
        s.env("KEYRAFT_RAFT__SNAPSHOT_EVERY", "100")
            .env("KEYRAFT_RAFT__KEEP_LOGS", "20")
    };
    let mut members = start_cluster(&t, &["n1", "n2", "n3"], small);

    tracing_phase("import the Debian keyring and the generated certificates through n1");
    let out = Command::new(BIN)
        .args([
            "import",
            "--quiet",
            "--server",
            &members[0].http.to_string(),
        ])
        .args(["--batch", &batch.to_string()])
        .arg(DEBIAN)
        .arg(&ring)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "import: {summary}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{summary}");

    let marker = debian_certs(1);
    let fresh = generated_certs(1, "marker");
    let r = members[1].post(&fresh[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    let mut counts = Vec::new();
    for m in &members {
        assert!(served(m, &fresh[0].0, index), "{}", m.name);
        assert!(served(m, &marker[0].0, index), "{}", m.name);
        counts.push(m.stats()["certificates"].as_u64().unwrap());
    }
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    assert!(
        counts[0] > n as u64,
        "{counts:?}: all generated plus Debian's"
    );
    let leader = leader_of(&members.iter().collect::<Vec<_>>());
    let c = members[leader]
        .json("/cluster/consensus")
        .expect("consensus state");
    assert!(
        index_in(&c["purged"]).is_some_and(|p| p > 0),
        "the leader purged its log: {c}"
    );

    tracing_phase("n4 joins and must install a snapshot");
    let n4 = small(t.spec("n4").join(&[members[2].http])).start();
    n4.wait_ready();
    assert!(served(&n4, &fresh[0].0, index), "n4 caught up");
    let log = n4.log_text().to_lowercase();
    assert!(
        log.lines()
            .any(|l| l.contains("snapshot") && l.contains("install")),
        "n4's log shows it installed a snapshot:\n{}",
        n4.log_text()
    );
    let c = n4.json("/cluster/consensus").expect("consensus state");
    assert!(
        index_in(&c["snapshot"]).is_some_and(|s| s > 0),
        "n4 holds a snapshot: {c}"
    );
    let c4 = n4.stats()["certificates"].as_u64().unwrap();
    assert_eq!(c4, counts[0], "n4 holds as many certificates as the others");

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    tracing_phase(&format!("n4 serves 50 sampled certificates (seed {seed})"));
    for i in sample(50, generated.len(), seed) {
        let fpr = &generated[i].0;
        let r = n4
            .get(&format!("/pks/lookup?op=get&search=0x{fpr}"))
            .unwrap();
        assert_eq!(r.status, 200, "certificate {i} ({fpr}) on n4");
        assert!(r.text().contains("BEGIN PGP PUBLIC KEY BLOCK"));
    }

    tracing_phase("a write through n4 reaches everyone");
    let more = generated_certs(1, "after");
    let r = n4.post(&more[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    members.push(n4);
    for m in &members {
        assert!(served(m, &more[0].0, index), "{}", m.name);
    }
}

#[test]
fn with_default_settings_a_joiner_starts_from_a_snapshot_not_a_long_log() {
    let t = TestDir::new();
    let mut members = start_cluster(&t, &["n1", "n2", "n3"], |s| s);

    tracing_phase(
        "import the Debian keyring in batches of 10: over a hundred entries, no snapshot yet",
    );
    let out = Command::new(BIN)
        .args(["import", "--quiet", "--batch", "10", "--server"])
        .arg(members[0].http.to_string())
        .arg(DEBIAN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let leader = leader_of(&members.iter().collect::<Vec<_>>());
    let c = members[leader].json("/cluster/consensus").unwrap();
    assert!(
        index_in(&c["snapshot"]).is_none() && index_in(&c["purged"]).is_none(),
        "the default policy (a snapshot every 10,000 entries) has not snapshotted yet: {c}"
    );
    let count = members[leader].stats()["certificates"].as_u64().unwrap();
    assert!(count > 900, "{count}");

    tracing_phase("n4 joins: the leader snapshots and purges, n4 installs the snapshot");
    let n4 = t.spec("n4").join(&[members[1].http]).start();
    n4.wait_ready();
    let fresh = generated_certs(1, "after-join");
    let r = members[0].post(&fresh[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert!(served(&n4, &fresh[0].0, index), "n4 caught up");
    let c = n4.json("/cluster/consensus").expect("consensus state");
    assert!(
        index_in(&c["snapshot"]).is_some_and(|s| s > 64),
        "n4 started from a snapshot: {c}"
    );
    assert_eq!(n4.stats()["certificates"].as_u64().unwrap(), count + 1);
    let leader = leader_of(&members.iter().collect::<Vec<_>>());
    let c = members[leader].json("/cluster/consensus").unwrap();
    assert!(
        index_in(&c["purged"]).is_some_and(|p| p > 64),
        "the leader purged the log the joiner skipped: {c}"
    );
    members.push(n4);
    for m in &members {
        assert!(served(m, &fresh[0].0, index), "{}", m.name);
    }
}
