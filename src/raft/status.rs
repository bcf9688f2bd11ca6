//! [`NodeStatus`]: a plain snapshot of this node's raft state, for `/cluster/status` and `/ready`.
use std::cmp::Reverse;
use std::collections::BTreeMap;

use openraft::Instant as _;

use serde::{Deserialize, Serialize};

use crate::raft::types::{NodeId, RaftMetrics};

/// This node's raft state as seen locally. Plain data: safe to serialise to JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub id: NodeId,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    /// The current term.
    pub current_term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry known committed on this node.
    pub committed_index: Option<u64>,
    /// Index of the last entry applied to the local state machine.
    pub applied_index: Option<u64>,
    /// Index of the last entry covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Voting members, ascending.
    pub voters: Vec<NodeId>,
    /// Non-voting members (catching up), ascending.
    pub learners: Vec<NodeId>,
    /// Whether the membership is joint: a change between its two steps (old and new voter
    /// sets both needed for a quorum; `voters` lists both).
    pub joint: bool,
    /// The vote this node holds, as openraft prints it (term, candidate, committed).
    pub vote: String,
    /// Index of the last log entry removed after a snapshot.
    pub purged_index: Option<u64>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// On the leader: the highest log index known replicated to each member.
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// On the leader: milliseconds since each member last acknowledged a heartbeat or an
    /// append (`None`: not since this node became leader).
    pub millis_since_heartbeat: BTreeMap<NodeId, Option<u64>>,
    /// Milliseconds since this node last accepted an append or heartbeat from a leader (`None`:
    /// not since this process started). Node-local: [`RaftNode::status`] fills it in.
    ///
    /// [`RaftNode::status`]: crate::raft::RaftNode::status
    #[serde(default)]
    pub millis_since_leader_heard: Option<u64>,
    /// How long a member other than the leader may go without hearing from it before it counts
    /// as cut off ([`LEADER_SILENT_MAX_MS`], or three heartbeat intervals if longer).
    #[serde(default)]
    pub leader_silent_after_ms: u64,
}

