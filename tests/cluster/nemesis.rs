//! Faults at random under a write load, a small Jepsen-style run. Two writer threads submit
//! certificates (Debian's and generated ones) to random members of a three-node cluster, each
//! retrying a submission on other members until it is acknowledged. A Debian certificate with
//! several user ids goes in as two halves (every other user id) close together, usually
//! through two members at once: concurrent updates that the default `merge` policy unites.
//! After every acknowledged write a linearizable read on another member must find it with the
//! user ids it carried, and a `min_index` read on a third member too (an answer of 503 is
//! allowed while a fault lasts: unavailable, not wrong). Meanwhile
//! a nemesis, one fault at a time, kills a member with SIGKILL and restarts it, freezes one with
//! SIGSTOP, or cuts one off with iptables, the leader as often as a follower, and now and then
//! kills every member at once; snapshots are taken every 50 entries, so a member that was away
//! often comes back through a snapshot.
//! Before each fault, the writers must have got a write acknowledged since the last one healed.
//! At the end every member serves every acknowledged write with all its acknowledged user ids,
//! holds no certificate nobody submitted, and all have the same state digest at the same
//! applied index.
//!
//! `KEYRAFT_NEMESIS_ROUNDS` (default 8) sets the number of faults, `KEYRAFT_NEMESIS_SEED` the
//! seed (printed, to replay a failing run's choice of faults).
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::SerializeInto;
use sequoia_openpgp::Cert;

use crate::harness::*;
use crate::partition::{test_ip, Rules};

/// xorshift64*: enough to vary the faults, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }

    /// A pause between `min` and `min + spread` milliseconds.
    fn pause(&mut self, min: u64, spread: u64) -> Duration {
        Duration::from_millis(min + self.below(spread as usize + 1) as u64)
    }
}

/// One submission: a certificate, or a part of one holding some of its user ids.
struct Item {
    fpr: String,
    bytes: Vec<u8>,
    /// The user ids a node keeps of it (as `keyraft::pgp::clean` leaves them).
    uids: BTreeSet<String>,
}

/// The user ids of `cert` once cleaned as a node cleans it; `None` if a node would refuse it.
fn kept_uids(cert: &[u8]) -> Option<BTreeSet<String>> {
    let limits = keyraft::pgp::Limits::default();
    let cert = Cert::from_bytes(cert).ok()?;
    let clean = keyraft::pgp::clean(cert, &limits, std::time::SystemTime::now()).ok()?;
    Some(uid_set(&clean))
}

fn uid_set(cert: &Cert) -> BTreeSet<String> {
    cert.userids()
        .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
        .collect()
}

/// The user ids of the certificate in an `op=get` answer.
fn served_uids(body: &[u8]) -> BTreeSet<String> {
    Cert::from_bytes(body)
        .map(|c| uid_set(&c))
        .unwrap_or_default()
}

/// `cert` whole or, when it has two user ids or more, as two halves (every other user id) to
/// be submitted at once through two members: concurrent updates of one certificate, which the
/// default `merge` policy must unite.
fn items(fpr: String, cert: Vec<u8>) -> Vec<Item> {
    let Some(uids) = kept_uids(&cert) else {
        return Vec::new();
    };
    let parsed = Cert::from_bytes(&cert).unwrap();
    let first: BTreeSet<&String> = uids.iter().step_by(2).collect();
    let half = |keep_first: bool| {
        let part = parsed.clone().retain_userids(|u| {
            let uid = String::from_utf8_lossy(u.userid().value()).into_owned();
            first.contains(&uid) == keep_first
        });
        let bytes = part.to_vec().unwrap();
        kept_uids(&bytes).map(|uids| Item {
            fpr: fpr.clone(),
            bytes,
            uids,
        })
    };
    match (uids.len() >= 2).then(|| (half(true), half(false))) {
        Some((Some(a), Some(b))) if !a.uids.is_empty() && !b.uids.is_empty() => vec![a, b],
        _ => vec![Item {
            fpr: fpr.clone(),
            bytes: cert,
            uids,
        }],
    }
}

