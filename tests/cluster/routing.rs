//! Routing settings and observability across real nodes: a change made through a learner is
//! forwarded, replicated and visible on every node; the learner then answers `/ready` 503 but
//! still serves lookups; a weight reaches `/ready`, weight 0 drains a voter; `/cluster/load`
//! with `scope=cluster` gathers every member; linearizable reads by default work on a follower
//! and a learner (they ask the leader for a read index) and see a write acknowledged just
//! before; concurrent changes through two nodes both take effect; a node that joins after the
//! log was compacted gets the settings from the snapshot.
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const TOKEN: &str = "admin-token-for-tests";

fn put_routing(m: &Member, body: Value, token: Option<&str>) -> Response {
    put_routing_to(m.http, body, token)
}

/// `PUT /cluster/routing` to the HTTP address `http`.
fn put_routing_to(http: std::net::SocketAddr, body: Value, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    keyraft::client::request(
        http,
        "PUT",
        "/cluster/routing",
        &headers,
        body.to_string().as_bytes(),
        Duration::from_secs(60),
    )
    .expect("an answer")
}

/// Wait (bounded) until `m` reports `want` as its routing settings.
fn routing_becomes(m: &Member, want: &Value) -> bool {
    poll(Duration::from_secs(30), || {
        (m.json("/cluster/routing").as_ref() == Some(want)).then_some(())
    })
    .is_some()
}

