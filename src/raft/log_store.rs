//! The raft log on top of the store's log column family: openraft's `RaftLogStorage` and
//! `RaftLogReader`.
//!
//! Entries are keyed by their big-endian index (the store does that) and encoded with
//! [`crate::raft::codec`]. Durability: every write (append, vote, purge, truncate) is fsynced by
//! the store before it counts as done (except the committed index, a hint openraft can lose).
//! All writes go through one [`LogWriter`] thread, in order: `append` returns once the entries
//! are readable (from the writer's in-memory overlay) and reports to openraft's `IOFlushed`
//! callback when they are on disk, so the leader replicates while its own fsync runs; every
//! other write waits for its turn and its completion.
//!
//! Knows the store and openraft; must not depend on the state machine, the network or the API.
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::raft::codec;
use crate::raft::log_writer::LogWriter;
use crate::raft::meta::{self, CommittedKey, LastPurgedKey, VoteKey};
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};
use crate::store::Store;

/// The raft log of one node. Cheap to clone; clones share the same RocksDB and writer.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    writer: LogWriter,
}

impl LogStore {
    /// Wrap an open store and start its log writer thread.
    pub fn new(store: Store) -> io::Result<LogStore> {
        let writer = LogWriter::start(store.clone())?;
        Ok(LogStore { store, writer })
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        if let Some((_, bytes)) = self.writer.last_pending() {
            return codec::decode::<Entry>(&bytes).map(|e| Some(e.log_id));
        }
        let last = self.store.log_last().map_err(io::Error::other)?;
        last.map(|(_, bytes)| codec::decode::<Entry>(&bytes).map(|e| e.log_id))
            .transpose()
    }
}

/// Convert any `RangeBounds<u64>` to the store's `[start, end)` form.
fn to_half_open<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.saturating_add(1)),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = to_half_open(&range);
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        // The overlay first: an entry leaves it only once the store has it.
        let pending = self.writer.pending(start, end);
        let stored_end = pending.first().map_or(end, |(i, _)| Some(*i));
        let rows = self
            .store
            .log_range(start, stored_end)
            .map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(rows.len() + pending.len());
        for (_, bytes) in &rows {
            out.push(codec::decode::<Entry>(bytes)?);
        }
        for (_, bytes) in &pending {
            out.push(codec::decode::<Entry>(bytes)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        meta::raft_get::<VoteKey>(&self.store)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = meta::raft_get::<LastPurgedKey>(&self.store)?;
        // Entries at or below the purge point may survive a crash between the two purge steps;
        // openraft ignores them, and the last log id is never below the purge point.
        let last_log_id = match self.last_entry_log_id()? {
            Some(last) if Some(&last) >= last_purged_log_id.as_ref() => Some(last),
            _ => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.writer
            .run(move |s| meta::raft_put::<VoteKey>(s, &vote))
            .await
    }

    /// Not fsynced and not waited for: it is on every write's path, and losing it in a crash
    /// only means the restarted node applies up to the last committed index once a leader
    /// tells it again. Queued behind the appends it covers, so it never reaches the store
    /// before them.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.writer
            .detach(move |s| meta::raft_put_unsynced::<CommittedKey>(s, &committed));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(meta::raft_get::<CommittedKey>(&self.store)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, Arc::new(codec::encode(&e)?))))
            .collect::<io::Result<Vec<_>>>();
        match rows {
            Ok(rows) if rows.is_empty() => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Ok(rows) => self.writer.append(rows, callback),
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.writer
            .run(move |s| s.log_truncate_from(from).map_err(io::Error::other))
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are ignored by openraft, so a
        // crash between the two steps leaves harmless leftovers rather than a hole.
        self.writer
            .run(move |s| {
                meta::raft_put::<LastPurgedKey>(s, &log_id)?;
                s.log_purge_through(log_id.index).map_err(io::Error::other)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::to_half_open;

    #[test]
    fn ranges_become_half_open() {
        assert_eq!(to_half_open(&(3..7)), (3, Some(7)));
        assert_eq!(to_half_open(&(3..=7)), (3, Some(8)));
        assert_eq!(to_half_open(&(3..)), (3, None));
        assert_eq!(to_half_open(&(..)), (0, None));
        assert_eq!(to_half_open(&(..=0)), (0, Some(1)));
    }
}
