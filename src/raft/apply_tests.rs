//! Apply-level tests of versions and conflict policies over a real store: the races are
//! built by giving commands stale bases, exactly what a proposer that had not seen an earlier
//! update sends, so every policy branch runs deterministically.
use sequoia_openpgp::cert::prelude::*;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;

use super::*;
use crate::raft::cert_row::Prepared;
use crate::raft::command::CommandV1;
use crate::raft::records::Policies;
use crate::store::Store;

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

    fn apply(&mut self, origin: u64, time: u64, op: Op) -> ApplyOutcome {
        self.index += 1;
        let cmd = Command::V1(CommandV1 {
            request_id: self.index as u128,
            time,
            op,
            origin,
            actor: format!("test {origin}"),
            signed: None,
        });
        let mut b = self.store.begin_apply();
        let r = apply_command(&mut b, &cmd, self.index).unwrap();
        b.commit().unwrap();
        r.outcomes.into_iter().next().unwrap()
    }

    fn version(&self, fpr: &[u8]) -> VersionVector {
        match self.store.get_cert(fpr).unwrap() {
            Some(r) => r.version,
            None => records::read_tombstone(&self.store, fpr)
                .unwrap()
                .map(|t| t.version)
                .unwrap_or_default(),
        }
    }

    fn uids(&self, fpr: &[u8]) -> Vec<String> {
        let r = self.store.get_cert(fpr).unwrap().expect("stored");
        let c = Cert::from_bytes(&r.cert).unwrap();
        let mut u: Vec<String> = c
            .userids()
            .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
            .collect();
        u.sort();
        u
    }
}

/// One certificate in two versions: `a` with the first user id, `b` with the second.
fn two_versions() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (cert, _) = CertBuilder::new()
        .add_userid("Alice <alice@example.org>")
        .add_userid("Alice Work <alice@work.example>")
        .generate()
        .unwrap();
    let cert = cert.strip_secret_key_material();
    let a = cert
        .clone()
        .retain_userids(|u| u.userid().value().starts_with(b"Alice <"));
    let b = cert
        .clone()
        .retain_userids(|u| u.userid().value().starts_with(b"Alice Work"));
    (
        cert.fingerprint().as_bytes().to_vec(),
        a.to_vec().unwrap(),
        b.to_vec().unwrap(),
    )
}

fn submit(cert: &[u8], base: VersionVector) -> Op {
    Op::Submit {
        certs: vec![cert.to_vec()],
        limits: pgp::Limits::default(),
        bases: vec![base],
        prepared: vec![],
    }
}

/// A submission carrying the proposer's merge of `cert` into `base` (what `Keyserver::submit`
/// sends), with `base_index` as the record it claims to have merged into.
fn submit_prepared(
    cert: &[u8],
    version: VersionVector,
    base: Option<&CertRecord>,
    base_index: Option<u64>,
    time: u64,
) -> Op {
    let limits = pgp::Limits::default();
    let mut p = Prepared::compute(Cert::from_bytes(cert).unwrap(), cert, base, &limits, time)
        .expect("merges");
    p.base_index = base_index;
    Op::Submit {
        certs: vec![cert.to_vec()],
        limits,
        bases: vec![version],
        prepared: vec![Some(p)],
    }
}

fn delete(fpr: &[u8], base: VersionVector, if_match: Option<String>) -> Op {
    Op::Delete {
        fingerprints: vec![hex::encode_upper(fpr)],
        bases: vec![base],
        if_match,
        reason: "GDPR request".into(),
    }
}

fn set(n: &mut Node, p: Policies) {
    assert_eq!(
        n.apply(
            9,
            1,
            Op::SetPolicies {
                policies: p,
                expect: None
            }
        ),
        ApplyOutcome::PoliciesSet
    );
}

