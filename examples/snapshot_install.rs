//! Time and peak memory of installing a large snapshot (docs/benchmarks.md, item 10).
//!
//! ```sh
//! cargo run --example snapshot_install -- 20000 /var/tmp/snap   # writes a 1.1 GB snapshot
//! cargo run --example snapshot_install -- 20000 /var/tmp/snap   # installs it; prints figures
//! ```
//!
//! The first run builds a store of N synthetic records (30 KB of random bytes each, a 30 KB
//! rendered form, one index term) and writes its snapshot to `DIR/snap`; every later run
//! installs that snapshot into a fresh store under `DIR` and prints the install time and the
//! process's peak resident memory (`VmHWM`) before and after.
use keyraft::store::{CertRecord, IndexKind, Store};
use std::io::BufReader;

fn hwm_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn main() {
    let usage = "usage: snapshot_install N DIR";
    let n: u32 = std::env::args().nth(1).expect(usage).parse().expect(usage);
    let dir = std::path::PathBuf::from(std::env::args().nth(2).expect(usage));
    let snap = dir.join("snap");
    if !snap.exists() {
        let a = Store::open(&dir.join("a")).unwrap();
        let mut state = 1u64;
        for chunk in 0..(n / 500) {
            let mut b = a.begin_apply();
            for i in 0..500u32 {
                let k = chunk * 500 + i;
                let mut fpr = vec![0u8; 20];
                fpr[..4].copy_from_slice(&k.to_be_bytes());
                let cert: Vec<u8> = (0..30_000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                b.put_rendered(&fpr, cert.iter().map(|c| b'A' + c % 26).collect());
                b.put_cert(CertRecord {
                    fingerprint: fpr,
                    cert,
                    summary: vec![1; 200],
                    terms: vec![(IndexKind::Word, format!("user{k}").into_bytes())],
                    created_at: 1,
                    updated_at: 1,
                    updated_index: 1,
                    version: Default::default(),
                    origin: 0,
                })
                .unwrap();
            }
            b.commit().unwrap();
        }
        let mut out = std::io::BufWriter::new(std::fs::File::create(&snap).unwrap());
        a.snapshot_write(&mut out).unwrap();
        println!("snapshot written");
        return;
    }
    let b = Store::open(&dir.join(format!("b{}", std::process::id()))).unwrap();
    let before = hwm_kb();
    let t = std::time::Instant::now();
    b.snapshot_install(&mut BufReader::new(std::fs::File::open(&snap).unwrap()))
        .unwrap();
    println!(
        "snapshot {} MB: install {:.2} s, peak RSS {} MB before, {} MB after",
        std::fs::metadata(&snap).unwrap().len() >> 20,
        t.elapsed().as_secs_f64(),
        before >> 10,
        hwm_kb() >> 10
    );
}
