//! Formation by join (HKP addresses), follower writes forwarded with read-your-writes, kill -9
//! of the leader, catch-up after restart, refusal of a wrong cluster secret (audited in the
//! replicated audit trail); four nodes joining at once all become voters, and a sixth node stays
//! a learner.
use std::time::Duration;

use crate::harness::*;

#[test]
fn three_nodes_form_by_join_forward_writes_survive_leader_kill9_and_catch_up() {
    let t = TestDir::new();
    let certs = debian_certs(10);
    let token = t.file("admin-token", "formation-t0ken\n");

    tracing_phase("bootstrap n1, then n2 and n3 join it (concurrently); n3 acts as a release without append streams");
    let mut n1 = t.spec("n1").admin_token(&token).start();
    n1.wait_ready();
    let n2 = t.spec("n2").admin_token(&token).join(&[n1.http]).start();
    let n3 = t
        .spec("n3")
        .admin_token(&token)
        .join(&[n1.http])
        .env("KEYRAFT_TEST_NO_APPEND_STREAM", "1")
        .start();
    n2.wait_ready();
    n3.wait_ready();
    let v = n1.stats();
    assert_eq!(v["node"]["voters"].as_array().unwrap().len(), 3, "{v}");

    tracing_phase("every node names the same leader and lists three voters");
    let leaders: Vec<(u64, String)> = [&n1, &n2, &n3]
        .iter()
        .map(|m| m.leader().expect("a leader"))
        .collect();
    assert!(
        leaders.iter().all(|l| l.0 == leaders[0].0 && l.1 == "n1"),
        "{leaders:?}"
    );
    let members = n3.members();
    assert_eq!(members.len(), 3, "{members:?}");
    for name in ["n1", "n2", "n3"] {
        assert!(members.iter().any(|m| m.1 == name && m.2), "{members:?}");
    }
    assert_eq!(n2.get("/cluster/health").unwrap().status, 200);

    tracing_phase("write on a follower; read it on every node");
    let r = n3.post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert_eq!(
        n3.get(&format!("/pks/lookup?op=get&search=0x{}", certs[0].0))
            .unwrap()
            .status,
        200,
        "read-your-writes on n3"
    );
    for m in [&n1, &n2, &n3] {
        assert!(served(m, &certs[0].0, index), "{} serves the write", m.name);
    }

    tracing_phase(
        "appends reach n2 over pipelined streams (heartbeats unary), n3 over unary calls",
    );
    let path = |sync: &serde_json::Value, id: u64| {
        sync["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"].as_u64() == Some(id))
            .map(|m| m["appends"].clone())
            .unwrap()
    };
    let (n2_id, n3_id) = (n2.id(), n3.id());
    // Heartbeats (a stream of one request each, from openraft) go as unary calls; openraft
    // sends them only while replication to that node is idle, so wait (bounded) for one.
    let sync = poll(Duration::from_secs(20), || {
        let sync = n1.json("/cluster/sync/status")?;
        (path(&sync, n2_id)["heartbeats_unary"].as_u64()? > 0).then_some(sync)
    })
    .unwrap_or_else(|| n1.json("/cluster/sync/status").unwrap());
    let (to_n2, to_n3) = (path(&sync, n2_id), path(&sync, n3_id));
    assert_eq!(to_n2["transport"], "stream", "{sync}");
    assert!(to_n2["requests_streamed"].as_u64().unwrap() > 0, "{sync}");
    assert!(to_n2["heartbeats_unary"].as_u64().unwrap() > 0, "{sync}");
    assert_eq!(to_n3["transport"], "unary", "{sync}");

    tracing_phase("kill -9 the leader (n1); writes go on through n2");
    n1.kill9();
    let r = n2.post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    assert!(served(&n3, &certs[1].0, index));
    let c = n2.json("/cluster/consensus").unwrap();
    assert!(
        c["elections_since_start"].as_u64().unwrap() >= 1,
        "a survivor counts the election: {c}"
    );

    tracing_phase("restart n1: it catches up by itself (no re-join, no re-initialisation)");
    n1.spawn();
    n1.wait_ready();
    assert!(served(&n1, &certs[1].0, index), "n1 caught up");
    assert!(served(&n1, &certs[0].0, index));
    let r = n1.post(&certs[2].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in [&n1, &n2, &n3] {
        assert!(
            served(m, &certs[2].0, index),
            "{} serves the write made through n1",
            m.name
        );
    }

    tracing_phase("a node with the wrong secret is refused and exits non-zero");
    let wrong = t.file("wrong", "not-the-secret");
    let n4 = Spec::new(t.path(), "n4", &wrong).join(&[n2.http]).start();
    let status = n4.wait_exit(Duration::from_secs(150));
    assert!(!status.success());
    let log = n4.log_text();
    assert!(log.contains("wrong cluster secret"), "{log}");
    let v = n2.stats();
    assert_eq!(
        v["node"]["voters"].as_array().unwrap().len(),
        3,
        "n4 was not admitted: {v}"
    );
    assert!(v["node"]["learners"].as_array().unwrap().is_empty(), "{v}");

    tracing_phase("the refusal is in the replicated audit trail, read on the leader");
    let members = [&n1, &n2, &n3];
    let leader = members[leader_of(&members)];
    let entry = poll(Duration::from_secs(30), || {
        let a = leader.admin_json("/cluster/audit?action=join", "formation-t0ken")?;
        a["entries"]
            .as_array()?
            .iter()
            .find(|e| {
                e["outcome"]
                    .as_str()
                    .is_some_and(|o| o == "refused: wrong cluster secret")
            })
            .cloned()
    });
    let entry = entry.unwrap_or_else(|| {
        panic!(
            "no refused join in {}'s audit: {:?}",
            leader.name,
            leader.admin_json("/cluster/audit", "formation-t0ken")
        )
    });
    let actor = entry["actor"].as_str().unwrap();
    assert!(
        actor.starts_with("joiner n4 (id ") && actor.contains(" from 127.0.0.1:"),
        "{entry}"
    );
}

