//! Membership changes: graceful leave (`POST /cluster/leave`, `keyraft leave`) of followers and
//! of the leader, the admin token guarding it, a wiped node rejoining under a new id that
//! replaces its old record, and a member removed through another member learning that it was
//! removed (the leader's notice, or, for a member that was down then, asking the others).
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

const TOKEN: &str = "admin-token-for-tests";

fn leave(m: &Member, token: Option<&str>, body: &serde_json::Value) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    m.request("POST", "/cluster/leave", &headers, &body)
        .expect("an answer to /cluster/leave")
}

/// Wait (bounded) until every member in `on` lists exactly the ids in `ids`.
fn wait_members(on: &[&Member], ids: &[u64]) {
    let mut want = ids.to_vec();
    want.sort_unstable();
    for m in on {
        let got = poll(Duration::from_secs(60), || {
            let mut have: Vec<u64> = m.members().iter().map(|x| x.0).collect();
            have.sort_unstable();
            (have == want).then_some(())
        });
        assert!(
            got.is_some(),
            "{} lists {:?}, expected {want:?}",
            m.name,
            m.members()
        );
    }
}

/// Wait (bounded) until the leader, whichever of `live` it is by then, reports member `id`
/// (named `name`) unreachable. Only a leader reports reachability (followers say null), and on
/// two loaded cores an election may move the leadership while the test waits.
fn wait_unreachable(live: &[&Member], id: u64, name: &str) {
    let silent = poll(Duration::from_secs(30), || {
        live.iter()
            .any(|m| {
                m.json("/cluster/nodes").is_some_and(|v| {
                    v["nodes"].as_array().is_some_and(|nodes| {
                        nodes
                            .iter()
                            .any(|n| n["id"] == id && n["reachable"] == false)
                    })
                })
            })
            .then_some(())
    });
    assert!(silent.is_some(), "the leader reports {name} unreachable");
}

#[test]
fn followers_and_then_the_leader_leave_gracefully_and_writes_go_on() {
    let t = TestDir::new();
    let certs = debian_certs(3);
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let members = start_cluster(&t, &names, |s| s.admin_token(&token));
    let all: Vec<&Member> = members.iter().collect();
    let ids: Vec<u64> = members.iter().map(Member::id).collect();
    wait_members(&all, &ids);
    let leader = leader_of(&all);
    let followers: Vec<usize> = (0..5).filter(|&i| i != leader).collect();
    let (f1, f2, other) = (followers[0], followers[1], followers[2]);

    tracing_phase("no token or a wrong token: 401, nobody removed");
    let r = leave(&members[other], None, &json!({ "name": names[f1] }));
    assert_eq!(r.status, 401, "{}", r.text());
    let r = leave(
        &members[other],
        Some("wrong-token"),
        &json!({ "name": names[f1] }),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = leave(
        &members[leader],
        Some("wrong-token"),
        &serde_json::Value::Null,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    wait_members(&all, &ids);

    tracing_phase("a follower leaves by id, asked through another follower");
    let r = leave(&members[other], Some(TOKEN), &json!({ "id": ids[f1] }));
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["removed"].as_u64(), Some(ids[f1]), "{v}");
    let remaining: Vec<usize> = (0..5).filter(|&i| i != f1).collect();
    let ids_left: Vec<u64> = remaining.iter().map(|&i| ids[i]).collect();
    wait_members(
        &remaining.iter().map(|&i| &members[i]).collect::<Vec<_>>(),
        &ids_left,
    );

    tracing_phase("a second follower leaves by name, asked through the leader");
    let r = leave(&members[leader], Some(TOKEN), &json!({ "name": names[f2] }));
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["removed"].as_u64(), Some(ids[f2]), "{v}");
    let remaining: Vec<usize> = (0..5).filter(|&i| i != f1 && i != f2).collect();
    let ids_left: Vec<u64> = remaining.iter().map(|&i| ids[i]).collect();
    wait_members(
        &remaining.iter().map(|&i| &members[i]).collect::<Vec<_>>(),
        &ids_left,
    );
    let r = members[other].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for &i in &remaining {
        assert!(served(&members[i], &certs[0].0, index), "{}", names[i]);
    }

    tracing_phase("the leader leaves (keyraft leave, no --name: the node asked)");
    let out = Command::new(BIN)
        .args(["leave", "--server", &members[leader].http.to_string()])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keyraft leave: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rest: Vec<&Member> = followers
        .iter()
        .filter(|&&i| i != f1 && i != f2)
        .map(|&i| &members[i])
        .collect();
    let rest_ids: Vec<u64> = rest.iter().map(|m| m.id()).collect();
    assert_eq!(rest.len(), 2);
    wait_members(&rest, &rest_ids);
    let new_leader = rest[leader_of(&rest)];
    assert_ne!(new_leader.name, names[leader], "leadership moved");
    for m in &rest {
        let list = m.members();
        assert!(
            list.iter().all(|x| x.2),
            "both remaining are voters: {list:?}"
        );
        assert!(
            !list
                .iter()
                .any(|x| x.1 == names[leader] || x.0 == ids[leader]),
            "{list:?}"
        );
    }

    tracing_phase("writes go on through the remaining nodes");
    for (k, m) in rest.iter().enumerate() {
        let r = m.post(&certs[1 + k].1);
        assert_eq!(r.status, 200, "{}: {}", m.name, r.text());
        let index = log_index(&r);
        for n in &rest {
            assert!(served(n, &certs[1 + k].0, index), "{}", n.name);
            assert!(served(n, &certs[0].0, index), "{}", n.name);
        }
    }
}

