//! Certificate records as stored in the `certs` column family, and index terms.
//!
//! Every value starts with a format version byte: MessagePack (named fields) of [`CertRecord`]
//! follows. Version 1 had no version vector and origin; they decode as empty and 0. Old versions
//! stay decodable forever (frozen samples below); new fields mean a new version byte.
use serde::{Deserialize, Serialize};

use super::version::VersionVector;
use super::StoreError;

/// Which index a term belongs to. The discriminant is part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum IndexKind {
    /// A primary or subkey fingerprint (v4: 20 bytes, v6: 32 bytes).
    Fingerprint = 1,
    /// A 64-bit key id of the primary key or a subkey.
    KeyId64 = 2,
    /// A 32-bit (short) key id of the primary key or a subkey.
    KeyId32 = 3,
    /// A normalised e-mail address from a user id.
    Email = 4,
    /// A normalised word from a user id, for text search.
    Word = 5,
}

impl IndexKind {
    /// All kinds, in a fixed order.
    pub const ALL: [IndexKind; 5] = [
        IndexKind::Fingerprint,
        IndexKind::KeyId64,
        IndexKind::KeyId32,
        IndexKind::Email,
        IndexKind::Word,
    ];

    pub(crate) fn cf(self) -> &'static str {
        match self {
            IndexKind::Fingerprint => "idx_fpr",
            IndexKind::KeyId64 => "idx_keyid64",
            IndexKind::KeyId32 => "idx_keyid32",
            IndexKind::Email => "idx_email",
            IndexKind::Word => "idx_word",
        }
    }

    /// Text terms have variable length and are terminated by 0x00 in index keys.
    fn is_text(self) -> bool {
        matches!(self, IndexKind::Email | IndexKind::Word)
    }

    /// The key prefix under which all certificates carrying `term` are found.
    pub(crate) fn prefix(self, term: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(term.len() + 1);
        k.extend_from_slice(term);
        if self.is_text() {
            k.push(0);
        }
        k
    }
}

/// One index term of a certificate.
pub type IndexTerm = (IndexKind, Vec<u8>);

/// A stored certificate: canonical bytes plus what reads need without re-parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Primary key fingerprint (binary).
    #[serde(with = "serde_bytes")]
    pub fingerprint: Vec<u8>,
    /// The merged, canonical certificate in binary OpenPGP.
    #[serde(with = "serde_bytes")]
    pub cert: Vec<u8>,
    /// Listing data for `op=index` (encoded by the layer above; opaque here).
    #[serde(with = "serde_bytes")]
    pub summary: Vec<u8>,
    /// Index terms, sorted and deduplicated, so an update can remove stale entries.
    pub terms: Vec<IndexTerm>,
    /// Proposer time (Unix seconds) of the first write.
    pub created_at: u64,
    /// Proposer time (Unix seconds) of the last change.
    pub updated_at: u64,
    /// Raft log index of the last change.
    pub updated_index: u64,
    /// Version vector of the last change (node id → counter); empty for v1 records.
    #[serde(default)]
    pub version: VersionVector,
    /// The node the last change came through (0 for v1 records).
    #[serde(default)]
    pub origin: u64,
}

const V1: u8 = 1;
const V2: u8 = 2;

impl CertRecord {
    /// Encode with the current format version.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![V2];
        out.extend(rmp_serde::to_vec_named(self).expect("records always serialize"));
        out
    }

    /// Decode any known format version.
    pub fn decode(bytes: &[u8]) -> Result<CertRecord, StoreError> {
        match bytes.first() {
            Some(&V1) | Some(&V2) => {
                rmp_serde::from_slice(&bytes[1..]).map_err(|e| StoreError::Corrupt {
                    cf: "certs",
                    reason: e.to_string(),
                })
            }
            Some(&v) => Err(StoreError::UnknownVersion {
                cf: "certs",
                version: v,
            }),
            None => Err(StoreError::Corrupt {
                cf: "certs",
                reason: "empty value".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CertRecord {
        CertRecord {
            fingerprint: vec![0xAB; 20],
            cert: vec![1, 2, 3],
            summary: vec![9],
            terms: vec![(IndexKind::Email, b"a@b.example".to_vec())],
            created_at: 1_700_000_000,
            updated_at: 1_700_000_001,
            updated_index: 7,
            version: VersionVector::default(),
            origin: 0,
        }
    }

    #[test]
    fn record_round_trips() {
        let r = sample();
        assert_eq!(CertRecord::decode(&r.encode()).unwrap(), r);
    }

    /// A frozen v1 record (written by earlier releases) still decodes, with an empty version.
    #[test]
    fn frozen_v1_sample_decodes() {
        let frozen = hex::decode(
            "0187ab66696e6765727072696e74c414ababababababababababababababababababababa463657274\
             c403010203a773756d6d617279c40109a57465726d739192a5456d61696c9b6140622e6578616d70\
             6c65aa637265617465645f6174ce6553f100aa757064617465645f6174ce6553f101ad7570646174\
             65645f696e64657807",
        )
        .unwrap();
        assert_eq!(CertRecord::decode(&frozen).unwrap(), sample());
    }

    /// A frozen v2 sample: if this fails, the on-disk format changed without a version bump.
    #[test]
    fn frozen_v2_sample() {
        let mut r = sample();
        r.version.increment(3);
        r.origin = 3;
        let hex = hex::encode(r.encode());
        assert_eq!(hex, FROZEN_V2, "{hex}");
        assert_eq!(
            CertRecord::decode(&hex::decode(FROZEN_V2).unwrap()).unwrap(),
            r
        );
    }

    const FROZEN_V2: &str =
        "0289ab66696e6765727072696e74c414ababababababababababababababababababababa4636572\
     74c403010203a773756d6d617279c40109a57465726d739192a5456d61696c9b6140622e6578616d\
     706c65aa637265617465645f6174ce6553f100aa757064617465645f6174ce6553f101ad75706461\
     7465645f696e64657807a776657273696f6e810301a66f726967696e03";

    #[test]
    fn unknown_version_is_an_error() {
        assert!(matches!(
            CertRecord::decode(&[9, 1, 2]),
            Err(StoreError::UnknownVersion { version: 9, .. })
        ));
    }
}
