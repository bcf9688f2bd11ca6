//! Typed metadata keys: each key names its value type, so a key can't be read as the wrong type.
//!
//! Raft metadata (vote, last purged log id, committed log id) lives in the store's raft-meta
//! column family; state-machine metadata (last applied log id, membership) lives in `sm_meta` and
//! is written in the same batch as the data it describes. Values use [`crate::raft::codec`].
use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::codec;
use crate::raft::types::{LogId, NodeId, StoredMembership, Vote};
use crate::store::{ApplyBatch, Store};

/// A metadata key and the type stored under it.
pub trait MetaKey {
    /// The key string in the column family.
    const KEY: &'static str;
    /// The value type stored under [`Self::KEY`].
    type Value: Serialize + DeserializeOwned;
}

/// The last vote this node saved (raft meta).
pub struct VoteKey;
impl MetaKey for VoteKey {
    const KEY: &'static str = "vote";
    type Value = Vote;
}

/// The last purged log id, inclusive (raft meta).
pub struct LastPurgedKey;
impl MetaKey for LastPurgedKey {
    const KEY: &'static str = "last_purged";
    type Value = LogId;
}

/// The last committed log id openraft asked us to remember (raft meta).
pub struct CommittedKey;
impl MetaKey for CommittedKey {
    const KEY: &'static str = "committed";
    type Value = Option<LogId>;
}

/// The last log id applied to the state machine (sm meta).
pub struct LastAppliedKey;
impl MetaKey for LastAppliedKey {
    const KEY: &'static str = "last_applied";
    type Value = LogId;
}

/// The last membership applied to the state machine (sm meta).
pub struct MembershipKey;
impl MetaKey for MembershipKey {
    const KEY: &'static str = "membership";
    type Value = StoredMembership;
}

/// Every id a membership change removed over the cluster's life (sm meta): ids are never
/// admitted again, since a node that kept its state under a removed id could vote on the
/// strength of it.
pub struct RemovedIdsKey;
impl MetaKey for RemovedIdsKey {
    const KEY: &'static str = "removed_ids";
    type Value = std::collections::BTreeSet<NodeId>;
}

/// Read a raft-meta value.
pub fn raft_get<K: MetaKey>(store: &Store) -> io::Result<Option<K::Value>> {
    let raw = store.raft_meta_get(K::KEY).map_err(io::Error::other)?;
    raw.map(|b| codec::decode(&b)).transpose()
}

/// Write a raft-meta value durably (the store fsyncs before returning).
pub fn raft_put<K: MetaKey>(store: &Store, value: &K::Value) -> io::Result<()> {
    let bytes = codec::encode(value)?;
    store
        .raft_meta_put(K::KEY, &bytes)
        .map_err(io::Error::other)
}

/// Write a raft-meta value without its own fsync (see [`Store::raft_meta_put_unsynced`]).
pub fn raft_put_unsynced<K: MetaKey>(store: &Store, value: &K::Value) -> io::Result<()> {
    let bytes = codec::encode(value)?;
    store
        .raft_meta_put_unsynced(K::KEY, &bytes)
        .map_err(io::Error::other)
}

/// Read a state-machine-meta value.
pub fn sm_get<K: MetaKey>(store: &Store) -> io::Result<Option<K::Value>> {
    let raw = store.sm_meta_get(K::KEY).map_err(io::Error::other)?;
    raw.map(|b| codec::decode(&b)).transpose()
}

/// Read a state-machine-meta value as an apply batch sees it (its own staged values first).
pub fn sm_get_in<K: MetaKey>(batch: &ApplyBatch) -> io::Result<Option<K::Value>> {
    let raw = batch.get_sm_meta(K::KEY).map_err(io::Error::other)?;
    raw.map(|b| codec::decode(&b)).transpose()
}

/// Stage a state-machine-meta value in an apply batch.
pub fn sm_set<K: MetaKey>(batch: &mut ApplyBatch, value: &K::Value) -> io::Result<()> {
    batch.set_sm_meta(K::KEY, codec::encode(value)?);
    Ok(())
}

/// Decode a state-machine-meta value from a map returned by `Store::snapshot_write`.
pub fn sm_from_map<K: MetaKey>(
    map: &std::collections::BTreeMap<String, Vec<u8>>,
) -> io::Result<Option<K::Value>> {
    map.get(K::KEY).map(|b| codec::decode(b)).transpose()
}
