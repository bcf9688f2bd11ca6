//! [`GrpcTransport`]: the Raft transport and the client side of the cluster service over tonic.
//!
//! One lazily connected, cached channel per peer (address and name); mTLS with the peer's node
//! name as the expected server name when TLS is configured; outgoing connections bound to
//! `source_ip` when set; a deadline on every call; connection failures reported as
//! `Unreachable` so openraft backs off.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use super::proto::cluster_service_client::ClusterServiceClient;
use super::proto::raft_service_client::RaftServiceClient;
use super::proto::{
    DigestRequest, ForwardRequest, JoinRequest, LeaveRequest, PingRequest, RaftCall,
    ReadIndexRequest, RebuildRequest, RemovedRequest, SnapshotChunk,
};
use super::tls::ClusterTls;
use crate::raft::{
    ForwardFuture, JoinOutcome, JoinSpec, KeyraftNode, LeaderForwarder, NodeId, PeerTransport,
    RaftRpc, ReplyStream, StateDigest, TransportError,
};

/// Snapshot chunk size.
const CHUNK: usize = 1 << 20;
/// Deadline of cluster-service calls other than joins.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of a join: the leader waits for the learner to catch up before answering.
const JOIN_TIMEOUT: Duration = Duration::from_secs(100);

/// gRPC client side of the cluster.
#[derive(Default)]
pub struct GrpcTransport {
    tls: Option<ClusterTls>,
    source_ip: Option<IpAddr>,
    channels: Mutex<HashMap<(String, String), Channel>>,
}

impl GrpcTransport {
    /// A transport with no connections yet; mTLS when `tls` is set, else plaintext.
    pub fn new(tls: Option<ClusterTls>, source_ip: Option<IpAddr>) -> GrpcTransport {
        GrpcTransport {
            tls,
            source_ip,
            channels: Mutex::default(),
        }
    }

    /// The channel to the node named `name` at `addr`.
    fn channel(&self, addr: &str, name: &str) -> Result<Channel, String> {
        let key = (addr.to_string(), name.to_string());
        let mut map = self.channels.lock().expect("not poisoned");
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(super::STREAM_WINDOW))
            .initial_connection_window_size(Some(super::CONNECTION_WINDOW))
            .local_address(self.source_ip);
        if let Some(tls) = &self.tls {
            e = e.tls_config(tls.client(name)).map_err(|e| e.to_string())?;
        }
        let c = e.connect_lazy();
        map.insert(key, c.clone());
        Ok(c)
    }

    fn cluster(&self, node: &KeyraftNode) -> Result<ClusterServiceClient<Channel>, String> {
        Ok(ClusterServiceClient::new(
            self.channel(&node.raft_addr, &node.name)?,
        ))
    }
}

