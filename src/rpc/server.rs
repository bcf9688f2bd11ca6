//! The gRPC server: Raft messages and snapshots from peers go to the `raft` facade as bytes;
//! the cluster service answers pings, executes forwarded writes on the leader, answers read
//! indexes for followers' linearizable reads, and admits and
//! removes members through the facade's admission rules. With mTLS, a join must come from the
//! joiner's own certificate or from a current member forwarding it, a removal notice from
//! the certificate of the member that claims to have removed this node, and a call that acts
//! for the cluster (forwarded write, read index, leave, digest, rebuild) from a current member.
use std::future::Future;
use std::net::SocketAddr;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::proto::cluster_service_server::{ClusterService, ClusterServiceServer};
use super::proto::raft_service_server::{RaftService, RaftServiceServer};
use super::proto::{
    DigestReply, DigestRequest, ForwardReply, ForwardRequest, JoinReply, JoinRequest, LeaveReply,
    LeaveRequest, PingReply, PingRequest, RaftCall, RaftReply, ReadIndexReply, ReadIndexRequest,
    RebuildReply, RebuildRequest, RemovedReply, RemovedRequest, SnapshotChunk,
};
use super::tls::ClusterTls;
use crate::certname::peer_names;
use crate::raft::command::Command;
use crate::raft::{JoinSpec, Keyserver, RaftError, RaftNode};

