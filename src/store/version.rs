//! [`VersionVector`]: which writes a certificate record has seen, one counter per node.
//!
//! Raft orders every write, so a "conflict" in keyraft is not two writes at the same instant but
//! a write *based on* a version its proposing node had not yet caught up with. Every stored
//! certificate record carries a version vector (node id → number of changes that came through
//! that node); a write command carries the vector its node saw when it validated the request (its
//! base). At apply, `base.descends(stored)` says the writer saw everything stored so far and the
//! write applies (the origin's counter is then incremented); otherwise the write is stale and the
//! configured conflict policy decides.
//!
//! This module is pure and deterministic: no clock, no randomness, no I/O and no `HashMap`. Entries
//! live in a `BTreeMap`, zero counters are never stored, so equal vectors have one representation,
//! one [`encode`](VersionVector::encode)d form, one [`etag`](VersionVector::etag) and one
//! [`Display`](std::fmt::Display) form on every node. It depends on nothing in the crate.
//!
//! # Common operations
//! - [`VersionVector::compare`] → [`Causality`]: `Equal`, `Before`, `After` or `Concurrent`.
//! - [`VersionVector::descends`]: has `self` seen everything `other` has?
//! - [`VersionVector::join`]: the least vector that descends from both (pointwise maximum).
//! - [`VersionVector::increment`]: record one more change through a node.
//! - [`VersionVector::encode`] / [`VersionVector::decode`]: canonical bytes;
//!   [`VersionVector::etag`]: a quoted HTTP entity tag derived from them.
//!
//! ```
//! use keyraft::store::{Causality, VersionVector};
//!
//! let mut a = VersionVector::default();
//! a.increment(1);
//! let mut b = a.clone();
//! b.increment(7);
//! assert_eq!(a.compare(&b), Causality::Before);
//! a.increment(2);
//! assert_eq!(a.compare(&b), Causality::Concurrent);
//! let j = a.join(&b);
//! assert!(j.descends(&a) && j.descends(&b));
//! assert_eq!(j.to_string(), "{1:1,2:1,7:1}");
//! assert_eq!(VersionVector::decode(&j.encode()), Ok(j));
//! ```
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A version vector: node id → counter. Zero counters are never stored (a missing node counts as
/// zero), so two equal vectors are equal as values, as bytes and as ETags.
///
/// Serialized with serde as a map of node id to counter; deserializing a map with a zero counter
/// fails, like [`VersionVector::decode`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "BTreeMap<u64, u64>", try_from = "BTreeMap<u64, u64>")]
pub struct VersionVector(BTreeMap<u64, u64>);

/// How two version vectors relate in the happened-before partial order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Causality {
    /// The same vector.
    Equal,
    /// `self` happened before `other`: `other` descends from `self` and differs from it.
    Before,
    /// `self` happened after `other`: `self` descends from `other` and differs from it.
    After,
    /// Neither descends from the other: each has seen a change the other has not.
    Concurrent,
}

impl VersionVector {
    /// The empty vector (no changes seen); the same as `VersionVector::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `node` (zero if the vector has no entry for it).
    pub fn get(&self, node: u64) -> u64 {
        self.0.get(&node).copied().unwrap_or(0)
    }

