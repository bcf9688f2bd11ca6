//! CPU time of preparing a submission, the part of a write before it is proposed: parse,
//! clean (verify, relocate, flooding defence) and serialize, for every certificate
//! of Debian's keyrings, one at a time on one thread (docs/benchmarks.md, item 13).
//!
//! ```sh
//! cargo run --example prepare_time            # 5 rounds
//! cargo run --example prepare_time -- 9       # 9 rounds
//! valgrind --tool=callgrind target/debug/examples/prepare_time 2 largest   # the largest only
//! ```
//!
//! Each certificate is submitted as gpg sends it (armored). Sequoia caches verified
//! signatures process-wide, so the first round verifies every self-signature and the later
//! rounds only look them up: the first round is what a keyserver pays for a certificate it
//! has never seen, the later ones what it pays for one sent again. Prints per round the total
//! and the median and p99 per certificate, and the median over rounds 2.. for the 1 % largest
//! certificates (those that set the write p99 of docs/benchmarks.md).
use keyraft::pgp::{self, Limits, Parsed};
use std::time::{Duration, Instant, SystemTime};

const KEYRINGS: [&str; 3] = [
    "/usr/share/keyrings/debian-keyring.gpg",
    "/usr/share/keyrings/debian-maintainers.gpg",
    "/usr/share/keyrings/debian-nonupload.gpg",
];

/// Every certificate of the keyrings, armored, first occurrence of each fingerprint.
fn certificates() -> Vec<Vec<u8>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for path in KEYRINGS {
        let bytes = std::fs::read(path).expect("debian-keyring is installed (scripts/deps.sh)");
        for item in pgp::parse_submission(&bytes, &Limits::default()).expect("a keyring") {
            let Parsed::Cert(raw) = item else { continue };
            let Ok(cert) = raw.into_cert() else { continue };
            if seen.insert(cert.fingerprint()) {
                let bin = sequoia_openpgp::serialize::MarshalInto::to_vec(&cert).unwrap();
                out.push(pgp::armor_public_keys([bin.as_slice()]));
            }
        }
    }
    out
}

/// What `raft::submission::prepare` does for one submission of a new certificate.
fn prepare(body: &[u8], limits: &Limits, now: SystemTime) -> usize {
    let mut bytes = 0;
    for item in pgp::parse_submission(body, limits).expect("parses") {
        let Parsed::Cert(raw) = item else { continue };
        let Ok(cert) = pgp::clean(raw, limits, now) else {
            continue;
        };
        bytes += sequoia_openpgp::serialize::MarshalInto::to_vec(&cert)
            .expect("serializes")
            .len();
    }
    bytes
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn main() {
    // As in main.rs: no backtraces for Sequoia's routine errors.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let usage = "usage: prepare_time [ROUNDS [largest]]";
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |s| s.parse().expect(usage));
    // `largest`: time only the 1 % largest (for a profiler or callgrind).
    let only_largest = std::env::args().nth(2).is_some_and(|a| a == "largest");
    let certs = certificates();
    let limits = Limits::default();
    let now = SystemTime::now();
    let mut by_size: Vec<usize> = (0..certs.len()).collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(certs[i].len()));
    let largest = &by_size[..certs.len().div_ceil(100)];
    println!(
        "{} certificates, {:.1} MB armored; the 1 % largest: {} of {}-{} KB",
        certs.len(),
        certs.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
        largest.len(),
        certs[*largest.last().unwrap()].len() / 1024,
        certs[largest[0]].len() / 1024,
    );
    let mut large_rounds: Vec<Vec<f64>> = vec![Vec::new(); largest.len()];
    for round in 1..=rounds {
        let started = Instant::now();
        let mut each = Vec::with_capacity(certs.len());
        let mut stored = 0;
        for (i, body) in certs.iter().enumerate() {
            if only_largest && !largest.contains(&i) {
                each.push(0.0);
                continue;
            }
            let t = Instant::now();
            stored += prepare(body, &limits, now);
            each.push(ms(t.elapsed()));
        }
        if round > 1 {
            for (k, &i) in largest.iter().enumerate() {
                large_rounds[k].push(each[i]);
            }
        }
        println!(
            "round {round}: {:.0} ms in all, per certificate median {:.3} ms, p99 {:.2} ms; \
             {:.1} MB stored",
            ms(started.elapsed()),
            quantile(&each, 0.5),
            quantile(&each, 0.99),
            stored as f64 / 1e6
        );
    }
    if rounds > 1 {
        let medians: Vec<f64> = large_rounds.iter().map(|r| quantile(r, 0.5)).collect();
        println!(
            "the 1 % largest, median over rounds 2..{rounds}: {:.2} ms each on average, \
             slowest {:.2} ms",
            medians.iter().sum::<f64>() / medians.len() as f64,
            medians.iter().cloned().fold(0.0, f64::max)
        );
    }
}
