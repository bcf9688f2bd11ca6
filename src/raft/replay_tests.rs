//! Replay protection at apply, over a real store: a signed use applies once, its replay is
//! refused and audited on every node alike, a signature outside the window is refused, the
//! commands of one request share their signature, and pruning is deterministic whatever the
//! batching.
use sequoia_openpgp::cert::prelude::*;
use sequoia_openpgp::serialize::MarshalInto;

use super::*;
use crate::raft::apply::apply_command;
use crate::raft::command::Command;
use crate::raft::records;
use crate::store::VersionVector;

const T: u64 = 1_700_000_000;
const WINDOW: u64 = 3600;

fn cert() -> (String, Vec<u8>) {
    let (c, _) = CertBuilder::new()
        .add_userid("Replay <replay@example.org>")
        .generate()
        .unwrap();
    let c = c.strip_secret_key_material();
    (c.fingerprint().to_hex(), c.to_vec().unwrap())
}

fn submit(bytes: &[u8]) -> Op {
    Op::Submit {
        certs: vec![bytes.to_vec()],
        limits: crate::pgp::Limits::default(),
        bases: vec![VersionVector::default()],
        prepared: vec![],
    }
}

fn delete(fpr: &str) -> Op {
    Op::Delete {
        fingerprints: vec![fpr.to_string()],
        bases: Vec::new(),
        if_match: None,
        reason: "signed /pks/delete".into(),
    }
}

fn signed(id: u8, signed_at: u64, request: u128) -> SignedUse {
    SignedUse {
        id: vec![id; 32],
        signed_at,
        window: WINDOW,
        request,
    }
}

fn cmd(index: u64, time: u64, op: Op, signed: Option<SignedUse>) -> Command {
    Command::V1(CommandV1 {
        request_id: u128::from(index),
        time,
        op,
        origin: 1,
        actor: "admin-key TEST".into(),
        signed,
    })
}

struct Node {
    _dir: tempfile::TempDir,
    store: Store,
    index: u64,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Node {
            _dir: dir,
            store,
            index: 0,
        }
    }

    /// Apply `cmds` at the next indexes, all in one batch.
    fn apply(&mut self, cmds: Vec<(u64, Op, Option<SignedUse>)>) -> Vec<ApplyOutcome> {
        let mut b = self.store.begin_apply();
        let mut out = Vec::new();
        for (time, op, s) in cmds {
            self.index += 1;
            let r = apply_command(&mut b, &cmd(self.index, time, op, s), self.index).unwrap();
            out.extend(r.outcomes);
        }
        b.commit().unwrap();
        out
    }

    fn one(&mut self, time: u64, op: Op, s: Option<SignedUse>) -> ApplyOutcome {
        self.apply(vec![(time, op, s)]).remove(0)
    }

    fn used(&self) -> usize {
        self.store
            .scan(Table::UsedSignatures, None, false, 1000)
            .unwrap()
            .len()
    }
}

#[test]
fn a_signature_is_used_once_and_its_replay_is_refused_and_audited() {
    let mut n = Node::new();
    let (fpr, bytes) = cert();
    n.one(T, submit(&bytes), None);
    let o = n.one(T + 10, delete(&fpr), Some(signed(1, T, 7)));
    assert!(matches!(o, ApplyOutcome::Deleted { .. }), "{o:?}");
    assert_eq!(used_by(&n.store, &[1; 32]).unwrap(), Some(7));

    // The certificate comes back (a fresh upload), then the captured request is replayed.
    let mut b = n.store.begin_apply();
    let tomb = records::tombstone(&b, &hex::decode(&fpr).unwrap())
        .unwrap()
        .unwrap();
    let back = Op::Submit {
        certs: vec![bytes.clone()],
        limits: crate::pgp::Limits::default(),
        bases: vec![tomb.version],
        prepared: vec![],
    };
    n.index += 1;
    apply_command(&mut b, &cmd(n.index, T + 20, back, None), n.index).unwrap();
    b.commit().unwrap();
    let o = n.one(T + 30, delete(&fpr), Some(signed(1, T, 8)));
    assert_eq!(
        o,
        ApplyOutcome::SignatureRefused {
            replay: true,
            reason: ALREADY_USED.into()
        }
    );
    assert!(
        n.store
            .get_cert(&hex::decode(&fpr).unwrap())
            .unwrap()
            .is_some(),
        "the replay changed nothing"
    );
    let audit = records::scan_audit(&n.store, Default::default(), 100).unwrap();
    let last = audit.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.outcome.as_str()),
        ("delete", "refused: signature already used")
    );
    assert_eq!(last.fingerprint.as_deref(), Some(fpr.as_str()));
    assert_eq!(last.actor, "admin-key TEST");
}

