//! The openraft type configuration of keyraft, and the aliases the rest of the crate may name.
//!
//! All openraft generics are fixed here: application data is [`Command`], its result is
//! [`Response`], nodes are `u64` ids carrying a [`KeyraftNode`] address record. Snapshot data is
//! not part of the type config in openraft 0.10 (it moved to
//! `RaftStateMachine::SnapshotData`); keyraft uses a `tokio::fs::File` there, see
//! [`SnapshotData`].
//!
//! Upper layers should not need openraft at all: they use the [`crate::raft`] facade. The aliases
//! below exist for the raft layer itself and for tests.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::raft::command::Response;
use crate::raft::command::{Command, Op};

openraft::declare_raft_types!(
    /// keyraft's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = KeyraftNode,
);

/// What the cluster membership records about each node: its name and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyraftNode {
    /// Human-readable node name (from the config file).
    pub name: String,
    /// `host:port` of the node-to-node gRPC endpoint.
    pub raft_addr: String,
    /// Base URL or `host:port` of the public HTTP (HKP) endpoint.
    pub http_addr: String,
}

/// A node id. Ids are never reused: a wiped node rejoins with a new id.
pub type NodeId = u64;

/// The bytes of a snapshot, as handed between openraft, the state machine and the transport.
///
/// A file rather than `Cursor<Vec<u8>>`: a keyserver snapshot holds every certificate, which can
/// be gigabytes, so it is never held in memory. Each handle is opened fresh at offset 0 for its
/// reader; a transport streams it in chunks and the receiver hands back any readable file (it is
/// rewound and copied into `<data_dir>/snapshots/` before installation).
pub type SnapshotData = tokio::fs::File;

/// A log id (leader id + index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote (term + candidate, committed or not).
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A raft log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A membership config plus the id of the log entry that introduced it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A cluster configuration (voters, learners, their records).
pub type Membership = openraft::Membership<NodeId, KeyraftNode>;
/// Metadata of a snapshot: last included log id and membership.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: metadata plus [`SnapshotData`].
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// Raft metrics as published by openraft.
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// openraft requires application data to be `Display` (for its logs). Kept short: never the
/// certificate bytes themselves.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::V1(c) => match &c.op {
                Op::Submit { certs, .. } => write!(
                    f,
                    "v1 submit {} cert(s) req={:x}",
                    certs.len(),
                    c.request_id
                ),
                Op::Delete { fingerprints, .. } => {
                    write!(
                        f,
                        "v1 delete {} fpr(s) req={:x}",
                        fingerprints.len(),
                        c.request_id
                    )
                }
                Op::Replace { .. } => write!(f, "v1 replace req={:x}", c.request_id),
                Op::SetPolicies { .. } => write!(f, "v1 set policies req={:x}", c.request_id),
                Op::SetRouting { .. } => write!(f, "v1 set routing req={:x}", c.request_id),
                Op::Resolve { id, choose, .. } => {
                    write!(f, "v1 resolve {id} {choose} req={:x}", c.request_id)
                }
                Op::Checkpoint => write!(f, "v1 checkpoint req={:x}", c.request_id),
                Op::AuditRefusal { action, .. } => {
                    write!(f, "v1 audit refused {action} req={:x}", c.request_id)
                }
            },
        }
    }
}
