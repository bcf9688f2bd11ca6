//! [`RaftNode`]: the facade upper layers use to propose, read and observe the replicated store.
//!
//! It owns the openraft instance wired from [`LogStore`], [`StateMachine`] and a
//! [`NetworkFactory`] over a [`PeerTransport`], and translates every openraft error into a
//! [`RaftError`]. Peer messages arrive through [`RaftNode::handle_rpc`] and
//! [`RaftNode::handle_snapshot`] as opaque bytes, so `rpc` needs no openraft types.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::InitializeError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest,
};
use openraft::ReadPolicy;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::NodeMetrics;
use crate::raft::codec;
use crate::raft::command::{Command, Response};
use crate::raft::error::RaftError;
use crate::raft::log_store::LogStore;
use crate::raft::meta::{self, LastAppliedKey, LastPurgedKey, VoteKey};
use crate::raft::network::NetworkFactory;
use crate::raft::settings::RaftSettings;
use crate::raft::state_machine::StateMachine;
use crate::raft::status::NodeStatus;
use crate::raft::transport::{NoPeers, PeerTransport, RaftRpc};
use crate::raft::types::{KeyraftNode, LogId, NodeId, Snapshot, SnapshotData, TypeConfig};
use crate::raft::wire::{Reply, SnapshotHeader};
use crate::store::Store;

pub(super) type OpenRaft = openraft::Raft<TypeConfig, StateMachine>;

/// A running raft node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    me: KeyraftNode,
    raft: OpenRaft,
    store: Store,
    state_machine: StateMachine,
    request_timeout: Duration,
    /// Snapshot transfers sent and received.
    sync: Arc<crate::raft::sync::SyncTracker>,
    /// This node's latency histograms and load figures (never replicated).
    metrics: Arc<NodeMetrics>,
    /// The Raft term when this process started (for elections seen since).
    start_term: u64,
    /// Serialises `initialize_if_fresh` so two callers cannot both initialise.
    init_lock: tokio::sync::Mutex<()>,
    /// When this node last accepted an append (heartbeats included) from a leader, since this
    /// process started; `None` until the first. Node-local, for `/ready`.
    leader_heard: std::sync::Mutex<Option<std::time::Instant>>,
    /// See [`NodeStatus::leader_silent_after_ms`].
    leader_silent_after_ms: u64,
}

fn storage(e: impl std::fmt::Display) -> RaftError {
    RaftError::Storage(e.to_string())
}

impl RaftNode {
    /// Start a node with no peers (a single-node cluster).
    pub async fn start(
        store: Store,
        node_id: NodeId,
        me: KeyraftNode,
        cfg: RaftSettings,
    ) -> Result<RaftNode, RaftError> {
        RaftNode::start_with_transport(store, node_id, me, cfg, NoPeers).await
    }

