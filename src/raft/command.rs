//! Replicated commands and their responses: the bytes every node applies.
//!
//! Commands are versioned (`Command::V1`) and carry everything apply needs: the proposer's time
//! (apply never reads the clock), a request id (so a retried proposal is not applied twice),
//! and canonical certificate bytes already validated on the receiving node.
use serde::{Deserialize, Serialize};

use super::records::Policies;
pub use super::records::Policy;
pub use super::replay::SignedUse;
use super::routing::Routing;
use crate::store::VersionVector;

/// A replicated state-machine command. New versions are added as new variants; old ones stay
/// decodable forever because they live in logs and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    V1(CommandV1),
}

/// Version 1 of the command format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandV1 {
    /// Unique per client request; apply remembers recent ids and skips duplicates.
    pub request_id: u128,
    /// Proposer's wall-clock time, Unix seconds. The only notion of "now" apply may use.
    pub time: u64,
    /// What to do.
    pub op: Op,
    /// The node that validated and proposed the command (0 in commands written before
    /// versions existed); its counter advances in the versions this command writes.
    #[serde(default)]
    pub origin: u64,
    /// Who asked, for the audit trail (`hkp <address>`, `admin-token`, `admin-key <fpr>`).
    #[serde(default)]
    pub actor: String,
    /// For a command authorised by a signed admin request: the signature's identity and time,
    /// which apply checks against replays and the window ([`super::replay`]).
    #[serde(default)]
    pub signed: Option<SignedUse>,
}

/// The operation a command performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Merge each canonical certificate (binary OpenPGP, already validated) into the store.
    Submit {
        #[serde(with = "serde_bytes_vec")]
        certs: Vec<Vec<u8>>,
        /// The proposer's limits; apply uses these, never the local configuration.
        limits: crate::pgp::Limits,
        /// Per certificate (same order), the version the proposer had stored when it
        /// validated the request. Missing in old commands: no conflict check.
        #[serde(default)]
        bases: Vec<VersionVector>,
        /// Per certificate (same order), the proposer's merge into the record it held, which
        /// apply uses if it merges into the same record (see [`super::cert_row`]).
        #[serde(default)]
        prepared: Vec<Option<super::cert_row::Prepared>>,
    },
    /// Remove certificates by primary fingerprint (upper-case hex), leaving tombstones.
    Delete {
        fingerprints: Vec<String>,
        /// Per fingerprint, the version the proposer saw.
        #[serde(default)]
        bases: Vec<VersionVector>,
        /// `If-Match`: the ETag the stored version must still have, else nothing happens.
        #[serde(default)]
        if_match: Option<String>,
        /// Why (a GDPR request, abuse...), kept in the tombstone.
        #[serde(default)]
        reason: String,
    },
    /// Replace a whole certificate (administrator), already validated and cleaned.
    Replace {
        #[serde(with = "serde_bytes")]
        cert: Vec<u8>,
        base: VersionVector,
        if_match: Option<String>,
        limits: crate::pgp::Limits,
    },
    /// Change the conflict policies from this log index on.
    SetPolicies {
        policies: Policies,
        /// The policies the proposer changed: if others are in force when this applies (a
        /// concurrent change), nothing changes and the outcome is
        /// [`SETTINGS_CHANGED`]. Absent in older commands: unconditional.
        #[serde(default)]
        expect: Option<Policies>,
    },
    /// Settle conflict `id`: `current`, `incoming` or `merge`.
    Resolve {
        id: u64,
        choose: String,
        note: String,
        /// The proposer's limits for the merge (absent in older commands: the built-in ones).
        #[serde(default)]
        limits: Option<crate::pgp::Limits>,
    },
    /// Record in the audit trail a request this node refused before it became a write (a
    /// refused join, a replayed admin signature); the command's actor says who asked.
    AuditRefusal {
        /// What was refused: `join`, `delete`, `replace`.
        action: String,
        /// Why, one line.
        reason: String,
        /// The certificates the refused request named (none for a join).
        #[serde(default)]
        fingerprints: Vec<String>,
        /// Refusals the proposer left out of the audit since the last audited one (its rate
        /// limit).
        suppressed: u64,
    },
    /// Changes nothing: every node computes the digest of its state right after applying this
    /// entry, so `/cluster/repair` compares replicas at one and the same log index.
    Checkpoint,
    /// Replace the routing settings (read consistency, learners, weights) from this log
    /// index on. Added after `Resolve`; a node older than this variant cannot apply it.
    SetRouting {
        routing: Routing,
        /// As for [`Op::SetPolicies`]: the settings the proposer changed.
        #[serde(default)]
        expect: Option<Routing>,
    },
}

