//! [`Load`]: this process's request counters, in-flight gauge, request rate, CPU and memory.
//!
//! Counting is lock-free (relaxed atomics, bumped by the HTTP middleware through
//! [`RequestGuard`]). Rates need a window: [`Load::sample`] (called once a second by the
//! sampler that [`super::NodeMetrics::start`] spawns) keeps the last [`WINDOW_SAMPLES`] readings of
//! the request counter and of the process's CPU time in a small ring; a report compares now
//! with the oldest reading. Without samples (no sampler running) the window is "since start".
//!
//! CPU time is `utime + stime` from `/proc/self/stat` in clock ticks (Linux's `USER_HZ`, 100
//! on every mainstream architecture), memory is `VmRSS` / `VmHWM` from `/proc/self/status`.
//! Elsewhere both are reported as absent.
//!
//! Depends on nothing in the crate.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Readings kept: one a second, so the window is about ten seconds.
pub const WINDOW_SAMPLES: usize = 11;
/// Linux reports CPU times in `/proc` in units of `USER_HZ`, fixed at 100 by the ABI on
/// x86, arm and the other architectures keyraft builds for.
const USER_HZ: f64 = 100.0;

/// One reading of the cumulative counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    requests: u64,
    cpu_ticks: Option<u64>,
}

/// Request counters and the sampled window of one process.
#[derive(Debug)]
pub struct Load {
    started: Instant,
    start_cpu_ticks: Option<u64>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    /// Finished requests by status class: 1xx/2xx, 3xx, 4xx, 5xx.
    by_class: [AtomicU64; 4],
    samples: Mutex<VecDeque<Sample>>,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            started: Instant::now(),
            start_cpu_ticks: cpu_ticks(),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: Mutex::new(VecDeque::with_capacity(WINDOW_SAMPLES)),
        }
    }
}

/// Counts one request as in flight until [`RequestGuard::finish`] or drop (a client that goes
/// away mid-request still leaves the gauge).
pub struct RequestGuard {
    load: Arc<Load>,
    done: bool,
}

impl RequestGuard {
    /// The response is ready with `status`.
    pub fn finish(mut self, status: u16) {
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.load.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.done = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Load {
    /// Count a request that starts now; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            load: self.clone(),
            done: false,
        }
    }

    /// Take one reading for the rate window (the sampler calls this once a second).
    pub fn sample(&self) {
        let s = self.now();
        let mut ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == WINDOW_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    fn now(&self) -> Sample {
        Sample {
            at: Instant::now(),
            requests: self.requests.load(Ordering::Relaxed),
            cpu_ticks: cpu_ticks(),
        }
    }

    /// The figures now.
    pub fn report(&self) -> LoadReport {
        let now = self.now();
        let start = Sample {
            at: self.started,
            requests: 0,
            cpu_ticks: self.start_cpu_ticks,
        };
        let oldest = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .copied()
            .unwrap_or(start);
        let uptime = now.at.duration_since(self.started).as_secs_f64();
        let window = now.at.duration_since(oldest.at).as_secs_f64();
        let rate = |from: &Sample, secs: f64| {
            (secs > 0.0).then(|| round2(now.requests.saturating_sub(from.requests) as f64 / secs))
        };
        let cpu = |from: &Sample, secs: f64| match (from.cpu_ticks, now.cpu_ticks) {
            (Some(a), Some(b)) if secs > 0.0 => {
                Some(round2(b.saturating_sub(a) as f64 / USER_HZ / secs * 100.0))
            }
            _ => None,
        };
        let class = |i: usize| self.by_class[i].load(Ordering::Relaxed);
        let memory = memory();
        LoadReport {
            uptime_secs: round2(uptime),
            window_secs: round2(window),
            requests: RequestFigures {
                total: now.requests,
                in_flight: self.in_flight.load(Ordering::Relaxed),
                per_sec_window: rate(&oldest, window),
                per_sec_since_start: rate(&start, uptime),
                status_2xx: class(0),
                status_3xx: class(1),
                status_4xx: class(2),
                status_5xx: class(3),
            },
            cpu: CpuFigures {
                percent_of_one_core_window: cpu(&oldest, window),
                percent_of_one_core_since_start: cpu(&start, uptime),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            memory: MemoryFigures {
                rss_bytes: memory.0,
                peak_rss_bytes: memory.1,
            },
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `utime + stime` of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Fields 14 and 15 of `/proc/<pid>/stat`; the command name (field 2) may hold spaces and
/// parentheses, so counting starts after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (resident set, peak resident set) in bytes.
fn memory() -> (Option<u64>, Option<u64>) {
    match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => (status_kib(&s, "VmRSS:"), status_kib(&s, "VmHWM:")),
        Err(_) => (None, None),
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// What `/cluster/load` reports for one node.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Seconds since the metrics started (about the process's uptime).
    pub uptime_secs: f64,
    /// The span the `_window` figures cover (about 10 s; less just after start).
    pub window_secs: f64,
    pub requests: RequestFigures,
    pub cpu: CpuFigures,
    pub memory: MemoryFigures,
}

/// HTTP requests (every path, including health checks).
#[derive(Debug, Clone, Serialize)]
pub struct RequestFigures {
    /// Requests received since start.
    pub total: u64,
    /// Requests received and not yet answered.
    pub in_flight: u64,
    /// Requests per second over the window.
    pub per_sec_window: Option<f64>,
    /// Requests per second since start.
    pub per_sec_since_start: Option<f64>,
    /// Answers by status class since start (1xx counted with 2xx).
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
}

/// CPU time of the whole process (HTTP, Raft, RocksDB threads), as a percentage of one core:
/// 250 means two and a half cores busy.
#[derive(Debug, Clone, Serialize)]
pub struct CpuFigures {
    pub percent_of_one_core_window: Option<f64>,
    pub percent_of_one_core_since_start: Option<f64>,
    /// Cores this process may use.
    pub cores: usize,
}

/// Memory of the process.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    /// Resident set size now.
    pub rss_bytes: Option<u64>,
    /// Highest resident set size so far.
    pub peak_rss_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (key raft) (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 25 0 0 20 0 9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_lines_are_read_in_bytes() {
        let status = "Name:\tkeyraft\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10 << 20));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20 << 20));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn requests_are_counted_in_flight_until_finished_or_dropped() {
        let load = Arc::new(Load::default());
        let a = load.begin();
        let b = load.begin();
        let r = load.report();
        assert_eq!((r.requests.total, r.requests.in_flight), (2, 2));
        a.finish(404);
        drop(b);
        load.sample();
        let r = load.report();
        assert_eq!((r.requests.total, r.requests.in_flight), (2, 0));
        assert_eq!((r.requests.status_4xx, r.requests.status_2xx), (1, 0));
        if cfg!(target_os = "linux") {
            assert!(r.memory.rss_bytes.unwrap() > 0);
            assert!(r.cpu.percent_of_one_core_since_start.is_some());
        }
    }
}
