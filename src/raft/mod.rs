//! The raft layer: openraft glue that turns the local [`crate::store`] into a replicated one.
//!
//! Responsibilities:
//! - the openraft type config ([`types`]) and the versioned byte format of everything persisted or
//!   sent to peers ([`codec`], [`meta`], [`wire`]);
//! - the raft log ([`log_store`]) and the state machine ([`state_machine`], [`snapshot_builder`],
//!   [`snapshot_files`]) over the store; apply is deterministic ([`apply`], [`command`]), and
//!   refuses replayed admin signatures ([`replay`]);
//! - the network adapter ([`network`]) over the [`PeerTransport`] trait that `rpc` implements;
//! - the facade [`RaftNode`] that `node`, `api` and `rpc` use.
//!
//! Depends on `store`, `pgp` (through `apply`) and `config` only; it never imports `rpc` or
//! `api`. openraft types do not leave this module: the facade speaks [`Command`], [`Response`],
//! [`RaftError`], [`NodeStatus`] and bytes.
//!
//! # Common operations
//!
//! ```text
//! let node = RaftNode::start(store, 1, me, RaftSettings::default()).await?;
//! node.initialize_if_fresh().await?;          // bootstrap node only; no-op on restart
//! let (response, index) = node.write(cmd).await?; // committed + applied here
//! node.ensure_linearizable().await?;          // then read node.local_store()
//! keys.ensure_linearizable().await?;          // the same on any member (followers ask the leader)
//! let status = node.status();
//! node.shutdown().await;
//! ```
pub mod admission;
pub mod append_stream;
pub mod apply;
mod apply_admin;
pub mod auto_remove;
pub mod cert_row;
pub mod codec;
pub mod command;
pub mod conflicts;
pub mod digest;
pub mod error;
pub mod forward;
pub mod keys;
mod keys_signed;
pub mod linearizable;
pub mod log_store;
mod log_writer;
pub mod membership;
pub mod meta;
pub mod network;
pub mod promotion;
pub mod raft_node;
pub mod records;
pub mod refusals;
pub mod removal;
pub mod repair;
pub mod replay;
pub mod routing;
pub mod settings;
pub mod snapshot_builder;
pub mod snapshot_files;
pub mod state_machine;
pub mod status;
mod submission;
pub mod sync;
pub mod transport;
pub mod types;
pub mod wire;

pub use admission::{Admission, JoinOutcome, JoinSpec};
pub use command::{Command, Op, Response};
pub use conflicts::{AuditFilter, ConflictDetail, ConflictFilter, Page};
pub use digest::StateDigest;
pub use error::RaftError;
pub use forward::{ForwardFuture, LeaderForwarder};
pub use keys::{
    armor_public_keys, search_email, search_words, vindex_sigs, ItemReport, KeyView, Keyserver,
    Search, SigLine, Status, SubmitError, Summary, UidSummary,
};
pub use membership::Member;
pub use raft_node::RaftNode;
pub use records::{AuditCursor, Policies, Policy};
pub use removal::Removal;
pub use replay::SignedUse;
pub use routing::{Consistency, Routing};
pub use settings::RaftSettings;
pub use status::{NodeStatus, PROMOTE_MAX_LAG, UNREACHABLE_AFTER_MS};
pub use transport::{NoPeers, PeerTransport, RaftRpc, ReplyStream, TransportError};
pub use types::{KeyraftNode, NodeId};
