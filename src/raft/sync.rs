//! Catching lagging members up: the leader's side of `POST /cluster/sync`, and the record of
//! snapshot transfers behind `GET /cluster/sync/status`.
//!
//! openraft replicates on its own; what an operator can add is urgency and a choice of means.
//! [`RaftNode::sync`] resets the replication back-off towards the targets (a peer that was
//! unreachable is retried at once) and sends a heartbeat; with `snapshot`, it also builds a
//! snapshot and purges the log up to it, so a member far behind receives the snapshot instead of
//! replaying a long log. [`SyncTracker`] records every snapshot this node sends or receives:
//! peer, snapshot index, size, bytes so far (receiving side), state and duration; and how
//! appends reach each peer (pipelined streams, or unary calls to an older release).
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::types::NodeId;
use super::{RaftError, RaftNode};

/// One snapshot transfer, as this node saw it.
#[derive(Debug, Clone)]
struct Transfer {
    snapshot_index: Option<u64>,
    bytes_total: Option<u64>,
    bytes_done: u64,
    started: Instant,
    finished: Option<(Instant, Result<(), String>)>,
}

/// A transfer as `/cluster/sync/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferView {
    /// The other side: the receiver (outgoing) or the sender's id if known (incoming).
    pub peer: Option<NodeId>,
    /// `sending`, `receiving`, `done` or `failed`.
    pub state: String,
    pub snapshot_index: Option<u64>,
    pub bytes_total: Option<u64>,
    pub bytes_done: u64,
    /// Milliseconds from start to end (or to now, while in progress).
    pub elapsed_ms: u64,
    /// Milliseconds since it ended.
    pub finished_ms_ago: Option<u64>,
    pub error: Option<String>,
}

impl Transfer {
    fn view(&self, peer: Option<NodeId>, active: &str) -> TransferView {
        let now = Instant::now();
        let end = self.finished.as_ref().map_or(now, |(t, _)| *t);
        TransferView {
            peer,
            state: match &self.finished {
                None => active.to_string(),
                Some((_, Ok(()))) => "done".into(),
                Some((_, Err(_))) => "failed".into(),
            },
            snapshot_index: self.snapshot_index,
            bytes_total: self.bytes_total,
            bytes_done: self.bytes_done,
            elapsed_ms: (end - self.started).as_millis() as u64,
            finished_ms_ago: self
                .finished
                .as_ref()
                .map(|(t, _)| (now - *t).as_millis() as u64),
            error: self.finished.as_ref().and_then(|(_, r)| r.clone().err()),
        }
    }
}

/// How this node's appends reach one peer, as `/cluster/sync/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppendPath {
    /// `stream` (pipelined, one stream per replication session) or `unary` (one call per
    /// request: the peer has no streams).
    pub transport: &'static str,
    /// Streams opened (one per replication session with more than one request).
    pub streams_opened: u64,
    /// Append requests sent over streams.
    pub requests_streamed: u64,
    /// Heartbeats sent (each a unary call: a stream of one request is not worth opening).
    pub heartbeats_unary: u64,
    /// Since when the peer is known to have no streams.
    #[serde(skip)]
    unary_since: Option<Instant>,
}

/// How long a peer without append streams gets unary appends before streams are tried again
/// (it may have been upgraded since).
pub const STREAM_RETRY: Duration = Duration::from_secs(600);

/// Snapshot transfers this node sent (latest per receiver) and received (latest), and how its
/// appends reach each peer.
#[derive(Debug, Default)]
pub struct SyncTracker {
    outgoing: Mutex<BTreeMap<NodeId, Transfer>>,
    incoming: Mutex<Option<Transfer>>,
    appends: Mutex<BTreeMap<NodeId, AppendPath>>,
}

impl SyncTracker {
    fn append_path(&self, peer: NodeId, f: impl FnOnce(&mut AppendPath)) {
        let mut map = self.appends.lock().expect("poisoned");
        let p = map.entry(peer).or_insert_with(|| AppendPath {
            transport: "stream",
            ..AppendPath::default()
        });
        f(p);
    }

    /// An append stream to `peer` opened.
    pub fn stream_opened(&self, peer: NodeId) {
        self.append_path(peer, |p| {
            p.streams_opened += 1;
            p.transport = "stream";
            p.unary_since = None;
        });
    }

    /// An append request went to `peer` over a stream.
    pub fn request_streamed(&self, peer: NodeId) {
        self.append_path(peer, |p| p.requests_streamed += 1);
    }

    /// A heartbeat went to `peer` as a unary call.
    pub fn heartbeat_unary(&self, peer: NodeId) {
        self.append_path(peer, |p| p.heartbeats_unary += 1);
    }

    /// `peer` has no append streams; appends go as unary calls for [`STREAM_RETRY`].
    pub fn unary_only(&self, peer: NodeId) {
        self.append_path(peer, |p| {
            p.transport = "unary";
            p.unary_since = Some(Instant::now());
        });
    }

