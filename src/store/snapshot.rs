//! State-machine snapshots: a consistent stream out, an atomic replace in.
//!
//! Format (version 1): the magic `KEYRAFT-SNAP` and a version byte, then frames of
//! `[tag: u8][len: u32 BE][payload]`: `M` a MessagePack `(key, value)` of `sm_meta`, `C` an
//! encoded [`CertRecord`], `R` a MessagePack `(fingerprint, rendered form)`, `D` a MessagePack
//! `(key, value)` of the dedup table, and `E` the
//! frame count as u64 BE. Indexes are not shipped: they are rebuilt from each record's terms.
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::db::{CF_CERTS, CF_DEDUP, CF_RENDERED, CF_SM_META, SM_CFS};
use super::record::CertRecord;
use super::tables::Table;
use super::{Store, StoreError};

const MAGIC: &[u8] = b"KEYRAFT-SNAP";
/// The `sm_meta` key set while a snapshot install is under way (see
/// [`Store::snapshot_install`]).
const INSTALLING: &[u8] = b"snapshot_install_in_progress";
/// About how many bytes of an installing snapshot are written per batch.
pub const INSTALL_CHUNK_BYTES: usize = 8 << 20;
/// Version 2 added `T` frames (tombstones, conflicts, audit); version 1 streams still install.
const VERSION: u8 = 2;

fn frame(out: &mut dyn Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&(payload.len() as u32).to_be_bytes())?;
    out.write_all(payload)
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        cf: "snapshot",
        reason: reason.into(),
    }
}

impl Store {
    /// Write a point-in-time view of the state machine. Returns `sm_meta` as of that point.
    pub fn snapshot_write(
        &self,
        out: &mut dyn Write,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.snapshot_write_from_now(out, || {})
    }

