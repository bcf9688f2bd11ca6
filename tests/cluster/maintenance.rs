//! Keeping replicas healthy: `POST /cluster/repair` finding a replica whose state was altered
//! behind Raft's back and rebuilding it; `POST /cluster/sync` sending a lagging member a
//! snapshot; `auto_remove_after` dropping a dead member but never going below three voters; a
//! join through a DNS name.
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "admin-token-for-maintenance";

fn admin_post(m: &Member, target: &str, body: &Value) -> (u16, Value) {
    let bearer = format!("Bearer {TOKEN}");
    let r = m
        .request(
            "POST",
            target,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &bearer),
            ],
            &serde_json::to_vec(body).unwrap(),
        )
        .unwrap_or_else(|| panic!("an answer to {target} from {}", m.name));
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text()));
    (r.status, v)
}

fn member_state(report: &Value, name: &str) -> String {
    report["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{name} missing from {report}"))
}

#[test]
fn repair_finds_an_altered_replica_and_rebuilds_it_from_the_cluster() {
    let t = TestDir::new();
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let mut members = start_cluster(&t, &["n1", "n2", "n3"], |s| s.admin_token(&token));
    let certs = debian_certs(3);
    let mut index = 0;
    for (_, c) in &certs {
        index = log_index(&members[0].post(c));
    }
    for m in &members {
        assert!(served(m, &certs[2].0, index), "{} has the writes", m.name);
    }

    tracing_phase("repair on a healthy cluster: every member agrees");
    let (status, report) = admin_post(&members[1], "/cluster/repair", &json!({}));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["consistent"], true);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(member_state(&report, n), "agrees", "{report}");
    }
    let r = members[1]
        .request("POST", "/cluster/repair", &[], b"")
        .unwrap();
    assert_eq!(r.status, 401, "repair needs the admin token");

    tracing_phase("alter n3's replica behind Raft's back");
    let old_id = members[2].id();
    // Stopped cleanly: apply skips RocksDB's WAL, so after a kill -9 the certificate could
    // still be only in the log, and the restart would re-apply it over the alteration.
    members[2].signal("TERM");
    let status = members[2].wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let o = Command::new(BIN)
        .args(["fault-drop-cert", "--data-dir"])
        .arg(&members[2].data)
        .arg(&certs[0].0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    members[2].spawn();
    members[2].wait_ready();
    assert_eq!(
        members[2]
            .get(&format!("/pks/lookup?op=get&search=0x{}", certs[0].0))
            .unwrap()
            .status,
        404,
        "the altered replica lost the certificate"
    );

    tracing_phase("repair reports n3 as differing");
    let (status, report) = admin_post(&members[0], "/cluster/repair", &json!({}));
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["consistent"], false);
    assert_eq!(member_state(&report, "n3"), "differs", "{report}");
    assert_eq!(member_state(&report, "n1"), "agrees", "{report}");
    assert_eq!(member_state(&report, "n2"), "agrees", "{report}");
    // The per-member digest at the checkpoint is readable over HTTP too.
    let at = report["index"].as_u64().unwrap();
    let d3 = members[2]
        .json(&format!("/cluster/digest?index={at}"))
        .unwrap();
    let d1 = members[0]
        .json(&format!("/cluster/digest?index={at}"))
        .unwrap();
    assert_eq!(d3["applied_index"], at);
    assert_ne!(d3["sha256"], d1["sha256"]);

    tracing_phase("repair with rebuild: n3 leaves, stops, and rebuilds at its next start");
    let (_, report) = admin_post(&members[0], "/cluster/repair", &json!({ "rebuild": true }));
    let n3 = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n3")
        .unwrap()
        .clone();
    assert_eq!(n3["rebuild_requested"], true, "{report}");
    members[2].wait_exit(Duration::from_secs(60));
    assert!(members[2].data.join("REBUILD").exists());
    members[2].spawn();
    members[2].wait_ready();
    assert!(!members[2].data.join("REBUILD").exists());
    let new_id = members[2].id();
    assert_ne!(new_id, old_id, "a rebuilt node joins under a new id");
    assert!(
        served(&members[2], &certs[0].0, index),
        "the rebuilt replica has the certificate again"
    );
    let ok = poll(Duration::from_secs(60), || {
        let (status, report) = admin_post(&members[0], "/cluster/repair", &json!({}));
        (status == 200).then_some(report)
    });
    let report = ok.expect("the cluster is consistent after the rebuild");
    assert_eq!(report["members"].as_array().unwrap().len(), 3, "{report}");
    assert!(
        !members[0].members().iter().any(|m| m.0 == old_id),
        "the old record of n3 is gone"
    );
}