    /// Whether appends to `peer` should try a stream: it is not known to lack them, or it was
    /// found without them longer than [`STREAM_RETRY`] ago.
    pub fn try_streams(&self, peer: NodeId) -> bool {
        self.append_path_of(peer).is_none_or(|p| {
            p.transport == "stream" || p.unary_since.is_none_or(|t| t.elapsed() > STREAM_RETRY)
        })
    }

    /// How appends reach `peer`, once any went.
    pub fn append_path_of(&self, peer: NodeId) -> Option<AppendPath> {
        self.appends.lock().expect("poisoned").get(&peer).cloned()
    }

    /// A snapshot of `bytes_total` bytes at `index` starts towards `peer`.
    pub fn send_started(&self, peer: NodeId, index: Option<u64>, bytes_total: Option<u64>) {
        let t = Transfer {
            snapshot_index: index,
            bytes_total,
            bytes_done: 0,
            started: Instant::now(),
            finished: None,
        };
        self.outgoing.lock().expect("poisoned").insert(peer, t);
    }

    /// The snapshot towards `peer` ended.
    pub fn send_finished(&self, peer: NodeId, result: Result<(), String>) {
        if let Some(t) = self.outgoing.lock().expect("poisoned").get_mut(&peer) {
            if result.is_ok() {
                t.bytes_done = t.bytes_total.unwrap_or(0);
            }
            t.finished = Some((Instant::now(), result));
        }
    }

    /// A snapshot starts arriving.
    pub fn receive_started(&self) {
        *self.incoming.lock().expect("poisoned") = Some(Transfer {
            snapshot_index: None,
            bytes_total: None,
            bytes_done: 0,
            started: Instant::now(),
            finished: None,
        });
    }

    /// `n` more bytes of the incoming snapshot arrived.
    pub fn received(&self, n: u64) {
        if let Some(t) = self.incoming.lock().expect("poisoned").as_mut() {
            t.bytes_done += n;
        }
    }

    /// The incoming snapshot's header names its index.
    pub fn receive_index(&self, index: Option<u64>) {
        if let Some(t) = self.incoming.lock().expect("poisoned").as_mut() {
            t.snapshot_index = index;
        }
    }

    /// The incoming snapshot was installed or failed.
    pub fn receive_finished(&self, result: Result<(), String>) {
        if let Some(t) = self.incoming.lock().expect("poisoned").as_mut() {
            t.bytes_total = Some(t.bytes_done);
            t.finished = Some((Instant::now(), result));
        }
    }

    /// Outgoing transfers (latest per peer) and the latest incoming one.
    pub fn views(&self) -> (Vec<TransferView>, Option<TransferView>) {
        let out = self
            .outgoing
            .lock()
            .expect("poisoned")
            .iter()
            .map(|(id, t)| t.view(Some(*id), "sending"))
            .collect();
        let inc = self
            .incoming
            .lock()
            .expect("poisoned")
            .as_ref()
            .map(|t| t.view(None, "receiving"));
        (out, inc)
    }
}

/// One member after a sync.
#[derive(Debug, Clone, Serialize)]
pub struct SyncedMember {
    pub id: NodeId,
    pub name: String,
    /// Log index known replicated to it, before and after.
    pub matched_before: Option<u64>,
    pub matched_after: Option<u64>,
    /// Entries it is still behind the leader's last log entry.
    pub lag_after: u64,
}

/// What `POST /cluster/sync` did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncOutcome {
    pub leader: NodeId,
    /// The snapshot built for the sync, when one was asked for.
    pub snapshot_index: Option<u64>,
    /// Log purged up to this index (inclusive), when a snapshot was asked for.
    pub purged_upto: Option<u64>,
    pub members: Vec<SyncedMember>,
    /// True when every target matched the leader's last entry before the call returned.
    pub caught_up: bool,
}

/// How long a sync waits for the snapshot to be built.
const SYNC_WAIT: Duration = Duration::from_secs(30);
/// How long a sync waits for the targets to catch up before answering.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// A member joining with no data replays the log from its start unless the log is purged;
/// beyond this many entries the leader sends it a snapshot instead (see
/// [`RaftNode::prepare_for_joiner`]). A bulk import's entry carries hundreds of certificates,
/// so even a few hundred entries can be minutes of replay against a snapshot of seconds.
pub const JOIN_REPLAY_MAX: u64 = 64;