    /// True if no change has been recorded (every counter is zero).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The non-zero entries, ordered by node id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&node, &counter)| (node, counter))
    }

    /// Record one more change through `node`. The result is [`Causality::After`] the vector
    /// before the call. (The counter saturates at `u64::MAX`, which 2^64 writes would take.)
    pub fn increment(&mut self, node: u64) {
        let counter = self.0.entry(node).or_insert(0);
        *counter = counter.saturating_add(1);
    }

    /// True if `self` has seen everything `other` has: every counter of `self` is at least the
    /// matching counter of `other`. Reflexive, antisymmetric and transitive (a partial order).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .0
            .iter()
            .all(|(&node, &counter)| self.get(node) >= counter)
    }

    /// Where `self` stands relative to `other`; see [`Causality`].
    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (false, true) => Causality::Before,
            (true, false) => Causality::After,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The pointwise maximum: the least vector that descends from both `self` and `other`.
    /// Commutative, associative and idempotent.
    pub fn join(&self, other: &VersionVector) -> VersionVector {
        let mut joined = self.0.clone();
        for (&node, &counter) in &other.0 {
            let entry = joined.entry(node).or_insert(0);
            *entry = (*entry).max(counter);
        }
        VersionVector(joined)
    }

    /// The canonical binary form: the number of entries, then each (node id, counter) pair in
    /// increasing node id order, all as big-endian `u64`. Equal vectors give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 16 * self.0.len());
        out.extend_from_slice(&(self.0.len() as u64).to_be_bytes());
        for (&node, &counter) in &self.0 {
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
        out
    }

    /// Decode the form [`encode`](Self::encode) writes. Only canonical encodings are accepted
    /// (node ids strictly increasing, no zero counters, no trailing bytes), so
    /// `decode(b).map(|v| v.encode()) == Ok(b)` for every accepted `b`.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (count, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| format!("version vector: {} bytes, need at least 8", bytes.len()))?;
        let count = u64::from_be_bytes(*count);
        if count.checked_mul(16) != Some(rest.len() as u64) {
            return Err(format!(
                "version vector: {count} entries need {} bytes after the count, found {}",
                u128::from(count) * 16,
                rest.len()
            ));
        }
        let mut map = BTreeMap::new();
        let mut previous: Option<u64> = None;
        for pair in rest.chunks_exact(16) {
            let (node, counter) = pair.split_at(8);
            let node = u64::from_be_bytes(node.try_into().expect("8 bytes"));
            let counter = u64::from_be_bytes(counter.try_into().expect("8 bytes"));
            if previous.is_some_and(|p| p >= node) {
                return Err(format!(
                    "version vector: node ids not strictly increasing at node {node}"
                ));
            }
            if counter == 0 {
                return Err(format!("version vector: zero counter for node {node}"));
            }
            previous = Some(node);
            map.insert(node, counter);
        }
        Ok(VersionVector(map))
    }

    /// A strong HTTP entity tag for this version: the first 16 bytes of the SHA-256 of the
    /// canonical encoding, in lowercase hex, in double quotes (`"` + 32 hex digits + `"`).
    pub fn etag(&self) -> String {
        let digest = Sha256::digest(self.encode());
        format!("\"{}\"", hex::encode(&digest[..16]))
    }
}

impl TryFrom<BTreeMap<u64, u64>> for VersionVector {
    type Error = String;

    /// Accepts any map without zero counters (a zero counter would be a second spelling of the
    /// same vector).
    fn try_from(map: BTreeMap<u64, u64>) -> Result<Self, String> {
        match map.iter().find(|(_, &counter)| counter == 0) {
            Some((node, _)) => Err(format!("version vector: zero counter for node {node}")),
            None => Ok(VersionVector(map)),
        }
    }
}

impl From<VersionVector> for BTreeMap<u64, u64> {
    fn from(vector: VersionVector) -> Self {
        vector.0
    }
}

