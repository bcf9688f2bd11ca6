//! Node-to-node gRPC (tonic): the Raft transport and the cluster service. Generated from
//! `proto/keyraft.proto` at build time by protox and tonic-prost-build (no system `protoc`).
//!
//! [`client::GrpcTransport`] implements `raft`'s `PeerTransport` and `LeaderForwarder`;
//! [`server::serve`] answers peers by handing their bytes to the `raft` facade. Traffic is mTLS
//! with a private cluster CA ([`tls`], certificates made by [`certs`] for `keyraft cert`), or
//! plaintext with `--insecure-plaintext` for local experiments. Must not import `crate::api`.
pub mod certs;
pub mod client;
pub mod server;
pub mod tls;

/// Generated protobuf messages and service stubs.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("keyraft.v1");
}

use crate::raft::RaftRpc;

/// HTTP/2 flow-control window per stream, both directions: an append of up to 8 MiB goes out
/// without waiting for window updates.
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection (all streams to one peer).
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

/// The metadata key of an append stream naming the Raft id the caller means to reach.
pub(crate) const TARGET_HEADER: &str = "keyraft-target";

/// Wire number of a Raft RPC kind.
pub(crate) fn kind_number(rpc: RaftRpc) -> u32 {
    match rpc {
        RaftRpc::Append => 1,
        RaftRpc::Vote => 2,
        RaftRpc::PreVote => 3,
        RaftRpc::TransferLeader => 4,
    }
}

/// The Raft RPC kind of a wire number.
pub(crate) fn kind_from_number(n: u32) -> Option<RaftRpc> {
    Some(match n {
        1 => RaftRpc::Append,
        2 => RaftRpc::Vote,
        3 => RaftRpc::PreVote,
        4 => RaftRpc::TransferLeader,
        _ => return None,
    })
}