struct RaftSvc {
    raft: RaftNode,
    /// False only under `KEYRAFT_TEST_NO_APPEND_STREAM` (tests): answer append streams as an
    /// older release does, with UNIMPLEMENTED.
    append_streams: bool,
    /// Turns true when the server stops: open append streams end then (a leader keeps one open
    /// while it leads, and a graceful shutdown waits for every stream).
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Resolves once `stopping` turns true (or its sender is gone).
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

struct ClusterSvc {
    keys: Keyserver,
    tls: bool,
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

/// A facade error as a gRPC status whose message is the error's one line.
fn status(e: RaftError) -> Status {
    let msg = e.to_string();
    match e {
        RaftError::Refused(_) => Status::permission_denied(msg),
        RaftError::UnknownMember(_) => Status::not_found(msg),
        e if e.is_unavailable() => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

impl RaftSvc {
    /// Refuse messages meant for another Raft id: after a node's data directory is wiped, a new
    /// node with a new id answers at the old address, and must not receive the old one's log.
    fn check_target(&self, target: u64) -> Result<(), String> {
        let me = self.raft.id();
        if target != 0 && target != me {
            return Err(format!("this is node {me}, not node {target}"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftService for RaftSvc {
    async fn call(&self, req: Request<RaftCall>) -> Result<Response<RaftReply>, Status> {
        let call = req.into_inner();
        let kind = super::kind_from_number(call.kind)
            .ok_or_else(|| Status::invalid_argument("unknown rpc kind"))?;
        if let Err(e) = self.check_target(call.target) {
            return Ok(reply(Err(e)));
        }
        Ok(reply(
            self.raft
                .handle_rpc(kind, &call.payload)
                .await
                .map_err(|e| e.to_string()),
        ))
    }

    type AppendStreamStream = futures::stream::BoxStream<'static, Result<RaftReply, Status>>;

    async fn append_stream(
        &self,
        req: Request<Streaming<RaftCall>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        if !self.append_streams {
            return Err(Status::unimplemented("append streams are off on this node"));
        }
        let target = req
            .metadata()
            .get(super::TARGET_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .ok_or_else(|| Status::invalid_argument("no keyraft-target in the metadata"))?;
        if target == 0 {
            return Err(Status::invalid_argument(
                "keyraft-target must name a node id",
            ));
        }
        self.check_target(target)
            .map_err(Status::failed_precondition)?;
        let append = super::kind_number(crate::raft::RaftRpc::Append);
        let calls = req.into_inner().take_until(stopped(self.stopping.clone()));
        let calls = calls.scan((), move |_, call| {
            std::future::ready(match call {
                Ok(c) if c.kind == append => Some(c.payload),
                Ok(c) => {
                    tracing::warn!(
                        kind = c.kind,
                        "not an append in an append stream; ending it"
                    );
                    None
                }
                Err(_) => None,
            })
        });
        let replies = self
            .raft
            .handle_append_stream(calls)
            .map(|payload| {
                Ok(RaftReply {
                    payload,
                    error: String::new(),
                })
            })
            .take_until(stopped(self.stopping.clone()));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut stream = req.into_inner();
        let path = self.raft.snapshot_spool_path();
        let tracker = self.raft.sync_tracker();
        tracker.receive_started();
        let mut spool = Spool {
            path: path.clone(),
            tracker,
            finished: false,
        };
        let result = async {
            let mut header = None;
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| e.to_string())?;
            while let Some(chunk) = stream.message().await.map_err(|e| e.to_string())? {
                if header.is_none() {
                    self.check_target(chunk.target)?;
                    header = Some(chunk.header);
                }
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| e.to_string())?;
                tracker.received(chunk.data.len() as u64);
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
        spool.finished = true;
        tracker.receive_finished(result.as_ref().map(|_| ()).map_err(Clone::clone));
        drop(spool);
        Ok(reply(result))
    }
}

/// An incoming snapshot's spool file and its progress record, cleaned up however the call
/// ends: tonic drops the handler at the caller's deadline or when the caller goes away, and
/// the spool (a whole snapshot) must not stay on disk, nor the transfer show as running.
struct Spool<'a> {
    path: std::path::PathBuf,
    tracker: &'a crate::raft::sync::SyncTracker,
    finished: bool,
}

impl Drop for Spool<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if !self.finished {
            self.tracker
                .receive_finished(Err("the transfer was cut off".into()));
        }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterSvc {
    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let req = req.into_inner();
        let raft = self.keys.raft();
        let (caller_removed, membership_index) =
            raft.removed_since(req.caller_id, req.caller_membership_index);
        Ok(Response::new(PingReply {
            node_id: raft.id(),
            name: raft.me().name.clone(),
            caller_removed,
            membership_index,
        }))
    }

    async fn forward_write(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        self.check_member(&req, "forward_write")?;
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

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.check_member(&req, "read_index")?;
        let r = match self.keys.raft().read_index().await {
            Ok(index) => ReadIndexReply {
                index,
                error: String::new(),
            },
            Err(e) => ReadIndexReply {
                index: 0,
                error: e.to_string(),
            },
        };
        Ok(Response::new(r))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let peer = req.remote_addr();
        let names = peer_names(req.peer_certs().as_deref().map(|v| v.as_slice()));
        let j = req.into_inner();
        if self.tls && !names.contains(&j.name) {
            let members = self.keys.raft().members();
            if !members.iter().any(|m| names.contains(&m.node.name)) {
                let why = format!(
                    "the client certificate names {names:?}, neither the joining node {:?} nor a member",
                    j.name
                );
                tracing::warn!(?peer, node_id = j.node_id, "join refused: {why}");
                let actor = format!("joiner {} (id {}) from {}", j.name, j.node_id, client(peer));
                self.keys.note_refusal("join", &actor, &[], &why);
                return Err(Status::permission_denied(format!("refused: {why}")));
            }
        }
        let outcome = self
            .keys
            .join(
                JoinSpec {
                    id: j.node_id,
                    name: j.name,
                    raft_addr: j.raft_addr,
                    http_addr: j.http_addr,
                    secret: j.secret,
                },
                &client(peer),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(JoinReply {
            leader_id: outcome.leader_id,
            voter: outcome.voter,
            replaced: outcome.replaced.unwrap_or(0),
        }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        self.check_member(&req, "leave")?;
        let id = req.into_inner().node_id;
        let removed = self.keys.leave(id).await.map_err(status)?;
        Ok(Response::new(LeaveReply { removed }))
    }

    async fn digest_at(
        &self,
        req: Request<DigestRequest>,
    ) -> Result<Response<DigestReply>, Status> {
        self.check_member(&req, "digest_at")?;
        let DigestRequest { target, index } = req.into_inner();
        self.check_target(target)?;
        let d = self
            .keys
            .raft()
            .checkpoint_digest(index, std::time::Duration::from_secs(15))
            .await
            .map_err(status)?;
        Ok(Response::new(match d {
            Some(d) => DigestReply {
                found: true,
                applied_index: d.applied_index.unwrap_or(0),
                sha256: d.sha256,
                bytes: d.bytes,
            },
            None => DigestReply::default(),
        }))
    }

    async fn rebuild(
        &self,
        req: Request<RebuildRequest>,
    ) -> Result<Response<RebuildReply>, Status> {
        self.check_member(&req, "rebuild")?;
        self.check_target(req.into_inner().target)?;
        self.keys.rebuild_self().await.map_err(status)?;
        Ok(Response::new(RebuildReply {}))
    }

    async fn removed(
        &self,
        req: Request<RemovedRequest>,
    ) -> Result<Response<RemovedReply>, Status> {
        let peer = req.remote_addr();
        let names = peer_names(req.peer_certs().as_deref().map(|v| v.as_slice()));
        let r = req.into_inner();
        let caller = self.tls.then_some(names.as_slice());
        if let Err(e) = self
            .keys
            .accept_removal_notice(r.target, r.by, &r.reason, caller)
        {
            tracing::warn!(?peer, by = r.by, "removal notice refused: {e}");
            return Err(status(e));
        }
        Ok(Response::new(RemovedReply {}))
    }
}

impl ClusterSvc {
    /// With mTLS, refuse a call that acts for the cluster (a forwarded write, a read index, a
    /// removal, a digest, a rebuild) unless the caller's certificate names a current member
    /// as this node knows the membership. Any certificate of the cluster CA opens the
    /// connection, including that of a node removed long ago or never admitted; only members
    /// may act. (Raft messages themselves are accepted from any CA certificate: a member that
    /// missed the change adding a new leader must still take that leader's appends.)
    fn check_member<T>(&self, req: &Request<T>, call: &str) -> Result<(), Status> {
        if !self.tls {
            return Ok(());
        }
        let names = peer_names(req.peer_certs().as_deref().map(|v| v.as_slice()));
        let members = self.keys.raft().members();
        if members.iter().any(|m| names.contains(&m.node.name)) {
            return Ok(());
        }
        tracing::warn!(peer = ?req.remote_addr(), ?names, call, "refused: the caller is not a member");
        Err(Status::permission_denied(format!(
            "refused: the client certificate names {names:?}, not a member of this cluster"
        )))
    }

    /// Refuse calls meant for another Raft id (see [`RaftSvc::check_target`]).
    fn check_target(&self, target: u64) -> Result<(), Status> {
        let me = self.keys.raft().id();
        if target != me {
            return Err(Status::failed_precondition(format!(
                "this is node {me}, not node {target}"
            )));
        }
        Ok(())
    }
}

/// The caller's address for the audit trail.
fn client(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "an unknown address".into(), |a| a.to_string())
}

/// Serve the Raft and cluster services on `listener` until `shutdown` resolves; with `tls`,
/// every caller must present a certificate from the cluster CA.
pub async fn serve(
    keys: Keyserver,
    tls: Option<&ClusterTls>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let raft = keys.raft().clone();
    let incoming = tokio_stream_from(listener);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    // HTTP/2's default 64 KiB windows make a large append wait for the receiver's window
    // updates several times over (each a scheduling round trip on a busy machine).
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(super::STREAM_WINDOW))
        .initial_connection_window_size(Some(super::CONNECTION_WINDOW));
    if let Some(t) = tls {
        builder = builder.tls_config(t.server())?;
    }
    builder
        .add_service(
            RaftServiceServer::new(RaftSvc {
                raft,
                append_streams: std::env::var_os("KEYRAFT_TEST_NO_APPEND_STREAM").is_none(),
                stopping,
            })
            .max_decoding_message_size(64 << 20),
        )
        .add_service(
            ClusterServiceServer::new(ClusterSvc {
                keys,
                tls: tls.is_some(),
            })
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
