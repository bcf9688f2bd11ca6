//! State-machine snapshots: a consistent stream out, an atomic replace in.
//!
//! Format (version 1): the magic `KEYRAFT-SNAP` and a version byte, then frames of
//! `[tag: u8][len: u32 BE][payload]`: `M` a MessagePack `(key, value)` of `sm_meta`, `C` an
//! encoded [`CertRecord`], `R` a MessagePack `(fingerprint, rendered form)`, `D` a MessagePack
//! `(key, value)` of the dedup table, and `E` the
//! frame count as u64 BE. Indexes are not shipped: they are rebuilt from each record's terms.
use std::collections::BTreeMap;
use std::io::{Read, Write};

use rocksdb::{IteratorMode, WriteBatch};

use super::db::{CF_CERTS, CF_DEDUP, CF_RENDERED, CF_SM_META, SM_CFS};
use super::record::CertRecord;
use super::tables::Table;
use super::{Store, StoreError};

const MAGIC: &[u8] = b"KEYRAFT-SNAP";
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

    /// Replace all state-machine data with the snapshot's, in one fsynced `WriteBatch`: a crash
    /// leaves either the old state or the new one, never a mix. The input is fully validated
    /// before anything is written.
    ///
    /// The batch deletes every key the live state holds. Apply writes skip the WAL, so a key
    /// deleted since the last flush is absent from the live state but still in the files on
    /// disk, and a crash would replay this batch over those files and bring it back. Hence a
    /// flush first: then the files hold exactly the live state the batch deletes.
    pub fn snapshot_install(&self, input: &mut dyn Read) -> Result<(), StoreError> {
        let mut head = [0u8; 13];
        input.read_exact(&mut head)?;
        if &head[..12] != MAGIC || !(1..=VERSION).contains(&head[12]) {
            return Err(corrupt("bad magic or version"));
        }
        self.flush()?;
        let mut batch = WriteBatch::default();
        for name in SM_CFS {
            let cf = self.cf(name);
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                batch.delete_cf(cf, item?.0);
            }
        }
        let mut frames = 0u64;
        loop {
            let mut tag_len = [0u8; 5];
            input.read_exact(&mut tag_len)?;
            let len = u32::from_be_bytes(tag_len[1..].try_into().expect("4 bytes")) as usize;
            let mut payload = vec![0u8; len];
            input.read_exact(&mut payload)?;
            match tag_len[0] {
                b'M' | b'D' | b'R' => {
                    let (k, v): (serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
                        rmp_serde::from_slice(&payload).map_err(|e| corrupt(e.to_string()))?;
                    let cf = match tag_len[0] {
                        b'M' => CF_SM_META,
                        b'D' => CF_DEDUP,
                        _ => CF_RENDERED,
                    };
                    batch.put_cf(self.cf(cf), k, v);
                }
                b'C' => {
                    let rec = CertRecord::decode(&payload)?;
                    for (kind, term) in &rec.terms {
                        let key = [kind.prefix(term), rec.fingerprint.clone()].concat();
                        batch.put_cf(self.cf(kind.cf()), key, []);
                    }
                    batch.put_cf(self.cf(CF_CERTS), &rec.fingerprint, &payload);
                }
                b'T' => {
                    let (t, k, v): (u8, serde_bytes::ByteBuf, serde_bytes::ByteBuf) =
                        rmp_serde::from_slice(&payload).map_err(|e| corrupt(e.to_string()))?;
                    let table =
                        Table::from_u8(t).ok_or_else(|| corrupt(format!("unknown table {t}")))?;
                    batch.put_cf(self.cf(table.cf()), k, v);
                }
                b'E' => {
                    let n = u64::from_be_bytes(
                        payload.try_into().map_err(|_| corrupt("bad end frame"))?,
                    );
                    if n != frames {
                        return Err(corrupt(format!("{frames} frames, end frame says {n}")));
                    }
                    break;
                }
                t => return Err(corrupt(format!("unknown frame tag {t}"))),
            }
            frames += 1;
        }
        self.db.write_opt(batch, &Self::synced())?;
        Ok(())
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
        bs.snapshot_install(&mut buf.as_slice()).unwrap();
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
            s.snapshot_install(&mut snapshot.as_slice()).unwrap();
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
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "store::snapshot::tests::an_install_after_unflushed_deletes_survives_a_crash",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
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
        assert!(s.snapshot_install(&mut buf.as_slice()).is_err());
        assert_eq!(s.sm_meta_get("last_applied").unwrap(), Some(vec![1]));
    }
}