#[test]
fn four_joining_at_once_all_vote_then_a_sixth_node_stays_a_learner_and_serves_reads() {
    let t = TestDir::new();
    let certs = debian_certs(4);
    tracing_phase("m1 bootstraps; m2..m5 join it at the same moment");
    let first = t.spec("m1").start();
    first.wait_ready();
    let seed = first.http;
    // Frozen, m1 queues the joiners' first requests and answers them all at once when it
    // resumes, so their admissions overlap.
    first.signal("STOP");
    let joiners: Vec<Member> = ["m2", "m3", "m4", "m5"]
        .iter()
        .map(|name| t.spec(name).join(&[seed]).start())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    first.signal("CONT");
    let mut members = vec![first];
    for m in joiners {
        m.wait_ready();
        members.push(m);
    }
    // openraft refuses a membership change while another is uncommitted; the leader must
    // serialise the four admissions rather than leave a joiner a learner.
    let v = members[0].json("/cluster/status").unwrap();
    assert_eq!(v["status"]["voters"].as_array().unwrap().len(), 5, "{v}");
    assert!(
        v["status"]["learners"].as_array().unwrap().is_empty(),
        "{v}"
    );

    tracing_phase("m6 joins: the cluster has max_voters, so it stays a learner");
    let m6 = t.spec("m6").join(&[seed]).start();
    m6.wait_ready();
    members.push(m6);
    let v = members[0].json("/cluster/status").unwrap();
    assert_eq!(v["status"]["voters"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!(v["status"]["learners"].as_array().unwrap().len(), 1, "{v}");
    let learner_id = v["status"]["learners"][0].as_u64().unwrap();
    assert_eq!(members[5].id(), learner_id, "the sixth node is the learner");

    tracing_phase("a write through the learner is forwarded and readable everywhere");
    let r = members[5].post(&certs[3].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert!(served(m, &certs[3].0, index), "{} serves the write", m.name);
    }

    tracing_phase("SIGTERM a follower: the leader's open append stream does not keep it from closing its database");
    let all: Vec<&Member> = members.iter().collect();
    let follower = all[(leader_of(&all) + 1) % all.len()];
    follower.signal("TERM");
    let status = follower.wait_exit(Duration::from_secs(60));
    let log = follower.log_text();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("stopped; database closed"), "{log}");
}
