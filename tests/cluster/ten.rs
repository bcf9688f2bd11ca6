//! Ten nodes: five voters and five learners; a write is served everywhere; kill -9 of two
//! voters (the leader among them) leaves a quorum that keeps taking writes, and all eight
//! survivors serve the last one.
use crate::harness::*;

#[test]
fn ten_nodes_five_voters_survive_two_voters_killed() {
    let t = TestDir::new();
    let certs = debian_certs(3);
    let names: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut members = start_cluster(&t, &names, |s| s);

    let v = members[0].json("/cluster/status").unwrap();
    let voters: Vec<u64> = v["status"]["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let learners = v["status"]["learners"].as_array().unwrap().len();
    assert_eq!((voters.len(), learners), (5, 5), "{v}");
    for m in &members {
        assert_eq!(m.members().len(), 10, "{} lists ten members", m.name);
    }

    tracing_phase("a write through a learner is served by all ten");
    let ids: Vec<u64> = members.iter().map(Member::id).collect();
    let learner = (0..10).find(|&i| !voters.contains(&ids[i])).unwrap();
    let r = members[learner].post(&certs[0].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert!(served(m, &certs[0].0, index), "{}", m.name);
    }

    tracing_phase("kill -9 the leader and another voter");
    let leader = leader_of(&members.iter().collect::<Vec<_>>());
    let other = (0..10)
        .find(|&i| i != leader && voters.contains(&ids[i]))
        .unwrap();
    members[leader].kill9();
    members[other].kill9();
    let alive: Vec<usize> = (0..10).filter(|&i| i != leader && i != other).collect();

    tracing_phase("writes go on; all eight survivors serve them");
    let survivors: Vec<&Member> = alive.iter().map(|&i| &members[i]).collect();
    let new_leader = leader_of(&survivors);
    assert_ne!(survivors[new_leader].name, members[leader].name);
    let r = members[learner].post(&certs[1].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let voter = alive
        .iter()
        .copied()
        .find(|&i| voters.contains(&ids[i]) && i != alive[new_leader])
        .unwrap();
    let r = members[voter].post(&certs[2].1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &survivors {
        assert!(served(m, &certs[2].0, index), "{}", m.name);
        assert!(served(m, &certs[1].0, index), "{}", m.name);
        assert!(served(m, &certs[0].0, index), "{}", m.name);
    }
}