#[test]
fn sync_sends_a_lagging_member_a_snapshot() {
    let t = TestDir::new();
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let mut members = start_cluster(&t, &["n1", "n2", "n3"], |s| s.admin_token(&token));
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    let other = (0..3).find(|&i| i != leader && i != lagging).unwrap();
    let lag_name = members[lagging].name.clone();

    tracing_phase("stop a follower; write while it is away");
    members[lagging].kill9();
    let certs = debian_certs(20);
    let mut index = 0;
    for (_, c) in &certs {
        index = log_index(&members[leader].post(c));
    }
    let st = members[other].json("/cluster/sync/status").unwrap();
    let lag = st["leader_view"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == lag_name.as_str())
        .unwrap()["lag"]
        .as_u64()
        .unwrap();
    assert!(
        lag >= 20,
        "the leader reports the lag through a follower: {st}"
    );

    tracing_phase("sync by snapshot, asked through a follower (passed on to the leader)");
    let (status, out) = admin_post(
        &members[other],
        "/cluster/sync",
        &json!({ "name": lag_name, "snapshot": true }),
    );
    assert_eq!(status, 200, "{out}");
    let snap = out["snapshot_index"]
        .as_u64()
        .expect("a snapshot was built");
    assert!(snap >= index, "{out}");
    assert_eq!(out["purged_upto"].as_u64(), Some(snap), "{out}");

    tracing_phase("the follower comes back and installs the snapshot");
    members[lagging].spawn();
    members[lagging].wait_ready();
    assert!(served(&members[lagging], &certs[19].0, index));
    let sent = poll(Duration::from_secs(60), || {
        let st = members[leader].json("/cluster/sync/status")?;
        let out = st["outgoing_snapshots"].as_array()?.clone();
        out.into_iter()
            .find(|t| t["state"] == "done" && t["snapshot_index"].as_u64() >= Some(snap))
    });
    let sent = sent.expect("the leader records the snapshot it sent");
    assert!(sent["bytes_total"].as_u64().unwrap() > 0, "{sent}");
    let got = members[lagging].json("/cluster/sync/status").unwrap();
    assert_eq!(got["incoming_snapshot"]["state"], "done", "{got}");
    assert!(got["incoming_snapshot"]["bytes_done"].as_u64().unwrap() > 0);
    let unknown = admin_post(
        &members[leader],
        "/cluster/sync",
        &json!({ "name": "nobody" }),
    );
    assert_eq!(unknown.0, 404, "{}", unknown.1);
}

#[test]
fn auto_remove_drops_a_dead_member_but_never_below_three_voters() {
    let t = TestDir::new();
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let mut members = start_cluster(&t, &["n1", "n2"], |s| {
        s.env("KEYRAFT_CLUSTER__AUTO_REMOVE_AFTER", "2")
            .admin_token(&token)
    });
    tracing_phase("n3 and n4 join through a DNS name (localhost) instead of an address");
    for name in ["n3", "n4"] {
        let seed = format!("localhost:{}", members[0].http.port());
        let m = t
            .spec(name)
            .env("KEYRAFT_CLUSTER__AUTO_REMOVE_AFTER", "2")
            .env("KEYRAFT_CLUSTER__JOIN", &seed)
            .admin_token(&token)
            .start();
        m.wait_ready();
        members.push(m);
    }
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let voters = |m: &Member| m.members().iter().filter(|x| x.2).count();
    assert_eq!(voters(&members[leader]), 4);
    let followers: Vec<usize> = (0..4).filter(|&i| i != leader).collect();

    tracing_phase("kill one follower: it is removed (four voters -> three)");
    let membership_changes = |m: &Member| {
        m.admin_json("/cluster/audit?action=membership&limit=1000", TOKEN)
            .expect("the audit trail")["entries"]
            .as_array()
            .unwrap()
            .len()
    };
    let changes_before = membership_changes(&members[leader]);
    let dead = members[followers[0]].id();
    members[followers[0]].kill9();
    let gone = poll(Duration::from_secs(60), || {
        let m = members[leader].members();
        (!m.iter().any(|x| x.0 == dead)).then_some(m)
    });
    let left = gone.expect("the dead member is removed");
    assert_eq!(left.iter().filter(|x| x.2).count(), 3, "{left:?}");
    assert!(members[leader].log_text().contains("auto-remove"));
    assert!(
        membership_changes(&members[leader]) > changes_before,
        "the removal is in the audit trail"
    );

    tracing_phase("kill another: three voters stay (the floor), writes still commit");
    let dead2 = members[followers[1]].id();
    members[followers[1]].kill9();
    let warned = poll(Duration::from_secs(60), || {
        members[leader]
            .log_text()
            .contains("would leave fewer than 3 voters")
            .then_some(())
    });
    assert!(warned.is_some(), "the leader says why it keeps the member");
    assert!(members[leader].members().iter().any(|x| x.0 == dead2));
    assert_eq!(voters(&members[leader]), 3);
    let cert = debian_certs(1);
    assert_eq!(members[leader].post(&cert[0].1).status, 200);
}

#[test]
fn a_member_that_was_down_catches_up_from_a_log_of_multi_megabyte_entries() {
    let t = TestDir::new();
    let mut members = start_cluster(&t, &["n1", "n2", "n3"], |s| s);
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let away = (0..3).find(|&i| i != leader).unwrap();
    members[away].kill9();

    tracing_phase("import the Debian keyrings in batches of 200 certificates (entries of MBs)");
    let keyrings: Vec<String> = [
        "/usr/share/keyrings/debian-keyring.gpg",
        "/usr/share/keyrings/debian-maintainers.gpg",
    ]
    .iter()
    .filter(|p| std::path::Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    assert!(!keyrings.is_empty(), "debian-keyring is installed");
    let o = Command::new(BIN)
        .args(["import", "--quiet", "--batch", "200", "--server"])
        .arg(members[leader].http.to_string())
        .args(&keyrings)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = members[leader].stats()["certificates"].clone();
    assert!(want.as_u64().unwrap() > 1000, "{want}");
    let last = members[leader].json("/cluster/status").unwrap()["status"]["last_log_index"]
        .as_u64()
        .unwrap();

    tracing_phase("the member comes back and catches up from the log");
    members[away].spawn();
    let caught_up = poll(Duration::from_secs(120), || {
        let s = members[away].json("/cluster/status")?;
        (s["status"]["applied_index"].as_u64()? >= last).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "{} caught up to {last}; log:\n{}",
        members[away].name,
        members[away].log_text()
    );
    assert_eq!(members[away].stats()["certificates"], want);
    let snap = members[away].json("/cluster/status").unwrap()["status"]["snapshot_index"].clone();
    assert!(snap.is_null(), "caught up by log, not by snapshot: {snap}");
}