/// `{node:counter,...}` in increasing node id order, e.g. `{1:3,7:2}`; `{}` when empty.
impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (node, counter)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{node}:{counter}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(entries: &[(u64, u64)]) -> VersionVector {
        VersionVector::try_from(entries.iter().copied().collect::<BTreeMap<_, _>>()).unwrap()
    }

    /// Small node ids and counters, so that random pairs and triples are often comparable.
    fn small() -> impl Strategy<Value = VersionVector> {
        prop::collection::btree_map(0u64..4, 1u64..4, 0..4).prop_map(VersionVector)
    }

    /// Wider vectors, including ids and counters near the ends of the `u64` range.
    fn any_vv() -> impl Strategy<Value = VersionVector> {
        let id = prop_oneof![0u64..16, any::<u64>()];
        let counter = prop_oneof![1u64..16, 1u64..=u64::MAX];
        prop::collection::btree_map(id, counter, 0..8).prop_map(VersionVector)
    }

    #[test]
    fn empty_vector() {
        let v = VersionVector::new();
        assert!(v.is_empty());
        assert_eq!(v.get(42), 0);
        assert_eq!(v.to_string(), "{}");
        assert_eq!(v.encode(), vec![0; 8]);
        assert_eq!(v.compare(&VersionVector::default()), Causality::Equal);
    }

    #[test]
    fn increment_get_and_display() {
        let mut v = VersionVector::new();
        v.increment(7);
        v.increment(1);
        v.increment(7);
        v.increment(1);
        v.increment(1);
        assert_eq!(v.get(1), 3);
        assert_eq!(v.get(7), 2);
        assert_eq!(v.get(2), 0);
        assert!(!v.is_empty());
        assert_eq!(v.to_string(), "{1:3,7:2}");
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![(1, 3), (7, 2)]);
    }

    #[test]
    fn compare_cases() {
        let a = vv(&[(1, 1)]);
        let b = vv(&[(1, 1), (2, 1)]);
        let c = vv(&[(1, 2)]);
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert_eq!(c.compare(&b), Causality::Concurrent);
        assert_eq!(VersionVector::new().compare(&a), Causality::Before);
        assert_eq!(b.join(&c), vv(&[(1, 2), (2, 1)]));
    }

    #[test]
    fn encoding_is_big_endian_count_then_pairs() {
        let bytes = vv(&[(1, 3), (7, 2)]).encode();
        let mut expected = Vec::new();
        for n in [2u64, 1, 3, 7, 2] {
            expected.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(bytes, expected);
    }

    #[test]
    fn decode_rejects_non_canonical_input() {
        let enc = |words: &[u64]| {
            words
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect::<Vec<_>>()
        };
        assert!(VersionVector::decode(&[]).is_err());
        assert!(VersionVector::decode(&[0; 7]).is_err());
        // Trailing byte, missing pair, absurd count.
        let mut trailing = enc(&[0]);
        trailing.push(0);
        assert!(VersionVector::decode(&trailing).is_err());
        assert!(VersionVector::decode(&enc(&[1])).is_err());
        assert!(VersionVector::decode(&enc(&[u64::MAX, 1, 1])).is_err());
        assert!(VersionVector::decode(&enc(&[1 << 60])).is_err());
        // Unsorted, duplicate, zero counter.
        assert!(VersionVector::decode(&enc(&[2, 7, 2, 1, 3])).is_err());
        assert!(VersionVector::decode(&enc(&[2, 1, 2, 1, 3])).is_err());
        assert!(VersionVector::decode(&enc(&[1, 1, 0])).is_err());
        assert_eq!(
            VersionVector::decode(&enc(&[2, 1, 3, 7, 2])),
            Ok(vv(&[(1, 3), (7, 2)]))
        );
    }

    #[test]
    fn etag_is_quoted_hex_and_follows_the_version() {
        let a = vv(&[(1, 3), (7, 2)]);
        let tag = a.etag();
        assert_eq!(tag.len(), 34);
        assert!(tag.starts_with('"') && tag.ends_with('"'));
        assert!(tag[1..33]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(tag, a.clone().etag());
        let mut b = a.clone();
        b.increment(7);
        assert_ne!(a.etag(), b.etag());
        // Frozen: ETags handed to clients must not change between releases.
        assert_eq!(
            VersionVector::new().etag(),
            "\"af5570f5a1810b7af78caf4bc70a660f\""
        );
    }

    #[test]
    fn serde_round_trip_and_zero_counters_refused() {
        let v = vv(&[(1, 3), (7, 2)]);
        let packed = rmp_serde::to_vec(&v).unwrap();
        assert_eq!(rmp_serde::from_slice::<VersionVector>(&packed).unwrap(), v);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"1":3,"7":2}"#);
        assert_eq!(serde_json::from_str::<VersionVector>(&json).unwrap(), v);
        assert!(serde_json::from_str::<VersionVector>(r#"{"1":0}"#).is_err());
    }

    proptest! {
        #[test]
        fn descends_is_reflexive(a in any_vv()) {
            prop_assert!(a.descends(&a));
            prop_assert_eq!(a.compare(&a), Causality::Equal);
        }

        #[test]
        fn descends_is_antisymmetric(a in small(), b in small()) {
            if a.descends(&b) && b.descends(&a) {
                prop_assert_eq!(a, b);
            }
        }

        #[test]
        fn descends_is_transitive(a in small(), b in small(), c in small()) {
            if c.descends(&b) && b.descends(&a) {
                prop_assert!(c.descends(&a));
            }
        }

        #[test]
        fn descends_is_transitive_along_chains(a in any_vv(), x in small(), y in small()) {
            // Random triples rarely form a chain; build one so the premise always holds.
            let b = a.join(&x);
            let c = b.join(&y);
            prop_assert!(b.descends(&a) && c.descends(&b) && c.descends(&a));
        }

        #[test]
        fn join_is_commutative(a in any_vv(), b in any_vv()) {
            prop_assert_eq!(a.join(&b), b.join(&a));
        }

        #[test]
        fn join_is_associative(a in any_vv(), b in any_vv(), c in any_vv()) {
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
        }

        #[test]
        fn join_is_idempotent(a in any_vv(), b in any_vv()) {
            prop_assert_eq!(a.join(&a), a.clone());
            prop_assert_eq!(a.join(&b).join(&b), a.join(&b));
        }

        #[test]
        fn join_is_an_upper_bound(a in any_vv(), b in any_vv()) {
            let j = a.join(&b);
            prop_assert!(j.descends(&a));
            prop_assert!(j.descends(&b));
        }

        #[test]
        fn join_is_the_least_upper_bound(a in small(), b in small(), w in small()) {
            if w.descends(&a) && w.descends(&b) {
                prop_assert!(w.descends(&a.join(&b)));
            }
            // Also with an upper bound that certainly exists.
            let w = a.join(&b).join(&w);
            prop_assert!(w.descends(&a.join(&b)));
        }

        #[test]
        fn join_is_the_other_when_it_descends(a in small(), b in small()) {
            if b.descends(&a) {
                prop_assert_eq!(a.join(&b), b);
            }
        }

        #[test]
        fn increment_moves_after(a in small(), node in 0u64..6) {
            let mut b = a.clone();
            b.increment(node);
            prop_assert_eq!(b.get(node), a.get(node) + 1);
            prop_assert_eq!(b.compare(&a), Causality::After);
            prop_assert_eq!(a.compare(&b), Causality::Before);
        }

        #[test]
        fn compare_agrees_with_descends(a in small(), b in small()) {
            let expected = match (a.descends(&b), b.descends(&a)) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::After,
                (false, true) => Causality::Before,
                (false, false) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
            let mirrored = match expected {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                same => same,
            };
            prop_assert_eq!(b.compare(&a), mirrored);
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn encode_decode_round_trip(a in any_vv()) {
            let bytes = a.encode();
            prop_assert_eq!(bytes.len(), 8 + 16 * a.iter().count());
            prop_assert_eq!(VersionVector::decode(&bytes), Ok(a.clone()));
            // Equal values, equal bytes, equal text.
            let again = VersionVector::decode(&bytes).unwrap();
            prop_assert_eq!(again.encode(), bytes);
            prop_assert_eq!(again.etag(), a.etag());
            prop_assert_eq!(again.to_string(), a.to_string());
        }

        #[test]
        fn random_bytes_decode_only_if_canonical(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = VersionVector::decode(&bytes) {
                prop_assert_eq!(v.encode(), bytes);
            }
        }

        #[test]
        fn well_framed_input_decodes_only_if_canonical(
            pairs in prop::collection::vec((0u64..4, 0u64..3), 0..5),
            count_delta in -1i64..=1,
        ) {
            // Right length and a plausible count, so the sortedness/duplicate/zero checks are
            // what decides (random bytes almost never get that far).
            let count = (pairs.len() as i64 + count_delta).max(0) as u64;
            let mut bytes = count.to_be_bytes().to_vec();
            for (node, counter) in &pairs {
                bytes.extend_from_slice(&node.to_be_bytes());
                bytes.extend_from_slice(&counter.to_be_bytes());
            }
            match VersionVector::decode(&bytes) {
                Ok(v) => prop_assert_eq!(v.encode(), bytes),
                Err(_) => {
                    let canonical = count == pairs.len() as u64
                        && pairs.windows(2).all(|w| w[0].0 < w[1].0)
                        && pairs.iter().all(|&(_, c)| c > 0);
                    prop_assert!(!canonical, "canonical input refused");
                }
            }
        }
    }
}
