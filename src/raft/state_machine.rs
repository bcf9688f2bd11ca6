//! The replicated state machine: openraft's `RaftStateMachine` over the store.
//!
//! Apply is deterministic: each call to [`RaftStateMachine::apply`] turns its whole set of entries
//! into ONE store batch: the data changes of every normal entry (via
//! [`crate::raft::apply::apply_command`]), the last membership, and the last applied log id are
//! committed together, and only then are the responses sent. A crash therefore leaves the state
//! machine exactly at some committed entry, never between data and its `last_applied`.
//!
//! Snapshots live under `<data_dir>/snapshots/` (see [`SnapshotFiles`]); building is done by
//! [`StateMachineSnapshotBuilder`]. Installing copies the received data into that directory,
//! makes it current, then replaces the store's state with `Store::snapshot_install`
//! (streamed; a crash midway is discarded at the next open and this snapshot restored).
//!
//! Each batch and each entry in it is timed into [`NodeMetrics`] (`apply_batch`,
//! `apply_entry`). The timings are node-local and never part of what apply writes.
//!
//! Knows the store and openraft; must not depend on the log store, the network or the API.
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};

use crate::metrics::NodeMetrics;
use crate::raft::apply::apply_command;
use crate::raft::command::Response;
use crate::raft::digest::Checkpoints;
use crate::raft::meta::{self, LastAppliedKey, MembershipKey, RemovedIdsKey};
use crate::raft::records;
use crate::raft::snapshot_builder::StateMachineSnapshotBuilder;
use crate::raft::snapshot_files::SnapshotFiles;
use crate::raft::types::{
    Entry, LogId, NodeId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::store::Store;

/// The state machine of one node. Cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    files: Arc<SnapshotFiles>,
    checkpoints: Arc<Checkpoints>,
    metrics: Arc<NodeMetrics>,
}

impl StateMachine {
    /// Open the state machine over `store`, with snapshots in `<data_dir>/snapshots/`.
    pub fn open(store: Store) -> io::Result<StateMachine> {
        let files = SnapshotFiles::open(&store.data_dir().join("snapshots"))?;
        Ok(StateMachine {
            store,
            files: Arc::new(files),
            checkpoints: Arc::default(),
            metrics: Arc::default(),
        })
    }

    /// Digests taken at checkpoint entries.
    pub fn checkpoints(&self) -> &Arc<Checkpoints> {
        &self.checkpoints
    }

    /// Record apply timings into `metrics` (by default, into metrics nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> StateMachine {
        self.metrics = metrics;
        self
    }

    /// A fresh temp path in the snapshot directory (for spooling an incoming snapshot).
    pub fn spool_path(&self) -> std::path::PathBuf {
        self.files.temp_path("incoming")
    }

    /// The last applied log id, as recorded in the store.
    pub fn last_applied(&self) -> io::Result<Option<LogId>> {
        meta::sm_get::<LastAppliedKey>(&self.store)
    }
}

fn is_checkpoint(e: &Entry) -> bool {
    matches!(&e.payload, EntryPayload::Normal(c) if c.is_checkpoint())
}

/// Apply `entries`: one store batch per run of entries ending at a checkpoint (or at the
/// end). Right after a checkpoint's batch is committed, the state is exactly that of its index
/// on every replica; its digest is computed from a view fixed at that moment, on its own thread
/// (see [`Checkpoints::digest_in_background`]), while apply goes on.
fn apply_entries(
    store: &Store,
    entries: &[Entry],
    checkpoints: &Arc<Checkpoints>,
    metrics: &NodeMetrics,
) -> io::Result<Vec<Response>> {
    let mut responses = Vec::with_capacity(entries.len());
    let mut rest = entries;
    while !rest.is_empty() {
        let cut = rest
            .iter()
            .position(is_checkpoint)
            .map_or(rest.len(), |i| i + 1);
        let (run, tail) = rest.split_at(cut);
        responses.extend(apply_batch(store, run, metrics)?);
        if let Some(last) = run.last().filter(|e| is_checkpoint(e)) {
            checkpoints.digest_in_background(store, last.log_id.index);
        }
        rest = tail;
    }
    Ok(responses)
}