/// A tonic status as one line; for TLS and connection failures the cause is in the source
/// chain, so it is appended.
fn reason(s: tonic::Status) -> String {
    let mut msg = s.message().to_string();
    let mut src = std::error::Error::source(&s);
    while let Some(e) = src {
        let t = e.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = e.source();
    }
    msg
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

fn status_error(target: NodeId, s: tonic::Status) -> TransportError {
    match s.code() {
        tonic::Code::Unavailable => TransportError::Unreachable(target, reason(s)),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => TransportError::Timeout(target),
        _ => TransportError::Network(target, reason(s)),
    }
}

/// Append request bodies as the calls of an append stream. A named stream rather than a
/// `map` closure: with a closure, proving the request future `Send` trips a higher-ranked
/// lifetime error in rustc.
struct AppendCalls {
    bodies: futures::stream::BoxStream<'static, Vec<u8>>,
    target: NodeId,
}

impl futures::Stream for AppendCalls {
    type Item = RaftCall;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RaftCall>> {
        let target = self.target;
        self.bodies.poll_next_unpin(cx).map(|b| {
            b.map(|payload| RaftCall {
                kind: super::kind_number(RaftRpc::Append),
                payload,
                target,
            })
        })
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
            .channel(&node.raft_addr, &node.name)
            .map_err(|e| TransportError::Unreachable(target, e))?;
        let req = request(
            RaftCall {
                kind: super::kind_number(rpc),
                payload: body,
                target,
            },
            timeout,
        );
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

    fn append_stream(
        &self,
        target: NodeId,
        node: &KeyraftNode,
        calls: futures::stream::BoxStream<'static, Vec<u8>>,
    ) -> impl std::future::Future<Output = Result<ReplyStream, TransportError>> + Send {
        let ch = self
            .channel(&node.raft_addr, &node.name)
            .map_err(|e| TransportError::Unreachable(target, e));
        let calls = AppendCalls {
            bodies: calls,
            target,
        };
        async move {
            let mut req = tonic::Request::new(calls);
            req.metadata_mut().insert(
                super::TARGET_HEADER,
                target
                    .to_string()
                    .parse()
                    .expect("digits are valid metadata"),
            );
            let replies = RaftServiceClient::new(ch?)
                .append_stream(req)
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::Unimplemented => {
                        TransportError::Unsupported(target, "append streams")
                    }
                    // Another node answers at the address (a wiped node's successor): back off.
                    tonic::Code::FailedPrecondition => {
                        TransportError::Unreachable(target, reason(s))
                    }
                    _ => status_error(target, s),
                })?
                .into_inner();
            let replies: ReplyStream = replies
                .map(move |r| match r {
                    Ok(reply) if reply.error.is_empty() => Ok(reply.payload),
                    Ok(reply) => Err(TransportError::Network(target, reply.error)),
                    Err(s) => Err(status_error(target, s)),
                })
                .boxed();
            Ok(replies)
        }
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
            .channel(&node.raft_addr, &node.name)
            .map_err(|e| TransportError::Unreachable(target, e))?;
        let size = data.metadata().await.map(|m| m.len()).unwrap_or(0);
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
                let chunk = SnapshotChunk {
                    header,
                    data: buf,
                    target,
                };
                if tx.send(chunk).await.is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        // The whole call covers the transfer and the receiver's check and install: ten minutes
        // plus one second per MiB, so a large snapshot over a slow link still arrives.
        let deadline = Duration::from_secs(600 + (size >> 20));
        let req = request(stream, timeout.max(deadline));
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
    fn forward<'a>(&'a self, leader: &'a KeyraftNode, command: Vec<u8>) -> ForwardFuture<'a> {
        Box::pin(async move {
            let r = self
                .cluster(leader)?
                .forward_write(request(ForwardRequest { command }, CALL_TIMEOUT))
                .await
                .map_err(reason)?
                .into_inner();
            if !r.error.is_empty() {
                return Err(r.error);
            }
            Ok((r.response, r.index))
        })
    }

    fn join<'a>(
        &'a self,
        leader: &'a KeyraftNode,
        spec: JoinSpec,
    ) -> ForwardFuture<'a, JoinOutcome> {
        Box::pin(async move {
            let req = JoinRequest {
                node_id: spec.id,
                name: spec.name,
                raft_addr: spec.raft_addr,
                http_addr: spec.http_addr,
                secret: spec.secret,
            };
            let r = self
                .cluster(leader)?
                .join(request(req, JOIN_TIMEOUT))
                .await
                .map_err(reason)?
                .into_inner();
            Ok(JoinOutcome {
                leader_id: r.leader_id,
                voter: r.voter,
                replaced: (r.replaced != 0).then_some(r.replaced),
            })
        })
    }

    fn leave<'a>(&'a self, leader: &'a KeyraftNode, id: NodeId) -> ForwardFuture<'a, NodeId> {
        Box::pin(async move {
            let r = self
                .cluster(leader)?
                .leave(request(LeaveRequest { node_id: id }, JOIN_TIMEOUT))
                .await
                .map_err(reason)?
                .into_inner();
            Ok(r.removed)
        })
    }

    fn read_index<'a>(&'a self, leader: &'a KeyraftNode) -> ForwardFuture<'a, u64> {
        Box::pin(async move {
            let r = self
                .cluster(leader)?
                .read_index(request(ReadIndexRequest {}, CALL_TIMEOUT))
                .await
                .map_err(reason)?
                .into_inner();
            if !r.error.is_empty() {
                return Err(r.error);
            }
            Ok(r.index)
        })
    }

    fn probe<'a>(&'a self, node: &'a KeyraftNode) -> ForwardFuture<'a, (NodeId, String)> {
        Box::pin(async move {
            let r = self
                .cluster(node)?
                .ping(request(PingRequest::default(), Duration::from_secs(5)))
                .await
                .map_err(reason)?
                .into_inner();
            Ok((r.node_id, r.name))
        })
    }

    fn still_member<'a>(
        &'a self,
        node: &'a KeyraftNode,
        me: NodeId,
        since: u64,
    ) -> ForwardFuture<'a, (bool, u64)> {
        Box::pin(async move {
            let r = self
                .cluster(node)?
                .ping(request(
                    PingRequest {
                        caller_id: me,
                        caller_membership_index: since,
                    },
                    Duration::from_secs(2),
                ))
                .await
                .map_err(reason)?
                .into_inner();
            Ok((!r.caller_removed, r.membership_index))
        })
    }

    fn digest_at<'a>(
        &'a self,
        node: &'a KeyraftNode,
        id: NodeId,
        index: u64,
    ) -> ForwardFuture<'a, Option<StateDigest>> {
        Box::pin(async move {
            let r = self
                .cluster(node)?
                .digest_at(request(
                    DigestRequest { target: id, index },
                    Duration::from_secs(20),
                ))
                .await
                .map_err(reason)?
                .into_inner();
            Ok(r.found.then_some(StateDigest {
                applied_index: Some(r.applied_index),
                sha256: r.sha256,
                bytes: r.bytes,
            }))
        })
    }

    fn rebuild<'a>(&'a self, node: &'a KeyraftNode, id: NodeId) -> ForwardFuture<'a, ()> {
        Box::pin(async move {
            self.cluster(node)?
                .rebuild(request(RebuildRequest { target: id }, JOIN_TIMEOUT))
                .await
                .map_err(reason)?;
            Ok(())
        })
    }

    fn removed<'a>(
        &'a self,
        node: &'a KeyraftNode,
        id: NodeId,
        by: NodeId,
        why: &'a str,
        timeout: Duration,
    ) -> ForwardFuture<'a, ()> {
        Box::pin(async move {
            let req = RemovedRequest {
                target: id,
                by,
                reason: why.to_string(),
            };
            self.cluster(node)?
                .removed(request(req, timeout))
                .await
                .map_err(reason)?;
            Ok(())
        })
    }
}
