//! A digest of the replicated state: SHA-256 over the snapshot stream of the state machine
//! (certificates, their rendered forms, the dedup window and the state-machine metadata, in key
//! order), taken from one consistent RocksDB view. Two replicas that applied the same log up to
//! the same index have the same digest; indexes are derived data and not included.
//!
//! [`Checkpoints`] keeps the digests computed at `Op::Checkpoint` entries: the state machine
//! computes one right after applying such an entry, so every replica's digest at that index can
//! be compared even while writes go on (`/cluster/repair`).
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::meta::{self, LastAppliedKey};
use super::{RaftError, RaftNode};
use crate::store::Store;

/// The digest of this replica at the index it had applied when the view was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateDigest {
    /// The last applied log index covered.
    pub applied_index: Option<u64>,
    /// Hex SHA-256 of the state-machine stream.
    pub sha256: String,
    /// Length of that stream in bytes.
    pub bytes: u64,
}

struct HashWriter {
    hash: Sha256,
    bytes: u64,
}

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The digest of `store` as it is now (a full scan; blocking).
pub fn digest_store(store: &Store) -> Result<StateDigest, RaftError> {
    digest_store_from_now(store, || {})
}

/// [`digest_store`], calling `taken` once the view is fixed (the scan itself comes after).
fn digest_store_from_now(store: &Store, taken: impl FnOnce()) -> Result<StateDigest, RaftError> {
    let mut w = HashWriter {
        hash: Sha256::new(),
        bytes: 0,
    };
    let sm = store
        .snapshot_write_from_now(&mut w, taken)
        .map_err(|e| RaftError::Storage(e.to_string()))?;
    let applied =
        meta::sm_from_map::<LastAppliedKey>(&sm).map_err(|e| RaftError::Storage(e.to_string()))?;
    Ok(StateDigest {
        applied_index: applied.map(|l| l.index),
        sha256: hex::encode(w.hash.finalize()),
        bytes: w.bytes,
    })
}

/// Digests taken at checkpoint entries, by log index (the most recent [`Checkpoints::KEEP`]).
/// A digest is computed on its own thread from a view fixed right after the checkpoint's
/// batch, so apply goes on while the state is scanned; until it is done its slot is `None`.
#[derive(Debug, Default)]
pub struct Checkpoints {
    by_index: Mutex<BTreeMap<u64, Option<StateDigest>>>,
    done: tokio::sync::Notify,
}

impl Checkpoints {
    /// How many checkpoint digests are kept.
    pub const KEEP: usize = 16;

    /// Start digesting `store` for the checkpoint at `index`; returns once the view is fixed
    /// (apply may then commit the next batch), while the scan goes on in the background.
    pub fn digest_in_background(self: &Arc<Self>, store: &Store, index: u64) {
        self.put(index, None);
        let (fixed, wait) = std::sync::mpsc::channel();
        let (me, store) = (Arc::clone(self), store.clone());
        let spawned = std::thread::Builder::new()
            .name("checkpoint-digest".into())
            .spawn(move || {
                match digest_store_from_now(&store, || {
                    let _ = fixed.send(());
                }) {
                    Ok(d) => {
                        tracing::info!(index, sha256 = %d.sha256, "checkpoint digest");
                        me.put(index, Some(d));
                    }
                    Err(e) => {
                        tracing::warn!(index, error = %e, "checkpoint digest failed");
                        me.by_index.lock().expect("poisoned").remove(&index);
                    }
                }
                me.done.notify_waiters();
            });
        match spawned {
            // Returns when the view is fixed, or at once if the thread ended before (failed).
            Ok(_) => {
                let _ = wait.recv();
            }
            Err(e) => {
                tracing::warn!(index, error = %e, "checkpoint digest: no thread");
                self.by_index.lock().expect("poisoned").remove(&index);
            }
        }
    }

    fn put(&self, index: u64, digest: Option<StateDigest>) {
        let mut m = self.by_index.lock().expect("poisoned");
        m.insert(index, digest);
        while m.len() > Self::KEEP {
            m.pop_first();
        }
    }

    /// The digest taken at `index`, waiting (until `deadline`) for a scan still running.
    pub async fn wait(&self, index: u64, deadline: tokio::time::Instant) -> Option<StateDigest> {
        loop {
            let done = self.done.notified();
            match self.by_index.lock().expect("poisoned").get(&index) {
                Some(Some(d)) => return Some(d.clone()),
                Some(None) => {}
                None => return None,
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return None;
            }
        }
    }
}

impl RaftNode {
    /// Compute the digest of the local replica (a full scan, off the async threads).
    ///
    /// One at a time per process: it reads the whole store, and `/cluster/digest` is open to
    /// anyone, so a second caller meanwhile gets a retryable refusal (503) instead of a scan.
    pub async fn state_digest(&self) -> Result<StateDigest, RaftError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static RUNNING: AtomicBool = AtomicBool::new(false);
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(RaftError::Timeout(
                "a full digest of this node is being computed already; retry in a moment".into(),
            ));
        }
        // Cleared when the scan ends, even if the caller stopped waiting for it.
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                RUNNING.store(false, Ordering::SeqCst);
            }
        }
        let done = Done;
        let store = self.local_store().clone();
        tokio::task::spawn_blocking(move || {
            let _done = done;
            digest_store(&store)
        })
        .await
        .map_err(|e| RaftError::Fatal(e.to_string()))?
    }

    /// The digest this replica took at the checkpoint entry `index`, once applied (waiting up
    /// to `timeout`). `None` when this node did not apply that entry itself (it installed a
    /// snapshot past it, or the digest aged out).
    pub async fn checkpoint_digest(
        &self,
        index: u64,
        timeout: std::time::Duration,
    ) -> Result<Option<StateDigest>, RaftError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.wait_applied(index, timeout).await?;
        Ok(self.checkpoints().wait(index, deadline).await)
    }
}
