//! The seam between raft and the node-to-node transport: [`PeerTransport`].
//!
//! raft never imports `rpc`; instead `rpc` implements this trait and `node` hands the
//! implementation to [`crate::raft::RaftNode::start_with_transport`]. Messages cross the seam as
//! opaque bytes (encoded by raft with its versioned codec), so the transport needs no openraft
//! types: it ships `body` to the peer, where the peer's `rpc` server passes it to
//! [`crate::raft::RaftNode::handle_rpc`] (or, for snapshots,
//! [`crate::raft::RaftNode::handle_snapshot`]) and returns the reply bytes unchanged.
//!
//! Appends may also travel as one ordered stream per replication session
//! ([`PeerTransport::append_stream`]), answered on the peer by
//! [`crate::raft::RaftNode::handle_append_stream`]; see [`crate::raft::append_stream`].
//!
//! [`NoPeers`] is the transport of a single-node cluster: every call fails as unreachable.
use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

use serde::{Deserialize, Serialize};

use crate::raft::types::{KeyraftNode, NodeId, SnapshotData};

/// Which raft RPC a request body carries. The receiving side dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RaftRpc {
    /// Append entries (also the heartbeat).
    Append,
    /// Request a vote.
    Vote,
    /// Pre-vote: would the peer vote for us, without disturbing its term.
    PreVote,
    /// Ask the peer to take over leadership.
    TransferLeader,
}

/// Why a transport call failed before a reply arrived.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer could not be reached (refused, DNS, TLS); raft backs off before retrying.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// No reply within the deadline.
    #[error("rpc to peer {0} timed out")]
    Timeout(NodeId),
    /// The call failed after the connection was made; raft may retry at once.
    #[error("rpc to peer {0} failed: {1}")]
    Network(NodeId, String),
    /// The peer does not know the call (an older release during a rolling upgrade).
    #[error("peer {0} does not support {1}")]
    Unsupported(NodeId, &'static str),
}

/// The replies of a stream of appends, in the order of the requests.
pub type ReplyStream = BoxStream<'static, Result<Vec<u8>, TransportError>>;

/// Sends raft messages to peers. Implemented by `rpc`.
pub trait PeerTransport: Send + Sync + 'static {
    /// Send `body` (a [`RaftRpc`] request) to `target` and return its reply body.
    fn call(
        &self,
        target: NodeId,
        node: &KeyraftNode,
        rpc: RaftRpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;

    /// Open a stream of appends to `target`: every body `calls` yields (an encoded append
    /// request) is delivered in order, and the returned stream yields one reply body per request,
    /// in the same order. Deadlines are the caller's: the stream itself has none.
    fn append_stream(
        &self,
        target: NodeId,
        node: &KeyraftNode,
        calls: BoxStream<'static, Vec<u8>>,
    ) -> impl Future<Output = Result<ReplyStream, TransportError>> + Send;

    /// Stream a full snapshot to `target`: first `header`, then the bytes of `data` (read from
    /// its current position, i.e. the start) in chunks. Returns the peer's reply body.
    /// The future may be dropped midway when replication is cancelled.
    fn send_snapshot(
        &self,
        target: NodeId,
        node: &KeyraftNode,
        header: Vec<u8>,
        data: SnapshotData,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// The transport of a single-node cluster: there is nobody to talk to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

impl PeerTransport for NoPeers {
    async fn call(
        &self,
        target: NodeId,
        _node: &KeyraftNode,
        _rpc: RaftRpc,
        _body: Vec<u8>,
        _timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        Err(TransportError::Unreachable(
            target,
            "no peer transport configured".into(),
        ))
    }

    async fn append_stream(
        &self,
        target: NodeId,
        _node: &KeyraftNode,
        _calls: BoxStream<'static, Vec<u8>>,
    ) -> Result<ReplyStream, TransportError> {
        Err(TransportError::Unreachable(
            target,
            "no peer transport configured".into(),
        ))
    }

    async fn send_snapshot(
        &self,
        target: NodeId,
        _node: &KeyraftNode,
        _header: Vec<u8>,
        _data: SnapshotData,
        _timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        Err(TransportError::Unreachable(
            target,
            "no peer transport configured".into(),
        ))
    }
}
