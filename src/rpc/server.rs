//! The gRPC server: Raft messages and snapshots from peers go to the `raft` facade as bytes;
//! the cluster service pings, executes forwarded writes on the leader, and admits joining nodes.
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::proto::cluster_service_server::{ClusterService, ClusterServiceServer};
use super::proto::raft_service_server::{RaftService, RaftServiceServer};
use super::proto::{
    ForwardReply, ForwardRequest, JoinReply, JoinRequest, PingReply, PingRequest, RaftCall,
    RaftReply, SnapshotChunk,
};
use crate::raft::command::Command;
use crate::raft::{KeyraftNode, Keyserver, RaftNode};

/// Who may join, and how many voters the cluster keeps.
#[derive(Clone, Debug)]
pub struct JoinPolicy {
    /// The cluster secret a joiner must present (`None`: no secret required).
    pub secret: Option<String>,
    /// Most voters; further nodes stay learners.
    pub max_voters: usize,
}

struct RaftSvc {
    raft: RaftNode,
}

struct ClusterSvc {
    keys: Keyserver,
    policy: JoinPolicy,
}

fn reply(r: Result<Vec<u8>, String>) -> Response<RaftReply> {
    Response::new(match r {
        Ok(payload) => RaftReply {
            payload,
            error: String::new(),
        },
        Err(error) => RaftReply {
            payload: Vec::new(),
            error,
        },
    })
}

#[tonic::async_trait]
impl RaftService for RaftSvc {
    async fn call(&self, req: Request<RaftCall>) -> Result<Response<RaftReply>, Status> {
        let call = req.into_inner();
        let kind = super::kind_from_number(call.kind)
            .ok_or_else(|| Status::invalid_argument("unknown rpc kind"))?;
        Ok(reply(
            self.raft
                .handle_rpc(kind, &call.payload)
                .await
                .map_err(|e| e.to_string()),
        ))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut stream = req.into_inner();
        let path = self.raft.snapshot_spool_path();
        let result = async {
            let mut header = None;
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| e.to_string())?;
            while let Some(chunk) = stream.message().await.map_err(|e| e.to_string())? {
                if header.is_none() {
                    header = Some(chunk.header);
                }
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            file.sync_all().await.map_err(|e| e.to_string())?;
            drop(file);
            let header = header.ok_or("empty snapshot stream")?;
            let data = tokio::fs::File::open(&path)
                .await
                .map_err(|e| e.to_string())?;
            self.raft
                .handle_snapshot(&header, data)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        Ok(reply(result))
    }
}

/// Compare secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl ClusterService for ClusterSvc {
    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let raft = self.keys.raft();
        Ok(Response::new(PingReply {
            node_id: raft.id(),
            name: raft.me().name.clone(),
        }))
    }

    async fn forward_write(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let cmd: Command = rmp_serde::from_slice(&req.into_inner().command)
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        let r = match self.keys.raft().write(cmd).await {
            Ok((resp, index)) => ForwardReply {
                response: rmp_serde::to_vec_named(&resp)
                    .map_err(|e| Status::internal(e.to_string()))?,
                index,
                error: String::new(),
            },
            Err(e) => ForwardReply {
                response: Vec::new(),
                index: 0,
                error: e.to_string(),
            },
        };
        Ok(Response::new(r))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let peer = req.remote_addr();
        let j = req.into_inner();
        if let Some(secret) = &self.policy.secret {
            if !same_secret(secret, &j.secret) {
                tracing::warn!(?peer, node_id = j.node_id, name = %j.name, "join refused: wrong cluster secret");
                return Err(Status::permission_denied("wrong cluster secret"));
            }
        }
        let raft = self.keys.raft();
        let leader = raft.leader();
        if leader.as_ref().map(|l| l.id) != Some(raft.id()) {
            return Ok(Response::new(JoinReply {
                error: "not the leader".into(),
                leader_id: leader.as_ref().map_or(0, |l| l.id),
                leader_raft_addr: leader.map(|l| l.node.raft_addr).unwrap_or_default(),
                voter: false,
            }));
        }
        let node = KeyraftNode {
            name: j.name.clone(),
            raft_addr: j.raft_addr.clone(),
            http_addr: j.http_addr.clone(),
        };
        tracing::info!(node_id = j.node_id, name = %j.name, raft_addr = %j.raft_addr, "join: adding learner");
        let fail = |e: crate::raft::RaftError| Status::unavailable(e.to_string());
        raft.add_learner(j.node_id, node).await.map_err(fail)?;
        let voters = raft.members().iter().filter(|m| m.voter).count();
        let already = raft.members().iter().any(|m| m.id == j.node_id && m.voter);
        let voter = if already {
            true
        } else if voters < self.policy.max_voters {
            raft.promote(BTreeSet::from([j.node_id]))
                .await
                .map_err(fail)?;
            tracing::info!(node_id = j.node_id, "join: promoted to voter");
            true
        } else {
            false
        };
        Ok(Response::new(JoinReply {
            error: String::new(),
            leader_id: raft.id(),
            leader_raft_addr: raft.me().raft_addr.clone(),
            voter,
        }))
    }
}

/// Serve the Raft and cluster services on `listener` until `shutdown` resolves.
pub async fn serve(
    keys: Keyserver,
    policy: JoinPolicy,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let raft = keys.raft().clone();
    let incoming = tokio_stream_from(listener);
    tonic::transport::Server::builder()
        .add_service(RaftServiceServer::new(RaftSvc { raft }).max_decoding_message_size(64 << 20))
        .add_service(
            ClusterServiceServer::new(ClusterSvc { keys, policy })
                .max_decoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Accepted connections of `listener` as a stream.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

/// Bind the gRPC listener (port 0 allowed; read the address back from the listener).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
