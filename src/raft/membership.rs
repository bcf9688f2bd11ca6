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
    /// Every id a membership change removed over the cluster's life: never admitted again.
    /// Read once this replica has applied the latest membership in its log (bounded by the
    /// request timeout), so an id just removed is never missing from both the membership and
    /// this set.
    pub async fn removed_ids(&self) -> Result<BTreeSet<NodeId>, RaftError> {
        let latest = self
            .openraft()
            .metrics()
            .borrow_watched()
            .membership_config
            .log_id()
            .map(|l| l.index);
        if let Some(index) = latest {
            self.wait_applied(index, self.request_timeout()).await?;
        }
        crate::raft::meta::sm_get::<crate::raft::meta::RemovedIdsKey>(self.local_store())
            .map(Option::unwrap_or_default)
            .map_err(|e| RaftError::Storage(e.to_string()))
    }

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

    /// Add `id` as a learner (leader only) and wait until it holds every entry up to the one
    /// that added it (by snapshot if needed), bounded by six times the request timeout.
    /// openraft's own "blocking" add counts a learner as caught up once it is within
    /// `replication_lag_threshold` (5,000) entries, even before it has answered at all; promoted
    /// that early, a second voter of a one-node cluster would stop every commit until it caught
    /// up, and a larger cluster would count on a voter that cannot vote yet.
    pub async fn add_learner(&self, id: NodeId, node: KeyraftNode) -> Result<(), RaftError> {
        let caught_up = async {
            let resp = self.openraft().add_learner(id, node, false).await?;
            self.holds_log_up_to(id, resp.log_id.index).await;
            Ok::<(), RaftError>(())
        };
        match tokio::time::timeout(self.request_timeout() * 6, caught_up).await {
            Ok(r) => r,
            Err(_) => Err(RaftError::Timeout(format!(
                "learner {id} did not catch up in time"
            ))),
        }
    }

    /// Wait (leader only), bounded like [`Self::add_learner`], until learner `id` holds this
    /// leader's log as it is now: a learner admitted earlier whose promotion is retried may
    /// still be installing a snapshot.
    pub async fn catch_up(&self, id: NodeId) -> Result<(), RaftError> {
        let target = self.status().last_log_index.unwrap_or(0);
        match tokio::time::timeout(self.request_timeout() * 6, self.holds_log_up_to(id, target))
            .await
        {
            Ok(()) => Ok(()),
            Err(_) => Err(RaftError::Timeout(format!(
                "learner {id} did not catch up in time"
            ))),
        }
    }

    /// Until this leader's replication to `id` has matched `target` (or this node stops
    /// leading: the promotion that follows then fails with "not the leader").
    async fn holds_log_up_to(&self, id: NodeId, target: u64) {
        let _ = self
            .openraft()
            .wait(None)
            .metrics(
                |m| {
                    m.replication.as_ref().is_none_or(|r| {
                        r.get(&id)
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|l| l.index >= target)
                    })
                },
                "learner holds the log up to the target",
            )
            .await;
    }

    /// Make `ids` voters (leader only). They must be learners already. Bounded like
    /// [`Self::change`].
    pub async fn promote(&self, ids: BTreeSet<NodeId>) -> Result<(), RaftError> {
        self.change(ChangeMembers::AddVoterIds(ids), "promotion")
            .await
    }

    /// Remove `ids` from the cluster (leader only): voters in one change (openraft drops a
    /// removed voter's record with it), learners in another. Bounded like [`Self::change`].
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<(), RaftError> {
        // Which of `ids` the current membership lists (as voters only, or at all).
        let listed = |voters_only: bool| -> BTreeSet<NodeId> {
            self.members()
                .iter()
                .filter(|m| (m.voter || !voters_only) && ids.contains(&m.id))
                .map(|m| m.id)
                .collect()
        };
        let voters = listed(true);
        if !voters.is_empty() {
            self.change(ChangeMembers::RemoveVoters(voters), "removal of voters")
                .await?;
        }
        let left = listed(false);
        if !left.is_empty() {
            self.change(ChangeMembers::RemoveNodes(left), "removal")
                .await?;
        }
        Ok(())
    }

    /// One membership change, first completing a joint configuration an earlier change left
    /// behind. openraft makes a change in two entries (joint, then uniform) from the future
    /// that proposed it; a leader change between them, or that future dropped, leaves the
    /// cluster joint until the next change.
    async fn change(
        &self,
        change: ChangeMembers<NodeId, KeyraftNode>,
        what: &str,
    ) -> Result<(), RaftError> {
        if self.status().joint {
            tracing::warn!(
                "the membership is joint (an earlier change stopped between its two steps): \
                 completing it first"
            );
            self.change_once(
                ChangeMembers::AddVoterIds(BTreeSet::new()),
                "completing an earlier change",
            )
            .await?;
        }
        self.change_once(change, what).await
    }

    /// One `change_membership`, run to its end in a task of its own and waited for at most the
    /// request timeout: openraft waits for a quorum of both the old and the new voter set
    /// without a deadline, so a change proposed while a quorum is missing would otherwise hang
    /// its caller (and every change queued behind it). On timeout the change goes on and may
    /// still commit, both of its steps, once a quorum answers.
    async fn change_once(
        &self,
        change: ChangeMembers<NodeId, KeyraftNode>,
        what: &str,
    ) -> Result<(), RaftError> {
        let raft = self.openraft().clone();
        let task = tokio::spawn(async move { raft.change_membership(change, false).await });
        let limit = self.request_timeout();
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => {
                r?;
                Ok(())
            }
            Ok(Err(e)) => Err(RaftError::Fatal(format!("{what}: {e}"))),
            Err(_) => Err(RaftError::Timeout(format!(
                "{what} not committed within {} s (is a quorum of voters reachable?); it goes on \
                 and may still complete",
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