/// What the writers saw.
#[derive(Default)]
struct Ledger {
    /// Acknowledged writes: fingerprint → the log index of the last acknowledgement and the
    /// user ids of every acknowledged part.
    acked: Mutex<BTreeMap<String, (u64, BTreeSet<String>)>>,
    /// Acknowledgements (a certificate's two halves count twice).
    acknowledged: AtomicUsize,
    /// Submissions taken from the queue (acknowledged or not).
    attempted: AtomicUsize,
    /// Reads after an acknowledged write that found it / answered "unavailable".
    reads_found: AtomicUsize,
    reads_unavailable: AtomicUsize,
    /// Answers that break a guarantee, described.
    violations: Mutex<Vec<String>>,
}

impl Ledger {
    fn acks(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }

    /// Check a read of `item` made after its write was acknowledged at `index`: found with
    /// every user id it carried is right, unavailable (503, a timeout, a refused connection)
    /// is allowed, anything else is wrong.
    fn read_after_ack(&self, what: &str, item: &Item, index: u64, r: std::io::Result<Response>) {
        let fpr = &item.fpr;
        match r {
            Ok(r) if r.status == 200 => {
                self.reads_found.fetch_add(1, Ordering::Relaxed);
                let got = served_uids(&r.body);
                let lacks: Vec<&String> = item.uids.difference(&got).collect();
                if !lacks.is_empty() {
                    self.violation(format!(
                        "{what} of {fpr} (acknowledged at index {index}) lacks user ids {lacks:?}"
                    ));
                }
            }
            Ok(r) if r.status != 503 => self.violation(format!(
                "{what} of {fpr} (acknowledged at index {index}) answered {}: {}",
                r.status,
                r.text()
            )),
            _ => {
                self.reads_unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Submissions not yet made, shared by the writers: the parts of one entry go out at once.
type Queue = Arc<Mutex<VecDeque<Vec<Item>>>>;

/// One writer: takes submissions from `queue` until it is empty or `stop` is set. The parts
/// of one entry (a certificate's two halves) go out at once, each to another member.
fn writer(
    seed: u64,
    addrs: Vec<SocketAddr>,
    queue: Queue,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let Some(parts) = queue.lock().unwrap().pop_front() else {
            return;
        };
        let first = rng.below(addrs.len());
        std::thread::scope(|s| {
            for (k, item) in parts.iter().enumerate() {
                let rng = Rng(rng.0.rotate_left(7 * k as u32 + 1) | 1);
                let (addrs, ledger, stop) = (&addrs, &ledger, &stop);
                s.spawn(move || submit(item, (first + k) % addrs.len(), addrs, ledger, stop, rng));
            }
        });
    }
}

/// Submit `item`, first to member `first` and then to random members, until acknowledged (at
/// most 40 tries); then check the reads.
fn submit(
    item: &Item,
    first: usize,
    addrs: &[SocketAddr],
    ledger: &Ledger,
    stop: &AtomicBool,
    mut rng: Rng,
) {
    let n = addrs.len();
    let timeout = Duration::from_secs(10);
    let fpr = &item.fpr;
    ledger.attempted.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..40 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let a = if attempt == 0 { first } else { rng.below(n) };
        let headers = [("Content-Type", "application/pgp-keys")];
        let r = request(
            addrs[a],
            "POST",
            "/pks/add?options=mr",
            &headers,
            &item.bytes,
            timeout,
        );
        match r {
            Ok(r) if r.status == 200 => {
                let index: u64 = r
                    .header("x-keyraft-log-index")
                    .and_then(|v| v.parse().ok())
                    .expect("an acknowledged write carries its log index");
                let mut acked = ledger.acked.lock().unwrap();
                let entry = acked.entry(fpr.clone()).or_default();
                entry.0 = entry.0.max(index);
                entry.1.extend(item.uids.iter().cloned());
                drop(acked);
                ledger.acknowledged.fetch_add(1, Ordering::SeqCst);
                let b = (a + 1 + rng.below(n - 1)) % n;
                let c = (0..n).find(|&c| c != a && c != b).unwrap();
                let lin = format!("/pks/lookup?op=get&search=0x{fpr}&consistency=linearizable");
                let r = request(addrs[b], "GET", &lin, &[], b"", timeout);
                ledger.read_after_ack("a linearizable read", item, index, r);
                let min = format!("/pks/lookup?op=get&search=0x{fpr}&min_index={index}");
                let r = request(addrs[c], "GET", &min, &[], b"", timeout);
                ledger.read_after_ack("a min_index read", item, index, r);
                return;
            }
            // Unavailable (503), timed out (408), or no answer: try another member.
            Ok(r) if r.status == 503 || r.status == 408 => {}
            Err(_) => {}
            Ok(r) => {
                ledger.violation(format!(
                    "submitting {fpr} answered {}: {}",
                    r.status,
                    r.text()
                ));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One fault: what it does, to whom.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Freeze,
    /// iptables drops everything from and to its node-to-node address, then heal.
    Isolate,
    /// SIGKILL of every member at once, then all restart: what was acknowledged was on a
    /// quorum's disks.
    KillAll,
}

#[test]
fn random_faults_lose_no_acknowledged_write_and_reads_stay_linearizable() {
    let rounds: usize = std::env::var("KEYRAFT_NEMESIS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("KEYRAFT_NEMESIS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    tracing_phase(&format!(
        "nemesis: {rounds} faults, KEYRAFT_NEMESIS_SEED={seed}"
    ));
    let mut rng = Rng(seed);

    let t = TestDir::new();
    let names = ["n1", "n2", "n3"];
    let token = t.file("admin-token", "nemesis-t0ken\n");
    let settings = |s: Spec| {
        s.admin_token(&token)
            .env("KEYRAFT_HKP__WRITE_TIMEOUT_SECS", "5")
            .env("KEYRAFT_RAFT__SNAPSHOT_EVERY", "50")
            .env("KEYRAFT_RAFT__KEEP_LOGS", "10")
    };
    let mut members: Vec<Member> = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut s = settings(t.spec(name)).raft_ip(test_ip(71 + k as u8));
        if let Some(first) = members.first() {
            s = s.join(&[first.http]);
        }
        let m = s.start();
        m.wait_ready();
        members.push(m);
    }

    // Debian's certificates (up to 360 KB) between small generated ones: more than the writers
    // get through, so they never run dry before the nemesis is done.
    let debian = debian_certs(usize::MAX);
    let generated = generated_certs((3 * debian.len()).max(150 * rounds), "nemesis");
    let mut queue: VecDeque<Vec<Item>> = VecDeque::new();
    let mut generated = generated.into_iter().map(|(f, c)| items(f, c));
    for (fpr, cert) in debian {
        queue.push_back(items(fpr, cert));
        queue.extend(generated.by_ref().take(3));
    }
    queue.extend(generated);
    queue.retain(|parts| !parts.is_empty());
    eprintln!(
        "{} certificates, {} of them in two halves",
        queue.len(),
        queue.iter().filter(|p| p.len() == 2).count()
    );
    let submittable: BTreeSet<String> = queue.iter().map(|p| p[0].fpr.clone()).collect();
    let queue = Arc::new(Mutex::new(queue));
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.http).collect();
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let (addrs, queue, ledger, stop) =
                (addrs.clone(), queue.clone(), ledger.clone(), stop.clone());
            let seed = seed.rotate_left(17 * (w + 1));
            std::thread::spawn(move || writer(seed, addrs, queue, ledger, stop))
        })
        .collect();

    let mut faults = Vec::new();
    for round in 0..rounds {
        // Liveness: after each healed fault, writes are acknowledged again.
        let before = ledger.acks();
        let resumed = poll(Duration::from_secs(60), || {
            (ledger.acks() > before).then_some(())
        });
        assert!(
            resumed.is_some(),
            "no write acknowledged within 60 s before fault {round} (after {faults:?}); \
             violations so far: {:?}",
            ledger.violations.lock().unwrap()
        );
        let fault = match rng.below(7) {
            0 | 1 => Fault::Kill,
            2 | 3 => Fault::Freeze,
            4 | 5 => Fault::Isolate,
            _ => Fault::KillAll,
        };
        // Every other fault hits the leader.
        let victim = if rng.below(2) == 0 {
            let all: Vec<&Member> = members.iter().collect();
            leader_of(&all)
        } else {
            rng.below(members.len())
        };
        let hold = rng.pause(800, 2500);
        tracing_phase(&format!(
            "fault {round}: {fault:?} {} for {hold:?} ({} acknowledged so far)",
            members[victim].name,
            ledger.acks()
        ));
        match fault {
            Fault::Kill => {
                members[victim].kill9();
                std::thread::sleep(hold);
                members[victim].spawn();
            }
            Fault::Freeze => {
                members[victim].signal("STOP");
                std::thread::sleep(hold);
                members[victim].signal("CONT");
            }
            Fault::Isolate => {
                let mut cut = Rules::isolate(members[victim].raft.ip());
                std::thread::sleep(hold);
                cut.heal();
            }
            Fault::KillAll => {
                members.iter_mut().for_each(Member::kill9);
                std::thread::sleep(hold);
                members.iter_mut().for_each(Member::spawn);
            }
        }
        let whom = match fault {
            Fault::KillAll => "all".to_string(),
            _ => members[victim].name.clone(),
        };
        faults.push((fault, whom));
        std::thread::sleep(rng.pause(300, 1000));
    }

    tracing_phase("stop the writers; every member comes back");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    for m in &members {
        m.wait_ready();
    }
    let violations = ledger.violations.lock().unwrap().clone();
    let acked = ledger.acked.lock().unwrap().clone();
    let attempted = ledger.attempted.load(Ordering::Relaxed);
    eprintln!(
        "{} faults {faults:?}: {} of {attempted} submissions acknowledged ({} certificates); \
         reads after an acknowledgement: {} found, {} unavailable; {} violations",
        faults.len(),
        ledger.acks(),
        acked.len(),
        ledger.reads_found.load(Ordering::Relaxed),
        ledger.reads_unavailable.load(Ordering::Relaxed),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        ledger.reads_found.load(Ordering::Relaxed) > 0,
        "reads after an acknowledgement found the write at least once"
    );

    tracing_phase("a last write; every member applies it");
    let last = generated_certs(1, "nemesis-last").remove(0);
    let r = members[0].post(&last.1);
    assert_eq!(r.status, 200, "{}", r.text());
    let index = log_index(&r);
    for m in &members {
        assert!(
            served(m, &last.0, index),
            "{} applies the last write",
            m.name
        );
    }

    tracing_phase(
        "every acknowledged write is on every member, halves united; no member holds more",
    );
    for m in &members {
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(fpr, (_, uids))| {
                let target = format!("/pks/lookup?op=get&search=0x{fpr}");
                match m.get(&target) {
                    Some(r) if r.status == 200 => !served_uids(&r.body).is_superset(uids),
                    _ => true,
                }
            })
            .map(|(fpr, _)| fpr)
            .collect();
        assert!(
            missing.is_empty(),
            "{} lost {} acknowledged writes (or some of their user ids), e.g. {:?}",
            m.name,
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let count = m.stats()["certificates"].as_u64().unwrap() as usize;
        assert!(
            count > acked.len() && count <= attempted + 1,
            "{}: {count} certificates, {} acknowledged (+1 last), {attempted} attempted",
            m.name,
            acked.len()
        );
    }
    // What a member exports was submitted by a writer or is the last write.
    let exported = members[0].export();
    for cert in keyraft::pgp::CertSplitter::new(exported.as_slice()) {
        let fpr = Cert::from_bytes(&cert.unwrap())
            .unwrap()
            .fingerprint()
            .to_hex();
        assert!(
            fpr == last.0 || submittable.contains(&fpr),
            "{fpr} is stored but nobody submitted it"
        );
    }
    same_digest(&members);

    tracing_phase("halves that raced were settled by the merge policy: no conflict waits");
    let conflicts = |status: &str| {
        let target = format!("/cluster/conflicts?status={status}&limit=1000");
        let v = members[0]
            .admin_json(&target, "nemesis-t0ken")
            .expect("conflicts");
        v["conflicts"].as_array().unwrap().len()
    };
    let open = conflicts("open");
    eprintln!(
        "conflicts: {} settled by policy, {open} open",
        conflicts("resolved")
    );
    assert_eq!(
        open, 0,
        "the add policy is merge: nothing waits for an operator"
    );
}