#[test]
fn routing_replicates_drains_learners_and_reaches_a_node_by_snapshot() {
    let t = TestDir::new();
    let token = t.file("token", &format!("{TOKEN}\n"));
    // Two voters at most: the third node stays a learner. Small snapshots and a short log so
    // a late joiner must catch up from a snapshot.
    let spec = |s: Spec| {
        s.admin_token(&token)
            .env("KEYRAFT_CLUSTER__MAX_VOTERS", "2")
            .env("KEYRAFT_RAFT__SNAPSHOT_EVERY", "10")
            .env("KEYRAFT_RAFT__KEEP_LOGS", "2")
    };
    let members = start_cluster(&t, &["r1", "r2", "r3"], spec);
    let (r1, r2, r3) = (&members[0], &members[1], &members[2]);
    let status = r1.json("/cluster/status").unwrap();
    assert_eq!(
        status["status"]["learners"],
        json!([r3.id()]),
        "r3 is the learner: {status}"
    );
    let certs = generated_certs(25, "routing");
    let r = r1.post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let first = log_index(&r);

    tracing_phase("through the learner: no token 401, bad value 400, good value 200");
    let change = json!({"learners_serve_reads": false, "weights": {"r1": 50, "r2": 0}});
    assert_eq!(put_routing(r3, change.clone(), None).status, 401);
    let bad = put_routing(r3, json!({"weights": {"r1": 1000}}), Some(TOKEN));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("0 to 256"), "{}", bad.text());
    let ok = put_routing(r3, change, Some(TOKEN));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let mut want = json!({
        "default_consistency": "local",
        "learners_serve_reads": false,
        "weights": {"r1": 50, "r2": 0},
    });

    tracing_phase("every node holds the same settings");
    for m in [r1, r2, r3] {
        assert!(routing_becomes(m, &want), "{} routing", m.name);
    }

    tracing_phase("r3 (learner) and r2 (weight 0) are not ready; both still serve lookups");
    let ready = r3.get("/ready").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("learner"), "{}", ready.text());
    let ready = r2.get("/ready").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("drained"), "{}", ready.text());
    for m in [r2, r3] {
        assert!(served(m, &certs[0].0, first), "{} serves lookups", m.name);
    }
    let ready = r1.get("/ready").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.header("x-keyraft-weight"), Some("50"));

    tracing_phase("/cluster/load?scope=cluster gathers every member");
    let v = r2.json("/cluster/load?scope=cluster").unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{v}");
    for n in nodes {
        assert_eq!(n["reachable"], true, "{n}");
        assert!(n["load"]["requests"]["total"].as_u64().unwrap() > 0, "{n}");
        assert!(
            n["load"]["memory"]["rss_bytes"].as_u64().unwrap() > 0,
            "{n}"
        );
    }

    tracing_phase("the learner timed the forwarded routing write and its applies");
    let p = r3.json("/cluster/performance").unwrap();
    assert!(
        p["histograms"]["commit"]["count"].as_u64().unwrap() >= 1,
        "{p}"
    );
    assert!(
        p["histograms"]["apply_entry"]["count"].as_u64().unwrap() >= 2,
        "{p}"
    );
    assert!(
        p["histograms"]["lookup"]["count"].as_u64().unwrap() >= 1,
        "{p}"
    );

    tracing_phase("linearizable by default: followers and learners ask the leader");
    let ok = put_routing(
        r2,
        json!({"default_consistency": "linearizable"}),
        Some(TOKEN),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let routing_index = log_index(&ok);
    want["default_consistency"] = json!("linearizable");
    for m in [r1, r2, r3] {
        assert!(routing_becomes(m, &want), "{} routing", m.name);
    }
    for (i, (fpr, cert)) in certs[1..4].iter().enumerate() {
        // Acknowledged by the leader, then read at once on a follower and on the learner,
        // without min_index: a linearizable read must see it.
        let r = r1.post(cert);
        assert_eq!(r.status, 200, "{}", r.text());
        for m in [r2, r3] {
            let r = m
                .get(&format!("/pks/lookup?op=get&search=0x{fpr}"))
                .unwrap();
            assert_eq!(r.status, 200, "write {i} read on {}: {}", m.name, r.text());
            assert_eq!(r.header("x-keyraft-consistency"), Some("linearizable"));
        }
    }

    tracing_phase("concurrent changes through a follower and the learner all take effect");
    // Each PUT patches the settings its node holds; two nodes patching different weights at
    // once must not undo each other.
    std::thread::scope(|scope| {
        for (http, prefix) in [(r2.http, "a"), (r3.http, "b")] {
            scope.spawn(move || {
                for i in 0..6 {
                    let change = json!({ "weights": { format!("{prefix}{i}"): 7 } });
                    let ok = put_routing_to(http, change, Some(TOKEN));
                    assert_eq!(ok.status, 200, "{http}: {}", ok.text());
                }
            });
        }
    });
    for prefix in ["a", "b"] {
        for i in 0..6 {
            want["weights"][format!("{prefix}{i}")] = json!(7);
        }
    }
    for m in [r1, r2, r3] {
        assert!(
            routing_becomes(m, &want),
            "{} routing: {:?}",
            m.name,
            m.json("/cluster/routing")
        );
    }

    tracing_phase("enough writes to snapshot and compact past the routing entry");
    // openraft purges the log in batches of 256 entries: write until the leader has purged
    // past the routing entry (each upload is one entry, unchanged or not).
    let purged = || {
        r1.json("/cluster/consensus")
            .and_then(|c| c["purged"].as_u64())
            .unwrap_or(0)
    };
    let mut last = routing_index;
    for i in 1..600 {
        let r = r1.post(&certs[1 + i % (certs.len() - 1)].1);
        assert_eq!(r.status, 200, "{}", r.text());
        last = log_index(&r);
        if i % 25 == 0 && purged() > routing_index {
            break;
        }
    }
    let compacted = poll(Duration::from_secs(30), || {
        (purged() > routing_index).then_some(())
    });
    assert!(
        compacted.is_some(),
        "r1 purged its log past {routing_index} (last index {last})"
    );

    tracing_phase("r4 joins (a learner): it has the settings from the snapshot");
    let r4 = spec(t.spec("r4").join(&[r1.http])).start();
    assert!(routing_becomes(&r4, &want), "r4 routing");
    assert!(served(&r4, &certs[24].0, last), "r4 caught up");
    let c = r4.json("/cluster/consensus").unwrap();
    assert!(
        c["snapshot"].as_u64().unwrap_or(0) >= routing_index,
        "r4 installed a snapshot covering the routing entry: {c}"
    );
    assert_eq!(r4.get("/ready").unwrap().status, 503, "a learner, drained");

    tracing_phase("learners serve reads again: r3 and r4 become ready");
    let ok = put_routing(r1, json!({"learners_serve_reads": true}), Some(TOKEN));
    assert_eq!(ok.status, 200, "{}", ok.text());
    r3.wait_ready();
    r4.wait_ready();
    assert_eq!(
        r4.get("/ready").unwrap().header("x-keyraft-weight"),
        Some("100")
    );
}