impl NodeStatus {
    /// Extract the status from openraft's metrics.
    pub fn from_metrics(m: &RaftMetrics) -> NodeStatus {
        let membership = m.membership_config.membership();
        let mut voters: Vec<NodeId> = membership.voter_ids().collect();
        voters.sort_unstable();
        voters.dedup();
        let mut learners: Vec<NodeId> = membership.learner_ids().collect();
        learners.sort_unstable();
        NodeStatus {
            id: m.id,
            state: format!("{:?}", m.state),
            current_term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            voters,
            learners,
            joint: membership.get_joint_config().len() > 1,
            vote: m.vote.to_string(),
            purged_index: m.purged.as_ref().map(|l| l.index),
            millis_since_quorum_ack: m
                .last_quorum_acked
                .as_ref()
                .map(|t| t.elapsed().as_millis() as u64),
            matched: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            millis_since_heartbeat: m
                .heartbeat
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|(id, t)| (*id, t.as_ref().map(|t| t.elapsed().as_millis() as u64)))
                        .collect()
                })
                .unwrap_or_default(),
            millis_since_leader_heard: None,
            leader_silent_after_ms: LEADER_SILENT_MAX_MS,
        }
    }

    /// Ready to serve: a leader is known and this replica has applied everything the cluster is
    /// known to have committed.
    pub fn is_ready(m: &RaftMetrics) -> bool {
        let applied = m.last_applied.as_ref().map(|l| l.index);
        let committed = m
            .cluster_committed
            .as_ref()
            .or(m.local_committed.as_ref())
            .map(|l| l.index);
        m.running_state.is_ok()
            && m.current_leader.is_some()
            && applied.is_some()
            && applied >= committed
    }

    /// On the leader: whether member `id` acknowledged this node within
    /// [`UNREACHABLE_AFTER_MS`]. The leader itself always counts.
    pub fn acked_recently(&self, id: NodeId) -> bool {
        id == self.id
            || self
                .millis_since_heartbeat
                .get(&id)
                .copied()
                .flatten()
                .is_some_and(|ms| ms < UNREACHABLE_AFTER_MS)
    }

    /// How many entries member `id` is behind this leader's log (`None`: nothing matched).
    fn lag(&self, id: NodeId) -> Option<u64> {
        let matched = self.matched.get(&id).copied().flatten()?;
        Some(self.last_log_index.unwrap_or(0).saturating_sub(matched))
    }

    /// Among `ids`, the one that acknowledged this leader recently and is replicated furthest
    /// (ties: the lowest id).
    fn best_of(&self, ids: impl Iterator<Item = NodeId>) -> Option<NodeId> {
        ids.filter(|id| *id != self.id && self.acked_recently(*id))
            .max_by_key(|id| (self.matched.get(id).copied().flatten(), Reverse(*id)))
    }

    /// On the leader: the learner to promote while there are fewer voters than wanted. Among
    /// the learners that acknowledged this leader within [`UNREACHABLE_AFTER_MS`] and are at
    /// most [`PROMOTE_MAX_LAG`] entries behind, the one replicated furthest (ties: the lowest
    /// id). `None` when no learner qualifies: a learner that is down or far behind would be a
    /// voter quorums wait for.
    pub fn learner_to_promote(&self) -> Option<NodeId> {
        let fit = |id: &NodeId| self.lag(*id).is_some_and(|l| l <= PROMOTE_MAX_LAG);
        self.best_of(self.learners.iter().copied().filter(fit))
    }

    /// On the leader: the voter to hand leadership to, chosen like
    /// [`Self::learner_to_promote`] but without the lag bound (openraft's transfer waits for the
    /// target to catch up).
    pub fn voter_to_hand_over_to(&self) -> Option<NodeId> {
        self.best_of(self.voters.iter().copied())
    }

    /// On the leader: whether the voters other than `id` have a majority that acknowledged
    /// this leader recently. openraft removes a voter through a joint configuration that needs
    /// a quorum of the remaining voters as well; without one the removal can never commit, and
    /// every write queued behind it waits with it.
    pub fn quorum_without(&self, id: NodeId) -> (usize, usize) {
        let rest: Vec<NodeId> = self.voters.iter().copied().filter(|v| *v != id).collect();
        let up = rest.iter().filter(|v| self.acked_recently(**v)).count();
        (up, rest.len())
    }

    /// A leader of several voters that no quorum acknowledged for [`QUORUM_ACK_MAX_MS`]: most
    /// likely cut off by a partition; its writes will time out and its reads may be stale.
    pub fn leader_cut_off(&self) -> bool {
        self.state == "Leader"
            && self.voters.len() > 1
            && self
                .millis_since_quorum_ack
                .is_none_or(|ms| ms > QUORUM_ACK_MAX_MS)
    }

    /// A member other than the leader that has not heard from a leader for
    /// [`Self::leader_silent_after_ms`], or not at all since it started: its replica may be
    /// behind what the cluster has acknowledged (cut off from the leader, or restarted and not
    /// yet caught up). A single-voter cluster's only member is its own leader and never silent.
    pub fn leader_silent(&self) -> bool {
        self.state != "Leader"
            && self
                .millis_since_leader_heard
                .is_none_or(|ms| ms > self.leader_silent_after_ms)
    }
}

/// Longest time a healthy follower or learner goes without hearing from the leader (heartbeats
/// come every 100 ms by default), unless three heartbeat intervals are longer.
pub const LEADER_SILENT_MAX_MS: u64 = 3_000;

/// A member that has not acknowledged the leader for this long counts as unreachable
/// (`/cluster/nodes`, and for promotion).
pub const UNREACHABLE_AFTER_MS: u64 = 3_000;

/// A learner further behind the leader's log than this many entries is not promoted yet.
pub const PROMOTE_MAX_LAG: u64 = 64;

