//! Replicated key-value tables beside the certificates: tombstones of deleted certificates,
//! conflicts, the audit trail and the used admin signatures. The store keeps opaque values under
//! ordered keys; the raft layer owns their encoding and meaning. Writes go through the apply
//! batch (same `WriteBatch` as everything else), reads through the store; all travel in
//! snapshots.
use rocksdb::{Direction, IteratorMode};

use super::{ApplyBatch, Store, StoreError};

/// A state-machine table. The discriminant is part of the snapshot format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Table {
    /// Primary fingerprint → tombstone of a deleted certificate.
    Tombstones = 1,
    /// Conflict id (big-endian u64) → conflict record.
    Conflicts = 2,
    /// Log index (big-endian u64) ++ sequence (big-endian u16) → audit entry.
    Audit = 3,
    /// Signed admin requests already used (replay protection): `h` ++ id → expiry and
    /// request, `e` ++ expiry (big-endian u64) ++ id → empty, for pruning in expiry order.
    UsedSignatures = 4,
}

impl Table {
    /// All tables, in snapshot order.
    pub const ALL: [Table; 4] = [
        Table::Tombstones,
        Table::Conflicts,
        Table::Audit,
        Table::UsedSignatures,
    ];

    pub(crate) fn cf(self) -> &'static str {
        match self {
            Table::Tombstones => "tombstones",
            Table::Conflicts => "conflicts",
            Table::Audit => "audit",
            Table::UsedSignatures => "used_signatures",
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<Table> {
        Table::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

/// Key-value pairs read from a table.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

impl ApplyBatch {
    /// A table value, including this batch's pending writes.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.pending_table(table, key) {
            return Ok(v);
        }
        self.store().get(table, key)
    }
}

impl ApplyBatch {
    /// Up to `limit` entries with keys from `from` (inclusive) upwards, as this batch sees
    /// them: committed entries merged with the batch's pending writes (deleted ones left out,
    /// pending ones included). Deterministic whatever entries were batched together before.
    pub fn scan(
        &self,
        table: Table,
        from: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let start = from.unwrap_or_default().to_vec();
        let mut pending = self
            .pending_range(table, &start)
            .map(|(k, v)| (k.clone(), v.clone()))
            .peekable();
        let cf = self.store().cf(table.cf());
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut committed = self.store().db.iterator_cf(cf, mode).peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let next_committed = match committed.peek() {
                Some(Ok((k, _))) => Some(k.to_vec()),
                Some(Err(e)) => return Err(e.clone().into()),
                None => None,
            };
            let take_pending = match (pending.peek(), &next_committed) {
                (Some((pk, _)), Some(ck)) => pk <= ck,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_pending {
                let (k, v) = pending.next().expect("peeked");
                if next_committed.as_ref() == Some(&k) {
                    committed.next();
                }
                if let Some(v) = v {
                    out.push((k, v));
                }
            } else {
                let (k, v) = committed.next().expect("peeked")?;
                out.push((k.into_vec(), v.into_vec()));
            }
        }
        Ok(out)
    }
}

impl Store {
    /// A committed table value.
    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(table.cf()), key)?)
    }

    /// Up to `limit` committed entries with keys from `from` (inclusive) upwards, or, with
    /// `reverse`, from `from` downwards (`None`: from the end).
    pub fn scan(
        &self,
        table: Table,
        from: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let cf = self.cf(table.cf());
        let mode = match (from, reverse) {
            (Some(k), false) => IteratorMode::From(k, Direction::Forward),
            (Some(k), true) => IteratorMode::From(k, Direction::Reverse),
            (None, false) => IteratorMode::Start,
            (None, true) => IteratorMode::End,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, mode).take(limit) {
            let (k, v) = item?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_written_with_the_batch_and_scanned_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        b.put(Table::Audit, &[0, 2], b"two".to_vec());
        b.put(Table::Audit, &[0, 1], b"one".to_vec());
        b.put(Table::Tombstones, b"fpr", b"t".to_vec());
        assert_eq!(
            b.get(Table::Tombstones, b"fpr").unwrap(),
            Some(b"t".to_vec())
        );
        assert_eq!(
            s.get(Table::Tombstones, b"fpr").unwrap(),
            None,
            "not before commit"
        );
        b.delete(Table::Tombstones, b"fpr");
        assert_eq!(b.get(Table::Tombstones, b"fpr").unwrap(), None);
        b.commit().unwrap();
        let all = s.scan(Table::Audit, None, false, 10).unwrap();
        assert_eq!(all[0].1, b"one");
        assert_eq!(all[1].1, b"two");
        let last = s.scan(Table::Audit, None, true, 1).unwrap();
        assert_eq!(last[0].1, b"two");
        assert_eq!(s.get(Table::Tombstones, b"fpr").unwrap(), None);
    }

    #[test]
    fn a_batch_scan_merges_committed_entries_with_pending_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        for k in [1u8, 3, 5, 7] {
            b.put(Table::Audit, &[k], vec![k]);
        }
        b.put(Table::Conflicts, &[2], b"other table".to_vec());
        b.commit().unwrap();
        let mut b = s.begin_apply();
        b.delete(Table::Audit, &[1]);
        b.put(Table::Audit, &[2], vec![20]);
        b.put(Table::Audit, &[5], vec![50]);
        b.delete(Table::Audit, &[6]);
        let keys = |e: Entries| e.into_iter().map(|(k, v)| (k[0], v[0])).collect::<Vec<_>>();
        assert_eq!(
            keys(b.scan(Table::Audit, None, 10).unwrap()),
            vec![(2, 20), (3, 3), (5, 50), (7, 7)]
        );
        assert_eq!(
            keys(b.scan(Table::Audit, Some(&[3]), 2).unwrap()),
            vec![(3, 3), (5, 50)]
        );
        assert_eq!(keys(b.scan(Table::Audit, None, 1).unwrap()), vec![(2, 20)]);
        assert!(b.scan(Table::UsedSignatures, None, 10).unwrap().is_empty());
    }

    #[test]
    fn every_table_round_trips_its_discriminant() {
        for t in Table::ALL {
            assert_eq!(Table::from_u8(t as u8), Some(t));
        }
    }
}
