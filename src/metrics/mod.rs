//! Node-local observability: latency histograms and load figures of this process.
//!
//! A leaf like `config`: every layer may use it, it uses nothing of the crate. The figures are
//! this node's own and are never replicated: apply may be *timed* from outside (the state
//! machine records how long a batch took), but nothing here is ever read by apply or written
//! into the store, so it cannot make replicas differ.
//!
//! # Common operations
//!
//! ```
//! use std::time::{Duration, Instant};
//! let m = keyraft::metrics::NodeMetrics::default();
//! let started = Instant::now();
//! // ... serve a lookup ...
//! m.lookup.record(started.elapsed());
//! m.commit.record(Duration::from_millis(3));
//! let p = m.performance();
//! assert_eq!(p.lookup.count, 1);
//! assert_eq!(p.commit.max_us, 3_000);
//! ```
pub mod histogram;
pub mod load;

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;

pub use histogram::{Histogram, HistogramSnapshot};
pub use load::{Load, LoadReport, RequestGuard};

/// Every figure one node keeps. Shared as `Arc<NodeMetrics>` by the raft node (commit, apply)
/// and the HTTP layer (lookups, requests).
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// A write, from the proposal on this node (forwarded to the leader if need be) until it
    /// is applied on this node.
    pub commit: Histogram,
    /// Applying one log entry to the state machine (excluding the batch's commit to disk).
    pub apply_entry: Histogram,
    /// Applying one batch of entries, including the one RocksDB write that commits it.
    pub apply_batch: Histogram,
    /// An HKP `op=get`, `op=index` or `op=vindex`, from the parsed query to the answer
    /// (including any wait for `min_index` or a linearizable read).
    pub lookup: Histogram,
    /// HTTP requests, the in-flight gauge, CPU and memory.
    pub load: Arc<Load>,
}

/// The histograms of `/cluster/performance`.
#[derive(Debug, Clone, Serialize)]
pub struct Performance {
    pub commit: HistogramSnapshot,
    pub apply_entry: HistogramSnapshot,
    pub apply_batch: HistogramSnapshot,
    pub lookup: HistogramSnapshot,
}

/// How often the load sampler takes a reading.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl NodeMetrics {
    /// New metrics, with the load sampler running on the current tokio runtime if there is
    /// one (it stops once the metrics are dropped).
    pub fn start() -> Arc<NodeMetrics> {
        let m = Arc::new(NodeMetrics::default());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sampler(Arc::downgrade(&m.load)));
        }
        m
    }

    /// Copies of every histogram.
    pub fn performance(&self) -> Performance {
        Performance {
            commit: self.commit.snapshot(),
            apply_entry: self.apply_entry.snapshot(),
            apply_batch: self.apply_batch.snapshot(),
            lookup: self.lookup.snapshot(),
        }
    }
}

async fn sampler(load: Weak<Load>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match load.upgrade() {
            Some(l) => l.sample(),
            None => return,
        }
    }
}
