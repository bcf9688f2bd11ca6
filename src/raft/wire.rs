//! The messages raft exchanges with peers through a [`crate::raft::PeerTransport`].
//!
//! Requests are openraft's own message types encoded with [`crate::raft::codec`]; replies are a
//! [`Reply`], so a failure on the peer (its raft stopped, a storage error) comes back as a
//! message rather than as a transport error. Snapshots travel as a [`SnapshotHeader`] followed
//! by the raw snapshot bytes.
use serde::{Deserialize, Serialize};

use crate::raft::types::{SnapshotMeta, Vote};

/// A peer's answer: the openraft response, or why the peer could not produce one.
pub type Reply<T> = Result<T, String>;

/// What precedes the bytes of a streamed snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The sending leader's vote.
    pub vote: Vote,
    /// The snapshot's last log id and membership.
    pub meta: SnapshotMeta,
}
