//! The on-disk home of snapshots: `<data_dir>/snapshots/`.
//!
//! Layout:
//! - `snapshot-<index>-<seq>.data`: the bytes `Store::snapshot_write` produced;
//! - `current.meta`: a [`codec`]-encoded [`CurrentSnapshot`] naming the current data file and its
//!   raft metadata. Replacing this file (write temp, fsync, rename, fsync dir) is the single
//!   commit point, so a crash leaves either the old or the new snapshot current, never a mix;
//! - `*.tmp`: work in progress, deleted on open.
//!
//! Data files other than the current one are deleted when a new one is published. Readers hold
//! open handles, so deleting a file being streamed to a peer is safe (POSIX unlink semantics).
//!
//! Pure file handling: knows nothing of RocksDB or of openraft beyond the metadata type.
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::raft::codec;
use crate::raft::types::SnapshotMeta;

const META_FILE: &str = "current.meta";

/// What `current.meta` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CurrentSnapshot {
    /// File name (not path) of the data file inside the snapshot directory.
    file: String,
    /// The raft metadata matching that file's contents.
    meta: SnapshotMeta,
}

/// The snapshot directory of one node, shared by the state machine and its snapshot builders.
pub struct SnapshotFiles {
    dir: PathBuf,
    seq: AtomicU64,
    /// The current snapshot; the lock also serialises publishing.
    current: Mutex<Option<CurrentSnapshot>>,
}

impl SnapshotFiles {
    /// Open (creating if needed) the snapshot directory, drop leftovers of interrupted work and
    /// load the current snapshot's metadata.
    pub fn open(dir: &Path) -> io::Result<SnapshotFiles> {
        fs::create_dir_all(dir)?;
        let current = match fs::read(dir.join(META_FILE)) {
            Ok(bytes) => Some(codec::decode::<CurrentSnapshot>(&bytes)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(c) = &current {
            if !dir.join(&c.file).is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("current snapshot file {} is missing", c.file),
                ));
            }
        }
        let files = SnapshotFiles {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
            current: Mutex::new(current),
        };
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(dir.join(&name))?;
            }
        }
        files.remove_stale(files.current_file().as_deref())?;
        Ok(files)
    }

    /// A fresh temp path in the snapshot directory (removed on the next open if left behind).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{what}-{n}.tmp"))
    }

    /// The current snapshot's metadata and a fresh handle on its data, at offset 0.
    pub fn current(&self) -> io::Result<Option<(SnapshotMeta, File)>> {
        let guard = self.current.lock().map_err(|_| poisoned())?;
        match guard.as_ref() {
            None => Ok(None),
            Some(c) => Ok(Some((c.meta.clone(), File::open(self.dir.join(&c.file))?))),
        }
    }

    /// Make the fsynced file at `tmp` the current snapshot with `meta`, unless `only_if_newer` and
    /// the current snapshot already covers a later log id (then `tmp` is discarded). Returns a
    /// handle on the data, at offset 0, either way.
    pub fn publish(
        &self,
        tmp: &Path,
        meta: &SnapshotMeta,
        only_if_newer: bool,
    ) -> io::Result<File> {
        let mut guard = self.current.lock().map_err(|_| poisoned())?;
        let handle = File::open(tmp)?;
        if only_if_newer {
            if let Some(c) = guard.as_ref() {
                if c.meta.last_log_id > meta.last_log_id {
                    fs::remove_file(tmp)?;
                    return Ok(handle);
                }
            }
        }
        let index = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        let file = loop {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("snapshot-{index}-{n}.data");
            if !self.dir.join(&name).exists() {
                break name;
            }
        };
        fs::rename(tmp, self.dir.join(&file))?;
        // The data file's name is durable before any meta names it, whatever order the file
        // system would keep the two renames in after a power loss.
        sync_dir(&self.dir)?;
        let record = CurrentSnapshot {
            file,
            meta: meta.clone(),
        };
        let meta_tmp = self.temp_path("meta");
        write_synced(&meta_tmp, &codec::encode(&record)?)?;
        fs::rename(&meta_tmp, self.dir.join(META_FILE))?;
        sync_dir(&self.dir)?;
        let keep = record.file.clone();
        *guard = Some(record);
        // Still under the lock: a concurrent publish must not see its new file deleted.
        self.remove_stale(Some(&keep))?;
        Ok(handle)
    }

    fn current_file(&self) -> Option<String> {
        self.current.lock().ok()?.as_ref().map(|c| c.file.clone())
    }

    /// Delete data files other than `keep`.
    fn remove_stale(&self, keep: Option<&str>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".data") && Some(name.as_str()) != keep {
                match fs::remove_file(self.dir.join(&name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Write `bytes` to a new file at `path` and fsync it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Fsync a directory so renames inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn poisoned() -> io::Error {
    io::Error::other("snapshot directory lock poisoned")
}
