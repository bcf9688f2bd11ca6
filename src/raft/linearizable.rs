//! Linearizable reads on any member: [`Keyserver::ensure_linearizable`].
//!
//! On the leader, openraft's ReadIndex: the leader confirms with a quorum that it still leads
//! and waits until it has applied everything committed before the call. On a follower or a
//! learner (Raft thesis §6.4, "follower reads"): ask the leader, through the
//! [`super::LeaderForwarder`], for its read index, then wait until this replica has applied
//! that index. Either way a read of the local replica afterwards sees every write acknowledged
//! before the call. A node without a forwarder (a single node, tests) answers only as leader.
use super::keys::Keyserver;
use super::RaftError;

impl Keyserver {
    /// Wait until a read of this node's replica is linearizable (see the module docs). Fails
    /// with an unavailable error (HTTP 503) when no leader is known, the leader cannot confirm
    /// its leadership, or this replica does not catch up within the request timeout.
    pub async fn ensure_linearizable(&self) -> Result<(), RaftError> {
        let raft = self.raft();
        let fwd = match (raft.ensure_linearizable().await, self.forwarder()) {
            (Err(RaftError::NotLeader { .. }), Some(fwd)) => fwd,
            (other, _) => return other,
        };
        let leader = raft
            .leader()
            .filter(|l| l.id != raft.id())
            .ok_or(RaftError::NotLeader { leader: None })?;
        let index = fwd.read_index(&leader.node).await.map_err(|e| {
            RaftError::NoQuorum(format!("read index from leader {}: {e}", leader.id))
        })?;
        raft.wait_applied(index, raft.request_timeout()).await
    }
}
