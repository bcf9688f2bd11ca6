//! Replicated key-value tables beside the certificates: tombstones of deleted certificates,
//! conflicts, and the audit trail. The store keeps opaque values under ordered keys; the raft
//! layer owns their encoding and meaning. Writes go through the apply batch (same `WriteBatch`
//! as everything else), reads through the store; all three travel in snapshots.
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
}

impl Table {
    /// All tables, in snapshot order.
    pub const ALL: [Table; 3] = [Table::Tombstones, Table::Conflicts, Table::Audit];

    pub(crate) fn cf(self) -> &'static str {
        match self {
            Table::Tombstones => "tombstones",
            Table::Conflicts => "conflicts",
            Table::Audit => "audit",
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
    /// Up to `limit` committed entries from `from` upwards (pending writes not included).
    pub fn scan_committed(
        &self,
        table: Table,
        from: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.store().scan(table, from, false, limit)
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
}