#[test]
fn the_commands_of_one_request_share_its_signature() {
    let mut n = Node::new();
    let (a, bytes_a) = cert();
    let (b, bytes_b) = cert();
    n.apply(vec![
        (T, submit(&bytes_a), None),
        (T, submit(&bytes_b), None),
    ]);
    let s = signed(2, T, 9);
    let out = n.apply(vec![
        (T + 1, delete(&a), Some(s.clone())),
        (T + 1, delete(&b), Some(s)),
    ]);
    assert!(
        out.iter()
            .all(|o| matches!(o, ApplyOutcome::Deleted { .. })),
        "{out:?}"
    );
}

#[test]
fn a_signature_outside_the_window_is_refused_either_way() {
    let mut n = Node::new();
    let (fpr, bytes) = cert();
    n.one(T, submit(&bytes), None);
    for signed_at in [T - WINDOW - 1, T + WINDOW + 1] {
        let o = n.one(T, delete(&fpr), Some(signed(3, signed_at, 1)));
        let ApplyOutcome::SignatureRefused { replay, reason } = o else {
            panic!("{o:?}")
        };
        assert!(!replay);
        assert!(reason.contains("more than the 3600 s allowed"), "{reason}");
    }
    assert_eq!(n.used(), 0, "a refused signature is not remembered");
    let o = n.one(T, delete(&fpr), Some(signed(3, T - WINDOW, 1)));
    assert!(
        matches!(o, ApplyOutcome::Deleted { .. }),
        "the edge is in: {o:?}"
    );
}

#[test]
fn used_signatures_are_pruned_after_window_and_grace_the_same_way_in_any_batching() {
    let (fpr, bytes) = cert();
    let until = T + WINDOW;
    let log = || {
        let mut cmds = vec![(T, submit(&bytes), None)];
        for i in 0..3u8 {
            cmds.push((T, delete(&fpr), Some(signed(10 + i, T, u128::from(i)))));
        }
        cmds.push((until + SKEW_GRACE, delete(&fpr), None));
        cmds.push((until + SKEW_GRACE + 1, delete(&fpr), None));
        cmds
    };
    let mut one_by_one = Node::new();
    let mut used = Vec::new();
    for c in log() {
        one_by_one.apply(vec![c]);
        used.push(one_by_one.used());
    }
    // Two entries per signature; kept through the grace, pruned one second after it.
    assert_eq!(used, vec![0, 2, 4, 6, 6, 0]);
    let mut together = Node::new();
    together.apply(log());
    assert_eq!(together.used(), 0);
    let snapshot = |n: &Node| {
        let mut s = Vec::new();
        n.store.snapshot_write(&mut s).unwrap();
        s
    };
    assert_eq!(
        snapshot(&one_by_one),
        snapshot(&together),
        "the same log gives the same state whatever the batching"
    );
}

#[test]
fn pruning_is_bounded_per_command() {
    let mut n = Node::new();
    let (fpr, bytes) = cert();
    n.one(T, submit(&bytes), None);
    let many: Vec<_> = (0..100u8)
        .map(|i| (T, delete(&fpr), Some(signed(i, T, u128::from(i)))))
        .collect();
    n.apply(many);
    assert_eq!(n.used(), 200);
    let late = T + WINDOW + SKEW_GRACE + 1;
    n.one(late, delete(&fpr), None);
    assert_eq!(
        n.used(),
        200 - 2 * PRUNE_BATCH,
        "at most PRUNE_BATCH signatures a command"
    );
    while n.used() > 0 {
        n.one(late, delete(&fpr), None);
    }
}
