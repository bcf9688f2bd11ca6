//! Storage: RocksDB column families, on-disk record formats, and nothing else.
//!
//! This layer knows RocksDB and serde. It must not depend on openraft, sequoia, HTTP or gRPC:
//! the Raft layer hands it opaque bytes (log entries, votes, membership) and plain values
//! (certificate records with their index terms).
//!
//! # Column families
//! | CF | key | value |
//! |---|---|---|
//! | `certs` | primary fingerprint (20 or 32 bytes) | [`CertRecord`], versioned |
//! | `idx_fpr` | fingerprint ++ primary fingerprint | empty (primary and subkeys) |
//! | `idx_keyid64` | 8-byte key id ++ primary fingerprint | empty |
//! | `idx_keyid32` | 4-byte key id ++ primary fingerprint | empty |
//! | `idx_email` | normalised address ++ 0x00 ++ primary fingerprint | empty |
//! | `idx_word` | user id word ++ 0x00 ++ primary fingerprint | empty |
//! | `dedup` | request id (16 bytes) | log index (8 bytes, big-endian) |
//! | `raft_log` | log index (big-endian u64) | serialized entry |
//! | `raft_meta` | name | vote, purged id, node id... |
//! | `sm_meta` | name | last applied, membership, counters, conflict policies |
//! | `tombstones` | primary fingerprint | tombstone of a deleted certificate (raft-encoded) |
//! | `conflicts` | conflict id (u64, big-endian) | conflict record (raft-encoded) |
//! | `audit` | log index ++ sequence (u16) | audit entry (raft-encoded) |
//! | `used_signatures` | `h` ++ id, `e` ++ expiry ++ id | used admin signatures (raft-encoded) |
//!
//! # Common operations
//! [`Store::open`] once per process; [`Store::begin_apply`] → [`ApplyBatch::put_cert`] →
//! [`ApplyBatch::commit`] for state-machine writes (one `WriteBatch` holding data, indexes and
//! last-applied); [`Store::find`] and [`Store::get_cert`] for reads.
mod apply_batch;
mod db;
mod query;
mod record;
mod snapshot;
mod tables;
pub mod version;

pub use apply_batch::{ApplyBatch, ANSWER_INLINE_MAX};
pub use db::{FlushPolicy, Store, FLUSH_AT_LEAST_EVERY, FLUSH_WHEN_IDLE};
pub use query::StoreStats;
pub use record::{CertRecord, IndexKind, IndexTerm};
pub use tables::Table;
pub use version::{Causality, VersionVector};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB reported an error (I/O, corruption, lock held by another process...).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("corrupt record in {cf}: {reason}")]
    Corrupt { cf: &'static str, reason: String },
    /// A stored value has a format version this build does not know.
    #[error("unknown format version {version} in {cf}")]
    UnknownVersion { cf: &'static str, version: u8 },
    /// Reading or writing a snapshot stream failed.
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
}