    /// [`Store::snapshot_write`], calling `taken` as soon as the view is fixed: writes after
    /// that are not in it, so a caller on another thread may go on writing.
    pub fn snapshot_write_from_now(
        &self,
        out: &mut dyn Write,
        taken: impl FnOnce(),
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let snap = self.db.snapshot();
        taken();
        if snap.get_cf(self.cf(CF_SM_META), INSTALLING)?.is_some() {
            // A view taken while an install replaces the state holds part of each.
            return Err(corrupt(
                "a snapshot install is under way; build one after it",
            ));
        }
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        let mut frames = 0u64;
        let mut meta = BTreeMap::new();
        for item in snap.iterator_cf(self.cf(CF_SM_META), IteratorMode::Start) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let pair = (key.clone(), serde_bytes::ByteBuf::from(v.to_vec()));
            frame(
                out,
                b'M',
                &rmp_serde::to_vec(&pair).expect("pairs serialize"),
            )?;
            meta.insert(key, v.into_vec());
            frames += 1;
        }
        for item in snap.iterator_cf(self.cf(CF_CERTS), IteratorMode::Start) {
            let (_, v) = item?;
            frame(out, b'C', &v)?;
            frames += 1;
        }
        for (tag, cf) in [(b'R', CF_RENDERED), (b'D', CF_DEDUP)] {
            for item in snap.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (k, v) = item?;
                let pair = (
                    serde_bytes::ByteBuf::from(k.to_vec()),
                    serde_bytes::ByteBuf::from(v.to_vec()),
                );
                frame(
                    out,
                    tag,
                    &rmp_serde::to_vec(&pair).expect("pairs serialize"),
                )?;
                frames += 1;
            }
        }
        for table in Table::ALL {
            for item in snap.iterator_cf(self.cf(table.cf()), IteratorMode::Start) {
                let (k, v) = item?;
                let triple = (
                    table as u8,
                    serde_bytes::ByteBuf::from(k.to_vec()),
                    serde_bytes::ByteBuf::from(v.to_vec()),
                );
                frame(
                    out,
                    b'T',
                    &rmp_serde::to_vec(&triple).expect("triples serialize"),
                )?;
                frames += 1;
            }
        }
        frame(out, b'E', &frames.to_be_bytes())?;
        out.flush()?;
        Ok(meta)
    }

    /// Replace all state-machine data with the snapshot's. A crash leaves the old state, the
    /// new one, or a state marked as half-installed that [`Store::open`] discards (the node
    /// then restores its own latest snapshot and log, as after any crash); never a mix that
    /// is taken for a whole state. Memory stays bounded by [`INSTALL_CHUNK_BYTES`], whatever
    /// the snapshot's size.
    ///
    /// Two passes over `input`: the first checks every frame, so a truncated or corrupt
    /// snapshot is refused before anything is written. The second writes:
    /// 1. one synced batch: range deletes over every state-machine column family, and the
    ///    [`INSTALLING`] marker. A range delete also covers keys that apply (which skips the
    ///    WAL) deleted in the memtable but that are still in the files on disk;
    /// 2. the frames in batches of about [`INSTALL_CHUNK_BYTES`], without the WAL;
    /// 3. a flush of every column family together, so the data is on disk;
    /// 4. one synced batch: the snapshot's `sm_meta` (its last-applied id among it) and the
    ///    marker's removal.
    pub fn snapshot_install<R: Read + Seek>(&self, input: &mut R) -> Result<(), StoreError> {
        self.snapshot_install_in_chunks(input, INSTALL_CHUNK_BYTES, &mut |_| {})
    }

    /// [`Store::snapshot_install`] with the chunk size and a call after each chunk written
    /// (its number, from 1), for tests.
    pub(crate) fn snapshot_install_in_chunks<R: Read + Seek>(
        &self,
        input: &mut R,
        chunk_bytes: usize,
        after_chunk: &mut dyn FnMut(usize),
    ) -> Result<(), StoreError> {
        let start = input.stream_position()?;
        read_frames(input, &mut |_| Ok(()))?;
        input.seek(SeekFrom::Start(start))?;
        if !self.is_installing() {
            // Odd already after an install that failed: reads stay refused.
            self.installs.fetch_add(1, Ordering::SeqCst);
        }
        let r = self.install_checked(input, chunk_bytes, after_chunk);
        // On an error the marker stays, and reads are still refused: the node stops (a
        // storage error) and the next open discards the partial state.
        if r.is_ok() {
            self.installs.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    /// The writing pass of [`Store::snapshot_install_in_chunks`], over a checked stream.
    fn install_checked<R: Read>(
        &self,
        input: &mut R,
        chunk_bytes: usize,
        after_chunk: &mut dyn FnMut(usize),
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.delete_all_state(&mut batch)?;
        batch.put_cf(self.cf(CF_SM_META), INSTALLING, []);
        self.db.write_opt(batch, &Self::synced())?;

        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        let mut meta = Vec::new();
        let mut batch = WriteBatch::default();
        let mut chunks = 0;
        read_frames(input, &mut |frame| {
            match frame {
                Frame::Meta(k, v) => meta.push((k, v)),
                Frame::Put(cf, k, v) => batch.put_cf(self.cf(cf), k, v),
                Frame::Cert(rec, payload) => {
                    for (kind, term) in &rec.terms {
                        let key = [kind.prefix(term), rec.fingerprint.clone()].concat();
                        batch.put_cf(self.cf(kind.cf()), key, []);
                    }
                    batch.put_cf(self.cf(CF_CERTS), &rec.fingerprint, payload);
                }
            }
            if batch.size_in_bytes() >= chunk_bytes {
                self.db.write_opt(std::mem::take(&mut batch), &unlogged)?;
                chunks += 1;
                after_chunk(chunks);
            }
            Ok(())
        })?;
        self.db.write_opt(batch, &unlogged)?;
        self.flush()?;
        let mut batch = WriteBatch::default();
        for (k, v) in meta {
            batch.put_cf(self.cf(CF_SM_META), k, v);
        }
        batch.delete_cf(self.cf(CF_SM_META), INSTALLING);
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
    }

    /// Add to `batch` one range delete per state-machine column family, from the empty key to
    /// just past its last key.
    fn delete_all_state(&self, batch: &mut WriteBatch) -> Result<(), StoreError> {
        for name in SM_CFS {
            let cf = self.cf(name);
            if let Some(last) = self.db.iterator_cf(cf, IteratorMode::End).next() {
                let end = [&last?.0[..], &[0]].concat();
                batch.delete_range_cf(cf, &[][..], &end[..]);
            }
        }
        Ok(())
    }

    /// Read a whole snapshot stream and check every frame, writing nothing; returns its
    /// `sm_meta` entries. What [`Store::snapshot_install`] checks first, for a receiver that
    /// wants to refuse a bad snapshot before it reaches its state machine.
    pub fn snapshot_check<R: Read>(input: &mut R) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let mut meta = BTreeMap::new();
        read_frames(input, &mut |frame| {
            if let Frame::Meta(k, v) = frame {
                meta.insert(String::from_utf8_lossy(&k).into_owned(), v);
            }
            Ok(())
        })?;
        Ok(meta)
    }

    /// Whether a snapshot install was interrupted (the [`INSTALLING`] marker is set).
    pub(crate) fn install_interrupted(&self) -> Result<bool, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_SM_META), INSTALLING)?.is_some())
    }

    /// Discard a half-installed state: every state-machine column family emptied, in one
    /// synced batch. The node then starts as one that never applied anything, and openraft
    /// restores it from the node's latest snapshot and its log.
    pub(crate) fn discard_state(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.delete_all_state(&mut batch)?;
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
    }
}

