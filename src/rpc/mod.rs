//! Node-to-node gRPC (tonic). Generated from `proto/keyraft.proto` at build time by protox
//! and tonic-prost-build (no system `protoc`).
//!
//! A single-node cluster needs no transport, so for now this module only carries the generated
//! types; the Raft and cluster services that implement `crate::raft`'s transport trait arrive
//! with clustering. Must not import `crate::api`.

/// Generated protobuf messages and service stubs.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("keyraft.v1");
}
