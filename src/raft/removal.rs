//! A removed member learns that it was removed.
//!
//! openraft stops replicating to a node as soon as the leader appends the membership that drops
//! it, so the removed node often never sees that membership and would go on believing it is a
//! member. Two paths tell it:
//! - the leader's notice: the leader that committed a removal ([`Keyserver::leave`], used by
//!   `POST /cluster/leave` and by [`super::auto_remove`]) calls the former member through
//!   [`LeaderForwarder::removed`] from a task of its own ([`Keyserver::notify_removed`]: a short
//!   deadline, a few attempts, best effort; the caller does not wait). The receiver checks the
//!   notice in [`Keyserver::accept_removal_notice`]: it must name this node's id and, with mTLS,
//!   come from the certificate of the member it claims to be from;
//! - the node's own view: when the membership it applied no longer lists it (`node` checks);
//! - asking the others: a member that was down or cut off when it was removed gets neither,
//!   so every member asks the others every [`CHECK_EVERY`] ([`watch_membership`]) whether a
//!   membership they committed after the one it applied no longer lists it. One answer
//!   settles it; the channel is authenticated like every node-to-node call.
//!
//! Either way [`Keyserver::mark_removed`] records it once and logs one warning. From then on
//! writes answer [`RaftError::Removed`] (503 with the reason), `/ready` answers 503 with the
//! same line and `/cluster/status` shows `"removed": true`. Nothing is wiped: the operator
//! stops the process and, to bring it back, wipes its data directory and joins it again (ids
//! are never reused, so a notice about an id can never concern a later member).
//!
//! Depends on the facade ([`Keyserver`], [`super::RaftNode`]) and the [`LeaderForwarder`] seam
//! only; never on `rpc` or `api`.
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use super::error::RaftError;
use super::forward::LeaderForwarder;
use super::keys::Keyserver;
use super::types::{KeyraftNode, NodeId};

/// Deadline of one notice.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// Notices sent to one removed member before giving up.
const ATTEMPTS: u32 = 3;
/// How often a member asks another whether it is still a member.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Deadline of one such question.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The reason sent when nothing more specific was recorded.
const DEFAULT_REASON: &str = "POST /cluster/leave";

/// Who removed this node, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// The member (the leader) that removed this node, when known.
    pub by: Option<NodeId>,
    /// One line: why.
    pub reason: String,
}

impl Removal {
    /// The one-line reason `/ready` and refused writes answer with.
    pub fn line(&self) -> String {
        match self.by {
            Some(by) => format!("removed from the cluster by node {by} ({})", self.reason),
            None => format!("removed from the cluster ({})", self.reason),
        }
    }
}

/// Per node: whether it was removed, and (on the leader) reasons recorded for removals it is
/// about to make.
#[derive(Debug, Default)]
pub struct RemovalState {
    removed: OnceLock<Removal>,
    reasons: Mutex<BTreeMap<NodeId, String>>,
}

impl Keyserver {
    /// Who removed this node and why, once it knows it was removed.
    pub fn removal(&self) -> Option<&Removal> {
        self.removal_state().removed.get()
    }

    /// Record that this node was removed (only the first call counts; it logs one warning).
    pub fn mark_removed(&self, by: Option<NodeId>, reason: &str) {
        let r = Removal {
            by,
            reason: reason.replace(['\r', '\n'], " "),
        };
        if self.removal_state().removed.set(r.clone()).is_ok() {
            tracing::warn!(
                by = ?r.by,
                "{}: this node takes no more writes and /ready answers 503; its data is kept. \
                 Stop it; to bring it back, wipe its data directory and join it again",
                r.line()
            );
        }
    }

    /// Remember why member `id` is being removed, for the notice the leader sends it.
    pub fn note_removal_reason(&self, id: NodeId, reason: String) {
        let mut reasons = self.removal_state().reasons.lock().expect("not poisoned");
        reasons.insert(id, reason);
    }

    fn take_removal_reason(&self, id: NodeId) -> String {
        let mut reasons = self.removal_state().reasons.lock().expect("not poisoned");
        reasons
            .remove(&id)
            .unwrap_or_else(|| DEFAULT_REASON.to_string())
    }

    /// Called on the leader right after it committed the removal of member `id` (at `node`):
    /// tell it, from a task of its own, with the reason noted for it (if any). Does nothing
    /// without a forwarder (a single-node cluster has nobody to tell).
    pub(super) fn notify_removed(&self, id: NodeId, node: KeyraftNode) {
        let why = self.take_removal_reason(id);
        let Some(fwd) = self.forwarder_arc() else {
            return;
        };
        let by = self.raft().id();
        tracing::info!(node_id = id, name = %node.name, "telling the removed member: {why}");
        tokio::spawn(async move { notify(fwd.as_ref(), id, &node, by, &why).await });
    }

