//! [`LeaderForwarder`]: how a node reaches the leader (and other members) for what only the
//! leader may do: writes, joins, leaves, the read index of a linearizable read, plus a probe
//! of a joining node and the notice the leader sends a member it removed. `raft` defines it,
//! `rpc` implements it over authenticated gRPC (databend-meta's pattern), so clients never see a
//! redirect.
use std::future::Future;
use std::pin::Pin;

use super::admission::{JoinOutcome, JoinSpec};
use super::digest::StateDigest;
use super::types::{KeyraftNode, NodeId};

/// A boxed future returned by the [`LeaderForwarder`] methods.
pub type ForwardFuture<'a, T = (Vec<u8>, u64)> =
    Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Node-to-node calls made on behalf of a client; every error is a one-line reason.
pub trait LeaderForwarder: Send + Sync + 'static {
    /// Forward one encoded command to `leader`; resolves to the encoded response and the log
    /// index it was committed at.
    fn forward<'a>(&'a self, leader: &'a KeyraftNode, command: Vec<u8>) -> ForwardFuture<'a>;

    /// Ask `leader` to admit a node.
    fn join<'a>(
        &'a self,
        leader: &'a KeyraftNode,
        spec: JoinSpec,
    ) -> ForwardFuture<'a, JoinOutcome>;

    /// Ask `leader` to remove the member `id` (transferring leadership first if needed).
    fn leave<'a>(&'a self, leader: &'a KeyraftNode, id: NodeId) -> ForwardFuture<'a, NodeId>;

    /// Ask `leader` for a read index: it confirms its leadership with a quorum and answers the
    /// log index this node must have applied before a linearizable read.
    fn read_index<'a>(&'a self, leader: &'a KeyraftNode) -> ForwardFuture<'a, u64>;

    /// Call `node` at its Raft address, authenticated as `node.name` when TLS is on, and return
    /// the id and name it reports: proof that its address reaches the node it claims to be.
    fn probe<'a>(&'a self, node: &'a KeyraftNode) -> ForwardFuture<'a, (NodeId, String)>;

    /// Ask `node` whether a membership it committed after log index `since` (the membership
    /// this node last applied, which lists it) no longer lists member `me`; resolves to the
    /// answer and the index of that later membership.
    fn still_member<'a>(
        &'a self,
        node: &'a KeyraftNode,
        me: NodeId,
        since: u64,
    ) -> ForwardFuture<'a, (bool, u64)>;

    /// Ask member `id` at `node` for the digest it took at checkpoint entry `index`.
    fn digest_at<'a>(
        &'a self,
        node: &'a KeyraftNode,
        id: NodeId,
        index: u64,
    ) -> ForwardFuture<'a, Option<StateDigest>>;

    /// Ask member `id` at `node` to leave and rebuild itself from the cluster.
    fn rebuild<'a>(&'a self, node: &'a KeyraftNode, id: NodeId) -> ForwardFuture<'a, ()>;

    /// Tell the former member `id` at `node` that a membership change committed by `by` (this
    /// node, the leader) removed it, bounded by `timeout`.
    fn removed<'a>(
        &'a self,
        node: &'a KeyraftNode,
        id: NodeId,
        by: NodeId,
        reason: &'a str,
        timeout: std::time::Duration,
    ) -> ForwardFuture<'a, ()>;
}