/// Longest time since the last quorum acknowledgement a healthy leader may report.
pub const QUORUM_ACK_MAX_MS: u64 = 3_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader (id 1) of voters 1 and 2 with `learners`: (id, matched index, ms since ack).
    fn leader_with(learners: &[(NodeId, Option<u64>, Option<u64>)]) -> NodeStatus {
        NodeStatus {
            id: 1,
            state: "Leader".into(),
            current_term: 3,
            leader: Some(1),
            last_log_index: Some(100),
            committed_index: Some(100),
            applied_index: Some(100),
            snapshot_index: None,
            voters: vec![1, 2],
            learners: learners.iter().map(|l| l.0).collect(),
            joint: false,
            vote: String::new(),
            purged_index: None,
            millis_since_quorum_ack: Some(10),
            matched: learners.iter().map(|l| (l.0, l.1)).collect(),
            millis_since_heartbeat: learners.iter().map(|l| (l.0, l.2)).collect(),
            millis_since_leader_heard: None,
            leader_silent_after_ms: LEADER_SILENT_MAX_MS,
        }
    }

    #[test]
    fn a_follower_is_silent_until_it_hears_from_a_leader_and_again_after_the_bound() {
        let mut s = leader_with(&[]);
        assert!(!s.leader_silent(), "a leader never waits for itself");
        s.state = "Follower".into();
        s.leader = Some(2);
        assert!(
            s.leader_silent(),
            "restarted, a leader known, not heard yet"
        );
        s.millis_since_leader_heard = Some(120);
        assert!(!s.leader_silent());
        s.millis_since_leader_heard = Some(LEADER_SILENT_MAX_MS + 1);
        assert!(s.leader_silent(), "cut off from the leader");
        s.state = "Learner".into();
        assert!(s.leader_silent());
        s.millis_since_leader_heard = Some(5);
        assert!(!s.leader_silent());
        // A longer bound (slow heartbeats) is honoured.
        s.leader_silent_after_ms = 10_000;
        s.millis_since_leader_heard = Some(LEADER_SILENT_MAX_MS + 1);
        assert!(!s.leader_silent());
    }

    #[test]
    fn the_learner_promoted_is_reachable_caught_up_and_furthest_along() {
        // The lowest id is down (silent for 10 s): never it, however far it got before.
        let s = leader_with(&[
            (5, Some(100), Some(10_000)),
            (7, Some(90), Some(50)),
            (9, Some(99), Some(40)),
        ]);
        assert_eq!(s.learner_to_promote(), Some(9));
        // Equally far along: the lowest id.
        let s = leader_with(&[(9, Some(100), Some(40)), (7, Some(100), Some(50))]);
        assert_eq!(s.learner_to_promote(), Some(7));
        // Not heard from since this node leads, silent past the bound, more than
        // PROMOTE_MAX_LAG behind, or nothing matched yet: nobody.
        let s = leader_with(&[
            (5, Some(100), None),
            (7, Some(100), Some(UNREACHABLE_AFTER_MS)),
            (9, Some(100 - PROMOTE_MAX_LAG - 1), Some(10)),
            (11, None, Some(10)),
        ]);
        assert_eq!(s.learner_to_promote(), None);
        assert_eq!(leader_with(&[]).learner_to_promote(), None);
    }

    #[test]
    fn a_removal_needs_a_reachable_majority_of_the_voters_left() {
        // Voters 1 (the leader), 2, 3; 3 is down.
        let mut s = leader_with(&[]);
        s.voters = vec![1, 2, 3];
        s.millis_since_heartbeat = BTreeMap::from([(2, Some(20)), (3, Some(9_000))]);
        s.matched = BTreeMap::from([(2, Some(100)), (3, Some(60))]);
        // Removing the dead one leaves {1, 2}, both up; removing the live one leaves {1, 3}.
        assert_eq!(s.quorum_without(3), (2, 2));
        assert_eq!(s.quorum_without(2), (1, 2));
        // Leadership goes to the voter that is up, not to the lowest id.
        s.millis_since_heartbeat.insert(2, Some(9_000));
        s.millis_since_heartbeat.insert(3, Some(20));
        assert_eq!(s.voter_to_hand_over_to(), Some(3));
        s.millis_since_heartbeat.insert(3, None);
        assert_eq!(s.voter_to_hand_over_to(), None);
    }
}
