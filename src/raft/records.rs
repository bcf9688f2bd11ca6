//! What the raft layer keeps in the store's tables besides certificates: tombstones of deleted
//! certificates, conflicts, the audit trail, the conflict policies and the routing settings
//! (both in `sm_meta`). All are
//! MessagePack with named fields, written only by apply, so every node holds identical bytes.
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::routing::Routing;
use crate::store::{ApplyBatch, Store, StoreError, Table, VersionVector};

/// How a write whose base version does not descend from the stored one is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Union of packets (grow-only, order independent); against a tombstone, the certificate
    /// comes back.
    Merge,
    /// The write with the later proposer time wins (ties: the higher origin node id).
    LastWriterWins,
    /// The stale write is refused; its client gets 409 with the current version.
    Reject,
    /// The stored version stays; the incoming one is kept as an open conflict.
    Manual,
}

/// The policy per kind of race.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// An HKP upload racing another update of the same certificate.
    pub add: Policy,
    /// An HKP upload that had not seen a delete of the certificate (a stale copy).
    pub add_after_delete: Policy,
    /// An administrator's replace racing another update.
    pub replace: Policy,
    /// An administrator's delete racing an update it had not seen.
    pub delete: Policy,
    /// Audit retention: keep the entries of the last this many log indexes (0: keep all).
    #[serde(default)]
    pub audit_keep: u64,
}

impl Default for Policies {
    /// Concurrent uploads merge with no operator work; nothing an administrator deleted comes
    /// back silently; a replace that raced an update waits for an operator; a delete wins over
    /// an update proposed before it.
    fn default() -> Policies {
        Policies {
            add: Policy::Merge,
            add_after_delete: Policy::Manual,
            replace: Policy::Manual,
            delete: Policy::LastWriterWins,
            audit_keep: 0,
        }
    }
}

const POLICIES_KEY: &str = "conflict_policies";
const ROUTING_KEY: &str = "routing";

/// A deleted certificate's marker: stale copies cannot resurrect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub version: VersionVector,
    pub time: u64,
    pub index: u64,
    pub origin: u64,
    pub actor: String,
    pub reason: String,
}

/// One side of a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// Its version (for the incoming side: the base it was proposed on).
    pub version: VersionVector,
    /// The node it came through.
    pub origin: u64,
    /// Proposer time of that version.
    pub time: u64,
    /// The certificate (binary); `None` for a delete or a tombstone.
    #[serde(with = "serde_bytes")]
    pub cert: Option<Vec<u8>>,
    /// Who wrote it.
    pub actor: String,
}

/// How a conflict ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// `current`, `incoming` or `merge`; for policy resolutions the policy's name.
    pub choose: String,
    /// `policy` or `operator`.
    pub by: String,
    pub note: String,
    pub actor: String,
    pub index: u64,
    pub time: u64,
}

/// A detected race on one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub id: u64,
    /// Upper-case hex primary fingerprint.
    pub fingerprint: String,
    /// `add`, `add_after_delete`, `replace` or `delete`.
    pub kind: String,
    /// The policy in force when it was detected.
    pub policy: Policy,
    /// `open`, `resolved` or `rejected`.
    pub status: String,
    pub index: u64,
    pub time: u64,
    pub current: Side,
    pub incoming: Side,
    pub resolution: Option<Resolution>,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub seq: u16,
    /// Proposer time, Unix seconds.
    pub time: u64,
    /// Who: `hkp <client address>`, `admin-token`, `admin-key <fpr>`, `raft`.
    pub actor: String,
    /// The node the command came through.
    pub origin: u64,
    /// `add`, `replace`, `delete`, `resolve`, `policies`, `routing`, `membership`.
    pub action: String,
    pub fingerprint: Option<String>,
    /// The outcome, one line.
    pub outcome: String,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("records serialize")
}

fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Corrupt {
        cf: table,
        reason: e.to_string(),
    })
}

/// The policies in force (in the batch).
pub fn policies(batch: &ApplyBatch) -> Result<Policies, StoreError> {
    batch
        .get_sm_meta(POLICIES_KEY)?
        .map_or(Ok(Policies::default()), |b| dec("sm_meta", &b))
}

/// Set the policies (in the batch).
pub fn set_policies(batch: &mut ApplyBatch, p: &Policies) {
    batch.set_sm_meta(POLICIES_KEY, enc(p));
}

/// The committed policies.
pub fn read_policies(store: &Store) -> Result<Policies, StoreError> {
    store
        .sm_meta_get(POLICIES_KEY)?
        .map_or(Ok(Policies::default()), |b| dec("sm_meta", &b))
}

/// Set the routing settings (in the batch).
pub fn set_routing(batch: &mut ApplyBatch, r: &Routing) {
    batch.set_sm_meta(ROUTING_KEY, enc(r));
}

