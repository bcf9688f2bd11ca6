//! Races between real nodes. A follower cut off by a partition keeps accepting uploads and
//! forwarding them; they wait for the healing. Each upload was validated against the follower's
//! stale replica, so it reaches the leader based on a version its node had not seen: under the
//! default `merge` policy every node ends with the union; under `manual` the stored version
//! stays, an open conflict appears with a diff, and resolving it converges every node. After
//! each scenario all nodes hold identical state digests and the audit trail tells the story.
use std::collections::BTreeSet;
use std::time::Duration;

use sequoia_openpgp::cert::prelude::*;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::SerializeInto;
use serde_json::Value;

use crate::harness::*;
use crate::partition::{test_ip, Rules};

/// One certificate with `n` user ids `u0..`; version `i` carries only user id `i`.
fn versions(n: usize) -> (String, Vec<Vec<u8>>) {
    let mut b = CertBuilder::new();
    for i in 0..n {
        b = b.add_userid(format!("u{i} <u{i}@race.example>"));
    }
    let cert = b.generate().unwrap().0.strip_secret_key_material();
    let vs = (0..n)
        .map(|i| {
            let prefix = format!("u{i} ");
            cert.clone()
                .retain_userids(|u| u.userid().value().starts_with(prefix.as_bytes()))
                .to_vec()
                .unwrap()
        })
        .collect();
    (cert.fingerprint().to_hex(), vs)
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

/// Every member's state digest once all have applied the same index; they must agree.
fn same_digest(members: &[Member]) {
    let agreed = poll(Duration::from_secs(30), || {
        let d: Vec<Value> = members
            .iter()
            .map(|m| m.json("/cluster/digest"))
            .collect::<Option<_>>()?;
        let first = &d[0];
        d.iter()
            .all(|x| x["applied_index"] == first["applied_index"])
            .then(|| d.clone())
    })
    .expect("members reach the same applied index");
    for (m, d) in members.iter().zip(&agreed) {
        assert_eq!(
            d["sha256"], agreed[0]["sha256"],
            "{} differs: {agreed:?}",
            m.name
        );
    }
}

/// Upload `stale` through the cut-off follower `f` while `fresh` goes through a connected
/// member, then heal; returns the follower's answer (it waited for the healing).
fn race(members: &[Member], f: usize, other: usize, fresh: &[u8], stale: &[u8]) -> (Value, u64) {
    let mut cut = Rules::isolate(members[f].raft.ip());
    let r = members[other].post(fresh);
    assert_eq!(r.status, 200, "{}", r.text());
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
    let token = t.file("token", "race-t0ken\n");
    let auth = [
        ("Authorization", "Bearer race-t0ken"),
        ("Content-Type", "application/json"),
    ];
    let names = ["n1", "n2", "n3"];
    let members: Vec<Member> = {
        let first = t
            .spec(names[0])
            .raft_ip(test_ip(41))
            .admin_token(&token)
            .start();
        first.wait_ready();
        let seed = first.http;
        let mut v = vec![first];
        for (k, name) in names.iter().enumerate().skip(1) {
            let m = t
                .spec(name)
                .raft_ip(test_ip(41 + k as u8))
                .admin_token(&token)
                .join(&[seed])
                .start();
            m.wait_ready();
            v.push(m);
        }
        v
    };
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
        .json(&format!("/cluster/conflicts?fingerprint={fpr}"))
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
    let open = members[leader]
        .json(&format!("/cluster/conflicts?status=open&fingerprint={fpr}"))
        .unwrap();
    let open = open["conflicts"].as_array().unwrap().clone();
    assert_eq!(open.len(), 1);
    let id = open[0]["id"].as_u64().unwrap();
    let detail = members[leader]
        .json(&format!("/cluster/conflicts/{id}"))
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
    let story = |m: &Member| -> Vec<String> {
        let a = m
            .json(&format!("/cluster/audit?fingerprint={fpr}"))
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
    };
    let s = story(&members[0]);
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
        assert_eq!(story(m), s);
    }
    let resolves = members[0].json("/cluster/audit?action=resolve").unwrap();
    assert_eq!(
        resolves["entries"].as_array().unwrap().len(),
        2,
        "{resolves}"
    );
}
