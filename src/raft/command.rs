//! Replicated commands and their responses: the bytes every node applies.
//!
//! Commands are versioned (`Command::V1`) and carry everything apply needs: the proposer's time
//! (apply never reads the clock), a request id (so a retried proposal is not applied twice),
//! and canonical certificate bytes already validated on the receiving node.
use serde::{Deserialize, Serialize};

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
    },
    /// Remove certificates by primary fingerprint (upper-case hex).
    Delete { fingerprints: Vec<String> },
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
