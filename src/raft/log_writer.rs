//! The log store's writer: one thread that performs every log and vote write in submission
//! order, and the in-memory overlay of appended entries that are not yet durable.
//!
//! openraft asks `append` to return as soon as the entries are readable and to report
//! durability later through a callback, so the leader replicates an entry while its own fsync
//! is still running. [`LogWriter::append`] therefore puts the encoded entries in the overlay
//! ([`LogWriter::pending`]) and queues them; the thread writes them in one fsynced batch
//! (consecutive queued appends share one batch and one fsync), then drops them from the overlay
//! and calls the callbacks. Every other write ([`LogWriter::run`]) goes through the same queue,
//! so nothing overtakes an earlier append, and waits for its own completion.
//!
//! Readers take the overlay before reading the store: an entry leaves the overlay only after
//! the store has it, so a reader sees every entry in one place or the other.
use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::IOFlushed;

use crate::raft::types::TypeConfig;
use crate::store::Store;

/// Encoded log entries by index.
pub type Rows = Vec<(u64, Arc<Vec<u8>>)>;

/// A write to run on the writer thread.
type Write = Box<dyn FnOnce(&Store) -> io::Result<()> + Send>;

/// One queued write.
enum Job {
    Append {
        rows: Rows,
        callback: IOFlushed<TypeConfig>,
    },
    Run {
        f: Write,
        done: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
    /// A write nobody waits for (the committed index), kept in order with the others.
    Detached(Write),
}

/// Most bytes of entries one batch (one fsync) carries.
const GROUP_BYTES: usize = 16 << 20;

/// Cheap to clone; the thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct LogWriter {
    queue: mpsc::Sender<Job>,
    pending: Arc<Mutex<BTreeMap<u64, Arc<Vec<u8>>>>>,
}

impl LogWriter {
    /// Start the writer thread over `store`.
    pub fn start(store: Store) -> io::Result<LogWriter> {
        let (queue, jobs) = mpsc::channel();
        let pending = Arc::new(Mutex::new(BTreeMap::new()));
        let overlay = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&store, &overlay, &jobs))?;
        Ok(LogWriter { queue, pending })
    }

    /// Make `rows` readable now and durable soon; `callback` hears when they are.
    pub fn append(&self, rows: Rows, callback: IOFlushed<TypeConfig>) -> io::Result<()> {
        {
            let mut p = self.pending.lock().expect("not poisoned");
            for (i, v) in &rows {
                p.insert(*i, Arc::clone(v));
            }
        }
        self.queue
            .send(Job::Append { rows, callback })
            .map_err(|_| io::Error::other("the log writer has stopped"))
    }

    /// Run `f` after every write queued before it; returns its result.
    pub async fn run(
        &self,
        f: impl FnOnce(&Store) -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.queue
            .send(Job::Run {
                f: Box::new(f),
                done,
            })
            .map_err(|_| io::Error::other("the log writer has stopped"))?;
        result
            .await
            .map_err(|_| io::Error::other("the log writer has stopped"))?
    }

    /// Run `f` after every write queued before it, without waiting for it.
    pub fn detach(&self, f: impl FnOnce(&Store) -> io::Result<()> + Send + 'static) {
        // A stopped writer means the node is shutting down; nothing waits for this write.
        let _ = self.queue.send(Job::Detached(Box::new(f)));
    }

    /// The not-yet-durable entries in `[start, end)`.
    pub fn pending(&self, start: u64, end: Option<u64>) -> Vec<(u64, Arc<Vec<u8>>)> {
        let p = self.pending.lock().expect("not poisoned");
        let range = match end {
            Some(e) if e <= start => return Vec::new(),
            Some(e) => p.range(start..e),
            None => p.range(start..),
        };
        range.map(|(i, v)| (*i, Arc::clone(v))).collect()
    }

    /// The highest not-yet-durable entry.
    pub fn last_pending(&self) -> Option<(u64, Arc<Vec<u8>>)> {
        let p = self.pending.lock().expect("not poisoned");
        p.last_key_value().map(|(i, v)| (*i, Arc::clone(v)))
    }
}

fn write_loop(
    store: &Store,
    pending: &Mutex<BTreeMap<u64, Arc<Vec<u8>>>>,
    jobs: &mpsc::Receiver<Job>,
) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match job {
            Job::Append { rows, callback } => {
                let mut rows = rows;
                let mut callbacks = vec![callback];
                let mut bytes: usize = rows.iter().map(|r| r.1.len()).sum();
                // Group commit: later appends already queued share this batch and its fsync.
                while bytes < GROUP_BYTES {
                    match jobs.try_recv() {
                        Ok(Job::Append {
                            rows: more,
                            callback,
                        }) => {
                            bytes += more.iter().map(|r| r.1.len()).sum::<usize>();
                            rows.extend(more);
                            callbacks.push(callback);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = store
                    .log_append(rows.iter().map(|(i, v)| (*i, v.as_slice())))
                    .map_err(io::Error::other);
                {
                    let mut p = pending.lock().expect("not poisoned");
                    for (i, v) in &rows {
                        if p.get(i).is_some_and(|x| Arc::ptr_eq(x, v)) {
                            p.remove(i);
                        }
                    }
                }
                for c in callbacks {
                    c.io_completed(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
            Job::Run { f, done } => {
                let _ = done.send(f(store));
            }
            Job::Detached(f) => {
                if let Err(e) = f(store) {
                    tracing::warn!(error = %e, "log writer: a detached write failed");
                }
            }
        }
    }
}