/// The reason of a settings change refused because the settings it was based on are no
/// longer in force: the proposer reads them again and retries.
pub const SETTINGS_CHANGED: &str = "the settings changed since they were read";

impl Command {
    /// Roughly how many bytes the command carries (its certificates), for sizing batches.
    pub fn payload_bytes(&self) -> usize {
        let Command::V1(c) = self;
        let certs = match &c.op {
            Op::Submit {
                certs, prepared, ..
            } => {
                certs.iter().map(Vec::len).sum::<usize>()
                    + prepared
                        .iter()
                        .flatten()
                        .map(super::cert_row::Prepared::payload_bytes)
                        .sum::<usize>()
            }
            Op::Replace { cert, .. } => cert.len(),
            _ => 0,
        };
        certs + 256
    }

    /// True for [`Op::Checkpoint`].
    pub fn is_checkpoint(&self) -> bool {
        matches!(
            self,
            Command::V1(CommandV1 {
                op: Op::Checkpoint,
                ..
            })
        )
    }
}

/// What applying one command produced, in the order of the command's items.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcomes: Vec<ApplyOutcome>,
}

/// The result of applying one item of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// The certificate was not stored before.
    New { fingerprint: String },
    /// The stored certificate gained packets.
    Updated { fingerprint: String },
    /// The merge changed nothing.
    Unchanged { fingerprint: String },
    /// A delete removed the certificate.
    Deleted { fingerprint: String },
    /// A delete found nothing.
    NotFound { fingerprint: String },
    /// The item could not be applied (identical on every node).
    Rejected { fingerprint: String, reason: String },
    /// The command's request id was applied before; nothing was done again.
    Duplicate,
    /// A replace stored the new certificate.
    Replaced { fingerprint: String },
    /// The write raced another one; `status` is `open` (kept for an operator) or `resolved`
    /// (settled by `policy`).
    Conflict {
        fingerprint: String,
        id: u64,
        policy: Policy,
        status: String,
    },
    /// The reject policy refused a stale write; `current` is the stored version's ETag.
    Stale {
        fingerprint: String,
        current: String,
    },
    /// `If-Match` did not match the stored version's ETag (`current`, empty if none).
    PreconditionFailed {
        fingerprint: String,
        current: String,
    },
    /// Policies changed.
    PoliciesSet,
    /// A conflict was resolved.
    Resolved { id: u64, fingerprint: String },
    /// A checkpoint for `/cluster/repair`.
    Checkpointed,
    /// The signed admin request authorising the command was refused, nothing was done:
    /// `replay` when the signature was already used, else it was made outside the window.
    SignatureRefused { replay: bool, reason: String },
    /// A refusal was recorded in the audit trail.
    Noted,
    /// The routing settings changed.
    RoutingSet,
}

mod serde_bytes_vec {
    //! Encode `Vec<Vec<u8>>` as a sequence of byte strings (compact in MessagePack).
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let b: Vec<&serde_bytes::Bytes> = v.iter().map(|x| serde_bytes::Bytes::new(x)).collect();
        b.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let b: Vec<serde_bytes::ByteBuf> = Vec::deserialize(d)?;
        Ok(b.into_iter().map(|x| x.into_vec()).collect())
    }
}