#[test]
fn a_stale_copy_cannot_resurrect_a_deleted_certificate() {
    let mut n = Node::new();
    let (fpr, a, b) = two_versions();
    n.apply(1, 10, submit(&a, VersionVector::default()));
    let before_delete = n.version(&fpr);
    assert!(matches!(
        n.apply(1, 20, delete(&fpr, before_delete.clone(), None)),
        ApplyOutcome::Deleted { .. }
    ));
    assert!(n.store.get_cert(&fpr).unwrap().is_none());
    // Node 2 had not seen the delete when it validated this upload.
    let o = n.apply(2, 21, submit(&b, before_delete));
    let ApplyOutcome::Conflict { id, status, .. } = o else {
        panic!("{o:?}")
    };
    assert_eq!(status, "open");
    assert!(n.store.get_cert(&fpr).unwrap().is_none(), "still deleted");
    let c = records::read_conflict(&n.store, id).unwrap().unwrap();
    assert_eq!(c.kind, "add_after_delete");
    assert!(
        c.current.cert.is_none(),
        "the current side is the tombstone"
    );
    // Someone who saw the delete may upload it again deliberately.
    let tomb = n.version(&fpr);
    assert!(matches!(
        n.apply(2, 22, submit(&b, tomb)),
        ApplyOutcome::New { .. }
    ));
}

#[test]
fn if_match_guards_admin_writes_and_reject_refuses_stale_ones() {
    let mut n = Node::new();
    let (fpr, a, b) = two_versions();
    n.apply(1, 10, submit(&a, VersionVector::default()));
    let v = n.version(&fpr);
    let o = n.apply(1, 11, delete(&fpr, v.clone(), Some("\"stale\"".into())));
    assert!(
        matches!(o, ApplyOutcome::PreconditionFailed { .. }),
        "{o:?}"
    );
    assert!(n.store.get_cert(&fpr).unwrap().is_some());
    set(
        &mut n,
        Policies {
            add: Policy::Reject,
            ..Policies::default()
        },
    );
    let o = n.apply(2, 12, submit(&b, VersionVector::default()));
    assert_eq!(
        o,
        ApplyOutcome::Stale {
            fingerprint: hex::encode_upper(&fpr),
            current: v.etag()
        }
    );
    let o = n.apply(1, 13, delete(&fpr, v.clone(), Some(v.etag())));
    assert!(matches!(o, ApplyOutcome::Deleted { .. }), "{o:?}");
}

#[test]
fn the_proposers_merge_stores_exactly_what_merging_in_apply_stores() {
    let (fpr, a, b) = two_versions();
    let (mut with, mut without) = (Node::new(), Node::new());
    for (time, cert) in [(10, &a), (11, &b), (12, &a)] {
        let base = with.store.get_cert(&fpr).unwrap();
        let index = base.as_ref().map(|r| r.updated_index);
        let version = with.version(&fpr);
        let o1 = with.apply(
            1,
            time,
            submit_prepared(cert, version.clone(), base.as_ref(), index, time),
        );
        let o2 = without.apply(1, time, submit(cert, version));
        assert_eq!(o1, o2);
    }
    assert_eq!(with.uids(&fpr).len(), 2);
    let (r1, r2) = (
        with.store.get_cert(&fpr).unwrap().unwrap(),
        without.store.get_cert(&fpr).unwrap().unwrap(),
    );
    assert_eq!(r1.cert, r2.cert);
    assert_eq!(r1.summary, r2.summary);
    assert_eq!(r1.terms, r2.terms);
    assert_eq!(r1.version, r2.version);
}

#[test]
fn apply_uses_the_proposers_merge_only_for_the_record_it_merged_into() {
    let (fpr, a, b) = two_versions();
    let mut n = Node::new();
    n.apply(1, 10, submit(&a, VersionVector::default()));
    let stored = n.store.get_cert(&fpr).unwrap().unwrap();
    let v = n.version(&fpr);
    // `b` merged into nothing, but claimed as merged into a record written at another index:
    // apply ignores it and merges into what it holds (both user ids).
    n.apply(
        1,
        11,
        submit_prepared(&b, v.clone(), None, Some(stored.updated_index + 5), 11),
    );
    assert_eq!(n.uids(&fpr).len(), 2);
    // The same claim naming the record's real index is taken as is: proof that apply used it
    // rather than merging (which would have kept both user ids).
    let mut m = Node::new();
    m.apply(1, 10, submit(&a, VersionVector::default()));
    m.apply(
        1,
        11,
        submit_prepared(&b, v, None, Some(stored.updated_index), 11),
    );
    assert_eq!(
        m.uids(&fpr),
        vec!["Alice Work <alice@work.example>".to_string()]
    );
}

