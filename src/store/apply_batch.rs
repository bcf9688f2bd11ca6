//! [`ApplyBatch`]: one RocksDB `WriteBatch` for a run of applied Raft entries.
//!
//! Data, index entries, request ids and the last-applied id go into the same batch and are
//! committed together, so the state machine is never half-applied. Reads through the batch see
//! its own pending writes (two commands for one certificate in one batch merge correctly).
//!
//! The batch is written without RocksDB's WAL and without an fsync: the Raft log, fsynced
//! before the entry was committed, is what makes it durable (see [`super::db`]).
use std::collections::{BTreeMap, BTreeSet};

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use super::db::{CF_CERTS, CF_DEDUP, CF_RENDERED, CF_SM_META};
use super::record::{CertRecord, IndexKind};
use super::tables::Table;
use super::{Store, StoreError};

/// How many log entries a request id is remembered for duplicate detection.
pub const DEDUP_WINDOW: u64 = 1_000_000;
/// Largest answer kept with its request id for the whole [`DEDUP_WINDOW`] (one answer line
/// is about 60 bytes).
pub const ANSWER_INLINE_MAX: usize = 1024;
/// How many log entries a larger answer (a bulk import's) is kept for. A retry comes from the
/// node that proposed the write within its 25 s commit patience, about 9,000 entries at this
/// machine's highest write rate.
pub const LARGE_ANSWER_WINDOW: u64 = 100_000;
/// Largest answer kept at all; a retry of a larger one answers "duplicate request".
pub const ANSWER_KEPT_MAX: usize = 1 << 20;
const COUNT_KEY: &str = "cert_count";

/// Pending state-machine writes; see the module docs.
pub struct ApplyBatch {
    store: Store,
    batch: WriteBatch,
    certs: BTreeMap<Vec<u8>, Option<CertRecord>>,
    meta: BTreeMap<String, Vec<u8>>,
    /// Requests recorded in this batch: their stored values (index, then the answer).
    requests: BTreeMap<u128, Vec<u8>>,
    count_delta: i64,
    /// Whether a certificate was added or removed in this batch: the count is then written
    /// even when the changes cancel out, so its presence does not depend on the batching.
    count_touched: bool,
    tables: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    /// Request ids forgotten in this batch, and the last age key deleted: pruning goes on
    /// after it, as it would in a later batch, so what is pruned does not depend on how
    /// entries are grouped into batches (a crash re-applies in other groups).
    forgotten: BTreeSet<u128>,
    pruned_through: Option<Vec<u8>>,
    /// The same for large answers (kept under their own keys, for a shorter window).
    forgotten_large: BTreeSet<u128>,
    large_pruned_through: Option<Vec<u8>>,
    dedup_window: u64,
    large_answer_window: u64,
}

impl Store {
    /// Start a state-machine batch.
    pub fn begin_apply(&self) -> ApplyBatch {
        ApplyBatch {
            store: self.clone(),
            batch: WriteBatch::default(),
            certs: BTreeMap::new(),
            meta: BTreeMap::new(),
            requests: BTreeMap::new(),
            count_delta: 0,
            count_touched: false,
            tables: BTreeMap::new(),
            forgotten: BTreeSet::new(),
            pruned_through: None,
            forgotten_large: BTreeSet::new(),
            large_pruned_through: None,
            dedup_window: DEDUP_WINDOW,
            large_answer_window: LARGE_ANSWER_WINDOW,
        }
    }
}

impl ApplyBatch {
    /// The stored record for a primary fingerprint, including this batch's pending writes.
    pub fn get_cert(&self, fingerprint: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        if let Some(pending) = self.certs.get(fingerprint) {
            return Ok(pending.clone());
        }
        self.store.get_cert(fingerprint)
    }

