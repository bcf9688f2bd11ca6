//! Membership operations of the [`RaftNode`] facade: who is in the cluster, who leads, adding a
//! learner, promoting it to voter, removing a node. openraft's types stay inside this module.
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use serde::Serialize;

use super::types::{KeyraftNode, NodeId};
use super::{RaftError, RaftNode};

/// One member as the cluster's current membership records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Raft node id.
    pub id: NodeId,
    /// Name and addresses.
    pub node: KeyraftNode,
    /// Voter (true) or learner (false).
    pub voter: bool,
}

impl RaftNode {
    /// Every member of the current membership, ordered by id.
    pub fn members(&self) -> Vec<Member> {
        let m = self
            .openraft()
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let membership = m.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut out: Vec<Member> = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                node: node.clone(),
                voter: voters.contains(id),
            })
            .collect();
        out.sort_by_key(|m| m.id);
        out
    }

    /// The log index of the membership this node applied (0 before any), and whether it is
    /// committed (applied entries are).
    pub fn applied_membership_index(&self) -> u64 {
        let metrics = self.openraft().metrics().borrow_watched().clone();
        let index = metrics.membership_config.log_id().map_or(0, |l| l.index);
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        index.min(applied)
    }

    /// Whether member `id`, whose applied membership (at log index `since`) lists it, was
    /// removed by a later membership this node has applied; with that membership's index.
    /// `id` 0 (a caller that did not say) is never removed.
    pub fn removed_since(&self, id: NodeId, since: u64) -> (bool, u64) {
        let metrics = self.openraft().metrics().borrow_watched().clone();
        let Some(log_id) = metrics.membership_config.log_id() else {
            return (false, 0);
        };
        let applied = metrics
            .last_applied
            .is_some_and(|a| a.index >= log_id.index);
        let listed = metrics
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        let removed = id != 0 && applied && log_id.index > since && !listed;
        (removed, log_id.index)
    }

    /// The leader this node knows of, with its record.
    pub fn leader(&self) -> Option<Member> {
        let leader = self.status().leader?;
        self.members().into_iter().find(|m| m.id == leader)
    }

    /// Add `id` as a learner (leader only) and wait until it has caught up with the log
    /// (by snapshot if needed), bounded by the facade's request timeout.
    pub async fn add_learner(&self, id: NodeId, node: KeyraftNode) -> Result<(), RaftError> {
        let fut = self.openraft().add_learner(id, node, true);
        match tokio::time::timeout(self.request_timeout() * 6, fut).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => Err(RaftError::Timeout(format!(
                "learner {id} did not catch up in time"
            ))),
        }
    }

    /// Make `ids` voters (leader only). They must be learners already. Bounded like
    /// [`Self::change`].
    pub async fn promote(&self, ids: BTreeSet<NodeId>) -> Result<(), RaftError> {
        self.change(ChangeMembers::AddVoterIds(ids), "promotion")
            .await
    }

    /// Remove `ids` from the voters and from the cluster (leader only). Each of the two steps is
    /// bounded like [`Self::change`]; a timeout after the first leaves them learners, and
    /// removing them again finishes the job.
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<(), RaftError> {
        self.change(
            ChangeMembers::RemoveVoters(ids.clone()),
            "removal from the voters",
        )
        .await?;
        self.change(ChangeMembers::RemoveNodes(ids), "removal")
            .await
    }

    /// One membership change, bounded by the request timeout: openraft waits for a quorum of
    /// both the old and the new voter set without a deadline, so a change proposed while a
    /// quorum is missing would otherwise hang its caller (and every change queued behind it).
    /// On timeout the change may still commit later, once a quorum is back.
    async fn change(
        &self,
        change: ChangeMembers<NodeId, KeyraftNode>,
        what: &str,
    ) -> Result<(), RaftError> {
        let limit = self.request_timeout();
        match tokio::time::timeout(limit, self.openraft().change_membership(change, false)).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => Err(RaftError::Timeout(format!(
                "{what} not committed within {} s (is a quorum of voters reachable?); it may still complete",
                limit.as_secs()
            ))),
        }
    }

    /// Hand leadership to voter `to` (leader only) and wait, bounded by `timeout`, until this
    /// another leader is known.
    pub async fn transfer_leader(&self, to: NodeId, timeout: Duration) -> Result<(), RaftError> {
        self.openraft().trigger().transfer_leader(to).await?;
        let me = self.id();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.status().leader.is_none_or(|l| l == me) {
            if tokio::time::Instant::now() >= deadline {
                return Err(RaftError::Timeout(format!(
                    "leadership did not move to {to}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
