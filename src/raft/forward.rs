//! [`LeaderForwarder`]: how a follower hands a write to the leader. `raft` defines it, `rpc`
//! implements it (databend-meta's pattern), so clients never see a redirect.
use std::future::Future;
use std::pin::Pin;

/// A boxed future returned by [`LeaderForwarder::forward`].
pub type ForwardFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Vec<u8>, u64), String>> + Send + 'a>>;

/// Sends an encoded command to the leader at `leader_raft_addr`; resolves to the encoded
/// response and the log index it was committed at, or a one-line reason.
pub trait LeaderForwarder: Send + Sync + 'static {
    /// Forward one encoded command.
    fn forward<'a>(&'a self, leader_raft_addr: &'a str, command: Vec<u8>) -> ForwardFuture<'a>;
}
