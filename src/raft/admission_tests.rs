//! Tests of admission: secrets, forwarded errors, a leave behind a change, removed ids.
use super::*;
use crate::raft::settings::RaftSettings;
use crate::store::Store;

#[test]
fn the_secret_never_shows_in_debug_output() {
    let a = Admission::new(Some("hunter2-cluster-secret".into()), 5);
    let shown = format!("{a:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("redacted") && shown.contains("max_voters: 5"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_are_answered_late_and_only_a_few_are_checked_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let raft = RaftNode::start(store, 1, KeyraftNode::default(), RaftSettings::default())
        .await
        .unwrap();
    let admission = Admission::new(Some("right".into()), 5);
    let refusals = std::sync::Mutex::new(Vec::new());
    let on_refuse = |_: &JoinSpec, why: &str| refusals.lock().unwrap().push(why.to_string());
    let guess = |n: u64| JoinSpec {
        id: n,
        name: format!("g{n}"),
        raft_addr: "127.0.0.1:1".into(),
        http_addr: String::new(),
        secret: format!("guess {n}"),
    };
    // All polled together: without the delay each check would end before the next began
    // and none would be refused unchecked.
    let answers = futures::future::join_all(
        (1..=CHECKS_AT_ONCE as u64 + 3).map(|n| admission.join(&raft, None, guess(n), &on_refuse)),
    )
    .await;
    let reasons: Vec<String> = answers
        .into_iter()
        .map(|a| a.unwrap_err().to_string())
        .collect();
    let wrong = reasons
        .iter()
        .filter(|r| r.contains("wrong cluster secret"));
    assert_eq!(wrong.count(), CHECKS_AT_ONCE, "{reasons:?}");
    let unchecked = reasons.iter().filter(|r| r.contains("too many joins"));
    assert_eq!(unchecked.count(), 3, "{reasons:?}");
    // Only the checked ones are refusals (audited; a joiner gives up on those); the others
    // are retryable.
    assert_eq!(refusals.lock().unwrap().len(), CHECKS_AT_ONCE);
    // The permits come back: the next guess is checked again.
    let r = admission.join(&raft, None, guess(99), &on_refuse).await;
    assert!(r.unwrap_err().to_string().contains("wrong cluster secret"));
    raft.shutdown().await;
}

#[test]
fn a_forwarded_error_keeps_its_kind() {
    // What the leader sends back is its error's text; each kind must map to the same kind.
    let cases = [
        RaftError::Refused("wrong cluster secret".into()),
        RaftError::UnknownMember("n9".into()),
        RaftError::Membership("the last voter cannot leave".into()),
        RaftError::Storage("disk full".into()),
        RaftError::Fatal("raft task panicked".into()),
    ];
    for e in cases {
        let back = forwarded(e.to_string());
        assert_eq!(back.to_string(), e.to_string());
        assert_eq!(
            std::mem::discriminant(&back),
            std::mem::discriminant(&e),
            "{e}"
        );
    }
    let net = forwarded("transport error: connection refused".into());
    assert!(matches!(net, RaftError::NoQuorum(_)), "{net}");
    assert!(net.is_unavailable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_behind_a_change_in_progress_gets_a_retryable_timeout_and_the_id_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RaftSettings {
        request_timeout_ms: 200,
        ..RaftSettings::default()
    };
    let me = KeyraftNode {
        name: "n1".into(),
        raft_addr: "127.0.0.1:1".into(),
        http_addr: String::new(),
    };
    let store = Store::open(dir.path()).unwrap();
    let raft = RaftNode::start(store, 1, me, settings).await.unwrap();
    raft.initialize_if_fresh().await.unwrap();
    let learner = KeyraftNode {
        name: "n2".into(),
        raft_addr: "n2.invalid:1".into(),
        http_addr: String::new(),
    };
    for _ in 0..200 {
        if raft.status().leader == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not waiting for it to catch up: it never answers.
    raft.openraft()
        .add_learner(2, learner, false)
        .await
        .unwrap();

    let admission = Admission::new(None, 5);
    let held = admission.changes.lock().await;
    let leave = admission.leave(&raft, None, 2, &|_| {});
    let err = tokio::time::timeout(Duration::from_secs(60), leave)
        .await
        .expect("the leave waits in line without end")
        .unwrap_err();
    assert!(matches!(err, RaftError::Timeout(_)), "{err}");
    assert!(
        err.to_string()
            .contains("another membership change is still in progress"),
        "{err}"
    );
    assert!(
        raft.members().iter().any(|m| m.id == 2),
        "nothing was removed"
    );

    drop(held);
    admission.leave(&raft, None, 2, &|_| {}).await.unwrap();
    assert!(
        raft.members().iter().all(|m| m.id != 2),
        "{:?}",
        raft.members()
    );

    // Its id is never admitted again.
    assert_eq!(raft.removed_ids().await.unwrap(), BTreeSet::from([2]));
    let again = JoinSpec {
        id: 2,
        name: "n2".into(),
        raft_addr: "n2.invalid:1".into(),
        http_addr: String::new(),
        secret: String::new(),
    };
    let err = admission
        .join(&raft, None, again, &|_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("never admitted again"), "{err}");
    assert!(raft.members().iter().all(|m| m.id != 2));
    raft.shutdown().await;
}
