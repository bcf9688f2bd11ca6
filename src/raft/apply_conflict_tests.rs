//! Apply-level tests of the conflict policies and of operator resolutions: races built from
//! stale bases (the helpers are the parent module's).
use super::*;

#[test]
fn concurrent_uploads_merge_and_the_race_is_recorded() {
    let mut n = Node::new();
    let (fpr, a, b) = two_versions();
    assert!(matches!(
        n.apply(1, 10, submit(&a, VersionVector::default())),
        ApplyOutcome::New { .. }
    ));
    let v1 = n.version(&fpr);
    assert_eq!(v1.get(1), 1);
    // Node 2 validated `b` before it had seen node 1's write: its base is empty.
    let o = n.apply(2, 11, submit(&b, VersionVector::default()));
    let ApplyOutcome::Conflict { id, status, .. } = o else {
        panic!("{o:?}")
    };
    assert_eq!(status, "resolved");
    assert_eq!(n.uids(&fpr).len(), 2, "merge keeps both user ids");
    let v2 = n.version(&fpr);
    assert_eq!(v2.compare(&v1), crate::store::Causality::After);
    assert_eq!(v2.get(2), 1);
    let c = records::read_conflict(&n.store, id).unwrap().unwrap();
    assert_eq!((c.kind.as_str(), c.policy), ("add", Policy::Merge));
    assert_eq!(c.current.origin, 1);
    assert_eq!(c.incoming.origin, 2);
    // A fresh write (base = current version) is no conflict.
    let o = n.apply(2, 12, submit(&a, v2.clone()));
    assert!(matches!(o, ApplyOutcome::Unchanged { .. }), "{o:?}");
}

/// A node with the `manual` policy for uploads, `a` stored, and `b` uploaded racing it (a stale
/// base): returns the node, the fingerprint, `b` and the upload's outcome.
fn manual_race() -> (Node, Vec<u8>, Vec<u8>, ApplyOutcome) {
    let mut n = Node::new();
    set(
        &mut n,
        Policies {
            add: Policy::Manual,
            ..Policies::default()
        },
    );
    let (fpr, a, b) = two_versions();
    n.apply(1, 10, submit(&a, VersionVector::default()));
    let o = n.apply(2, 11, submit(&b, VersionVector::default()));
    (n, fpr, b, o)
}

#[test]
fn manual_keeps_the_stored_version_until_an_operator_resolves() {
    let (mut n, fpr, _, o) = manual_race();
    let ApplyOutcome::Conflict { id, status, .. } = o else {
        panic!("{o:?}")
    };
    assert_eq!(status, "open");
    assert_eq!(
        n.uids(&fpr),
        vec!["Alice <alice@example.org>"],
        "stored stays"
    );
    let o = n.apply(
        3,
        12,
        Op::Resolve {
            id,
            choose: "merge".into(),
            note: "both are hers".into(),
            limits: None,
        },
    );
    assert!(
        matches!(o, ApplyOutcome::Resolved { id: i, .. } if i == id),
        "{o:?}"
    );
    assert_eq!(n.uids(&fpr).len(), 2);
    let c = records::read_conflict(&n.store, id).unwrap().unwrap();
    assert_eq!(c.status, "resolved");
    assert_eq!(c.resolution.unwrap().note, "both are hers");
    let again = n.apply(
        3,
        13,
        Op::Resolve {
            id,
            choose: "current".into(),
            note: String::new(),
            limits: None,
        },
    );
    assert!(
        matches!(again, ApplyOutcome::Rejected { .. }),
        "only open conflicts resolve"
    );
}