/// Apply `entries` in one batch; returns one response per entry, in order. Normal entries
/// and the whole batch are timed into `metrics` (never read back by apply).
fn apply_batch(
    store: &Store,
    entries: &[Entry],
    metrics: &NodeMetrics,
) -> io::Result<Vec<Response>> {
    let started = Instant::now();
    let mut batch = store.begin_apply();
    let mut responses = Vec::with_capacity(entries.len());
    let mut membership = None;
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Response::default(),
            EntryPayload::Normal(cmd) => {
                let t = Instant::now();
                let r =
                    apply_command(&mut batch, cmd, entry.log_id.index).map_err(io::Error::other)?;
                metrics.apply_entry.record(t.elapsed());
                r
            }
            EntryPayload::Membership(m) => {
                let before = match membership.take() {
                    Some(b) => Some(b),
                    None => meta::sm_get_in::<MembershipKey>(&batch)?,
                };
                record_removed(&mut batch, before.as_ref().map(|b| b.membership()), m)?;
                membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                audit_membership(&mut batch, entry.log_id.index, m);
                Response::default()
            }
        };
        responses.push(response);
    }
    if let Some(m) = &membership {
        meta::sm_set::<MembershipKey>(&mut batch, m)?;
    }
    if let Some(last) = entries.last() {
        meta::sm_set::<LastAppliedKey>(&mut batch, &last.log_id)?;
    }
    batch.commit().map_err(io::Error::other)?;
    metrics.apply_batch.record(started.elapsed());
    Ok(responses)
}

/// Add the ids in `before` that `after` no longer lists to the removed ids
/// ([`meta::RemovedIdsKey`]). Deterministic: ordered sets, the state as the batch sees it.
fn record_removed(
    batch: &mut crate::store::ApplyBatch,
    before: Option<&crate::raft::types::Membership>,
    after: &crate::raft::types::Membership,
) -> io::Result<()> {
    let Some(before) = before else {
        return Ok(());
    };
    let now: std::collections::BTreeSet<NodeId> = after.nodes().map(|(id, _)| *id).collect();
    let gone: Vec<NodeId> = before
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| !now.contains(id))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let mut removed = meta::sm_get_in::<RemovedIdsKey>(batch)?.unwrap_or_default();
    removed.extend(gone);
    meta::sm_set::<RemovedIdsKey>(batch, &removed)
}

/// Record a membership change in the audit trail. Membership entries carry no proposer time,
/// so the entry's time is 0; the log index orders it among the writes.
fn audit_membership(
    batch: &mut crate::store::ApplyBatch,
    index: u64,
    m: &crate::raft::types::Membership,
) {
    let voters: Vec<u64> = m.voter_ids().collect();
    let learners: Vec<u64> = m.learner_ids().collect();
    let names: Vec<String> = m
        .nodes()
        .map(|(id, n)| format!("{id}={}", n.name))
        .collect();
    records::put_audit(
        batch,
        &records::AuditEntry {
            index,
            seq: 1,
            time: 0,
            actor: "raft".into(),
            origin: 0,
            action: "membership".into(),
            fingerprint: None,
            outcome: format!(
                "voters {voters:?} learners {learners:?} nodes {}",
                names.join(" ")
            ),
        },
    );
}

/// Copy `data` into the snapshot directory, make it current, then install it into the store.
///
/// Current first: a crash during the install leaves a half-installed state that the next
/// open discards, and openraft then restores this very snapshot. Made current after the
/// install instead, a crash between the two would restart with the new state and the older
/// snapshot, whose following log entries openraft purges at start-up. The transport checked
/// the data already (`RaftNode::handle_snapshot`).
fn install(
    store: &Store,
    files: &SnapshotFiles,
    meta: &SnapshotMeta,
    mut data: File,
) -> io::Result<()> {
    data.seek(SeekFrom::Start(0))?;
    let tmp = files.temp_path("install");
    let copied = (|| {
        let mut out = File::create(&tmp)?;
        io::copy(&mut data, &mut out)?;
        out.sync_all()?;
        files.publish(&tmp, meta, false)
    })();
    let published = match copied {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    store
        .snapshot_install(&mut BufReader::new(published))
        .map_err(io::Error::other)?;
    let applied = meta::sm_get::<LastAppliedKey>(store)?;
    if applied != meta.last_log_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "installed snapshot says last applied {applied:?}, its metadata says {:?}",
                meta.last_log_id
            ),
        ));
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachineSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = meta::sm_get::<LastAppliedKey>(&self.store)?;
        let membership = meta::sm_get::<MembershipKey>(&self.store)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let (store, cps, metrics) = (
            self.store.clone(),
            self.checkpoints.clone(),
            self.metrics.clone(),
        );
        let responses =
            tokio::task::spawn_blocking(move || apply_entries(&store, &batch, &cps, &metrics))
                .await
                .map_err(io::Error::other)??;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachineSnapshotBuilder::new(self.store.clone(), self.files.clone())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_std().await;
        let (store, files, meta) = (self.store.clone(), self.files.clone(), meta.clone());
        tokio::task::spawn_blocking(move || install(&store, &files, &meta, data))
            .await
            .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || files.current())
            .await
            .map_err(io::Error::other)??;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        }))
    }
}
