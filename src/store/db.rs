//! Opening RocksDB and the Raft log / metadata operations.
//!
//! Log appends, truncations, purges and Raft metadata are written with `sync = true`: they are
//! on disk before the call returns, which is what the Raft layer tells openraft.
//!
//! State-machine batches skip RocksDB's write-ahead log ([`super::ApplyBatch`]): they reach
//! the disk when the memtables are flushed: by RocksDB when they fill, by the node when writes
//! pause ([`FlushPolicy`]), and at a clean stop ([`Store::close`]). A `kill -9` loses the batches since the last flush. That is safe
//! because they are reproducible from the log:
//! - `atomic_flush` writes every column family out together, so the state on disk is always
//!   the state after some whole batch, with the last-applied id of that same batch;
//! - on start openraft re-applies the committed entries after that id, or, when the log
//!   before them was purged, first installs the current snapshot (fsynced before any purge).
//!
//! The gain is on the write path of every node: no WAL record of the certificate rows and
//! their armor (two to three times the entry) to copy, checksum and carry through the next
//! log fsync. Measured in docs/benchmarks.md (item 7).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions, DB,
};

use super::StoreError;

/// When the node flushes the memtables besides RocksDB's own flushes ([`FlushPolicy`]): after
/// this long without any write,
pub const FLUSH_WHEN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// or, under constant writes, when the last flush is this old. These bound what a crash
/// makes the node re-apply from the log, and how far `keyraft export` next to the running
/// node lags. A flush writes an SST file per column family and fsyncs each: done every
/// second or two under load it doubled the 1-client write p99, hence "when idle".
pub const FLUSH_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Size of the block cache shared by the state-machine column families.
pub const BLOCK_CACHE_BYTES: usize = 256 << 20;

pub(crate) const CF_CERTS: &str = "certs";
pub(crate) const CF_DEDUP: &str = "dedup";
pub(crate) const CF_RENDERED: &str = "rendered";
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
pub(crate) const CF_RAFT_META: &str = "raft_meta";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// Column families holding state-machine data (replaced wholesale by a snapshot install).
pub(crate) const SM_CFS: [&str; 13] = [
    CF_CERTS,
    CF_RENDERED,
    "idx_fpr",
    "idx_keyid64",
    "idx_keyid32",
    "idx_email",
    "idx_word",
    CF_DEDUP,
    CF_SM_META,
    "tombstones",
    "conflicts",
    "audit",
    "used_signatures",
];