    /// Store `record`, replacing whatever was stored under its fingerprint, and update indexes.
    pub fn put_cert(&mut self, record: CertRecord) -> Result<(), StoreError> {
        let old = self.get_cert(&record.fingerprint)?;
        let old_terms = old.as_ref().map(|r| r.terms.as_slice()).unwrap_or(&[]);
        self.reindex(&record.fingerprint, old_terms, &record.terms);
        if old.is_none() {
            self.count_delta += 1;
            self.count_touched = true;
        }
        let cf = self.store.cf(CF_CERTS);
        self.batch.put_cf(cf, &record.fingerprint, record.encode());
        self.certs.insert(record.fingerprint.clone(), Some(record));
        Ok(())
    }

    /// Store the rendered (armored) form of the certificate under `fingerprint`, which reads
    /// serve as is. Written with the record, in the same batch.
    pub fn put_rendered(&mut self, fingerprint: &[u8], rendered: Vec<u8>) {
        self.batch
            .put_cf(self.store.cf(CF_RENDERED), fingerprint, rendered);
    }

    /// Remove a certificate, its rendered form and its index entries. Returns whether it existed.
    pub fn delete_cert(&mut self, fingerprint: &[u8]) -> Result<bool, StoreError> {
        let Some(old) = self.get_cert(fingerprint)? else {
            return Ok(false);
        };
        self.reindex(fingerprint, &old.terms, &[]);
        self.count_delta -= 1;
        self.count_touched = true;
        self.batch.delete_cf(self.store.cf(CF_CERTS), fingerprint);
        self.batch
            .delete_cf(self.store.cf(CF_RENDERED), fingerprint);
        self.certs.insert(fingerprint.to_vec(), None);
        Ok(true)
    }

    fn reindex(&mut self, fpr: &[u8], old: &[(IndexKind, Vec<u8>)], new: &[(IndexKind, Vec<u8>)]) {
        for t in old.iter().filter(|t| !new.contains(t)) {
            let key = [t.0.prefix(&t.1), fpr.to_vec()].concat();
            self.batch.delete_cf(self.store.cf(t.0.cf()), key);
        }
        for t in new.iter().filter(|t| !old.contains(t)) {
            let key = [t.0.prefix(&t.1), fpr.to_vec()].concat();
            self.batch.put_cf(self.store.cf(t.0.cf()), key, []);
        }
    }

