//! [`Histogram`]: a lock-free latency histogram with fixed, log-spaced buckets.
//!
//! Values are microseconds. Below 4 µs every value has its own bucket; from 4 µs on, each power
//! of two is split into four buckets (bounds `4·2^k, 5·2^k, 6·2^k, 7·2^k, 8·2^k`), so a bucket
//! is at most 25 % wide and any percentile read from it is off by less than that. Values from
//! 2^35 µs (about 9.5 hours) on share the last bucket. Recording is three relaxed atomic adds
//! and an atomic max: no lock, no allocation, safe from any thread.
//!
//! Percentiles are estimated by linear interpolation inside the bucket holding the wanted rank
//! (as Prometheus' `histogram_quantile` does), clamped to the largest value recorded.
//!
//! Depends on nothing in the crate.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Highest bit position with its own buckets: values of 2^35 µs and more go to the last one.
const MAX_MSB: u32 = 35;
/// Number of buckets: 4 exact ones (0..4 µs) and 4 per power of two from 2^2 to 2^35.
pub const BUCKETS: usize = 4 * MAX_MSB as usize;

/// A fixed-bucket latency histogram, cumulative since it was created.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        write!(f, "Histogram(count {}, p50 {} µs)", s.count, s.p50_us)
    }
}

/// The bucket a value (µs) falls in.
pub fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    if msb > MAX_MSB {
        return BUCKETS - 1;
    }
    let sub = (us >> (msb - 2)) & 3;
    (4 * (msb - 1) + sub as u32) as usize
}

/// The values (µs) bucket `i` holds: `[from, to)`.
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < 4 {
        return (i as u64, i as u64 + 1);
    }
    let msb = (i / 4) as u32 + 1;
    let sub = (i % 4) as u64;
    let shift = msb - 2;
    let from = (4 + sub) << shift;
    if i == BUCKETS - 1 {
        return (from, u64::MAX);
    }
    (from, (5 + sub) << shift)
}

impl Histogram {
    /// Record one duration.
    pub fn record(&self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Record one value in microseconds.
    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// A consistent-enough copy (each bucket is read once; concurrent records may land in
    /// some buckets and not yet in others) with the percentiles worked out.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max_us = self.max_us.load(Ordering::Relaxed);
        let sum_us = self.sum_us.load(Ordering::Relaxed);
        let pct = |p: f64| percentile(&counts, count, max_us, p);
        HistogramSnapshot {
            count,
            sum_us,
            mean_us: sum_us.checked_div(count).unwrap_or(0),
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            max_us,
            buckets: counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, &n)| {
                    let (from_us, to_us) = bucket_bounds(i);
                    Bucket {
                        from_us,
                        to_us,
                        count: n,
                    }
                })
                .collect(),
        }
    }
}

/// The estimated value (µs) below which a fraction `p` of the `count` values lie.
fn percentile(counts: &[u64], count: u64, max_us: u64, p: f64) -> u64 {
    if count == 0 {
        return 0;
    }
    // The rank of the wanted value, 1-based: the smallest r with r >= p * count.
    let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if below + n >= rank {
            let (from, to) = bucket_bounds(i);
            let to = to.min(max_us.saturating_add(1)).max(from + 1);
            // Spread the bucket's values evenly over [from, to): the k-th of n sits at
            // from + (to - from) * k / n, the last one just below `to`.
            let k = rank - below;
            let est = from as f64 + (to - from) as f64 * (k as f64 / n as f64) - 1.0;
            return (est.round() as u64).clamp(from, to - 1).min(max_us);
        }
        below += n;
    }
    max_us
}

/// One non-empty bucket: `count` values in `[from_us, to_us)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub from_us: u64,
    pub to_us: u64,
    pub count: u64,
}

/// A histogram's figures at one moment, in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistogramSnapshot {
    /// Values recorded since the node started.
    pub count: u64,
    /// Their sum.
    pub sum_us: u64,
    /// Their mean (0 when empty).
    pub mean_us: u64,
    /// Estimated median.
    pub p50_us: u64,
    /// Estimated 90th percentile.
    pub p90_us: u64,
    /// Estimated 99th percentile.
    pub p99_us: u64,
    /// The largest value recorded (exact).
    pub max_us: u64,
    /// The non-empty buckets, ascending.
    pub buckets: Vec<Bucket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_at_most_a_quarter_wide() {
        let mut expected_from = 0;
        for i in 0..BUCKETS {
            let (from, to) = bucket_bounds(i);
            assert_eq!(from, expected_from, "bucket {i}");
            assert!(to > from);
            if (4..BUCKETS - 1).contains(&i) {
                assert!(
                    (to - from) * 4 <= from,
                    "bucket {i} [{from}, {to}) too wide"
                );
            }
            assert_eq!(bucket_of(from), i);
            if i < BUCKETS - 1 {
                assert_eq!(bucket_of(to - 1), i);
            }
            expected_from = to;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(1 << 40), BUCKETS - 1);
    }

    #[test]
    fn empty_histogram_reads_zero() {
        let s = Histogram::default().snapshot();
        assert_eq!((s.count, s.p50_us, s.p99_us, s.max_us), (0, 0, 0, 0));
        assert!(s.buckets.is_empty());
    }

    #[test]
    fn percentiles_of_a_uniform_spread_are_within_a_bucket() {
        let h = Histogram::default();
        for us in 1..=10_000 {
            h.record_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max_us, 10_000);
        assert_eq!(s.mean_us, 5_000);
        for (got, want) in [
            (s.p50_us, 5_000.0),
            (s.p90_us, 9_000.0),
            (s.p99_us, 9_900.0),
        ] {
            let err = (got as f64 - want).abs() / want;
            assert!(err < 0.05, "got {got}, want about {want}");
        }
        assert!(s.p50_us <= s.p90_us && s.p90_us <= s.p99_us && s.p99_us <= s.max_us);
        assert_eq!(s.buckets.iter().map(|b| b.count).sum::<u64>(), 10_000);
    }

    #[test]
    fn percentiles_see_the_tail() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_millis(1));
        }
        h.record(Duration::from_millis(200));
        h.record(Duration::from_millis(200));
        let s = h.snapshot();
        let within = |got: u64, want: u64| got.abs_diff(want) * 4 <= want;
        assert!(within(s.p50_us, 1_000), "{s:?}");
        assert!(within(s.p90_us, 1_000), "{s:?}");
        assert!(within(s.p99_us, 200_000), "{s:?}");
        assert_eq!(s.max_us, 200_000);
    }

    #[test]
    fn one_value_reads_back_exactly_and_small_values_are_exact() {
        let h = Histogram::default();
        h.record_us(777);
        let s = h.snapshot();
        assert_eq!((s.p50_us, s.p99_us, s.max_us), (777, 777, 777));
        let h = Histogram::default();
        for v in [0, 1, 2, 3] {
            h.record_us(v);
        }
        let s = h.snapshot();
        assert_eq!((s.p50_us, s.max_us), (1, 3));
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record_us(i * (t + 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.count(), 40_000);
        assert_eq!(h.snapshot().max_us, 39_996);
    }
}