/// Handle to the node's RocksDB database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    dir: PathBuf,
    /// Snapshot installs begun plus installs finished: odd while [`Store::snapshot_install`]
    /// writes (the state is then partial), and changed by every install, so a read can tell
    /// whether one ran while it read ([`Store::install_epoch`]).
    pub(crate) installs: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Open (creating if needed) the database under `dir/db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(5);
        // State-machine batches skip the WAL (module docs): only flushing every column family
        // at once keeps the last-applied id on disk consistent with the data.
        opts.set_atomic_flush(true);
        // One LRU cache of uncompressed blocks shared by the state-machine column families,
        // so hot certificates are served without LZ4 decompression.
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        let mut cfs: Vec<ColumnFamilyDescriptor> = SM_CFS
            .iter()
            .map(|name| {
                let mut o = Options::default();
                o.set_block_based_table_factory(&table);
                o.set_compression_type(DBCompressionType::Lz4);
                o.set_bottommost_compression_type(DBCompressionType::Zstd);
                ColumnFamilyDescriptor::new(*name, o)
            })
            .collect();
        for name in [CF_RAFT_LOG, CF_RAFT_META] {
            cfs.push(ColumnFamilyDescriptor::new(name, Options::default()));
        }
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
        let store = Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            installs: Arc::default(),
        };
        if store.install_interrupted()? {
            tracing::warn!(
                "a snapshot install was interrupted: discarding the half-installed state; \
                 the node restores its latest snapshot and log"
            );
            store.discard_state()?;
        }
        Ok(store)
    }

    /// Open an existing database read-only (for `keyraft export` next to a running node).
    /// Column families a newer build added and an older database lacks are not opened.
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("db");
        let existing = DB::list_cf(&Options::default(), &path)?;
        let names: Vec<&str> = SM_CFS
            .iter()
            .chain(&[CF_RAFT_LOG, CF_RAFT_META])
            .copied()
            .filter(|n| existing.iter().any(|e| e == n))
            .collect();
        let db = DB::open_cf_for_read_only(&Options::default(), path, names, false)?;
        let store = Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            installs: Arc::default(),
        };
        if store.install_interrupted()? {
            return Err(StoreError::Corrupt {
                cf: "sm_meta",
                reason: "a snapshot install is under way or was interrupted: \
                         try again once the node has started and caught up"
                    .into(),
            });
        }
        Ok(store)
    }

    /// Whether a snapshot install is replacing the state right now: reads would see part of
    /// the old state or of the new one.
    pub fn is_installing(&self) -> bool {
        self.install_epoch() % 2 == 1
    }

    /// Changes whenever a snapshot install begins or ends; odd while one runs. A read of
    /// several keys that takes it before and after saw one state, old or new, if the two are
    /// equal and even.
    pub fn install_epoch(&self) -> u64 {
        self.installs.load(Ordering::SeqCst)
    }

    /// The node's data directory (the database lives in `db/` under it).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    pub(crate) fn synced() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    /// Wait, at most `limit`, until this is the last handle on the database, then flush the
    /// memtables (module docs) and close it (RocksDB finishes its background work first);
    /// returns whether it was the last. Call it before a process exits: a database still
    /// open then races the exit, whose static destructors RocksDB's background threads can
    /// trip over ("pthread lock: Invalid argument", SIGABRT).
    pub fn close(self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while Arc::strong_count(&self.db) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let last = Arc::strong_count(&self.db) == 1;
        if last {
            if let Err(e) = self.flush() {
                tracing::warn!("flushing the database at close: {e}");
            }
        }
        last
    }

    /// Write every column family's memtable to disk, all at once (`atomic_flush`).
    pub fn flush(&self) -> Result<(), StoreError> {
        let cfs: Vec<&rocksdb::ColumnFamily> = SM_CFS
            .iter()
            .chain(&[CF_RAFT_LOG, CF_RAFT_META])
            .map(|n| self.cf(n))
            .collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// RocksDB's sequence number: it grows with every write, logged or not.
    pub fn sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Append log entries in one fsynced batch.
    pub fn log_append<V: AsRef<[u8]>>(
        &self,
        entries: impl IntoIterator<Item = (u64, V)>,
    ) -> Result<(), StoreError> {
        let cf = self.cf(CF_RAFT_LOG);
        let mut b = WriteBatch::default();
        for (i, v) in entries {
            b.put_cf(cf, i.to_be_bytes(), v);
        }
        self.db.write_opt(b, &Self::synced())?;
        Ok(())
    }

    /// Entries in `[start, end)`, in index order.
    pub fn log_range(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let cf = self.cf(CF_RAFT_LOG);
        let from = start.to_be_bytes();
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item?;
            let i = log_key(&k)?;
            if end.is_some_and(|e| i >= e) {
                break;
            }
            out.push((i, v.into_vec()));
        }
        Ok(out)
    }

    /// The first entry still in the log.
    pub fn log_first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.log_edge(IteratorMode::Start)
    }

    /// The last entry in the log.
    pub fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.log_edge(IteratorMode::End)
    }

    fn log_edge(&self, mode: IteratorMode) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.db.iterator_cf(self.cf(CF_RAFT_LOG), mode).next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((log_key(&k)?, v.into_vec())))
            }
            None => Ok(None),
        }
    }

    /// Delete entries `[index, ∞)` (conflicting uncommitted entries), fsynced.
    pub fn log_truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            index.to_be_bytes(),
            u64::MAX.to_be_bytes(),
        );
        b.delete_cf(self.cf(CF_RAFT_LOG), u64::MAX.to_be_bytes());
        self.db.write_opt(b, &Self::synced())?;
        Ok(())
    }

    /// Delete entries `[0, index]` (covered by a snapshot), fsynced.
    pub fn log_purge_through(&self, index: u64) -> Result<(), StoreError> {
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            self.cf(CF_RAFT_LOG),
            0u64.to_be_bytes(),
            index.saturating_add(1).to_be_bytes(),
        );
        self.db.write_opt(b, &Self::synced())?;
        Ok(())
    }

    /// Read a Raft metadata value.
    pub fn raft_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_RAFT_META), key)?)
    }

    /// Write a Raft metadata value, fsynced.
    pub fn raft_meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(CF_RAFT_META), key, value, &Self::synced())?;
        Ok(())
    }

    /// Write a Raft metadata value without its own fsync: for values that may be lost in a
    /// crash (the committed index, which openraft re-learns). The next synced write (an
    /// append) makes it durable too: the WAL is shared and synced in order.
    pub fn raft_meta_put_unsynced(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.put_cf(self.cf(CF_RAFT_META), key, value)?;
        Ok(())
    }

    /// Read a state-machine metadata value.
    pub fn sm_meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_SM_META), key)?)
    }
}

/// When the node flushes the memtables: checked every [`FLUSH_WHEN_IDLE`] with the store's
/// [`Store::sequence`], it says flush when something was written since the last flush and
/// either nothing was written since the previous check or the last flush is
/// [`FLUSH_AT_LEAST_EVERY`] old.
#[derive(Debug, Default)]
pub struct FlushPolicy {
    flushed: u64,
    last_seen: u64,
    since_flush: std::time::Duration,
}

impl FlushPolicy {
    /// One check, `FLUSH_WHEN_IDLE` after the previous one; true: flush now (then call
    /// [`FlushPolicy::flushed`]).
    pub fn check(&mut self, seq: u64) -> bool {
        self.since_flush += FLUSH_WHEN_IDLE;
        let idle = seq == self.last_seen;
        self.last_seen = seq;
        seq != self.flushed && (idle || self.since_flush >= FLUSH_AT_LEAST_EVERY)
    }

    /// The flush after a true [`FlushPolicy::check`] covered everything up to `seq`.
    pub fn flushed(&mut self, seq: u64) {
        self.flushed = seq;
        self.since_flush = std::time::Duration::ZERO;
    }
}

fn log_key(k: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = k.try_into().map_err(|_| StoreError::Corrupt {
        cf: CF_RAFT_LOG,
        reason: format!("log key of {} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_append_range_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.log_last().unwrap(), None);
        s.log_append((1..=10).map(|i| (i, vec![i as u8]))).unwrap();
        assert_eq!(s.log_first().unwrap().unwrap().0, 1);
        assert_eq!(s.log_last().unwrap().unwrap().0, 10);
        let r: Vec<u64> = s
            .log_range(3, Some(6))
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(r, vec![3, 4, 5]);
        s.log_truncate_from(8).unwrap();
        assert_eq!(s.log_last().unwrap().unwrap().0, 7);
        s.log_purge_through(4).unwrap();
        assert_eq!(s.log_first().unwrap().unwrap().0, 5);
        // Survives reopening.
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let r: Vec<u64> = s
            .log_range(0, None)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(r, vec![5, 6, 7]);
    }

    #[test]
    fn raft_meta_round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.raft_meta_put("vote", b"v1").unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.raft_meta_get("vote").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        assert_eq!(s.raft_meta_get("none").unwrap(), None);
    }

    #[test]
    fn the_flush_policy_waits_for_a_pause_or_a_minute() {
        let mut p = FlushPolicy::default();
        assert!(!p.check(0), "nothing written: no flush");
        // Writes at every check: no flush until a minute has passed.
        let ticks = FLUSH_AT_LEAST_EVERY.as_secs() / FLUSH_WHEN_IDLE.as_secs();
        for seq in 1..ticks - 1 {
            assert!(!p.check(seq), "busy at check {seq}");
        }
        assert!(p.check(ticks), "the minute's last check flushes");
        p.flushed(ticks);
        assert!(!p.check(ticks), "nothing new since the flush");
        // A write, then a pause: flushed at the first quiet check.
        assert!(!p.check(ticks + 1));
        assert!(p.check(ticks + 1));
        p.flushed(ticks + 1);
        assert!(!p.check(ticks + 1));
    }
}
