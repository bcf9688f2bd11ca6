//! openraft's network traits (`RaftNetworkFactory`, `RaftNetworkV2`) on top of a
//! [`PeerTransport`].
//!
//! This adapter encodes openraft messages with [`crate::raft::codec`], hands the bytes to the
//! transport, and decodes the [`Reply`]. It maps transport failures to the openraft error that
//! makes replication behave well: unreachable peers are backed off, timeouts and network errors
//! retried, and a failure reported by the peer itself is treated as unreachable.
//!
//! Knows openraft and the transport trait; never imports `rpc` or `api`.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::codec;
use crate::raft::transport::{PeerTransport, RaftRpc, TransportError};
use crate::raft::types::{KeyraftNode, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};
use crate::raft::wire::{Reply, SnapshotHeader};

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

/// Creates one [`PeerClient`] per target for openraft.
pub struct NetworkFactory<T: PeerTransport> {
    me: NodeId,
    transport: Arc<T>,
}

impl<T: PeerTransport> NetworkFactory<T> {
    /// A factory for node `me` sending through `transport`.
    pub fn new(me: NodeId, transport: Arc<T>) -> NetworkFactory<T> {
        NetworkFactory { me, transport }
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
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient<T: PeerTransport> {
    me: NodeId,
    target: NodeId,
    node: KeyraftNode,
    transport: Arc<T>,
}

impl<T: PeerTransport> PeerClient<T> {
    fn map_err(
        &self,
        e: TransportError,
        action: RPCTypes,
        timeout: Duration,
    ) -> RPCError<TypeConfig> {
        match e {
            TransportError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
            TransportError::Network(..) => RPCError::Network(NetworkError::from_string(e)),
            _ => RPCError::Unreachable(Unreachable::from_string(e)),
        }
    }

    async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: RaftRpc,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp> {
        let body = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = option.soft_ttl();
        let reply = self
            .transport
            .call(self.target, &self.node, rpc, body, timeout)
            .await
            .map_err(|e| self.map_err(e, action, timeout))?;
        decode_reply(self.target, &reply).map_err(RPCError::Unreachable)
    }
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
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        self.request(RaftRpc::Append, RPCTypes::AppendEntries, &rpc, &option)
            .await
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
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let header =
            codec::encode(&header).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let timeout = option.soft_ttl();
        let send = self.transport.send_snapshot(
            self.target,
            &self.node,
            header,
            snapshot.snapshot,
            timeout,
        );
        let reply = tokio::select! {
            reply = send => reply.map_err(|e| self.map_err(e, RPCTypes::InstallSnapshot, timeout))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        Ok(decode_reply(self.target, &reply)?)
    }
}
