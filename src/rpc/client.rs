//! [`GrpcTransport`]: the Raft transport and leader forwarder over tonic.
//!
//! One lazily connected, cached channel per peer address; a deadline on every call;
//! connection failures reported as `Unreachable` so openraft backs off.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use super::proto::cluster_service_client::ClusterServiceClient;
use super::proto::raft_service_client::RaftServiceClient;
use super::proto::{ForwardRequest, JoinReply, JoinRequest, RaftCall, SnapshotChunk};
use crate::raft::{
    ForwardFuture, KeyraftNode, LeaderForwarder, NodeId, PeerTransport, RaftRpc, TransportError,
};

/// Snapshot chunk size.
const CHUNK: usize = 1 << 20;

/// gRPC client side of the cluster (plaintext).
#[derive(Default)]
pub struct GrpcTransport {
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcTransport {
    /// A transport with no connections yet.
    pub fn new() -> GrpcTransport {
        GrpcTransport::default()
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().expect("not poisoned");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Ask the member at `raft_addr` to add this node; the member must be the leader.
    pub async fn join(
        &self,
        raft_addr: &str,
        req: JoinRequest,
        timeout: Duration,
    ) -> Result<JoinReply, String> {
        let ch = self.channel(raft_addr)?;
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        ClusterServiceClient::new(ch)
            .join(r)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }
}

fn status_error(target: NodeId, s: tonic::Status) -> TransportError {
    match s.code() {
        tonic::Code::Unavailable => TransportError::Unreachable(target, s.message().to_string()),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => TransportError::Timeout(target),
        _ => TransportError::Network(target, s.message().to_string()),
    }
}

impl PeerTransport for GrpcTransport {
    async fn call(
        &self,
        target: NodeId,
        node: &KeyraftNode,
        rpc: RaftRpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let ch = self
            .channel(&node.raft_addr)
            .map_err(|e| TransportError::Unreachable(target, e))?;
        let mut req = tonic::Request::new(RaftCall {
            kind: super::kind_number(rpc),
            payload: body,
        });
        req.set_timeout(timeout);
        let reply = RaftServiceClient::new(ch)
            .call(req)
            .await
            .map_err(|s| status_error(target, s))?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(TransportError::Network(target, reply.error));
        }
        Ok(reply.payload)
    }

    async fn send_snapshot(
        &self,
        target: NodeId,
        node: &KeyraftNode,
        header: Vec<u8>,
        mut data: crate::raft::types::SnapshotData,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let ch = self
            .channel(&node.raft_addr)
            .map_err(|e| TransportError::Unreachable(target, e))?;
        // Read the snapshot in chunks into a bounded channel feeding the request stream.
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let reader = tokio::spawn(async move {
            let mut first = Some(header);
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = data.read(&mut buf).await?;
                buf.truncate(n);
                let header = first.take().unwrap_or_default();
                if n == 0 && header.is_empty() {
                    return Ok::<_, std::io::Error>(());
                }
                if tx.send(SnapshotChunk { header, data: buf }).await.is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let mut req = tonic::Request::new(stream);
        req.set_timeout(timeout.max(Duration::from_secs(600)));
        let reply = RaftServiceClient::new(ch)
            .snapshot(req)
            .await
            .map_err(|s| status_error(target, s))?
            .into_inner();
        reader
            .await
            .map_err(|e| TransportError::Network(target, e.to_string()))?
            .map_err(|e| TransportError::Network(target, e.to_string()))?;
        if !reply.error.is_empty() {
            return Err(TransportError::Network(target, reply.error));
        }
        Ok(reply.payload)
    }
}

impl LeaderForwarder for GrpcTransport {
    fn forward<'a>(&'a self, leader_raft_addr: &'a str, command: Vec<u8>) -> ForwardFuture<'a> {
        Box::pin(async move {
            let ch = self.channel(leader_raft_addr)?;
            let mut req = tonic::Request::new(ForwardRequest { command });
            req.set_timeout(Duration::from_secs(15));
            let r = ClusterServiceClient::new(ch)
                .forward_write(req)
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            if !r.error.is_empty() {
                return Err(r.error);
            }
            Ok((r.response, r.index))
        })
    }
}
