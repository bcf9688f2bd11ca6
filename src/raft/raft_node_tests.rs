//! Single-node tests of the facade over a real store: bootstrap once, write, restart, snapshot.
use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::raft::command::{ApplyOutcome, CommandV1, Op};
use crate::raft::types::KeyraftNode;

fn me() -> KeyraftNode {
    KeyraftNode {
        name: "n1".into(),
        raft_addr: "127.0.0.1:1".into(),
        http_addr: "127.0.0.1:2".into(),
    }
}

fn delete(request_id: u128, fpr: &str) -> Command {
    Command::V1(CommandV1 {
        request_id,
        time: 1_700_000_000,
        op: Op::Delete {
            fingerprints: vec![fpr.to_string()],
            bases: Vec::new(),
            if_match: None,
            reason: String::new(),
        },
        origin: 1,
        actor: "test".into(),
        signed: None,
    })
}

/// Open the store, waiting (bounded) for the previous instance's last handle to go: openraft's
/// shutdown returns before a blocking storage task it spawned (a purge, a snapshot build) has
/// dropped its clone of the store, and RocksDB's LOCK is held until the last clone is dropped.
/// A real restart is a new process, so only in-process restarts need this.
async fn start(dir: &std::path::Path, settings: RaftSettings) -> RaftNode {
    let mut attempts = 0;
    let store = loop {
        match Store::open(dir) {
            Ok(store) => break store,
            Err(e) if attempts < 100 && e.to_string().contains("lock") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("open store: {e}"),
        }
    };
    RaftNode::start(store, 1, me(), settings).await.unwrap()
}

async fn wait_leader(node: &RaftNode) {
    for _ in 0..200 {
        if node.has_leader_and_applied() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader: {:?}", node.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_bootstraps_once_writes_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fpr = "0123456789ABCDEF0123456789ABCDEF01234567";

    tracing::info!("--- fresh node initialises exactly once");
    let node = start(dir.path(), RaftSettings::default()).await;
    assert!(node.initialize_if_fresh().await.unwrap());
    assert!(!node.initialize_if_fresh().await.unwrap());
    wait_leader(&node).await;
    let st = node.status();
    assert_eq!(st.state, "Leader");
    assert_eq!(st.voters, vec![1]);

    tracing::info!("--- a write is committed and applied; a retry is deduplicated");
    let (resp, index) = node.write(delete(7, fpr)).await.unwrap();
    assert!(matches!(
        resp.outcomes.as_slice(),
        [ApplyOutcome::NotFound { .. }]
    ));
    node.wait_applied(index, Duration::from_secs(5))
        .await
        .unwrap();
    // The retry is not applied again: it gets the first answer.
    let (again, _) = node.write(delete(7, fpr)).await.unwrap();
    assert_eq!(again.outcomes, resp.outcomes);
    node.ensure_linearizable().await.unwrap();
    node.shutdown().await;
    drop(node);

    tracing::info!("--- restart: no re-initialisation, state is back");
    let node = start(dir.path(), RaftSettings::default()).await;
    assert!(!node.initialize_if_fresh().await.unwrap());
    wait_leader(&node).await;
    assert!(node.status().applied_index >= Some(index));
    let (again, _) = node.write(delete(7, fpr)).await.unwrap();
    assert_eq!(again.outcomes, resp.outcomes);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_built_purge_logs_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RaftSettings {
        snapshot_logs_since_last: 5,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..RaftSettings::default()
    };

    tracing::info!("--- enough writes to trigger a snapshot");
    let node = start(dir.path(), settings.clone()).await;
    node.initialize_if_fresh().await.unwrap();
    wait_leader(&node).await;
    let mut last = 0;
    let mut first = None;
    for i in 0..12u128 {
        let (resp, index) = node.write(delete(100 + i, "AA")).await.unwrap();
        first.get_or_insert(resp);
        last = index;
    }
    node.inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some() && m.purged.is_some(),
            "snapshot and purge",
        )
        .await
        .unwrap();
    node.shutdown().await;
    drop(node);

    tracing::info!("--- restart from snapshot + remaining log");
    let node = start(dir.path(), settings).await;
    wait_leader(&node).await;
    let st = node.status();
    assert!(st.snapshot_index.is_some(), "{st:?}");
    assert!(st.applied_index >= Some(last), "{st:?}");
    // The request id and its answer came back with the snapshot.
    let (again, _) = node.write(delete(100, "AA")).await.unwrap();
    assert_eq!(again.outcomes, first.unwrap().outcomes);
    node.shutdown().await;
}