    /// If `request_id` was applied before (within [`DEDUP_WINDOW`] entries), the answer
    /// recorded with it: empty when none is kept (over [`ANSWER_KEPT_MAX`], a large answer
    /// older than [`LARGE_ANSWER_WINDOW`] entries, or recorded by a release that kept none).
    pub fn earlier_answer(&self, request_id: u128) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.requests.get(&request_id) {
            return Ok(Some(v.get(8..).unwrap_or_default().to_vec()));
        }
        if self.forgotten.contains(&request_id) {
            return Ok(None);
        }
        let cf = self.store.cf(CF_DEDUP);
        let Some(v) = self.store.db.get_cf(cf, dedup_id_key(request_id))? else {
            return Ok(None);
        };
        let inline = v.get(8..).unwrap_or_default();
        if !inline.is_empty() || self.forgotten_large.contains(&request_id) {
            return Ok(Some(inline.to_vec()));
        }
        let Some(index) = v.get(..8).and_then(|i| i.try_into().ok()) else {
            return Ok(Some(Vec::new()));
        };
        let large = dedup_large_key(u64::from_be_bytes(index), request_id);
        Ok(Some(self.store.db.get_cf(cf, large)?.unwrap_or_default()))
    }

    /// Remember `request_id` as applied at `index` with `answer` (opaque bytes, possibly
    /// empty), forgetting ids older than the window. An answer over [`ANSWER_INLINE_MAX`]
    /// goes under its own key, kept for [`LARGE_ANSWER_WINDOW`] entries.
    pub fn record_request(
        &mut self,
        request_id: u128,
        index: u64,
        answer: &[u8],
    ) -> Result<(), StoreError> {
        let cf = self.store.cf(CF_DEDUP);
        let answer = if answer.len() > ANSWER_KEPT_MAX {
            &[][..]
        } else {
            answer
        };
        let value = [&index.to_be_bytes()[..], answer].concat();
        if answer.len() > ANSWER_INLINE_MAX {
            self.batch
                .put_cf(cf, dedup_id_key(request_id), index.to_be_bytes());
            self.batch
                .put_cf(cf, dedup_large_key(index, request_id), answer);
        } else {
            self.batch.put_cf(cf, dedup_id_key(request_id), &value);
        }
        self.batch.put_cf(cf, dedup_age_key(index, request_id), []);
        self.requests.insert(request_id, value);
        if index > self.dedup_window {
            for (k, id) in
                self.oldest(b'I', self.pruned_through.clone(), index - self.dedup_window)?
            {
                self.batch.delete_cf(cf, &k);
                self.batch.delete_cf(cf, dedup_id_key(id));
                self.forgotten.insert(id);
                self.pruned_through = Some(k);
            }
        }
        if index > self.large_answer_window {
            let before = index - self.large_answer_window;
            for (k, id) in self.oldest(b'L', self.large_pruned_through.clone(), before)? {
                self.batch.delete_cf(cf, &k);
                self.forgotten_large.insert(id);
                self.large_pruned_through = Some(k);
            }
        }
        Ok(())
    }

    /// Deterministic pruning: at most 64 keys of the dedup table with `prefix` (followed by a
    /// log index and a request id) whose index is below `before`, the oldest first, from
    /// committed state after `pruned_through` (what this batch pruned already).
    fn oldest(
        &self,
        prefix: u8,
        pruned_through: Option<Vec<u8>>,
        before: u64,
    ) -> Result<Vec<(Vec<u8>, u128)>, StoreError> {
        let start = match pruned_through {
            // The smallest key after the last one deleted.
            Some(k) => [k.as_slice(), &[0]].concat(),
            None => vec![prefix],
        };
        let mut doomed = Vec::new();
        for item in self
            .store
            .db
            .iterator_cf(
                self.store.cf(CF_DEDUP),
                IteratorMode::From(&start, Direction::Forward),
            )
            .take(64)
        {
            let (k, _) = item?;
            if k.first() != Some(&prefix) || k.len() != 25 {
                break;
            }
            let at = u64::from_be_bytes(k[1..9].try_into().expect("length checked"));
            if at >= before {
                break;
            }
            doomed.push((
                k.to_vec(),
                u128::from_be_bytes(k[9..25].try_into().expect("length checked")),
            ));
        }
        Ok(doomed)
    }

    /// Put a table value.
    pub fn put(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.batch.put_cf(self.store.cf(table.cf()), key, &value);
        self.tables.insert((table, key.to_vec()), Some(value));
    }

    /// Delete a table value.
    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(table.cf()), key);
        self.tables.insert((table, key.to_vec()), None);
    }

    /// This batch's pending value for a table key: `Some(None)` when deleted here.
    pub(super) fn pending_table(&self, table: Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.tables.get(&(table, key.to_vec())).cloned()
    }

    /// This batch's pending writes to `table` with keys from `from` upwards, in key order
    /// (`None`: deleted here).
    pub(super) fn pending_range<'a>(
        &'a self,
        table: Table,
        from: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        self.tables
            .range((table, from.to_vec())..)
            .take_while(move |((t, _), _)| *t == table)
            .map(|((_, k), v)| (k, v))
    }

    /// The store under this batch.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// A state-machine metadata value, including this batch's pending writes.
    pub fn get_sm_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.meta.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None => self.store.sm_meta_get(key),
        }
    }

    /// Set a state-machine metadata value (last applied id, membership...).
    pub fn set_sm_meta(&mut self, key: &str, value: Vec<u8>) {
        self.meta.insert(key.to_string(), value);
    }

    /// Write everything in one `WriteBatch`.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.count_touched {
            let now = self.store.cert_count()? as i64 + self.count_delta;
            self.meta
                .insert(COUNT_KEY.into(), (now.max(0) as u64).to_be_bytes().to_vec());
        }
        let cf = self.store.cf(CF_SM_META);
        for (k, v) in &self.meta {
            self.batch.put_cf(cf, k, v);
        }
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        self.store.db.write_opt(self.batch, &unlogged)?;
        Ok(())
    }
}

