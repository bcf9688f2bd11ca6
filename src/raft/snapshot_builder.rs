//! Building a snapshot of the state machine: openraft's `RaftSnapshotBuilder`.
//!
//! `Store::snapshot_write` streams a consistent point-in-time view into a temp file in
//! `<data_dir>/snapshots/` and returns the state-machine metadata of that same view, so the
//! snapshot's `last_log_id` and membership always match its data, even while apply continues.
//! The file is fsynced and then published as current (unless a newer snapshot was installed
//! meanwhile).
//!
//! Knows the store and openraft; must not depend on the log store, the network or the API.
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use openraft::storage::RaftSnapshotBuilder;

use crate::raft::meta::{self, LastAppliedKey, MembershipKey};
use crate::raft::snapshot_files::SnapshotFiles;
use crate::raft::types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig};
use crate::store::Store;

/// Builds one snapshot; created by the state machine whenever openraft wants a snapshot.
pub struct StateMachineSnapshotBuilder {
    store: Store,
    files: Arc<SnapshotFiles>,
}

impl StateMachineSnapshotBuilder {
    /// A builder writing into `files`' directory.
    pub fn new(store: Store, files: Arc<SnapshotFiles>) -> StateMachineSnapshotBuilder {
        StateMachineSnapshotBuilder { store, files }
    }
}

/// Write the snapshot file and publish it; blocking.
fn build(store: &Store, files: &SnapshotFiles) -> io::Result<(SnapshotMeta, File)> {
    let tmp = files.temp_path("build");
    let sm_meta = {
        let mut file = File::create(&tmp)?;
        let sm_meta = {
            let mut out = BufWriter::new(&mut file);
            let m = store.snapshot_write(&mut out).map_err(io::Error::other)?;
            out.flush()?;
            m
        };
        file.sync_all()?;
        sm_meta
    };
    // The state machine is written without a WAL and flushed when writes pause (at most a
    // minute apart under load). Flushed now, its durable state covers the snapshot before the
    // snapshot is published: at a restart after kill -9 openraft re-applies the log after it
    // instead of reinstalling the whole snapshot (which it does when the durable last-applied
    // is behind the current snapshot).
    store.flush().map_err(io::Error::other)?;
    let meta = SnapshotMeta {
        last_log_id: meta::sm_from_map::<LastAppliedKey>(&sm_meta)?,
        last_membership: meta::sm_from_map::<MembershipKey>(&sm_meta)?.unwrap_or_default(),
    };
    let data = files.publish(&tmp, &meta, true)?;
    Ok((meta, data))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (store, files) = (self.store.clone(), self.files.clone());
        let (meta, file) = tokio::task::spawn_blocking(move || build(&store, &files))
            .await
            .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?meta.last_log_id, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        })
    }
}
