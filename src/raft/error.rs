//! [`RaftError`]: everything the raft facade can fail with, in terms upper layers can act on.
//!
//! The API layer maps these to HTTP statuses in one place (e.g. `NotLeader`/`NoQuorum`/`Timeout`
//! → 503 with `Retry-After`, `Storage`/`Fatal` → 500); the rpc layer forwards writes on
//! `NotLeader`.
//! openraft's own error types are converted here and never leave the raft layer.
use openraft::errors::{ClientWriteError, Fatal, LinearizableReadError};
use openraft::metrics::WaitError;

use crate::raft::types::{NodeId, TypeConfig};

/// An error from the raft facade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// This node is not the leader; `leader` is the current leader if known (forward there).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The proposal was dropped by a leader change: it may or may not commit; retry it with the
    /// same request id (apply deduplicates).
    #[error("leader changed while proposing (new leader: {leader:?}); outcome unknown")]
    LeaderChanged { leader: Option<NodeId> },
    /// The leader could not confirm its leadership with a quorum (e.g. peers are down).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The operation did not finish in time; for writes the outcome is unknown.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The cluster has not been initialised yet (no membership).
    #[error("cluster not initialised")]
    NotInitialized,
    /// A membership change was refused (another change in progress, unknown node, ...).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// A join or leave was refused: wrong cluster secret, a node that is not who it claims to
    /// be, or a change that would break the cluster. Not retryable.
    #[error("refused: {0}")]
    Refused(String),
    /// No member matches the given id or name.
    #[error("no such member: {0}")]
    UnknownMember(String),
    /// A peer message could not be decoded.
    #[error("bad message: {0}")]
    Codec(String),
    /// The settings are invalid (e.g. election timeout not above heartbeat).
    #[error("invalid raft settings: {0}")]
    InvalidSettings(String),
    /// Reading or writing the local store failed; the node stops serving.
    #[error("storage error: {0}")]
    Storage(String),
    /// The raft node is shutting down or has stopped.
    #[error("raft is shutting down")]
    ShuttingDown,
    /// Another member removed this node from the cluster: it takes no more writes (the line
    /// says who removed it and why).
    #[error("{0}")]
    Removed(String),
    /// This node is still joining the cluster: its replica is empty or partial.
    #[error("this node is still joining the cluster; ask another member")]
    Joining,
    /// This node is replacing its replica with a snapshot: what it holds is partial.
    #[error("this node is installing a snapshot; retry, or ask another member")]
    Installing,
    /// An unrecoverable internal error (e.g. the raft task panicked).
    #[error("fatal raft error: {0}")]
    Fatal(String),
}

impl RaftError {
    /// True when the cluster cannot serve the request right now but may soon (no leader, no
    /// quorum, timeout, shutting down): HTTP 503 with `Retry-After`. False for local failures.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RaftError::NotLeader { .. }
                | RaftError::LeaderChanged { .. }
                | RaftError::NoQuorum(_)
                | RaftError::Timeout(_)
                | RaftError::NotInitialized
                | RaftError::ShuttingDown
                | RaftError::Removed(_)
                | RaftError::Joining
                | RaftError::Installing
        )
    }
}

impl From<Fatal<TypeConfig>> for RaftError {
    fn from(e: Fatal<TypeConfig>) -> Self {
        match e {
            Fatal::StorageError(s) => RaftError::Storage(s.to_string()),
            Fatal::Stopped => RaftError::ShuttingDown,
            other => RaftError::Fatal(other.to_string()),
        }
    }
}

impl From<openraft::errors::RaftError<TypeConfig>> for RaftError {
    fn from(e: openraft::errors::RaftError<TypeConfig>) -> Self {
        e.unwrap_fatal().into()
    }
}

impl From<openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>> for RaftError {
    fn from(e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            openraft::errors::RaftError::Fatal(f) => f.into(),
            openraft::errors::RaftError::APIError(api) => match api {
                ClientWriteError::ForwardToLeader(f) => RaftError::NotLeader {
                    leader: f.leader_id,
                },
                ClientWriteError::LogEntryDiscarded(f) => RaftError::LeaderChanged {
                    leader: f.leader_id,
                },
                ClientWriteError::ChangeMembershipError(m) => RaftError::Membership(m.to_string()),
                other => RaftError::Fatal(other.to_string()),
            },
        }
    }
}

impl From<openraft::errors::RaftError<TypeConfig, LinearizableReadError<TypeConfig>>>
    for RaftError
{
    fn from(e: openraft::errors::RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Self {
        match e {
            openraft::errors::RaftError::Fatal(f) => f.into(),
            openraft::errors::RaftError::APIError(api) => match api {
                LinearizableReadError::ForwardToLeader(f) => RaftError::NotLeader {
                    leader: f.leader_id,
                },
                LinearizableReadError::QuorumNotEnough(q) => RaftError::NoQuorum(q.to_string()),
            },
        }
    }
}

impl From<WaitError> for RaftError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout(..) => RaftError::Timeout(e.to_string()),
            _ => RaftError::ShuttingDown,
        }
    }
}