#[test]
fn apply_is_deterministic_and_audited() {
    let (fpr, a, b) = two_versions();
    let run = || {
        let mut n = Node::new();
        n.apply(1, 10, submit(&a, VersionVector::default()));
        n.apply(2, 11, submit(&b, VersionVector::default()));
        n.apply(1, 12, delete(&fpr, VersionVector::default(), None));
        let mut snap = Vec::new();
        n.store.snapshot_write(&mut snap).unwrap();
        (n, snap)
    };
    let (n1, s1) = run();
    let (_n2, s2) = run();
    assert_eq!(s1, s2, "same log, same bytes");
    let audit = records::scan_audit(&n1.store, Default::default(), 100).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, vec!["add", "add", "delete"]);
    assert_eq!(audit[1].actor, "test 2");
    assert!(audit[1].outcome.contains("conflict"), "{:?}", audit[1]);
}

#[test]
fn audit_retention_keeps_the_recent_entries() {
    let mut n = Node::new();
    set(
        &mut n,
        Policies {
            audit_keep: 3,
            ..Policies::default()
        },
    );
    for i in 0..8 {
        let (_, a, _) = two_versions();
        n.apply(1, 10 + i, submit(&a, VersionVector::default()));
    }
    let audit = records::scan_audit(&n.store, Default::default(), 100).unwrap();
    let indexes: Vec<u64> = audit.iter().map(|e| e.index).collect();
    assert_eq!(indexes, vec![7, 8, 9], "the last three indexes stay");
}

#[test]
fn routing_changes_are_stored_audited_and_invalid_or_stale_ones_rejected() {
    use crate::raft::routing::{Consistency, Routing};
    let mut n = Node::new();
    assert_eq!(records::read_routing(&n.store).unwrap(), Routing::default());
    let mut r = Routing {
        default_consistency: Consistency::Linearizable,
        learners_serve_reads: false,
        ..Routing::default()
    };
    r.weights.insert("n2".into(), 0);
    let o = n.apply(
        1,
        10,
        Op::SetRouting {
            routing: r.clone(),
            expect: Some(Routing::default()),
        },
    );
    assert_eq!(o, ApplyOutcome::RoutingSet);
    assert_eq!(records::read_routing(&n.store).unwrap(), r);
    let mut bad = r.clone();
    bad.weights.insert("n3".into(), 300);
    let o = n.apply(
        1,
        11,
        Op::SetRouting {
            routing: bad,
            expect: None,
        },
    );
    assert!(matches!(o, ApplyOutcome::Rejected { .. }), "{o:?}");
    assert_eq!(records::read_routing(&n.store).unwrap(), r, "unchanged");
    // A change based on settings no longer in force (read before the first change) is not
    // applied: it would undo the first.
    let stale = Routing {
        learners_serve_reads: false,
        ..Routing::default()
    };
    let o = n.apply(
        2,
        12,
        Op::SetRouting {
            routing: stale.clone(),
            expect: Some(Routing::default()),
        },
    );
    assert_eq!(
        o,
        ApplyOutcome::Rejected {
            fingerprint: String::new(),
            reason: crate::raft::command::SETTINGS_CHANGED.into()
        }
    );
    assert_eq!(records::read_routing(&n.store).unwrap(), r, "unchanged");
    let policies = Policies {
        add: Policy::Reject,
        ..Policies::default()
    };
    let o = n.apply(
        2,
        13,
        Op::SetPolicies {
            policies,
            expect: Some(Policies {
                add: Policy::Manual,
                ..Policies::default()
            }),
        },
    );
    assert!(matches!(o, ApplyOutcome::Rejected { .. }), "{o:?}");
    assert_eq!(
        records::read_policies(&n.store).unwrap(),
        Policies::default()
    );
    let audit = records::scan_audit(&n.store, Default::default(), 100).unwrap();
    let lines: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[..3].iter().all(|(a, _)| *a == "routing"), "{lines:?}");
    assert!(lines[0].1.contains("Linearizable"), "{lines:?}");
    assert!(lines[1].1.starts_with("rejected: "), "{lines:?}");
}

