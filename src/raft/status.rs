//! [`NodeStatus`]: a plain snapshot of this node's raft state, for `/cluster/status` and `/ready`.
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
}
