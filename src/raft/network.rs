//! openraft's network traits (`RaftNetworkFactory`, `RaftNetworkV2`) on top of a
//! [`PeerTransport`].
//!
//! This adapter encodes openraft messages with [`crate::raft::codec`], hands the bytes to the
//! transport, and decodes the [`Reply`]. Appends go as one pipelined stream per replication
//! session ([`crate::raft::append_stream`]); a session of one request (every heartbeat) and
//! every append to a peer without streams (an older release) go as unary calls. It maps
//! transport failures to the openraft error that makes replication behave well: unreachable
//! peers are backed off, timeouts and network errors retried, and a failure reported by the
//! peer itself is treated as unreachable.
//!
//! Knows openraft and the transport trait; never imports `rpc` or `api`.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, OptionalSend, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::sync::SyncTracker;
use crate::raft::transport::{PeerTransport, RaftRpc, TransportError};
use crate::raft::types::{Entry, KeyraftNode, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::raft::wire::{Reply, SnapshotHeader};
use crate::raft::{append_stream, codec};

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

/// Creates one [`PeerClient`] per target for openraft.
pub struct NetworkFactory<T: PeerTransport> {
    me: NodeId,
    transport: Arc<T>,
    sync: Arc<SyncTracker>,
}

impl<T: PeerTransport> NetworkFactory<T> {
    /// A factory for node `me` sending through `transport`, recording snapshot transfers in
    /// `sync`.
    pub fn new(me: NodeId, transport: Arc<T>, sync: Arc<SyncTracker>) -> NetworkFactory<T> {
        NetworkFactory {
            me,
            transport,
            sync,
        }
    }
}

impl<T: PeerTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: NodeId, node: &KeyraftNode) -> PeerClient<T> {
        PeerClient {
            me: self.me,
            target,
            node: node.clone(),
            transport: self.transport.clone(),
            sync: self.sync.clone(),
            // openraft makes a new client after errors: remember a peer without streams.
            streams: self.sync.try_streams(target),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient<T: PeerTransport> {
    me: NodeId,
    target: NodeId,
    node: KeyraftNode,
    transport: Arc<T>,
    sync: Arc<SyncTracker>,
    /// Whether appends go as a stream; false once the peer said it has no streams.
    streams: bool,
}

/// The openraft error for a transport failure of a call from `me` to `target`: a timeout, a
/// network error (retried at once) or an unreachable peer (backed off).
pub(super) fn rpc_error(
    me: NodeId,
    target: NodeId,
    e: TransportError,
    action: RPCTypes,
    timeout: Duration,
) -> RPCError<TypeConfig> {
    match e {
        TransportError::Timeout(_) => RPCError::Timeout(Timeout {
            action,
            id: me,
            target,
            timeout,
        }),
        TransportError::Network(..) | TransportError::Unsupported(..) => {
            RPCError::Network(NetworkError::from_string(e))
        }
        _ => RPCError::Unreachable(Unreachable::from_string(e)),
    }
}

impl<T: PeerTransport> PeerClient<T> {
    fn map_err(
        &self,
        e: TransportError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RPCError<TypeConfig> {
        rpc_error(self.me, self.target, e, action, timeout)
    }

    async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: RaftRpc,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp> {
        let body = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = rpc_timeout(option.soft_ttl(), body.len());
        let reply = self
            .transport
            .call(self.target, &self.node, rpc, body, timeout)
            .await
            .map_err(|e| self.map_err(e, action, timeout))?;
        decode_reply(self.target, &reply).map_err(RPCError::Unreachable)
    }
}

/// How long opening an append stream may take (connecting included).
const STREAM_SETUP: Duration = Duration::from_secs(2);

/// Most certificate bytes one append call carries (a single larger entry still goes alone):
/// keeps each call well under the gRPC message limit and its deadline meaningful.
const APPEND_BUDGET: usize = 8 << 20;

/// How many leading `entries` fit in [`APPEND_BUDGET`] (at least one), by the size of the
/// certificates they carry.
pub(super) fn within_budget(entries: &[Entry]) -> usize {
    let mut total = 0;
    for (i, e) in entries.iter().enumerate() {
        let n = match &e.payload {
            EntryPayload::Normal(c) => c.payload_bytes(),
            _ => 0,
        };
        if i > 0 && total + n > APPEND_BUDGET {
            return i;
        }
        total += n;
    }
    entries.len()
}

/// The deadline of one call carrying `bytes`. openraft bounds an append by the heartbeat
/// interval (75 ms of a 100 ms heartbeat), right for heartbeats and small appends but never
/// enough for a batch of large entries (a catching-up member receiving 200-certificate import
/// batches): the call would time out on every retry and the member would never catch up.
/// Large bodies get time in proportion to their size, assuming a slow 8 MB/s link.
pub(crate) fn rpc_timeout(soft_ttl: Duration, bytes: usize) -> Duration {
    const SMALL: usize = 64 << 10;
    if bytes <= SMALL {
        return soft_ttl;
    }
    let transfer = Duration::from_millis(bytes as u64 / (8 << 10));
    soft_ttl.max(Duration::from_millis(500) + transfer)
}

/// Decode a peer's [`Reply`]; a malformed reply or a failure on the peer is an `Unreachable`.
fn decode_reply<Resp: DeserializeOwned>(
    target: NodeId,
    reply: &[u8],
) -> Result<Resp, Unreachable<TypeConfig>> {
    match codec::decode::<Reply<Resp>>(reply) {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(msg)) => Err(Unreachable::from_string(format!(
            "peer {target} failed: {msg}"
        ))),
        Err(e) => Err(Unreachable::from_string(format!(
            "bad reply from peer {target}: {e}"
        ))),
    }
}

impl<T: PeerTransport> RaftNetworkV2<TypeConfig> for PeerClient<T> {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        // Send at most APPEND_BUDGET bytes of entries per call (always at least one entry) and
        // report the prefix as a partial success; openraft sends the rest next.
        let keep = within_budget(&rpc.entries);
        let partial = (keep < rpc.entries.len()).then(|| {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|e| e.log_id)
        });
        let resp: AppendEntriesResponse<TypeConfig> = self
            .request(RaftRpc::Append, RPCTypes::AppendEntries, &rpc, &option)
            .await?;
        Ok(match (resp, partial) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(last)
            }
            (r, _) => r,
        })
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<BoxStream<'s, RpcResult<StreamAppendResult<TypeConfig>>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            // A stream that ends after one request is a heartbeat (openraft's heartbeat worker
            // sends each beat as one) or a session with one thing to say: one unary call does it
            // without the stream's setup and teardown on both sides.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(futures::stream::empty().boxed());
            };
            let next = input.next().now_or_never();
            if matches!(next, Some(None)) {
                if first.entries.is_empty() {
                    self.sync.heartbeat_unary(self.target);
                }
                return stream_append_sequential(self, futures::stream::iter([first]), option)
                    .await;
            }
            let ahead = next.flatten().into_iter();
            let input = futures::stream::iter(std::iter::once(first).chain(ahead)).chain(input);
            if !self.streams && !self.sync.try_streams(self.target) {
                return stream_append_sequential(self, input, option).await;
            }
            let soft_ttl = option.soft_ttl();
            let owed = Arc::default();
            let calls = append_stream::encode_requests(
                input,
                soft_ttl,
                Arc::clone(&owed),
                (Arc::clone(&self.sync), self.target),
            );
            // The transport keeps sending the request side until it ends; it must end when
            // openraft drops the answers (an error, a conflict), or it would go on taking
            // openraft's requests, those of the next session included.
            let (calls, end_calls) = append_stream::until_dropped(calls);
            let open = self.transport.append_stream(self.target, &self.node, calls);
            let setup = soft_ttl.max(STREAM_SETUP);
            let replies = match tokio::time::timeout(setup, open).await {
                Ok(Ok(r)) => r,
                Ok(Err(TransportError::Unsupported(..))) => {
                    tracing::info!(
                        target_id = self.target,
                        "peer has no append streams (an older release): sending unary appends"
                    );
                    self.streams = false;
                    self.sync.unary_only(self.target);
                    return Err(RPCError::Network(NetworkError::from_string(
                        "no append streams; retrying with unary calls",
                    )));
                }
                Ok(Err(e)) => return Err(self.map_err(e, RPCTypes::AppendEntries, setup)),
                Err(_) => {
                    let e = TransportError::Timeout(self.target);
                    return Err(self.map_err(e, RPCTypes::AppendEntries, setup));
                }
            };
            self.sync.stream_opened(self.target);
            Ok(append_stream::decode_answers(
                replies,
                owed,
                end_calls,
                soft_ttl,
                self.me,
                self.target,
            ))
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.request(RaftRpc::Vote, RPCTypes::Vote, &rpc, &option)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.request(RaftRpc::PreVote, RPCTypes::Vote, &rpc, &option)
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        self.request(
            RaftRpc::TransferLeader,
            RPCTypes::TransferLeader,
            &req,
            &option,
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let index = snapshot.meta.last_log_id.as_ref().map(|l| l.index);
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let header =
            codec::encode(&header).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let timeout = option.soft_ttl();
        let size = snapshot.snapshot.metadata().await.ok().map(|m| m.len());
        self.sync.send_started(self.target, index, size);
        let send = self.transport.send_snapshot(
            self.target,
            &self.node,
            header,
            snapshot.snapshot,
            timeout,
        );
        let reply = tokio::select! {
            reply = send => reply,
            closed = cancel => {
                self.sync.send_finished(self.target, Err(format!("cancelled: {closed}")));
                return Err(StreamingError::Closed(closed));
            }
        };
        let decoded = reply
            .map_err(|e| {
                self.sync.send_finished(self.target, Err(e.to_string()));
                self.map_err(e, RPCTypes::InstallSnapshot, timeout)
            })
            .and_then(|r| {
                decode_reply(self.target, &r).map_err(|e| {
                    self.sync.send_finished(self.target, Err(e.to_string()));
                    RPCError::Unreachable(e)
                })
            })?;
        self.sync.send_finished(self.target, Ok(()));
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_appends_get_time_in_proportion_to_their_size() {
        let hb = Duration::from_millis(75);
        assert_eq!(rpc_timeout(hb, 100), hb);
        assert_eq!(rpc_timeout(hb, 64 << 10), hb);
        // 8 MB: 0.5 s + 1 s.
        assert_eq!(rpc_timeout(hb, 8 << 20), Duration::from_millis(500 + 1024));
        assert!(rpc_timeout(hb, 32 << 20) > Duration::from_secs(4));
    }
}