#[test]
fn a_leaving_voter_is_replaced_by_a_learner_that_is_up_not_by_one_that_is_down() {
    let t = TestDir::new();
    let certs = debian_certs(1);
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let mut members = start_cluster(&t, &names, |s| {
        s.admin_token(&token)
            .env("KEYRAFT_CLUSTER__MAX_VOTERS", "3")
    });
    let all: Vec<&Member> = members.iter().collect();
    let ids: Vec<u64> = members.iter().map(Member::id).collect();
    wait_members(&all, &ids);
    let voter = |m: &Member, id: u64| m.members().iter().any(|x| x.0 == id && x.2);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(voter(&members[0], *id), i < 3, "{:?}", members[0].members());
    }

    // Ids are random: take down the learner with the lower id, the one a choice by id makes.
    let (down, up) = if ids[3] < ids[4] { (3, 4) } else { (4, 3) };
    tracing_phase(&format!("learner {} is killed", names[down]));
    members[down].kill9();
    let voters: Vec<&Member> = members[..3].iter().collect();
    let leader = leader_of(&voters);
    wait_unreachable(&voters, ids[down], names[down]);

    let gone = (0..3).find(|&i| i != leader).unwrap();
    tracing_phase(&format!("voter {} leaves", names[gone]));
    let r = leave(
        &members[leader],
        Some(TOKEN),
        &json!({ "name": names[gone] }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let promoted = poll(Duration::from_secs(30), || {
        voter(&members[leader], ids[up]).then_some(())
    });
    let listed = members[leader].members();
    assert!(
        promoted.is_some(),
        "{} (up) is promoted: {listed:?}",
        names[up]
    );
    assert!(
        listed.iter().any(|x| x.0 == ids[down] && !x.2),
        "{} (down) stays a learner: {listed:?}",
        names[down]
    );
    assert!(!listed.iter().any(|x| x.0 == ids[gone]), "{listed:?}");
    let log = members[leader].log_text();
    assert!(log.contains("leave: promoting a learner to voter"), "{log}");

    tracing_phase("a quorum of the three voters still commits, with the dead learner still down");
    let r = members[up].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for i in (0..5).filter(|&i| i != down && i != gone) {
        assert!(served(&members[i], &certs[0].0, index), "{}", names[i]);
    }

    let other = (0..3).find(|&i| i != leader && i != gone).unwrap();
    tracing_phase(&format!(
        "voter {} leaves while the only learner is down: nobody is promoted",
        names[other]
    ));
    let r = leave(
        &members[leader],
        Some(TOKEN),
        &json!({ "name": names[other] }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let two = poll(Duration::from_secs(30), || {
        let l = members[leader].members();
        (!l.iter().any(|x| x.0 == ids[other])).then_some(l)
    })
    .expect("the voter is removed");
    assert_eq!(two.iter().filter(|x| x.2).count(), 2, "{two:?}");
    assert!(two.iter().any(|x| x.0 == ids[down] && !x.2), "{two:?}");
    assert!(
        members[leader].log_text().contains("none promoted for now"),
        "the leader says why nobody took the place"
    );

    tracing_phase(&format!(
        "{} is back: it catches up and the leader promotes it into the empty place",
        names[down]
    ));
    members[down].spawn();
    let promoted = poll(Duration::from_secs(60), || {
        voter(&members[leader], ids[down]).then_some(())
    });
    assert!(
        promoted.is_some(),
        "{} becomes a voter: {:?}",
        names[down],
        members[leader].members()
    );
    assert!(members[leader]
        .log_text()
        .contains("promoting a learner into an empty voter place"));
    assert!(
        served(&members[down], &certs[0].0, index),
        "{}",
        names[down]
    );
}

#[test]
fn a_voter_is_not_removed_when_the_voters_left_would_have_no_quorum() {
    let t = TestDir::new();
    let certs = debian_certs(2);
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let names = ["n1", "n2", "n3"];
    let mut members = start_cluster(&t, &names, |s| s.admin_token(&token));
    let all: Vec<&Member> = members.iter().collect();
    let ids: Vec<u64> = members.iter().map(Member::id).collect();
    wait_members(&all, &ids);
    let leader = leader_of(&all);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (dead, live) = (followers[0], followers[1]);

    tracing_phase(&format!("{} goes down", names[dead]));
    members[dead].kill9();
    wait_unreachable(&[&members[leader], &members[live]], ids[dead], names[dead]);

    tracing_phase(&format!(
        "removing the live {} would leave {{leader, {}}} with one voter answering: 409",
        names[live], names[dead]
    ));
    let r = leave(
        &members[leader],
        Some(TOKEN),
        &json!({ "name": names[live] }),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("only 1 answered"), "{}", r.text());
    assert_eq!(r.text().trim_end().lines().count(), 1, "{}", r.text());
    let listed = members[leader].members();
    assert!(
        listed.iter().all(|x| x.2) && listed.len() == 3,
        "{listed:?}"
    );
    let status = members[leader].json("/cluster/status").unwrap();
    assert_eq!(
        status["status"]["joint"], false,
        "nothing was proposed: {status}"
    );

    tracing_phase("the cluster still commits through the two that are up");
    let r = members[live].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert!(served(&members[leader], &certs[0].0, index));

    tracing_phase(&format!(
        "removing the dead {} is allowed, and writes go on",
        names[dead]
    ));
    let r = leave(
        &members[leader],
        Some(TOKEN),
        &json!({ "name": names[dead] }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_members(
        &[&members[leader], &members[live]],
        &[ids[leader], ids[live]],
    );
    let r = members[leader].post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert!(served(&members[live], &certs[1].0, index));
}

#[test]
fn a_wiped_node_rejoins_under_a_new_id_that_replaces_its_old_record() {
    let t = TestDir::new();
    let certs = debian_certs(2);
    let mut members = start_cluster(&t, &["n1", "n2", "n3"], |s| s);
    let r = members[0].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let first_index = log_index(&r);

    let leader = leader_of(&members.iter().collect::<Vec<_>>());
    // n2 or n3 (they carry --join), whichever does not lead.
    let x = if leader == 1 { 2 } else { 1 };
    let old_id = members[x].id();
    let name = members[x].name.clone();

    tracing_phase(&format!("kill -9 {name}, wipe its data, start it again"));
    members[x].kill9();
    members[x].wipe();
    members[x].spawn();
    members[x].wait_ready();
    let new_id = members[x].id();
    assert_ne!(new_id, old_id, "a wiped node never reuses its id");

    tracing_phase("the old record is replaced: same name, new id, still three voters");
    let all: Vec<&Member> = members.iter().collect();
    let want: Vec<u64> = all.iter().map(|m| m.id()).collect();
    wait_members(&all, &want);
    for m in &all {
        let list = m.members();
        assert_eq!(list.len(), 3, "{}: {list:?}", m.name);
        assert!(list.iter().all(|x| x.2), "three voters: {list:?}");
        assert!(!list.iter().any(|x| x.0 == old_id), "{list:?}");
        assert!(
            list.iter().any(|x| x.0 == new_id && x.1 == name),
            "{list:?}"
        );
    }
    let v = members[leader].stats();
    assert_eq!(v["node"]["voters"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["node"]["learners"].as_array().unwrap().is_empty(), "{v}");

    tracing_phase("the rejoined node has the old data and takes writes");
    assert!(served(&members[x], &certs[0].0, first_index));
    let r = members[x].post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert!(served(m, &certs[1].0, index), "{}", m.name);
    }
}

/// Wait, at most `limit`, until `m` answers `/ready` with 503 and a reason containing `want`.
fn wait_removed(m: &Member, want: &str, limit: Duration) -> Response {
    let ready = poll(limit, || {
        let r = m.get("/ready")?;
        (r.status == 503 && r.text().contains(want)).then_some(r)
    });
    ready.unwrap_or_else(|| {
        panic!(
            "{} /ready: {:?}; log:\n{}",
            m.name,
            m.get("/ready").map(|r| (r.status, r.text())),
            m.log_text()
        )
    })
}

/// Four members formed by join, with the admin token: the members, their ids, the leader's
/// position and a follower's (n4, or n3 if n4 leads).
fn four_members_and_a_follower(t: &TestDir) -> (Vec<Member>, Vec<u64>, usize, usize) {
    let token = t.file("admin-token", &format!("{TOKEN}\n"));
    let members = start_cluster(t, &["n1", "n2", "n3", "n4"], |s| s.admin_token(&token));
    let all: Vec<&Member> = members.iter().collect();
    let ids: Vec<u64> = members.iter().map(Member::id).collect();
    wait_members(&all, &ids);
    let leader = leader_of(&all);
    let x = if leader == 3 { 2 } else { 3 };
    (members, ids, leader, x)
}

#[test]
fn a_member_removed_through_another_member_learns_it_and_stops_taking_writes() {
    let t = TestDir::new();
    let certs = debian_certs(2);
    let (mut members, ids, leader, x) = four_members_and_a_follower(&t);
    // Remove that follower, asking a third member that is neither it nor the leader.
    let via = (0..4).find(|&i| i != x && i != leader).unwrap();
    let x_id = ids[x];
    let leader_id = ids[leader];

    tracing_phase(&format!(
        "{} removes {} (POST /cluster/leave)",
        members[via].name, members[x].name
    ));
    let r = leave(
        &members[via],
        Some(TOKEN),
        &json!({ "name": members[x].name }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rest: Vec<&Member> = (0..4).filter(|&i| i != x).map(|i| &members[i]).collect();
    let rest_ids: Vec<u64> = rest.iter().map(|m| m.id()).collect();
    wait_members(&rest, &rest_ids);

    tracing_phase("the removed process says so: /ready 503 with the reason, status removed");
    let removed = &members[x];
    let want = format!("removed from the cluster by node {leader_id}");
    let ready = wait_removed(removed, &want, Duration::from_secs(30));
    assert_eq!(ready.text().trim_end().lines().count(), 1);
    let status = removed.json("/cluster/status").expect("status answers");
    assert_eq!(status["removed"], true, "{status}");
    assert_eq!(status["removal"]["by"], leader_id, "{status}");
    assert_eq!(status["status"]["id"], x_id, "{status}");
    assert!(removed.exited().is_none(), "the removed node keeps running");
    assert!(removed.data.join("db").exists(), "its data is kept");
    let log = removed.log_text();
    assert_eq!(
        log.matches("takes no more writes").count(),
        1,
        "one warning:\n{log}"
    );

    tracing_phase("a write or a lookup sent to the removed node: 503 with the reason");
    let r = removed.post_once(&certs[1].1).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&want), "{}", r.text());
    // Its replica no longer follows the cluster: it would serve certificates without the
    // revocations written since.
    let r = removed
        .get(&format!("/pks/lookup?op=get&search=0x{}", certs[1].0))
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&want), "{}", r.text());

    tracing_phase("the remaining three serve writes");
    for m in &rest {
        assert!(m.ready(), "{} is ready", m.name);
    }
    let r = rest[0].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &rest {
        assert!(served(m, &certs[0].0, index), "{}", m.name);
    }
    members[x].kill9();
}

#[test]
fn a_member_removed_while_down_learns_it_from_the_others_when_it_restarts() {
    let t = TestDir::new();
    let (mut members, _, leader, x) = four_members_and_a_follower(&t);

    tracing_phase(&format!("{} is killed (-9), then removed", members[x].name));
    members[x].kill9();
    let r = leave(
        &members[leader],
        Some(TOKEN),
        &json!({ "name": members[x].name }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let gave_up = poll(Duration::from_secs(30), || {
        members[leader]
            .log_text()
            .contains("could not tell the removed member")
            .then_some(())
    });
    assert!(
        gave_up.is_some(),
        "the leader's notice should fail while the member is down:\n{}",
        members[leader].log_text()
    );

    tracing_phase("it restarts with its data and asks the others");
    members[x].spawn();
    let removed = &members[x];
    wait_removed(
        removed,
        "no longer lists this node",
        Duration::from_secs(45),
    );
    let status = removed.json("/cluster/status").expect("status answers");
    assert_eq!(status["removed"], true, "{status}");
    let r = removed.post_once(&debian_certs(1)[0].1).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    members[x].kill9();
}

#[test]
fn a_node_still_joining_answers_http_is_not_ready_and_stops_on_sigterm() {
    let t = TestDir::new();
    // A member address where nothing listens: the join retries (for two minutes).
    let nowhere = std::net::SocketAddr::new(LOCALHOST, free_port(LOCALHOST));
    let m = t.spec("n1").join(&[nowhere]).start();

    tracing_phase("while it joins, the node answers HTTP and says why it is not ready");
    let health = poll(Duration::from_secs(60), || {
        m.get("/health").filter(|r| r.status == 200)
    });
    assert!(health.is_some(), "no /health; log:\n{}", m.log_text());
    let ready = m.get("/ready").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("joining the cluster"),
        "{}",
        ready.text()
    );
    // No members and no Raft state: what the bootstrap script reads as "no cluster yet".
    let nodes = m.json("/cluster/nodes").unwrap();
    assert_eq!(nodes["nodes"], json!([]), "{nodes}");
    assert_eq!(nodes["fresh"], json!(true), "{nodes}");
    tracing_phase("while it joins, it refuses reads and writes instead of answering from nothing");
    let lookup = m
        .get("/pks/lookup?op=get&search=0x0123456789ABCDEF0123456789ABCDEF01234567")
        .unwrap();
    assert_eq!(lookup.status, 503, "{}", lookup.text());
    assert!(lookup.text().contains("still joining"), "{}", lookup.text());
    let cert = &debian_certs(1)[0];
    let r = m.post_once(&cert.1).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("still joining"), "{}", r.text());
    assert!(m.exited().is_none(), "{}", m.log_text());

    tracing_phase("SIGTERM stops it at once, cleanly, without waiting for the join");
    m.signal("TERM");
    let status = m.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}; log:\n{}", m.log_text());
    let log = m.log_text();
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(log.contains("database closed"), "{log}");
}
