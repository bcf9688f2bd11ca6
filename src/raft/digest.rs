//! A digest of the replicated state: SHA-256 over the snapshot stream of the state machine
//! (certificates, their rendered forms, the dedup window and the state-machine metadata, in key
//! order), taken from one consistent RocksDB view. Two replicas that applied the same log up to
//! the same index have the same digest; indexes are derived data and not included.
use std::io::{self, Write};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::meta::{self, LastAppliedKey};
use super::{RaftError, RaftNode};

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

impl RaftNode {
    /// Compute the digest of the local replica (a full scan, off the async threads).
    pub async fn state_digest(&self) -> Result<StateDigest, RaftError> {
        let store = self.local_store().clone();
        tokio::task::spawn_blocking(move || {
            let mut w = HashWriter {
                hash: Sha256::new(),
                bytes: 0,
            };
            let sm = store
                .snapshot_write(&mut w)
                .map_err(|e| RaftError::Storage(e.to_string()))?;
            let applied = meta::sm_from_map::<LastAppliedKey>(&sm)
                .map_err(|e| RaftError::Storage(e.to_string()))?;
            Ok(StateDigest {
                applied_index: applied.map(|l| l.index),
                sha256: hex::encode(w.hash.finalize()),
                bytes: w.bytes,
            })
        })
        .await
        .map_err(|e| RaftError::Fatal(e.to_string()))?
    }
}