/// A guard against a hang (not a timing assertion): far above every bound under test.
async fn finishes<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

fn unreachable(name: &str) -> KeyraftNode {
    KeyraftNode {
        name: name.into(),
        raft_addr: format!("{name}.invalid:1"),
        http_addr: String::new(),
    }
}

/// A fresh single-node cluster in `dir`, leading, whose facade calls wait at most `ms`.
async fn leader_with_request_timeout(dir: &std::path::Path, ms: u64) -> RaftNode {
    let settings = RaftSettings {
        request_timeout_ms: ms,
        ..RaftSettings::default()
    };
    let node = start(dir, settings).await;
    node.initialize_if_fresh().await.unwrap();
    wait_leader(&node).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_learner_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = leader_with_request_timeout(dir.path(), 300).await;
    node.openraft()
        .add_learner(2, unreachable("n2"), false)
        .await
        .unwrap();
    // The joint configuration {1} + {1, 2} needs n2 to commit: without a bound this waits forever.
    let err = finishes("promote", node.promote(BTreeSet::from([2])))
        .await
        .unwrap_err();
    assert!(matches!(err, RaftError::Timeout(_)), "{err}");
    assert!(err.to_string().contains("promotion not committed"), "{err}");
    assert!(err.is_unavailable(), "a timeout is retryable: {err}");
    assert!(node.status().joint, "{:?}", node.status());
    // The change stays proposed (it commits if n2 ever answers); a second one is refused at once.
    let again = finishes("promote again", node.promote(BTreeSet::from([2])))
        .await
        .unwrap_err();
    assert!(matches!(again, RaftError::Membership(_)), "{again}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_never_answers_is_not_taken_for_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let node = leader_with_request_timeout(dir.path(), 100).await;
    // openraft's blocking add would call it caught up at once: the log is far shorter than its
    // lag threshold. It holds nothing, so the join must not go on to promote it.
    let err = finishes("add learner", node.add_learner(2, unreachable("n2")))
        .await
        .unwrap_err();
    assert!(matches!(err, RaftError::Timeout(_)), "{err}");
    assert!(err.to_string().contains("did not catch up"), "{err}");
    let members = node.members();
    assert!(members.iter().any(|m| m.id == 2 && !m.voter), "{members:?}");
    assert_eq!(node.status().voters, vec![1]);
    node.shutdown().await;
}

/// A snapshot cut short in transit is refused before it reaches openraft (which would take an
/// install error as fatal and stop this node's Raft for good): the sender gets an error and
/// tries again, and the whole snapshot then installs on the same, still running, node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_snapshot_is_refused_and_the_receiver_keeps_running() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let settings = RaftSettings {
        snapshot_logs_since_last: 5,
        ..RaftSettings::default()
    };
    let a = start(&dir.path().join("a"), settings.clone()).await;
    a.initialize_if_fresh().await.unwrap();
    wait_leader(&a).await;
    for i in 0..12u128 {
        a.write(delete(300 + i, "AA")).await.unwrap();
    }
    a.inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "a snapshot")
        .await
        .unwrap();
    let mut snap = a.inner.raft.get_snapshot().await.unwrap().unwrap();
    let mut bytes = Vec::new();
    snap.snapshot.read_to_end(&mut bytes).await.unwrap();
    let vote = a.inner.raft.metrics().borrow_watched().vote;
    let header = codec::encode(&SnapshotHeader {
        vote,
        meta: snap.meta.clone(),
    })
    .unwrap();
    a.shutdown().await;

    let b = start(&dir.path().join("b"), settings).await;
    let file = |data: &[u8]| {
        let path = dir.path().join(format!("spool-{}", data.len()));
        std::fs::write(&path, data).unwrap();
        tokio::fs::File::from_std(std::fs::File::open(path).unwrap())
    };
    let cut = file(&bytes[..bytes.len() - 7]);
    let err = finishes("a truncated snapshot", b.handle_snapshot(&header, cut))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refusing the snapshot"), "{err}");
    let whole = file(&bytes);
    finishes("the whole snapshot", b.handle_snapshot(&header, whole))
        .await
        .unwrap();
    let want = snap.meta.last_log_id.map(|l| l.index);
    b.inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.last_applied.as_ref().map(|l| l.index) == want,
            "the snapshot applied",
        )
        .await
        .unwrap();
    b.shutdown().await;
}