impl RaftNode {
    /// Build a snapshot of the applied state (waiting for it, bounded) and purge the log up to
    /// it, but not beyond `limit`. Returns the snapshot's index.
    async fn snapshot_and_purge(&self, limit: u64) -> Result<u64, RaftError> {
        let raft = self.openraft();
        let fatal = |e: openraft::errors::Fatal<_>| RaftError::Fatal(e.to_string());
        let want = self.status().applied_index.unwrap_or(0);
        raft.trigger().snapshot().await.map_err(fatal)?;
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        let index = loop {
            if let Some(i) = self.status().snapshot_index.filter(|i| *i >= want) {
                break i;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RaftError::Timeout(format!(
                    "snapshot at {want} not built within {SYNC_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        raft.trigger()
            .purge_log(index.min(limit))
            .await
            .map_err(fatal)?;
        Ok(index)
    }

    /// Leader only, before adding a member with no data: if it would replay more than
    /// [`JOIN_REPLAY_MAX`] log entries, build a snapshot and purge the log up to it, so
    /// openraft sends the member the snapshot and then only the entries after it. The purge
    /// never passes an entry another member still lacks, so nobody else is pushed to a
    /// snapshot. Returns the snapshot index when one was arranged.
    pub async fn prepare_for_joiner(&self) -> Result<Option<u64>, RaftError> {
        let s = self.status();
        if s.state != "Leader" {
            return Err(RaftError::NotLeader { leader: s.leader });
        }
        let purged = s.purged_index.unwrap_or(0);
        let replay = s.last_log_index.unwrap_or(0).saturating_sub(purged);
        if replay <= JOIN_REPLAY_MAX {
            return Ok(None);
        }
        let slowest = s
            .matched
            .iter()
            .filter(|(id, _)| **id != s.id)
            .map(|(_, m)| m.unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX);
        if slowest <= purged {
            // Someone else needs the entries the joiner would skip; it replays the log.
            return Ok(None);
        }
        let index = self.snapshot_and_purge(slowest).await?;
        tracing::info!(
            snapshot = index,
            purged_upto = index.min(slowest),
            skipped = replay,
            "join: the new member starts from a snapshot instead of replaying the log"
        );
        Ok(Some(index))
    }

    /// Leader only: push replication to `target` (every other member when `None`) now, and with
    /// `snapshot` build a snapshot and purge the log up to it so a far-behind member installs
    /// the snapshot. Waits (up to 10 s) for the targets to match the leader's last entry.
    pub async fn sync(
        &self,
        target: Option<NodeId>,
        snapshot: bool,
    ) -> Result<SyncOutcome, RaftError> {
        let s = self.status();
        if s.state != "Leader" {
            return Err(RaftError::NotLeader { leader: s.leader });
        }
        let members = self.members();
        if let Some(t) = target {
            if !members.iter().any(|m| m.id == t) {
                return Err(RaftError::UnknownMember(t.to_string()));
            }
        }
        let targets: Vec<_> = members
            .iter()
            .filter(|m| m.id != s.id && target.is_none_or(|t| t == m.id))
            .collect();
        let raft = self.openraft();
        let fatal = |e: openraft::errors::Fatal<_>| RaftError::Fatal(e.to_string());
        raft.trigger()
            .reset_backoff(targets.iter().map(|m| m.id))
            .await
            .map_err(fatal)?;
        let (mut snapshot_index, mut purged_upto) = (None, None);
        if snapshot {
            let upto = self.snapshot_and_purge(u64::MAX).await?;
            (snapshot_index, purged_upto) = (Some(upto), Some(upto));
            tracing::info!(snapshot = upto, "sync: snapshot built, log purged up to it");
        }
        raft.trigger().heartbeat().await.map_err(fatal)?;
        let last = s.last_log_index.unwrap_or(0);
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let after = loop {
            let now = self.status();
            let done = targets
                .iter()
                .all(|m| now.matched.get(&m.id).copied().flatten() >= Some(last));
            if done || tokio::time::Instant::now() >= deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let now_last = after.last_log_index.unwrap_or(0);
        let out: Vec<SyncedMember> = targets
            .iter()
            .map(|m| {
                let matched_after = after.matched.get(&m.id).copied().flatten();
                SyncedMember {
                    id: m.id,
                    name: m.node.name.clone(),
                    matched_before: s.matched.get(&m.id).copied().flatten(),
                    matched_after,
                    lag_after: now_last.saturating_sub(matched_after.unwrap_or(0)),
                }
            })
            .collect();
        Ok(SyncOutcome {
            leader: s.id,
            snapshot_index,
            purged_upto,
            caught_up: out.iter().all(|m| m.matched_after >= Some(last)),
            members: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_without_streams_gets_unary_appends_until_a_stream_opens_again() {
        let t = SyncTracker::default();
        assert!(t.try_streams(7), "unknown peers get streams");
        t.stream_opened(7);
        t.request_streamed(7);
        assert!(t.try_streams(7));
        t.unary_only(7);
        assert!(!t.try_streams(7), "not again before STREAM_RETRY");
        assert_eq!(t.append_path_of(7).unwrap().transport, "unary");
        t.stream_opened(7);
        assert!(t.try_streams(7));
        let p = t.append_path_of(7).unwrap();
        assert_eq!(
            (p.transport, p.streams_opened, p.requests_streamed),
            ("stream", 2, 1)
        );
        assert!(t.append_path_of(8).is_none());
    }
}