/// The routing settings in force (in the batch).
pub fn routing(batch: &ApplyBatch) -> Result<Routing, StoreError> {
    batch
        .get_sm_meta(ROUTING_KEY)?
        .map_or(Ok(Routing::default()), |b| dec("sm_meta", &b))
}

/// The committed routing settings (the defaults until an operator sets some).
pub fn read_routing(store: &Store) -> Result<Routing, StoreError> {
    store
        .sm_meta_get(ROUTING_KEY)?
        .map_or(Ok(Routing::default()), |b| dec("sm_meta", &b))
}

/// The tombstone of `fpr` (in the batch).
pub fn tombstone(batch: &ApplyBatch, fpr: &[u8]) -> Result<Option<Tombstone>, StoreError> {
    batch
        .get(Table::Tombstones, fpr)?
        .map(|b| dec("tombstones", &b))
        .transpose()
}

/// The committed tombstone of `fpr`.
pub fn read_tombstone(store: &Store, fpr: &[u8]) -> Result<Option<Tombstone>, StoreError> {
    store
        .get(Table::Tombstones, fpr)?
        .map(|b| dec("tombstones", &b))
        .transpose()
}

pub fn put_tombstone(batch: &mut ApplyBatch, fpr: &[u8], t: &Tombstone) {
    batch.put(Table::Tombstones, fpr, enc(t));
}

pub fn conflict(batch: &ApplyBatch, id: u64) -> Result<Option<ConflictRecord>, StoreError> {
    batch
        .get(Table::Conflicts, &id.to_be_bytes())?
        .map(|b| dec("conflicts", &b))
        .transpose()
}

pub fn put_conflict(batch: &mut ApplyBatch, c: &ConflictRecord) {
    batch.put(Table::Conflicts, &c.id.to_be_bytes(), enc(c));
}

pub fn read_conflict(store: &Store, id: u64) -> Result<Option<ConflictRecord>, StoreError> {
    store
        .get(Table::Conflicts, &id.to_be_bytes())?
        .map(|b| dec("conflicts", &b))
        .transpose()
}

/// Conflicts, newest first, with ids below `before` (exclusive), up to `limit` scanned.
pub fn scan_conflicts(
    store: &Store,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<ConflictRecord>, StoreError> {
    let from = before.map(|b| b.saturating_sub(1).to_be_bytes());
    if before == Some(0) {
        return Ok(Vec::new());
    }
    store
        .scan(Table::Conflicts, from.as_ref().map(|k| &k[..]), true, limit)?
        .iter()
        .map(|(_, v)| dec("conflicts", v))
        .collect()
}

pub fn put_audit(batch: &mut ApplyBatch, e: &AuditEntry) {
    let key = [&e.index.to_be_bytes()[..], &e.seq.to_be_bytes()].concat();
    batch.put(Table::Audit, &key, enc(e));
}

/// Most old audit entries removed per write: pruning keeps up with writing, one batch stays small.
const PRUNE_BATCH: usize = 64;

/// Remove audit entries older than `keep` log indexes before `index` (none when `keep` is 0).
/// Deterministic: reads the state as this batch sees it (so it does not matter which entries
/// were applied in one batch), removes at most [`PRUNE_BATCH`] entries.
pub fn prune_audit(batch: &mut ApplyBatch, index: u64, keep: u64) -> Result<(), StoreError> {
    if keep == 0 || index <= keep {
        return Ok(());
    }
    let below = index - keep + 1;
    for (k, _) in batch.scan(Table::Audit, None, PRUNE_BATCH)? {
        let at = k
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        if at.is_none_or(|at| at >= below) {
            break;
        }
        batch.delete(Table::Audit, &k);
    }
    Ok(())
}

/// Audit entries in log order from index `from` (inclusive), up to `limit`.
pub fn scan_audit(
    store: &Store,
    from: AuditCursor,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    store
        .scan(Table::Audit, Some(&from.key()), false, limit)?
        .iter()
        .map(|(_, v)| dec("audit", v))
        .collect()
}

/// A position in the audit trail: log index and sequence within it (one write may leave many
/// entries at one index). Written `INDEX` or `INDEX.SEQ`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditCursor {
    pub index: u64,
    pub seq: u16,
}

impl AuditCursor {
    fn key(self) -> [u8; 10] {
        let mut k = [0u8; 10];
        k[..8].copy_from_slice(&self.index.to_be_bytes());
        k[8..].copy_from_slice(&self.seq.to_be_bytes());
        k
    }

    /// The position right after `e`.
    pub fn after(e: &AuditEntry) -> AuditCursor {
        match e.seq.checked_add(1) {
            Some(seq) => AuditCursor {
                index: e.index,
                seq,
            },
            None => AuditCursor {
                index: e.index.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// Parse `INDEX` or `INDEX.SEQ`.
    pub fn parse(s: &str) -> Option<AuditCursor> {
        let (index, seq) = s.split_once('.').unwrap_or((s, "0"));
        Some(AuditCursor {
            index: index.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index, self.seq)
    }
}
