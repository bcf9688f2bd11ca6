//! Races between real nodes. A follower cut off by a partition keeps accepting uploads and
//! forwarding them; they wait for the healing. Each upload was validated against the follower's
//! stale replica, so it reaches the leader based on a version its node had not seen: under the
//! default `merge` policy every node ends with the union; under `manual` the stored version
//! stays, an open conflict appears with a diff, and resolving it converges every node. The same
//! cut-off follower also races administrator writes made through the majority: a delete (the
//! stale upload of the deleted certificate waits for an operator under the default
//! `add_after_delete = manual`) and a replace (the stale upload merges into the replaced
//! certificate under the default `add = merge`). After each scenario all nodes hold identical
//! state digests and the audit trail tells the story.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use sequoia_openpgp::cert::prelude::*;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::SerializeInto;
use serde_json::Value;

use crate::harness::*;
use crate::partition::{test_ip, Rules};

/// One certificate with `n` user ids `u0..`.
fn cert_with(n: usize) -> Cert {
    let mut b = CertBuilder::new();
    for i in 0..n {
        b = b.add_userid(format!("u{i} <u{i}@race.example>"));
    }
    b.generate().unwrap().0.strip_secret_key_material()
}

/// `cert` with only the user ids `u<i>` for `i` in `keep`, binary.
fn only(cert: &Cert, keep: &[usize]) -> Vec<u8> {
    let prefixes: Vec<String> = keep.iter().map(|i| format!("u{i} ")).collect();
    cert.clone()
        .retain_userids(|u| {
            prefixes
                .iter()
                .any(|p| u.userid().value().starts_with(p.as_bytes()))
        })
        .to_vec()
        .unwrap()
}

/// One certificate with `n` user ids `u0..`; version `i` carries only user id `i`.
fn versions(n: usize) -> (String, Vec<Vec<u8>>) {
    let cert = cert_with(n);
    let vs = (0..n).map(|i| only(&cert, &[i])).collect();
    (cert.fingerprint().to_hex(), vs)
}

const TOKEN: &str = "race-t0ken";

/// The admin token header and a JSON content type.
fn auth() -> [(&'static str, &'static str); 2] {
    [
        ("Authorization", "Bearer race-t0ken"),
        ("Content-Type", "application/json"),
    ]
}

/// Three members with the admin token, node-to-node on test addresses `first_ip..+3`, the
/// first bootstrapping and the others joining it; all ready.
fn three(t: &TestDir, token: &Path, first_ip: u8) -> Vec<Member> {
    let first = t
        .spec("n1")
        .raft_ip(test_ip(first_ip))
        .admin_token(token)
        .start();
    first.wait_ready();
    let seed = first.http;
    let mut v = vec![first];
    for k in 1..3u8 {
        let m = t
            .spec(&format!("n{}", k + 1))
            .raft_ip(test_ip(first_ip + k))
            .admin_token(token)
            .join(&[seed])
            .start();
        m.wait_ready();
        v.push(m);
    }
    v
}

/// The HTTP status `m` answers for `fpr` once it has applied `index` (503 while catching up is
/// retried, bounded).
fn status_at(m: &Member, fpr: &str, index: u64) -> u16 {
    let target = format!("/pks/lookup?op=get&search=0x{fpr}&min_index={index}");
    poll(Duration::from_secs(60), || {
        m.get(&target).map(|r| r.status).filter(|s| *s != 503)
    })
    .unwrap_or_else(|| panic!("{} does not answer for {fpr}", m.name))
}