/// A read is refused (found or not) when a snapshot install began before it or ran while
/// it read: the replica was partly old, partly new.
#[tokio::test]
async fn a_read_that_an_install_overlaps_is_refused_whatever_it_found() {
    use crate::raft::{Keyserver, RaftError};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let raft = RaftNode::start(store.clone(), 1, me(), Default::default())
        .await
        .unwrap();
    let keys = Keyserver::new(raft.clone(), store.clone(), 1);
    let found: Result<u32, RaftError> = keys.read_consistently(|| Ok(7));
    assert_eq!(found.unwrap(), 7, "no install: the answer stands");
    let not_found: Result<u32, RaftError> =
        keys.read_consistently(|| Err(RaftError::Refused("no such key".into())));
    assert_eq!(
        not_found.unwrap_err(),
        RaftError::Refused("no such key".into())
    );

    let mut b = store.begin_apply();
    b.set_sm_meta("last_applied", vec![1]);
    b.commit().unwrap();
    let mut snapshot = Vec::new();
    store.snapshot_write(&mut snapshot).unwrap();
    let install = || {
        store
            .snapshot_install(&mut std::io::Cursor::new(&snapshot))
            .unwrap()
    };
    let overlapped: Result<u32, RaftError> = keys.read_consistently(|| {
        install();
        Err(RaftError::Refused("no such key".into()))
    });
    assert_eq!(
        overlapped.unwrap_err(),
        RaftError::Installing,
        "a 404 is not served"
    );
    let overlapped: Result<u32, RaftError> = keys.read_consistently(|| {
        install();
        Ok(7)
    });
    assert_eq!(overlapped.unwrap_err(), RaftError::Installing, "nor a 200");
    assert_eq!(keys.read_consistently(|| Ok::<_, RaftError>(7)).unwrap(), 7);
    raft.shutdown().await;
}

/// A snapshot build makes the state it covers durable: after a crash (a real one: this test
/// runs itself as a child process that aborts, as with `kill -9`) right after a build, the
/// node re-applies its log at start-up instead of reinstalling the whole snapshot.
#[test]
fn a_crash_right_after_a_snapshot_build_does_not_reinstall_the_snapshot() {
    const CHILD: &str = "KEYRAFT_TEST_SNAPSHOT_CRASH_CHILD";
    let settings = RaftSettings {
        snapshot_logs_since_last: 5,
        ..RaftSettings::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(dir) = std::env::var_os(CHILD) {
        rt.block_on(async {
            let node = start(std::path::Path::new(&dir), settings.clone()).await;
            node.initialize_if_fresh().await.unwrap();
            wait_leader(&node).await;
            for i in 0..7u128 {
                node.write(delete(300 + i, "AB")).await.unwrap();
            }
            node.inner
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.snapshot.is_some(), "a snapshot")
                .await
                .unwrap();
            std::process::abort();
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "raft::raft_node::tests::a_crash_right_after_a_snapshot_build_does_not_reinstall_the_snapshot",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the child aborts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        let store = Store::open(dir.path()).unwrap();
        let node = RaftNode::start(store.clone(), 1, me(), settings)
            .await
            .unwrap();
        wait_leader(&node).await;
        let st = node.status();
        assert!(st.snapshot_index.is_some(), "{st:?}");
        assert!(st.applied_index >= Some(7), "{st:?}");
        assert_eq!(
            store.install_epoch(),
            0,
            "the state the snapshot covers was on disk: no install at start-up"
        );
        node.shutdown().await;
    });
}