/// One decoded frame of a snapshot stream.
enum Frame<'a> {
    /// An `sm_meta` entry (written last, with the last-applied id).
    Meta(Vec<u8>, Vec<u8>),
    /// A plain key and value of a column family.
    Put(&'static str, Vec<u8>, Vec<u8>),
    /// A certificate record (its indexes are rebuilt from its terms) and its encoding.
    Cert(CertRecord, &'a [u8]),
}

/// Read and check the stream after its header up to and including the end frame, handing
/// every frame to `each`. Errors on a bad header, an unknown or undecodable frame, a missing
/// end frame or a frame count that differs from the end frame's.
fn read_frames<R: Read>(
    input: &mut R,
    each: &mut dyn FnMut(Frame) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut head = [0u8; 13];
    input.read_exact(&mut head)?;
    if &head[..12] != MAGIC || !(1..=VERSION).contains(&head[12]) {
        return Err(corrupt("bad magic or version"));
    }
    let mut frames = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut tag_len = [0u8; 5];
        input.read_exact(&mut tag_len)?;
        let len = u32::from_be_bytes(tag_len[1..].try_into().expect("4 bytes")) as usize;
        payload.resize(len, 0);
        input.read_exact(&mut payload)?;
        let pair = |p: &[u8]| -> Result<(Vec<u8>, Vec<u8>), StoreError> {
            let (k, v): (serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
                rmp_serde::from_slice(p).map_err(|e| corrupt(e.to_string()))?;
            Ok((k.into_vec(), v.into_vec()))
        };
        match tag_len[0] {
            b'M' => {
                let (k, v) = pair(&payload)?;
                each(Frame::Meta(k, v))?;
            }
            b'D' => {
                let (k, v) = pair(&payload)?;
                each(Frame::Put(CF_DEDUP, k, v))?;
            }
            b'R' => {
                let (k, v) = pair(&payload)?;
                each(Frame::Put(CF_RENDERED, k, v))?;
            }
            b'C' => each(Frame::Cert(CertRecord::decode(&payload)?, &payload))?,
            b'T' => {
                let (t, k, v): (u8, serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
                    rmp_serde::from_slice(&payload).map_err(|e| corrupt(e.to_string()))?;
                let table =
                    Table::from_u8(t).ok_or_else(|| corrupt(format!("unknown table {t}")))?;
                each(Frame::Put(table.cf(), k.into_vec(), v.into_vec()))?;
            }
            b'E' => {
                let n = u64::from_be_bytes(
                    payload
                        .as_slice()
                        .try_into()
                        .map_err(|_| corrupt("bad end frame"))?,
                );
                if n != frames {
                    return Err(corrupt(format!("{frames} frames, end frame says {n}")));
                }
                return Ok(());
            }
            t => return Err(corrupt(format!("unknown frame tag {t}"))),
        }
        frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IndexKind;

    #[test]
    fn snapshot_round_trip_replaces_state_and_rebuilds_indexes() {
        let a_dir = tempfile::tempdir().unwrap();
        let a = Store::open(a_dir.path()).unwrap();
        let mut b = a.begin_apply();
        b.put_cert(CertRecord {
            fingerprint: vec![7; 20],
            cert: vec![1],
            summary: vec![],
            terms: vec![(IndexKind::Word, b"alice".to_vec())],
            created_at: 1,
            updated_at: 2,
            updated_index: 3,
            version: Default::default(),
            origin: 0,
        })
        .unwrap();
        b.put_rendered(&[7; 20], b"armored".to_vec());
        b.set_sm_meta("last_applied", vec![3]);
        b.record_request(99, 3, b"answer").unwrap();
        b.put(Table::Conflicts, &7u64.to_be_bytes(), b"conflict".to_vec());
        b.commit().unwrap();
        let mut buf = Vec::new();
        let meta = a.snapshot_write(&mut buf).unwrap();
        assert_eq!(meta.get("last_applied"), Some(&vec![3]));

        let b_dir = tempfile::tempdir().unwrap();
        let bs = Store::open(b_dir.path()).unwrap();
        let mut other = bs.begin_apply();
        other
            .put_cert(CertRecord {
                fingerprint: vec![8; 20],
                cert: vec![2],
                summary: vec![],
                terms: vec![(IndexKind::Word, b"bob".to_vec())],
                created_at: 1,
                updated_at: 1,
                updated_index: 1,
                version: Default::default(),
                origin: 0,
            })
            .unwrap();
        other.commit().unwrap();
        // One frame per chunk: every step of a streamed install is exercised.
        let mut chunks = 0;
        bs.snapshot_install_in_chunks(&mut std::io::Cursor::new(&buf), 1, &mut |n| chunks = n)
            .unwrap();
        assert!(chunks >= 4, "{chunks} chunks");
        assert!(!bs.is_installing() && !bs.install_interrupted().unwrap());
        assert!(
            bs.get_cert(&[8; 20]).unwrap().is_none(),
            "old state is gone"
        );
        assert_eq!(
            bs.find(IndexKind::Word, b"alice", 5).unwrap(),
            vec![vec![7; 20]]
        );
        assert!(bs.find(IndexKind::Word, b"bob", 5).unwrap().is_empty());
        assert_eq!(bs.cert_count().unwrap(), 1);
        assert_eq!(
            bs.begin_apply().earlier_answer(99).unwrap().as_deref(),
            Some(&b"answer"[..])
        );
        assert_eq!(
            bs.get(Table::Conflicts, &7u64.to_be_bytes()).unwrap(),
            Some(b"conflict".to_vec())
        );
        assert_eq!(
            bs.get_rendered(&[7; 20]).unwrap().as_deref(),
            Some(&b"armored"[..])
        );
    }

    /// Run the test `name` of this binary alone in a child process, with `env` set to `dir`
    /// (the crash tests: the child ends by `abort`, the parent inspects what it left).
    fn run_child(name: &str, env: &str, dir: &std::path::Path) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(env, dir)
            .output()
            .unwrap()
    }

    fn cert(fpr: u8) -> CertRecord {
        crate::store::apply_batch::tests::rec(fpr, vec![])
    }

    /// Apply skips the WAL: a certificate flushed to disk and then deleted (not yet flushed)
    /// must not come back when a snapshot installed afterwards is replayed after a crash.
    /// The crash is real: this test runs itself again as a child process, which ends by
    /// `abort` (no flush, no close, as with `kill -9`); the parent then opens what it left.
    #[test]
    fn an_install_after_unflushed_deletes_survives_a_crash() {
        const CHILD: &str = "KEYRAFT_TEST_CRASH_CHILD";
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = std::path::PathBuf::from(dir);
            let snapshot = std::fs::read(dir.join("snapshot")).unwrap();
            let s = Store::open(&dir.join("node")).unwrap();
            let mut b = s.begin_apply();
            b.put_cert(cert(8)).unwrap();
            b.commit().unwrap();
            s.flush().unwrap();
            let mut b = s.begin_apply();
            assert!(b.delete_cert(&[8; 20]).unwrap());
            b.commit().unwrap();
            s.snapshot_install(&mut std::io::Cursor::new(snapshot))
                .unwrap();
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let mut b = a.begin_apply();
        b.put_cert(cert(7)).unwrap();
        b.commit().unwrap();
        let mut snapshot = Vec::new();
        a.snapshot_write(&mut snapshot).unwrap();
        std::fs::write(dir.path().join("snapshot"), &snapshot).unwrap();
        let child = run_child(
            "store::snapshot::tests::an_install_after_unflushed_deletes_survives_a_crash",
            CHILD,
            dir.path(),
        );
        assert!(
            !child.status.success()
                && String::from_utf8_lossy(&child.stdout).contains("running 1 test"),
            "the child ran the test and died by abort: {:?}\n{}",
            child.status,
            String::from_utf8_lossy(&child.stdout)
        );
        let s = Store::open(&dir.path().join("node")).unwrap();
        assert!(
            s.get_cert(&[7; 20]).unwrap().is_some(),
            "the snapshot's state"
        );
        assert!(
            s.get_cert(&[8; 20]).unwrap().is_none(),
            "a certificate deleted before the install came back after the crash"
        );
        assert_eq!(s.cert_count().unwrap(), 1);
    }

    /// Reads tell an install happened while they read by the install epoch: odd while one
    /// runs, and two more after each.
    #[test]
    fn every_install_moves_the_install_epoch_and_it_is_odd_while_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        b.put_cert(cert(1)).unwrap();
        b.set_sm_meta("last_applied", vec![1]);
        b.commit().unwrap();
        let mut snapshot = Vec::new();
        s.snapshot_write(&mut snapshot).unwrap();
        let before = s.install_epoch();
        assert_eq!(before % 2, 0);
        let mut during = Vec::new();
        let mut input = std::io::Cursor::new(&snapshot);
        s.snapshot_install_in_chunks(&mut input, 1, &mut |_| during.push(s.install_epoch()))
            .unwrap();
        assert!(!during.is_empty(), "the install wrote chunks");
        assert!(during.iter().all(|e| *e == before + 1), "{during:?}");
        assert_eq!(s.install_epoch(), before + 2);
        assert!(!s.is_installing());
    }

    #[test]
    fn truncated_snapshot_is_rejected_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = s.begin_apply();
        b.set_sm_meta("last_applied", vec![1]);
        b.commit().unwrap();
        let mut buf = Vec::new();
        s.snapshot_write(&mut buf).unwrap();
        buf.truncate(buf.len() - 3);
        assert!(s.snapshot_install(&mut std::io::Cursor::new(&buf)).is_err());
        assert!(!s.is_installing() && !s.install_interrupted().unwrap());
        assert_eq!(s.sm_meta_get("last_applied").unwrap(), Some(vec![1]));
    }

    /// A crash in the middle of a streamed install (some chunks written, not all) leaves no
    /// state that passes for a whole one: the next open discards it, and the node starts as
    /// one that never applied anything (openraft then restores its snapshot and log). A real
    /// crash, as in the test above: the child aborts after the third chunk.
    #[test]
    fn an_install_interrupted_by_a_crash_is_discarded_at_the_next_open() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "KEYRAFT_TEST_INSTALL_CRASH_CHILD";
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = std::path::PathBuf::from(dir);
            let snapshot = std::fs::read(dir.join("snapshot")).unwrap();
            let s = Store::open(&dir.join("node")).unwrap();
            let mut b = s.begin_apply();
            b.put_cert(cert(200)).unwrap();
            b.set_sm_meta("last_applied", vec![5]);
            b.commit().unwrap();
            s.flush().unwrap();
            let mut input = std::io::Cursor::new(snapshot);
            let _ = s.snapshot_install_in_chunks(&mut input, 1, &mut |n| {
                assert!(s.is_installing(), "reads are told the state is partial");
                if n == 3 {
                    std::process::abort();
                }
            });
            unreachable!("the install aborts after its third chunk");
        }
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let mut b = a.begin_apply();
        for f in 1..=20 {
            b.put_cert(cert(f)).unwrap();
        }
        b.set_sm_meta("last_applied", vec![9]);
        b.commit().unwrap();
        let mut snapshot = Vec::new();
        a.snapshot_write(&mut snapshot).unwrap();
        std::fs::write(dir.path().join("snapshot"), &snapshot).unwrap();
        let child = run_child("store::snapshot::tests::an_install_interrupted_by_a_crash_is_discarded_at_the_next_open", CHILD, dir.path());
        assert_eq!(
            child.status.signal(),
            Some(6),
            "the child died by abort in the install: {:?}\n{}{}",
            child.status,
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        let node = dir.path().join("node");
        assert!(
            Store::open_read_only(&node).is_err(),
            "export refuses a half-installed state"
        );
        let s = Store::open(&node).unwrap();
        assert!(!s.install_interrupted().unwrap());
        for name in SM_CFS {
            let left = s.db.iterator_cf(s.cf(name), IteratorMode::Start).count();
            assert_eq!(left, 0, "{name}: neither old nor partial new state");
        }
        assert_eq!(s.sm_meta_get("last_applied").unwrap(), None);
        assert!(s.get_cert(&[200; 20]).unwrap().is_none());
        s.snapshot_install(&mut std::io::Cursor::new(&snapshot))
            .unwrap();
        assert_eq!(s.cert_count().unwrap(), 20);
        let rows =
            s.db.iterator_cf(s.cf(CF_CERTS), IteratorMode::Start)
                .count();
        assert_eq!(rows, 20);
        assert_eq!(s.sm_meta_get("last_applied").unwrap(), Some(vec![9]));
    }
}