    /// Start a node that reaches its peers through `transport`.
    pub async fn start_with_transport<T: PeerTransport>(
        store: Store,
        node_id: NodeId,
        me: KeyraftNode,
        cfg: RaftSettings,
        transport: T,
    ) -> Result<RaftNode, RaftError> {
        let config = cfg.to_openraft()?;
        let metrics = NodeMetrics::start();
        let state_machine = StateMachine::open(store.clone())
            .map_err(storage)?
            .with_metrics(metrics.clone());
        let sync = Arc::new(crate::raft::sync::SyncTracker::default());
        let network = NetworkFactory::new(node_id, Arc::new(transport), sync.clone());
        let raft = OpenRaft::new(
            node_id,
            config,
            network,
            LogStore::new(store.clone()).map_err(storage)?,
            state_machine.clone(),
        )
        .await?;
        tracing::info!(node_id, name = %me.name, "raft node started");
        let start_term = raft.metrics().borrow_watched().current_term;
        Ok(RaftNode {
            inner: Arc::new(Inner {
                id: node_id,
                me,
                raft,
                store,
                state_machine,
                request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                sync,
                metrics,
                start_term,
                init_lock: tokio::sync::Mutex::new(()),
                leader_heard: std::sync::Mutex::new(None),
                leader_silent_after_ms: crate::raft::status::LEADER_SILENT_MAX_MS
                    .max(3 * cfg.heartbeat_ms),
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The openraft handle, for sibling modules of the facade (membership).
    pub(super) fn openraft(&self) -> &OpenRaft {
        &self.inner.raft
    }

    /// The bound for facade calls that wait on the cluster.
    pub(super) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Digests taken at checkpoint entries (for `/cluster/repair`).
    pub(super) fn checkpoints(&self) -> &crate::raft::digest::Checkpoints {
        self.inner.state_machine.checkpoints()
    }

    /// Snapshot transfers this node sent and received (for `/cluster/sync/status`).
    pub fn sync_tracker(&self) -> &crate::raft::sync::SyncTracker {
        &self.inner.sync
    }

    /// This node's metrics: commit and apply latencies recorded here, lookups and HTTP load
    /// recorded by the API. Node-local, never replicated.
    pub fn metrics(&self) -> &Arc<NodeMetrics> {
        &self.inner.metrics
    }

    /// Elections this node has seen since its process started: every election raises the term.
    pub fn elections_since_start(&self) -> u64 {
        self.status()
            .current_term
            .saturating_sub(self.inner.start_term)
    }

    /// This node's own membership record.
    pub fn me(&self) -> &KeyraftNode {
        &self.inner.me
    }

    /// The local replica, for reads. It reflects what this node has applied; call
    /// [`Self::ensure_linearizable`] first when a read must see every acknowledged write.
    pub fn local_store(&self) -> &Store {
        &self.inner.store
    }

    /// True if this node has never held any raft state: empty log, nothing purged, no vote,
    /// nothing applied.
    pub fn is_fresh(&self) -> Result<bool, RaftError> {
        let s = &self.inner.store;
        Ok(s.log_last().map_err(storage)?.is_none()
            && meta::raft_get::<LastPurgedKey>(s)
                .map_err(storage)?
                .is_none()
            && meta::raft_get::<VoteKey>(s).map_err(storage)?.is_none()
            && meta::sm_get::<LastAppliedKey>(s)
                .map_err(storage)?
                .is_none())
    }

    /// Make this node the single member of a new cluster, if and only if it has never held any
    /// raft state. Returns whether it did; a restarted node is never re-initialised. Call it
    /// only on a node meant to bootstrap a cluster, never on one that will join another.
    pub async fn initialize_if_fresh(&self) -> Result<bool, RaftError> {
        let _guard = self.inner.init_lock.lock().await;
        if !self.is_fresh()? || self.inner.raft.is_initialized().await? {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.inner.id, self.inner.me.clone())]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(
                    node_id = self.inner.id,
                    "initialised a new single-member cluster"
                );
                Ok(true)
            }
            Err(openraft::errors::RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(openraft::errors::RaftError::APIError(e)) => {
                Err(RaftError::Membership(e.to_string()))
            }
            Err(openraft::errors::RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// Propose `cmd`; returns once it is committed and applied on this node, with its response
    /// and log index. On [`RaftError::Timeout`] or [`RaftError::LeaderChanged`] the outcome is
    /// unknown: retry with the same request id.
    pub async fn write(&self, cmd: Command) -> Result<(Response, u64), RaftError> {
        let resp = tokio::time::timeout(
            self.inner.request_timeout,
            self.inner.raft.client_write(cmd),
        )
        .await
        .map_err(|_| {
            RaftError::Timeout(format!(
                "write not applied within {:?}",
                self.inner.request_timeout
            ))
        })??;
        Ok((resp.data, resp.log_id.index))
    }

    /// On the leader: confirm leadership with a quorum (ReadIndex) and return the log index a
    /// replica must have applied before a read is linearizable (for a follower's read; the
    /// leader does not wait for its own apply here).
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        let fut = self.inner.raft.get_read_linearizer(ReadPolicy::ReadIndex);
        let linearizer = tokio::time::timeout(self.inner.request_timeout, fut)
            .await
            .map_err(|_| {
                RaftError::Timeout(format!(
                    "leadership not confirmed within {:?}",
                    self.inner.request_timeout
                ))
            })??;
        Ok(linearizer.read_log_id().index())
    }

    /// Wait until a read of the local replica is linearizable: this node is the leader, has
    /// confirmed that with a quorum, and has applied everything committed before the call.
    /// On a follower this fails with [`RaftError::NotLeader`]; [`crate::raft::Keyserver`]'s
    /// `ensure_linearizable` asks the leader for the read index instead.
    pub async fn ensure_linearizable(&self) -> Result<(), RaftError> {
        let fut = self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        tokio::time::timeout(self.inner.request_timeout, fut)
            .await
            .map_err(|_| {
                RaftError::Timeout(format!(
                    "read index not applied within {:?}",
                    self.inner.request_timeout
                ))
            })??;
        Ok(())
    }

    /// This node's raft state, from the latest metrics.
    pub fn status(&self) -> NodeStatus {
        let mut status = NodeStatus::from_metrics(&self.inner.raft.metrics().borrow_watched());
        status.millis_since_leader_heard =
            self.leader_heard().map(|t| t.elapsed().as_millis() as u64);
        status.leader_silent_after_ms = self.inner.leader_silent_after_ms;
        status
    }

    /// For `/ready`: a leader is known and this node has applied all it knows to be committed.
    pub fn has_leader_and_applied(&self) -> bool {
        NodeStatus::is_ready(&self.inner.raft.metrics().borrow_watched())
    }

    /// When this node last accepted an append from a leader since it started (`None`: never).
    fn leader_heard(&self) -> Option<std::time::Instant> {
        *self
            .inner
            .leader_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Record that a leader's append (or heartbeat) was just accepted: not refused for a
    /// higher vote here, whether or not its entries matched the local log.
    pub(super) fn note_leader_heard(&self) {
        *self
            .inner
            .leader_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    /// Wait until this node has applied the entry at `index` (e.g. to read one's own write on a
    /// follower), or `timeout` passes.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "wait_applied")
            .await?;
        Ok(())
    }

    /// Handle a peer's raft message (bytes from [`PeerTransport::call`]) and return the reply
    /// bytes to send back. Errors only for undecodable input.
    pub async fn handle_rpc(&self, rpc: RaftRpc, body: &[u8]) -> Result<Vec<u8>, RaftError> {
        let raft = &self.inner.raft;
        match rpc {
            RaftRpc::Append => {
                let req: AppendEntriesRequest<TypeConfig> = decode(body)?;
                let resp = raft.append_entries(req).await;
                if resp
                    .as_ref()
                    .is_ok_and(|r| !matches!(r, AppendEntriesResponse::HigherVote(_)))
                {
                    self.note_leader_heard();
                }
                encode(&reply(resp))
            }
            RaftRpc::Vote => {
                let req: VoteRequest<TypeConfig> = decode(body)?;
                encode(&reply(raft.vote(req).await))
            }
            RaftRpc::PreVote => {
                let req: VoteRequest<TypeConfig> = decode(body)?;
                encode(&reply(raft.pre_vote(req).await))
            }
            RaftRpc::TransferLeader => {
                let req: TransferLeaderRequest<TypeConfig> = decode(body)?;
                encode(&reply(raft.handle_transfer_leader(req).await))
            }
        }
    }

    /// Install a snapshot streamed by the leader: `header` as sent, `data` a readable file with
    /// all the bytes that followed it (its position does not matter). Returns the reply bytes.
    pub async fn handle_snapshot(
        &self,
        header: &[u8],
        data: SnapshotData,
    ) -> Result<Vec<u8>, RaftError> {
        let SnapshotHeader { vote, meta } = decode(header)?;
        self.inner
            .sync
            .receive_index(meta.last_log_id.as_ref().map(|l| l.index));
        // openraft treats an install error as fatal: a truncated or unreadable snapshot is
        // refused here instead, and the leader sends it again.
        let data = check_snapshot(data, meta.last_log_id).await?;
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        encode(&reply(
            self.inner.raft.install_full_snapshot(vote, snapshot).await,
        ))
    }

    /// A fresh path in this node's snapshot directory where a transport may spool an incoming
    /// snapshot before [`Self::handle_snapshot`]; the caller deletes it afterwards (leftovers are
    /// removed at the next start).
    pub fn snapshot_spool_path(&self) -> PathBuf {
        self.inner.state_machine.spool_path()
    }

    /// Stop the raft tasks. Further calls fail with [`RaftError::ShuttingDown`].
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Read a received snapshot through, checking every frame and that it holds the state as of
/// `last_log_id`, its metadata's; returns the file rewound.
async fn check_snapshot(
    data: SnapshotData,
    last_log_id: Option<LogId>,
) -> Result<SnapshotData, RaftError> {
    use std::io::{Seek, SeekFrom};
    let mut file = data.into_std().await;
    let checked = tokio::task::spawn_blocking(move || {
        let map = Store::snapshot_check(&mut std::io::BufReader::new(&mut file))
            .map_err(|e| format!("refusing the snapshot: {e}"))?;
        let applied = meta::sm_from_map::<LastAppliedKey>(&map)
            .map_err(|e| format!("refusing the snapshot: {e}"))?;
        if applied != last_log_id {
            return Err(format!(
                "refusing the snapshot: it holds the state at {applied:?}, its metadata says \
                 {last_log_id:?}"
            ));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| format!("rewinding the snapshot: {e}"))?;
        Ok(file)
    })
    .await
    .map_err(|e| RaftError::Fatal(e.to_string()))?;
    let file = checked.map_err(RaftError::Storage)?;
    Ok(tokio::fs::File::from_std(file))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RaftError> {
    codec::decode(bytes).map_err(|e| RaftError::Codec(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RaftError> {
    codec::encode(value).map_err(|e| RaftError::Codec(e.to_string()))
}

fn reply<T, E: std::fmt::Display>(r: Result<T, E>) -> Reply<T> {
    r.map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "raft_node_tests.rs"]
mod tests;