/// `action outcome` of every audit entry of `fpr` on `m`, in log order.
fn story(m: &Member, fpr: &str) -> Vec<String> {
    let a = m
        .admin_json(&format!("/cluster/audit?fingerprint={fpr}"), TOKEN)
        .unwrap();
    a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// The open conflicts of `fpr` on `m`.
fn open_conflicts(m: &Member, fpr: &str) -> Vec<Value> {
    let v = m
        .admin_json(
            &format!("/cluster/conflicts?status=open&fingerprint={fpr}"),
            TOKEN,
        )
        .unwrap();
    v["conflicts"].as_array().unwrap().clone()
}

/// The user ids `m` serves for `fpr` once it has applied `index`.
fn uids(m: &Member, fpr: &str, index: u64) -> BTreeSet<String> {
    let r = m
        .get(&format!(
            "/pks/lookup?op=get&search=0x{fpr}&min_index={index}"
        ))
        .expect("answer");
    assert_eq!(r.status, 200, "{}: {}", m.name, r.text());
    Cert::from_bytes(&r.body)
        .unwrap()
        .userids()
        .map(|u| {
            String::from_utf8_lossy(u.userid().value())
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn set(xs: &[&str]) -> BTreeSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Upload `stale` through the cut-off follower `f` while `fresh` goes through a connected
/// member, then heal; returns the follower's answer (it waited for the healing).
fn race(members: &[Member], f: usize, other: usize, fresh: &[u8], stale: &[u8]) -> (Value, u64) {
    race_with(
        members,
        f,
        || {
            let r = members[other].post(fresh);
            assert_eq!(r.status, 200, "{}", r.text());
        },
        stale,
    )
}

/// Cut off follower `f`, run `fresh` (a write through the majority), upload `stale` through
/// `f` (validated on its stale replica; it waits for the healing), heal; the follower's answer
/// and its log index.
fn race_with(members: &[Member], f: usize, fresh: impl FnOnce(), stale: &[u8]) -> (Value, u64) {
    let mut cut = Rules::isolate(members[f].raft.ip());
    fresh();
    let answer = std::thread::scope(|s| {
        let addr = members[f].http;
        let h = s.spawn(move || {
            keyraft::client::request(
                addr,
                "POST",
                "/pks/add?options=mr",
                &[("Content-Type", "application/pgp-keys")],
                stale,
                Duration::from_secs(60),
            )
            .expect("the follower answers")
        });
        std::thread::sleep(Duration::from_millis(1500));
        cut.heal();
        h.join().unwrap()
    });
    assert_eq!(answer.status, 200, "{}", answer.text());
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    (v, log_index(&answer))
}

#[test]
fn a_stale_upload_through_a_cut_off_follower_merges_or_waits_for_an_operator() {
    let t = TestDir::new();
    let token = t.file("token", &format!("{TOKEN}\n"));
    let auth = auth();
    let members = three(&t, &token, 41);
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let f = (0..3).find(|&i| i != leader).unwrap();
    let (fpr, v) = versions(5);

    tracing_phase("u0 is uploaded through the follower (its forwarding channel is up)");
    let r = members[f].post(&v[0]);
    assert_eq!(r.status, 200, "{}", r.text());

    tracing_phase("merge: u1 through the leader while the follower is cut off, u2 through it");
    let (answer, index) = race(&members, f, leader, &v[1], &v[2]);
    assert_eq!(answer["keys"][0]["status"], "updated", "{answer}");
    assert!(
        answer["keys"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("conflict"),
        "{answer}"
    );
    for m in &members {
        assert_eq!(uids(m, &fpr, index), set(&["u0", "u1", "u2"]), "{}", m.name);
    }
    let c = members[f]
        .admin_json(&format!("/cluster/conflicts?fingerprint={fpr}"), TOKEN)
        .unwrap();
    let list = c["conflicts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{c}");
    assert_eq!(
        (
            list[0]["kind"].as_str(),
            list[0]["status"].as_str(),
            list[0]["policy"].as_str()
        ),
        (Some("add"), Some("resolved"), Some("merge"))
    );
    same_digest(&members);

    tracing_phase("manual: the same race leaves the stored version and an open conflict");
    let r = members[f]
        .request(
            "PUT",
            "/cluster/conflicts/policies",
            &auth,
            br#"{"add":"manual"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (answer, index) = race(&members, f, leader, &v[3], &v[4]);
    assert_eq!(answer["keys"][0]["status"], "conflict", "{answer}");
    for m in &members {
        assert_eq!(
            uids(m, &fpr, index),
            set(&["u0", "u1", "u2", "u3"]),
            "{}",
            m.name
        );
    }
    let open = open_conflicts(&members[leader], &fpr);
    assert_eq!(open.len(), 1);
    let id = open[0]["id"].as_u64().unwrap();
    let detail = members[leader]
        .admin_json(&format!("/cluster/conflicts/{id}"), TOKEN)
        .unwrap();
    let added: Vec<&str> = detail["diff"]["user_ids_added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(added, vec!["u4 <u4@race.example>"], "{detail}");
    assert_ne!(
        detail["current"]["origin"], detail["incoming"]["origin"],
        "two nodes raced: {detail}"
    );

    tracing_phase("an operator merges it; every node converges");
    let r = members[f]
        .request(
            "POST",
            &format!("/cluster/conflicts/{id}/resolve"),
            &auth,
            br#"{"choose":"merge","note":"both valid"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let index: u64 = r.header("x-keyraft-log-index").unwrap().parse().unwrap();
    for m in &members {
        assert_eq!(
            uids(m, &fpr, index),
            set(&["u0", "u1", "u2", "u3", "u4"]),
            "{}",
            m.name
        );
    }
    let r = members[f]
        .request(
            "POST",
            &format!("/cluster/conflicts/{id}/resolve"),
            &auth,
            br#"{"choose":"current"}"#,
        )
        .unwrap();
    assert_eq!(
        r.status,
        409,
        "a resolved conflict stays resolved: {}",
        r.text()
    );
    same_digest(&members);

    tracing_phase("the audit trail tells the story, identically on every node");
    let s = story(&members[0], &fpr);
    assert_eq!(s.len(), 7, "{s:?}");
    assert_eq!(s[0], "add new");
    assert!(
        s[2].starts_with("add conflict") && s[2].contains("resolved"),
        "{s:?}"
    );
    assert!(
        s[4].starts_with("add conflict") && s[4].contains("open"),
        "{s:?}"
    );
    assert_eq!(s[5], format!("resolve conflict {id} resolved"));
    assert!(s[6].starts_with("resolve rejected"), "{s:?}");
    for m in &members[1..] {
        assert_eq!(story(m, &fpr), s);
    }
    let resolves = members[0]
        .admin_json("/cluster/audit?action=resolve", TOKEN)
        .unwrap();
    assert_eq!(
        resolves["entries"].as_array().unwrap().len(),
        2,
        "{resolves}"
    );
}

#[test]
fn a_stale_upload_racing_an_admin_delete_stays_out_until_an_operator_decides() {
    let t = TestDir::new();
    let token = t.file("token", &format!("{TOKEN}\n"));
    let members = three(&t, &token, 51);
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let f = (0..3).find(|&i| i != leader).unwrap();
    let (fpr, v) = versions(2);

    tracing_phase("u0 is uploaded and reaches every node");
    let r = members[leader].post(&v[0]);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert_eq!(uids(m, &fpr, index), set(&["u0"]), "{}", m.name);
    }

    tracing_phase("F is cut off; the majority deletes the certificate; F takes an upload of it");
    let body = format!(r#"{{"fingerprint":"{fpr}","reason":"GDPR request"}}"#);
    let (answer, index) = race_with(
        &members,
        f,
        || {
            let r = members[leader]
                .request(
                    "POST",
                    "/cluster/admin/delete?options=mr",
                    &auth(),
                    body.as_bytes(),
                )
                .expect("the leader answers");
            assert_eq!(r.status, 200, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["keys"][0]["status"], "updated", "deleted: {v}");
        },
        &v[1],
    );
    assert_eq!(answer["keys"][0]["status"], "conflict", "{answer}");

    tracing_phase("the certificate stays deleted on every node; one open conflict");
    for m in &members {
        assert_eq!(status_at(m, &fpr, index), 404, "{} serves it", m.name);
    }
    let open = open_conflicts(&members[f], &fpr);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0]["kind"].as_str(), open[0]["policy"].as_str()),
        (Some("add_after_delete"), Some("manual")),
        "{open:?}"
    );
    let id = open[0]["id"].as_u64().unwrap();
    let detail = members[leader]
        .admin_json(&format!("/cluster/conflicts/{id}"), TOKEN)
        .unwrap();
    assert!(detail["current"]["cert"].is_null(), "a tombstone: {detail}");
    assert!(!detail["incoming"]["cert"].is_null(), "{detail}");
    assert_ne!(
        detail["current"]["origin"], detail["incoming"]["origin"],
        "two nodes raced: {detail}"
    );
    same_digest(&members);
    let s = story(&members[0], &fpr);
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(s[0], "add new");
    assert_eq!(s[1], "delete deleted");
    assert!(
        s[2].starts_with(&format!("add conflict {id} (open")),
        "{s:?}"
    );

    tracing_phase("an operator lets the upload in; every node converges");
    let r = members[f]
        .request(
            "POST",
            &format!("/cluster/conflicts/{id}/resolve"),
            &auth(),
            br#"{"choose":"incoming","note":"the owner re-published it"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert_eq!(uids(m, &fpr, index), set(&["u1"]), "{}", m.name);
    }
    assert!(open_conflicts(&members[leader], &fpr).is_empty());
    same_digest(&members);
    let s = story(&members[0], &fpr);
    assert_eq!(s.len(), 4, "{s:?}");
    assert_eq!(s[3], format!("resolve conflict {id} resolved"));
    for m in &members[1..] {
        assert_eq!(story(m, &fpr), s, "{}", m.name);
    }
}

#[test]
fn a_stale_upload_racing_an_admin_replace_merges_into_the_replaced_certificate() {
    let t = TestDir::new();
    let token = t.file("token", &format!("{TOKEN}\n"));
    let members = three(&t, &token, 61);
    let all: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&all);
    let f = (0..3).find(|&i| i != leader).unwrap();
    let cert = cert_with(3);
    let fpr = cert.fingerprint().to_hex();

    tracing_phase("u0 is uploaded and reaches every node");
    let r = members[leader].post(&only(&cert, &[0]));
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert_eq!(uids(m, &fpr, index), set(&["u0"]), "{}", m.name);
    }

    tracing_phase(
        "F is cut off; the majority replaces it by u2 alone; F takes an upload of u0, u1",
    );
    let replacement = only(&cert, &[2]);
    let (answer, index) = race_with(
        &members,
        f,
        || {
            let r = members[leader]
                .request(
                    "POST",
                    "/cluster/admin/replace?options=mr",
                    &[auth()[0], ("Content-Type", "application/pgp-keys")],
                    &replacement,
                )
                .expect("the leader answers");
            assert_eq!(r.status, 200, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["keys"][0]["status"], "updated", "replaced: {v}");
        },
        &only(&cert, &[0, 1]),
    );

    // The default `add = merge`: the stale upload is merged into what the replace stored, so
    // what it carries comes back (u0, which the replace had dropped) and what it adds stays
    // (u1); the race is recorded as a conflict resolved by the policy. An administrator who
    // wants a replace's removals to hold sets `add` to `manual` or `reject`.
    assert_eq!(answer["keys"][0]["status"], "updated", "{answer}");
    assert!(
        answer["keys"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("conflict")),
        "{answer}"
    );
    for m in &members {
        assert_eq!(uids(m, &fpr, index), set(&["u0", "u1", "u2"]), "{}", m.name);
    }
    let c = members[f]
        .admin_json(&format!("/cluster/conflicts?fingerprint={fpr}"), TOKEN)
        .unwrap();
    let list = c["conflicts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{c}");
    assert_eq!(
        (
            list[0]["kind"].as_str(),
            list[0]["status"].as_str(),
            list[0]["policy"].as_str()
        ),
        (Some("add"), Some("resolved"), Some("merge")),
        "{c}"
    );
    same_digest(&members);
    let s = story(&members[0], &fpr);
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(s[0], "add new");
    assert_eq!(s[1], "replace replaced");
    assert!(
        s[2].starts_with("add conflict") && s[2].contains("resolved"),
        "{s:?}"
    );
    for m in &members[1..] {
        assert_eq!(story(m, &fpr), s, "{}", m.name);
    }
}
