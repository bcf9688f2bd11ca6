//! Limits and the flooding defence, carried inside Raft commands so apply is identical on
//! every node whatever each node's local configuration says.
use serde::{Deserialize, Serialize};

/// What to do with third-party certifications (signatures by other keys on user ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode", content = "per_uid")]
pub enum ThirdPartyPolicy {
    /// Keep all of them (subject to the size caps).
    Keep,
    /// Drop all of them (Hagrid's choice).
    Drop,
    /// Keep at most N per user id, the newest.
    Cap(u32),
}

/// Caps applied to every certificate, at ingestion and again after each merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Third-party certification policy.
    pub third_party: ThirdPartyPolicy,
    /// Maximum serialized certificate size in bytes.
    pub max_cert_bytes: u32,
    /// Maximum size of one packet in bytes; larger optional packets are dropped.
    pub max_packet_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            third_party: ThirdPartyPolicy::Cap(100),
            max_cert_bytes: 1 << 20,
            max_packet_bytes: 256 << 10,
        }
    }
}