#[test]
fn a_delete_racing_an_update_wins_by_default_and_records_the_update() {
    let mut n = Node::new();
    let (fpr, a, b) = two_versions();
    n.apply(1, 10, submit(&a, VersionVector::default()));
    let seen_by_admin = n.version(&fpr);
    n.apply(2, 11, submit(&b, seen_by_admin.clone()));
    let o = n.apply(1, 12, delete(&fpr, seen_by_admin, None));
    let ApplyOutcome::Conflict {
        id, status, policy, ..
    } = o
    else {
        panic!("{o:?}")
    };
    assert_eq!(
        (status.as_str(), policy),
        ("resolved", Policy::LastWriterWins)
    );
    assert!(
        n.store.get_cert(&fpr).unwrap().is_none(),
        "the later delete wins"
    );
    let c = records::read_conflict(&n.store, id).unwrap().unwrap();
    assert!(
        c.current.cert.is_some(),
        "the update it overrode is kept in the record"
    );
}

#[test]
fn a_replace_racing_an_upload_waits_for_an_operator_by_default() {
    let mut n = Node::new();
    let (fpr, a, b) = two_versions();
    n.apply(1, 10, submit(&a, VersionVector::default()));
    let seen_by_admin = n.version(&fpr);
    // An upload lands between the administrator's read and the replace.
    n.apply(2, 11, submit(&b, seen_by_admin.clone()));
    let replace = |base: VersionVector| Op::Replace {
        cert: a.clone(),
        base,
        if_match: None,
        limits: pgp::Limits::default(),
    };
    let o = n.apply(1, 12, replace(seen_by_admin));
    let ApplyOutcome::Conflict { id, status, .. } = o else {
        panic!("{o:?}")
    };
    assert_eq!(status, "open");
    assert_eq!(n.uids(&fpr).len(), 2, "the upload is not dropped silently");
    let c = records::read_conflict(&n.store, id).unwrap().unwrap();
    assert_eq!(c.kind, "replace");
    n.apply(
        3,
        13,
        Op::Resolve {
            id,
            choose: "incoming".into(),
            note: String::new(),
            limits: None,
        },
    );
    assert_eq!(
        n.uids(&fpr),
        vec!["Alice <alice@example.org>"],
        "the replace wins when chosen"
    );
    // A replace based on the current version applies at once.
    let now = n.version(&fpr);
    let o = n.apply(1, 14, replace(now));
    assert!(matches!(o, ApplyOutcome::Replaced { .. }), "{o:?}");
}

fn resolve(id: u64, choose: &str, limits: Option<pgp::Limits>) -> Op {
    Op::Resolve {
        id,
        choose: choose.into(),
        note: String::new(),
        limits,
    }
}

#[test]
fn a_resolution_keeps_later_changes_and_merges_within_the_proposers_limits() {
    let (mut n, fpr, b, o) = manual_race();
    let ApplyOutcome::Conflict { id, .. } = o else {
        panic!("{o:?}")
    };
    // The proposer's limits apply: a merge over its max_cert_bytes is refused, the conflict
    // stays open.
    let tiny = pgp::Limits {
        max_cert_bytes: 64,
        ..pgp::Limits::default()
    };
    let o = n.apply(3, 12, resolve(id, "merge", Some(tiny)));
    assert!(matches!(o, ApplyOutcome::Rejected { .. }), "{o:?}");
    let open = |n: &Node| {
        records::read_conflict(&n.store, id)
            .unwrap()
            .unwrap()
            .status
    };
    assert_eq!(open(&n), "open");
    // A later, ordinary update (based on what is stored) changes the certificate.
    let now = n.version(&fpr);
    let o = n.apply(1, 13, submit(&b, now));
    assert!(matches!(o, ApplyOutcome::Updated { .. }), "{o:?}");
    assert_eq!(n.uids(&fpr).len(), 2);
    // `incoming` would throw that update away unseen: refused.
    let o = n.apply(3, 14, resolve(id, "incoming", None));
    let ApplyOutcome::Rejected { reason, .. } = &o else {
        panic!("{o:?}")
    };
    assert!(reason.contains("changed after conflict"), "{reason}");
    assert_eq!(n.uids(&fpr).len(), 2, "nothing lost");
    assert_eq!(open(&n), "open");
    let o = n.apply(3, 15, resolve(id, "merge", None));
    assert!(matches!(o, ApplyOutcome::Resolved { .. }), "{o:?}");
    assert_eq!(n.uids(&fpr).len(), 2);
}