    /// A notice from member `by` that it removed member `target`. Accepted when `target` is
    /// this node's id, `by` is a member this node knows and, with mTLS (`caller_names` set),
    /// the caller's certificate names that member. Ids are never reused, so a notice for this
    /// id stays true; a removal that this node has not applied yet is expected.
    pub fn accept_removal_notice(
        &self,
        target: NodeId,
        by: NodeId,
        reason: &str,
        caller_names: Option<&[String]>,
    ) -> Result<(), RaftError> {
        let me = self.raft().id();
        if target != me {
            return Err(RaftError::Refused(format!(
                "this is node {me}, not node {target}"
            )));
        }
        let members = self.raft().members();
        let Some(sender) = members.iter().find(|m| m.id == by) else {
            return Err(RaftError::Refused(format!(
                "node {by} is not a member this node knows"
            )));
        };
        if let Some(names) = caller_names {
            if !names.contains(&sender.node.name) {
                return Err(RaftError::Refused(format!(
                    "the caller's certificate names {names:?}, not member {by} ({:?})",
                    sender.node.name
                )));
            }
        }
        self.mark_removed(Some(by), reason);
        Ok(())
    }
}

impl Keyserver {
    /// Ask the other members, in id order until one answers, whether a membership it committed
    /// after the one this node applied no longer lists this node; if so, mark this node
    /// removed. Does nothing on a node that is not a member in its own view (a joiner not yet
    /// admitted) or that has nobody to ask.
    pub async fn check_still_member(&self) {
        let Some(fwd) = self.forwarder_arc() else {
            return;
        };
        let raft = self.raft();
        let me = raft.id();
        let members = raft.members();
        if !members.iter().any(|m| m.id == me) {
            return;
        }
        let since = raft.applied_membership_index();
        for m in members.iter().filter(|m| m.id != me) {
            let answer =
                tokio::time::timeout(CHECK_TIMEOUT, fwd.still_member(&m.node, me, since)).await;
            match answer {
                Ok(Ok((true, _))) => return,
                Ok(Ok((false, at))) => {
                    self.mark_removed(
                        Some(m.id),
                        &format!(
                            "the membership it committed at log index {at} no longer lists \
                             this node; this node had applied up to index {since}"
                        ),
                    );
                    return;
                }
                Ok(Err(_)) | Err(_) => continue,
            }
        }
    }
}

/// Every [`CHECK_EVERY`], ask another member whether this node is still a member, until this
/// node knows it was removed.
pub async fn watch_membership(keys: Keyserver) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if keys.removal().is_some() || keys.has_left() {
            return;
        }
        keys.check_still_member().await;
    }
}

/// Tell `id` at `node` that `by` removed it: a few attempts with a short deadline each.
async fn notify(fwd: &dyn LeaderForwarder, id: NodeId, node: &KeyraftNode, by: NodeId, why: &str) {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let call = fwd.removed(node, id, by, why, NOTICE_TIMEOUT);
        match tokio::time::timeout(NOTICE_TIMEOUT, call).await {
            Ok(Ok(())) => {
                tracing::info!(node_id = id, name = %node.name, "told the removed member it was removed");
                return;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("no answer within {NOTICE_TIMEOUT:?}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    }
    tracing::info!(node_id = id, name = %node.name,
        "could not tell the removed member it was removed (it may be down): {last}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notice_is_accepted_only_for_this_id_from_a_member_it_names_then_writes_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let me = KeyraftNode {
            name: "n1".into(),
            ..KeyraftNode::default()
        };
        let raft = crate::raft::RaftNode::start(store.clone(), 1, me, Default::default())
            .await
            .unwrap();
        raft.initialize_if_fresh().await.unwrap();
        while !raft.has_leader_and_applied() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keys = Keyserver::new(raft.clone(), store, 1);
        let refused = |r: Result<(), RaftError>| matches!(r, Err(RaftError::Refused(_)));
        assert!(
            refused(keys.accept_removal_notice(2, 1, "x", None)),
            "another id"
        );
        assert!(
            refused(keys.accept_removal_notice(1, 9, "x", None)),
            "unknown sender"
        );
        let wrong = ["n2".to_string()];
        assert!(
            refused(keys.accept_removal_notice(1, 1, "x", Some(&wrong))),
            "wrong cert"
        );
        assert!(keys.removal().is_none());
        let right = ["n1".to_string()];
        keys.accept_removal_notice(1, 1, "POST /cluster/leave", Some(&right))
            .unwrap();
        keys.mark_removed(Some(5), "only the first one counts");
        let line = "removed from the cluster by node 1 (POST /cluster/leave)";
        assert_eq!(keys.removal().unwrap().line(), line);
        let write = keys.propose(crate::raft::Op::Checkpoint, "test").await;
        assert_eq!(write.unwrap_err(), RaftError::Removed(line.into()));
        raft.shutdown().await;
    }

    #[test]
    fn the_reason_line_names_the_remover() {
        let r = Removal {
            by: Some(7),
            reason: "auto-remove".into(),
        };
        assert_eq!(r.line(), "removed from the cluster by node 7 (auto-remove)");
        let r = Removal {
            by: None,
            reason: "x".into(),
        };
        assert_eq!(r.line(), "removed from the cluster (x)");
    }
}