#[test]
fn a_retried_request_is_not_applied_again_and_gets_the_first_answer() {
    let mut n = Node::new();
    let (fpr, a, _) = two_versions();
    let cmd = |request_id: u128, op: Op| {
        Command::V1(CommandV1 {
            request_id,
            time: 10,
            op,
            origin: 1,
            actor: "test".into(),
            signed: None,
        })
    };
    let apply = |n: &Node, index: u64, c: &Command| {
        let mut b = n.store.begin_apply();
        let r = apply_command(&mut b, c, index).unwrap();
        b.commit().unwrap();
        r.outcomes
    };
    let upload = cmd(77, submit(&a, VersionVector::default()));
    let first = apply(&n, 1, &upload);
    assert!(
        matches!(first.as_slice(), [ApplyOutcome::New { .. }]),
        "{first:?}"
    );
    let v1 = n.version(&fpr);
    // The same request again (a retry after a lost reply): "new", as the first time, where
    // applying it again would have said "unchanged"; the version did not move.
    assert_eq!(apply(&n, 2, &upload), first);
    assert_eq!(n.version(&fpr), v1);
    // A second request with the same content is applied, and says so.
    let again = apply(&n, 3, &cmd(78, submit(&a, v1.clone())));
    assert!(
        matches!(again.as_slice(), [ApplyOutcome::Unchanged { .. }]),
        "{again:?}"
    );
    // Two copies in one batch: the second gets the first's answer.
    let delete = cmd(
        79,
        Op::Delete {
            fingerprints: vec![hex::encode_upper(&fpr)],
            bases: vec![v1],
            if_match: None,
            reason: String::new(),
        },
    );
    let mut b = n.store.begin_apply();
    let one = apply_command(&mut b, &delete, 4).unwrap();
    let two = apply_command(&mut b, &delete, 5).unwrap();
    b.commit().unwrap();
    assert!(
        matches!(one.outcomes.as_slice(), [ApplyOutcome::Deleted { .. }]),
        "{one:?}"
    );
    assert_eq!(two, one);
    // A large answer (a bulk request: here 40 deletes of unknown keys) is kept too.
    let bulk = cmd(
        80,
        Op::Delete {
            fingerprints: (0..40u8).map(|i| hex::encode_upper([i; 20])).collect(),
            bases: vec![VersionVector::default(); 40],
            if_match: None,
            reason: String::new(),
        },
    );
    let first = apply(&n, 6, &bulk);
    let size = crate::raft::codec::encode(&Response {
        outcomes: first.clone(),
    })
    .unwrap()
    .len();
    assert!(
        size > crate::store::ANSWER_INLINE_MAX,
        "{size} bytes: not a large answer"
    );
    assert_eq!(
        apply(&n, 7, &bulk),
        first,
        "the retry gets the first answer"
    );
    n.index = 7;
}

/// Under last-writer-wins, a replace proposed before a delete that was applied first does not
/// bring the certificate back; one proposed after the delete does.
#[test]
fn a_last_writer_wins_replace_older_than_a_delete_stays_deleted() {
    let mut n = Node::new();
    set(
        &mut n,
        Policies {
            replace: Policy::LastWriterWins,
            ..Policies::default()
        },
    );
    let (fpr, a, _) = two_versions();
    n.apply(1, 50, submit(&a, VersionVector::default()));
    let seen = n.version(&fpr);
    let replace = |base: VersionVector| Op::Replace {
        cert: a.clone(),
        base,
        if_match: None,
        limits: pgp::Limits::default(),
    };
    // The delete (time 101) is applied before the replace proposed earlier (time 100).
    n.apply(3, 101, delete(&fpr, seen.clone(), None));
    assert!(n.store.get_cert(&fpr).unwrap().is_none());
    let o = n.apply(2, 100, replace(seen.clone()));
    assert!(matches!(o, ApplyOutcome::Conflict { .. }), "{o:?}");
    assert!(
        n.store.get_cert(&fpr).unwrap().is_none(),
        "the later delete stands"
    );
    // A replace proposed after the delete (time 102), from the same stale base, wins.
    let o = n.apply(2, 102, replace(seen));
    assert!(matches!(o, ApplyOutcome::Conflict { .. }), "{o:?}");
    assert!(
        n.store.get_cert(&fpr).unwrap().is_some(),
        "the later replace wins"
    );
}

#[path = "apply_conflict_tests.rs"]
mod conflicts;