impl Store {
    /// Number of stored certificates (maintained by apply).
    pub fn cert_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .sm_meta_get(COUNT_KEY)?
            .and_then(|v| v.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }
}

fn dedup_id_key(id: u128) -> Vec<u8> {
    [&b"R"[..], &id.to_be_bytes()].concat()
}

fn dedup_age_key(index: u64, id: u128) -> Vec<u8> {
    [&b"I"[..], &index.to_be_bytes(), &id.to_be_bytes()].concat()
}

fn dedup_large_key(index: u64, id: u128) -> Vec<u8> {
    [&b"L"[..], &index.to_be_bytes(), &id.to_be_bytes()].concat()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every key and value of the dedup column family.
    fn dedup_contents(s: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        s.db.iterator_cf(s.cf(CF_DEDUP), IteratorMode::Start)
            .map(|i| {
                let (k, v) = i.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// The same requests recorded one entry per batch and in batches of ten give the same
    /// dedup table, also when more than one call's worth (64) is due at once: after a stretch
    /// of entries without request ids.
    #[test]
    fn request_pruning_does_not_depend_on_the_batching() {
        let indexes: Vec<u64> = (1..=300).chain(601..=610).collect();
        let record = |per_batch: usize| {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(dir.path()).unwrap();
            for chunk in indexes.chunks(per_batch) {
                let mut b = s.begin_apply();
                b.dedup_window = 100;
                for &i in chunk {
                    b.record_request(u128::from(i) * 7, i, &[]).unwrap();
                }
                b.commit().unwrap();
            }
            let seen_old = s.begin_apply().earlier_answer(250 * 7).unwrap().is_some();
            (dedup_contents(&s), seen_old, dir)
        };
        let (one, seen_one, _d1) = record(1);
        let (ten, seen_ten, _d2) = record(10);
        // Left: ids 601..=610, two keys each; the 101 ids still due at 601 are all gone.
        assert_eq!(one.len(), 20, "one entry per batch");
        assert_eq!(ten.len(), 20, "ten entries per batch");
        assert!(one == ten, "the same dedup table");
        assert_eq!(
            (seen_one, seen_ten),
            (false, false),
            "id 250 is out of the window"
        );
    }

    /// An answer over [`ANSWER_INLINE_MAX`] (a bulk import's) is kept under its own key for
    /// its own, shorter window, pruned the same way whatever the batching; the request id
    /// stays for the whole dedup window. An answer over [`ANSWER_KEPT_MAX`] is not kept.
    #[test]
    fn large_answers_are_kept_for_their_own_window_whatever_the_batching() {
        let big = |i: u64| vec![i as u8; ANSWER_INLINE_MAX + 1];
        let indexes: Vec<u64> = (1..=300).collect();
        let record = |per_batch: usize| {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::open(dir.path()).unwrap();
            for chunk in indexes.chunks(per_batch) {
                let mut b = s.begin_apply();
                b.dedup_window = 200;
                b.large_answer_window = 50;
                for &i in chunk {
                    b.record_request(u128::from(i), i, &big(i)).unwrap();
                    assert_eq!(b.earlier_answer(u128::from(i)).unwrap(), Some(big(i)));
                }
                b.commit().unwrap();
            }
            let b = s.begin_apply();
            let kept: Vec<Option<Vec<u8>>> = [50, 240, 260, 300]
                .iter()
                .map(|&i| b.earlier_answer(i).unwrap())
                .collect();
            (dedup_contents(&s), kept, dir)
        };
        let (one, kept_one, _d1) = record(1);
        let (ten, kept_ten, _d2) = record(7);
        assert!(one == ten, "the same dedup table");
        assert_eq!(kept_one, kept_ten);
        assert_eq!(
            kept_one,
            vec![None, Some(vec![]), Some(big(260)), Some(big(300))],
            "id 50 is forgotten, 240's answer is pruned, 260's and 300's are kept"
        );
        // ids 100..=300 (two keys each) and the answers of 250..=300.
        assert_eq!(one.len(), 201 * 2 + 51);

        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        b.record_request(7, 1, &vec![1; ANSWER_KEPT_MAX + 1])
            .unwrap();
        b.commit().unwrap();
        assert_eq!(s.begin_apply().earlier_answer(7).unwrap(), Some(vec![]));
    }

    /// A record of fingerprint `[fpr; 20]` (also used by the snapshot tests).
    pub(in crate::store) fn rec(fpr: u8, terms: Vec<(IndexKind, Vec<u8>)>) -> CertRecord {
        CertRecord {
            fingerprint: vec![fpr; 20],
            cert: vec![fpr],
            summary: vec![],
            terms,
            created_at: 1,
            updated_at: 1,
            updated_index: 1,
            version: Default::default(),
            origin: 0,
        }
    }

    #[test]
    fn batch_sees_its_own_writes_and_maintains_indexes_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        b.put_cert(rec(1, vec![(IndexKind::Email, b"a@x.example".to_vec())]))
            .unwrap();
        assert!(b.get_cert(&[1; 20]).unwrap().is_some());
        assert!(
            s.get_cert(&[1; 20]).unwrap().is_none(),
            "nothing visible before commit"
        );
        b.put_cert(rec(2, vec![(IndexKind::Email, b"a@x.example".to_vec())]))
            .unwrap();
        b.commit().unwrap();
        assert_eq!(s.cert_count().unwrap(), 2);
        assert_eq!(
            s.find(IndexKind::Email, b"a@x.example", 10).unwrap().len(),
            2
        );

        // Replacing the terms removes the stale index entry.
        let mut b = s.begin_apply();
        b.put_cert(rec(1, vec![(IndexKind::Email, b"b@x.example".to_vec())]))
            .unwrap();
        b.commit().unwrap();
        assert_eq!(
            s.find(IndexKind::Email, b"a@x.example", 10).unwrap(),
            vec![vec![2; 20]]
        );
        assert_eq!(s.cert_count().unwrap(), 2);

        let mut b = s.begin_apply();
        assert!(b.delete_cert(&[2; 20]).unwrap());
        assert!(
            !b.delete_cert(&[2; 20]).unwrap(),
            "second delete in one batch finds nothing"
        );
        b.commit().unwrap();
        assert!(s
            .find(IndexKind::Email, b"a@x.example", 10)
            .unwrap()
            .is_empty());
        assert_eq!(s.cert_count().unwrap(), 1);
    }

    #[test]
    fn request_ids_are_remembered_with_their_answers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        assert_eq!(b.earlier_answer(42).unwrap(), None);
        b.record_request(42, 5, b"first answer").unwrap();
        b.record_request(43, 6, &[]).unwrap();
        // Within the batch, and once committed.
        assert_eq!(
            b.earlier_answer(42).unwrap().as_deref(),
            Some(&b"first answer"[..])
        );
        b.commit().unwrap();
        let b = s.begin_apply();
        assert_eq!(
            b.earlier_answer(42).unwrap().as_deref(),
            Some(&b"first answer"[..])
        );
        assert_eq!(b.earlier_answer(43).unwrap().as_deref(), Some(&[][..]));
        // A value written by a release that kept only the index: seen, no answer.
        let mut w = rocksdb::WriteBatch::default();
        w.put_cf(s.cf(CF_DEDUP), dedup_id_key(44), 9u64.to_be_bytes());
        s.db.write(w).unwrap();
        assert_eq!(
            s.begin_apply().earlier_answer(44).unwrap().as_deref(),
            Some(&[][..])
        );
    }
}
