//! [`Keyserver`]: the facade the HTTP and gRPC layers use for keys.
//!
//! Writes: parse and clean on this node (the expensive part, done once, off the async
//! threads), then propose one command carrying canonical bytes and the proposer's time, and
//! answer after it is committed and applied here. Reads: straight from the local replica.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::admission::{Admission, JoinOutcome, JoinSpec};
use super::cert_row::Prepared;
use super::command::{ApplyOutcome, Command, CommandV1, Op, Response};
use super::forward::LeaderForwarder;
use super::records;
use super::submission::{item_report, prepare};
pub use super::submission::{ItemReport, Status, SubmitError};
use super::types::NodeId;
use super::{RaftError, RaftNode};
use crate::pgp::{self, Limits};
use crate::store::VersionVector;
use crate::store::{CertRecord, IndexKind, Store, StoreStats};

pub use crate::pgp::{armor_public_keys, Summary, UidSummary};

/// What one search looks for. Built by the HKP query parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// A v4 or v6 fingerprint of a primary key or subkey.
    Fingerprint(Vec<u8>),
    /// A 64-bit key id.
    KeyId64(Vec<u8>),
    /// A 32-bit key id.
    KeyId32(Vec<u8>),
    /// A normalised e-mail address.
    Email(String),
    /// User id words; every word must match.
    Words(Vec<String>),
}

/// A stored certificate as readers see it.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub cert: Vec<u8>,
    pub summary: Summary,
    pub updated_at: u64,
}

/// How long a write keeps trying to reach a leader (retries reuse the request id, so a write
/// is never applied twice).
/// Most index entries read per word of a word search.
const WORD_MATCHES_MAX: usize = 10_000;
/// Most bytes of merge results one submission carries along (bodies are at most 8 MiB by
/// default; a merge result can be far larger than its submission).
const PREPARED_MAX_BYTES: usize = 16 << 20;
const COMMIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(25);

/// A primary fingerprint and the stored armored certificate.
pub type Armored = (Vec<u8>, Vec<u8>);

/// Reads and writes of keys; cheap to clone.
#[derive(Clone)]
pub struct Keyserver {
    raft: RaftNode,
    store: Store,
    node_id: u64,
    counter: Arc<AtomicU64>,
    forwarder: Option<Arc<dyn LeaderForwarder>>,
    admission: Arc<Admission>,
    left: Arc<std::sync::atomic::AtomicBool>,
    joining: Arc<std::sync::atomic::AtomicBool>,
    removal: Arc<super::removal::RemovalState>,
    refusals: Arc<super::refusals::RefusalLimiter>,
    /// Held by a read-modify-write of the replicated settings (see [`Self::settings_turn`]).
    settings_writes: Arc<tokio::sync::Mutex<()>>,
}

impl Keyserver {
    /// Wrap a started Raft node and its store.
    pub fn new(raft: RaftNode, store: Store, node_id: u64) -> Keyserver {
        Keyserver {
            raft,
            store,
            node_id,
            counter: Arc::new(AtomicU64::new(0)),
            forwarder: None,
            admission: Arc::new(Admission::default()),
            left: Arc::default(),
            joining: Arc::default(),
            removal: Arc::default(),
            refusals: Arc::default(),
            settings_writes: Arc::default(),
        }
    }

    /// One read-modify-write of the replicated settings at a time on this node (see `api`).
    pub async fn settings_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.settings_writes.lock().await
    }

    /// Admit joiners under `a` (secret, most voters).
    pub fn with_admission(mut self, a: Admission) -> Keyserver {
        self.admission = Arc::new(a);
        self
    }

    /// Admit a node to the cluster: here when this node leads, else through the leader.
    /// `client` is the address the request came from; a refusal decided here is audited
    /// (rate-limited, see [`Self::note_refusal`]).
    pub async fn join(&self, spec: JoinSpec, client: &str) -> Result<JoinOutcome, RaftError> {
        let note = |spec: &JoinSpec, reason: &str| {
            let actor = format!("joiner {} (id {}) from {client}", spec.name, spec.id);
            self.note_refusal("join", &actor, &[], reason);
        };
        self.admission
            .join(&self.raft, self.forwarder.as_deref(), spec, &note)
            .await
    }

    /// Remove member `id` gracefully (transferring leadership first if it leads). The leader
    /// that removes it tells it so ([`super::removal`]).
    pub async fn leave(&self, id: NodeId) -> Result<NodeId, RaftError> {
        let removed = self
            .admission
            .leave(&self.raft, self.forwarder.as_deref(), id, &|m| {
                self.notify_removed(m.id, m.node.clone())
            })
            .await?;
        if removed == self.node_id {
            self.left.store(true, Ordering::SeqCst);
        }
        Ok(removed)
    }

    /// On the leader: promote a learner into an empty voter place if one fits (see
    /// [`super::promotion`]). Does nothing on other nodes or while a change is in progress.
    pub async fn fill_voter_places(&self) -> Result<(), RaftError> {
        self.admission.fill_voter_places(&self.raft).await
    }

    /// True once this node has been removed through [`Self::leave`] called on it: the process
    /// should stop (a removed node that keeps running only disturbs the cluster).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::SeqCst)
    }

    /// Whether this fresh node is still joining the cluster (it is not ready until admitted).
    pub fn is_joining(&self) -> bool {
        self.joining.load(Ordering::SeqCst)
    }

    /// Whether a snapshot install is replacing this node's replica right now.
    pub fn is_installing(&self) -> bool {
        self.store.is_installing()
    }

    /// Run `read` against the local replica, and refuse its answer, found or not (as
    /// [`RaftError::Installing`]), if a snapshot install was running when it began or ran
    /// while it read: the replica was then partly the old state and partly the new one.
    pub fn read_consistently<T, E: From<RaftError>>(
        &self,
        read: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let before = self.store.install_epoch();
        if before % 2 == 1 {
            return Err(RaftError::Installing.into());
        }
        let r = read();
        if self.store.install_epoch() != before {
            return Err(RaftError::Installing.into());
        }
        r
    }

    /// Mark this node as joining (set by the node before its join, cleared once admitted).
    pub fn set_joining(&self, joining: bool) {
        self.joining.store(joining, Ordering::SeqCst);
    }

    /// Forward writes this node cannot commit itself (it is not the leader) through `f`.
    pub fn with_forwarder(mut self, f: Arc<dyn LeaderForwarder>) -> Keyserver {
        self.forwarder = Some(f);
        self
    }

    /// Commit `cmd`: here when this node leads, else through the leader. Answers once the
    /// entry is applied on this node too (waiting at most 10 s for that), so the caller reads its
    /// own write here. A leader
    /// change mid-way is retried with the same request id (apply skips duplicates). The time
    /// a successful commit took goes into the node's `commit` histogram.
    pub(super) async fn commit(&self, cmd: Command) -> Result<(Response, u64), RaftError> {
        if let Some(r) = self.removal() {
            return Err(RaftError::Removed(r.line()));
        }
        if self.is_joining() {
            // Its replica is empty or partial: a write would be checked against the wrong base.
            return Err(RaftError::Joining);
        }
        if self.is_installing() {
            // Its base versions would come from a partial replica.
            return Err(RaftError::Installing);
        }
        let started = std::time::Instant::now();
        let r = self.commit_and_apply(cmd).await;
        if r.is_ok() {
            self.raft.metrics().commit.record(started.elapsed());
        }
        r
    }

    async fn commit_and_apply(&self, cmd: Command) -> Result<(Response, u64), RaftError> {
        use std::time::Duration;
        // While no leader is known (an election, a partition) the write waits for one, so a
        // follower cut off for a moment forwards its queued writes once healed. The API's write
        // timeout bounds the wait for the client; this bound stops the task itself.
        let deadline = tokio::time::Instant::now() + COMMIT_PATIENCE;
        let mut last = RaftError::NotLeader { leader: None };
        while tokio::time::Instant::now() < deadline {
            match self.raft.write(cmd.clone()).await {
                Err(RaftError::NotLeader { .. }) if self.forwarder.is_some() => {}
                Err(e @ RaftError::LeaderChanged { .. }) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                other => return other,
            }
            let Some(leader) = self.raft.leader().filter(|l| l.id != self.node_id) else {
                last = RaftError::NotLeader { leader: None };
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let fwd = self.forwarder.as_ref().expect("checked above");
            let bytes =
                rmp_serde::to_vec_named(&cmd).map_err(|e| RaftError::Codec(e.to_string()))?;
            match fwd.forward(&leader.node, bytes).await {
                Ok((resp, index)) => {
                    let resp: Response = rmp_serde::from_slice(&resp)
                        .map_err(|e| RaftError::Codec(e.to_string()))?;
                    // The leader's answer is the outcome. A node that cannot apply it in time
                    // (far behind, installing a snapshot) still reports it, with the index a
                    // read can wait for (`min_index`), rather than "outcome unknown".
                    if let Err(e) = self.raft.wait_applied(index, Duration::from_secs(10)).await {
                        tracing::warn!(index, error = %e,
                            "a forwarded write committed, but this node has not applied it yet");
                    }
                    return Ok((resp, index));
                }
                Err(reason) => {
                    last = RaftError::NoQuorum(format!(
                        "forwarding to leader {}: {reason}",
                        leader.id
                    ));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        Err(last)
    }

    /// Whether and by whom this node was removed ([`super::removal`]).
    pub(super) fn removal_state(&self) -> &super::removal::RemovalState {
        &self.removal
    }

    /// The rate limit on audited refusals.
    pub(super) fn refusals(&self) -> &super::refusals::RefusalLimiter {
        &self.refusals
    }

    /// The local replica (for the raft layer's own read modules).
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The forwarder as a shared handle, for tasks that outlive the call that starts them.
    pub(super) fn forwarder_arc(&self) -> Option<Arc<dyn LeaderForwarder>> {
        self.forwarder.clone()
    }

    /// How this node reaches the leader, if it can (for the raft layer's own modules).
    pub(super) fn forwarder(&self) -> Option<&dyn LeaderForwarder> {
        self.forwarder.as_deref()
    }

    /// The Raft node, for status and health.
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub(super) fn request_id(&self) -> u128 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        ((self.node_id as u128) << 96) ^ ((nanos as u128) << 32) ^ n as u128
    }

    /// The version this replica holds for `fpr` (a certificate's or a tombstone's): the base a
    /// write proposed from here carries.
    pub fn version_of(&self, fpr: &[u8]) -> Result<VersionVector, RaftError> {
        if let Some(r) = self.store.get_cert(fpr)? {
            return Ok(r.version);
        }
        Ok(records::read_tombstone(&self.store, fpr)?
            .map(|t| t.version)
            .unwrap_or_default())
    }

    pub(super) fn command(&self, op: Op, actor: &str) -> Command {
        Command::V1(CommandV1 {
            request_id: self.request_id(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            op,
            origin: self.node_id,
            actor: actor.to_string(),
            signed: None,
        })
    }

    /// Validate, clean and propose a submission; answers once committed and applied here.
    /// Returns the per-item report and the log index of the write. `actor` is recorded in the
    /// audit trail.
    pub async fn submit(
        &self,
        body: Vec<u8>,
        limits: Limits,
        actor: &str,
    ) -> Result<(Vec<ItemReport>, u64), SubmitError> {
        let now = SystemTime::now();
        let time = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let started = std::time::Instant::now();
        let store = self.store.clone();
        // Parse, clean, and merge into what this replica holds: all CPU-bound, so off the
        // async threads. Apply reuses the merge where it merges into the same record.
        let work = move || -> Result<_, SubmitError> {
            let (clean, report) = prepare(&body, &limits, now).map_err(SubmitError::Refused)?;
            let mut certs = Vec::with_capacity(clean.len());
            let mut bases = Vec::with_capacity(clean.len());
            let mut prepared = Vec::with_capacity(clean.len());
            let mut prepared_bytes = 0;
            for c in clean {
                let stored = store.get_cert(&c.fpr).map_err(RaftError::from)?;
                bases.push(match &stored {
                    Some(r) => r.version.clone(),
                    None => records::read_tombstone(&store, &c.fpr)
                        .map_err(RaftError::from)?
                        .map(|t| t.version)
                        .unwrap_or_default(),
                });
                // Past PREPARED_MAX_BYTES of merge results the rest go without (apply merges
                // them itself): the command stays within what a peer accepts in one message.
                let pre = (prepared_bytes <= PREPARED_MAX_BYTES)
                    .then(|| Prepared::compute(c.cert, &c.bytes, stored.as_ref(), &limits, time))
                    .flatten();
                prepared_bytes += pre.as_ref().map_or(0, Prepared::size);
                prepared.push(pre);
                certs.push(c.bytes);
            }
            Ok((certs, bases, prepared, report, limits))
        };
        let keys = self.clone();
        let (certs, bases, prepared, mut report, limits) =
            tokio::task::spawn_blocking(move || keys.read_consistently(work))
                .await
                .map_err(|e| SubmitError::Raft(RaftError::Fatal(e.to_string())))??;
        if certs.is_empty() {
            return Err(SubmitError::NothingValid(report));
        }
        let mut cmd = self.command(
            Op::Submit {
                certs,
                limits,
                bases,
                prepared,
            },
            actor,
        );
        let Command::V1(c) = &mut cmd;
        c.time = time;
        let prepared = started.elapsed();
        let (resp, index) = self.commit(cmd).await?;
        tracing::debug!(?prepared, committed = ?started.elapsed() - prepared, index, "submit");
        report.extend(resp.outcomes.into_iter().map(item_report));
        Ok((report, index))
    }

    /// Delete certificates by primary fingerprint (admin), leaving tombstones. With
    /// `if_match`, only if the stored version still has that ETag.
    pub async fn delete(
        &self,
        fingerprints: Vec<String>,
        if_match: Option<String>,
        reason: &str,
        actor: &str,
    ) -> Result<(Vec<ItemReport>, u64), RaftError> {
        let op = self.delete_op(fingerprints, if_match, reason)?;
        let (resp, index) = self.commit(self.command(op, actor)).await?;
        Ok((resp.outcomes.into_iter().map(item_report).collect(), index))
    }

    /// The delete of `fingerprints`, with the bases this replica holds.
    pub(super) fn delete_op(
        &self,
        fingerprints: Vec<String>,
        if_match: Option<String>,
        reason: &str,
    ) -> Result<Op, RaftError> {
        let mut bases = Vec::new();
        for f in &fingerprints {
            let fpr = pgp::Fingerprint::from_hex(f)
                .map(|f| f.0)
                .unwrap_or_default();
            bases.push(self.version_of(&fpr)?);
        }
        Ok(Op::Delete {
            fingerprints,
            bases,
            if_match,
            reason: reason.to_string(),
        })
    }

    /// Replace a whole certificate (admin): validated and cleaned here like a submission, then
    /// stored as is (not merged). With `if_match`, only if the stored version has that ETag.
    pub async fn replace(
        &self,
        body: Vec<u8>,
        limits: Limits,
        if_match: Option<String>,
        actor: &str,
    ) -> Result<(Vec<ItemReport>, u64), SubmitError> {
        let op = self.replace_op(body, limits, if_match).await?;
        let (resp, index) = self.commit(self.command(op, actor)).await?;
        Ok((resp.outcomes.into_iter().map(item_report).collect(), index))
    }

    /// The replace of one certificate (validated and cleaned here), with the base this replica
    /// holds.
    pub(super) async fn replace_op(
        &self,
        body: Vec<u8>,
        limits: Limits,
        if_match: Option<String>,
    ) -> Result<Op, SubmitError> {
        let now = SystemTime::now();
        let (clean, report) = tokio::task::spawn_blocking(move || prepare(&body, &limits, now))
            .await
            .map_err(|e| SubmitError::Raft(RaftError::Fatal(e.to_string())))?
            .map_err(SubmitError::Refused)?;
        let mut clean = clean.into_iter();
        let (Some(c), None) = (clean.next(), clean.next()) else {
            return Err(SubmitError::NothingValid(report));
        };
        let base = self.version_of(&c.fpr)?;
        Ok(Op::Replace {
            cert: c.bytes,
            base,
            if_match,
            limits,
        })
    }

    /// Propose an operation whose only outcome is applied state (policies, resolutions).
    pub async fn propose(
        &self,
        op: Op,
        actor: &str,
    ) -> Result<(Vec<ApplyOutcome>, u64), RaftError> {
        let (resp, index) = self.commit(self.command(op, actor)).await?;
        Ok((resp.outcomes, index))
    }

    /// Primary fingerprints matching `search`, at most `limit`, from the local replica.
    fn fingerprints(&self, search: &Search, limit: usize) -> Result<Vec<Vec<u8>>, RaftError> {
        let (kind, term) = match search {
            Search::Fingerprint(f) => (IndexKind::Fingerprint, f.as_slice()),
            Search::KeyId64(k) => (IndexKind::KeyId64, k.as_slice()),
            Search::KeyId32(k) => (IndexKind::KeyId32, k.as_slice()),
            Search::Email(e) => (IndexKind::Email, e.as_bytes()),
            Search::Words(words) => return self.find_words(words, limit),
        };
        Ok(self.store.find(kind, term, limit)?)
    }

    /// Certificates matching `search`, at most `limit`, from the local replica.
    pub fn find(&self, search: &Search, limit: usize) -> Result<Vec<KeyView>, RaftError> {
        let mut out = Vec::new();
        for f in self.fingerprints(search, limit)? {
            if let Some(r) = self.store.get_cert(&f)? {
                out.push(view(r)?);
            }
        }
        Ok(out)
    }

    /// The stored armored form of each certificate matching `search` (what `op=get` sends:
    /// no encoding on the read path), at most `limit`; for a single match also the ETag of
    /// that very version, read with it from one view.
    pub fn find_armored(
        &self,
        search: &Search,
        limit: usize,
    ) -> Result<(Vec<Armored>, Option<String>), RaftError> {
        let fprs = self.fingerprints(search, limit)?;
        if let [f] = fprs.as_slice() {
            return Ok(match self.store.get_rendered_with_cert(f)? {
                Some((record, body)) => (vec![(f.clone(), body)], Some(record.version.etag())),
                None => (Vec::new(), None),
            });
        }
        let mut out = Vec::new();
        for f in fprs {
            if let Some(a) = self.store.get_rendered(&f)? {
                out.push((f, a));
            }
        }
        Ok((out, None))
    }

    /// Fingerprints of certificates whose user ids contain every word, read from the index
    /// without loading any certificate: the candidates are the index entries of the word with
    /// the fewest (at most [`WORD_MATCHES_MAX`] read per word), each checked against the other
    /// words by a point read.
    fn find_words(&self, words: &[String], limit: usize) -> Result<Vec<Vec<u8>>, RaftError> {
        let mut rarest: Option<(usize, Vec<Vec<u8>>)> = None;
        for (i, w) in words.iter().enumerate() {
            let found = self
                .store
                .find(IndexKind::Word, w.as_bytes(), WORD_MATCHES_MAX)?;
            if rarest.as_ref().is_none_or(|(_, r)| found.len() < r.len()) {
                rarest = Some((i, found));
            }
        }
        let Some((skip, candidates)) = rarest else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for f in candidates {
            if out.len() >= limit {
                break;
            }
            let mut all = true;
            for (i, w) in words.iter().enumerate() {
                if i != skip && !self.store.is_indexed(IndexKind::Word, w.as_bytes(), &f)? {
                    all = false;
                    break;
                }
            }
            if all {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Store figures for `op=stats`.
    pub fn stats(&self) -> Result<StoreStats, RaftError> {
        Ok(self.store.stats()?)
    }
}

/// Normalise free text into search words (the same rule the index uses).
pub fn search_words(text: &str) -> Vec<String> {
    pgp::words(text)
}

/// Normalise an e-mail address (the same rule the index uses).
pub fn search_email(text: &str) -> Option<String> {
    pgp::normalize_email(text)
}

fn view(r: CertRecord) -> Result<KeyView, RaftError> {
    let summary = rmp_serde::from_slice(&r.summary)
        .map_err(|e| RaftError::Storage(format!("summary: {e}")))?;
    Ok(KeyView {
        cert: r.cert,
        summary,
        updated_at: r.updated_at,
    })
}

pub use crate::pgp::SigLine;

/// Signature lines of a stored certificate, for `op=vindex`.
pub fn vindex_sigs(key: &KeyView) -> Vec<SigLine> {
    use sequoia_openpgp::parse::Parse;
    sequoia_openpgp::Cert::from_bytes(&key.cert)
        .map(|c| pgp::vindex_sigs(&c))
        .unwrap_or_default()
}

impl From<crate::store::StoreError> for RaftError {
    fn from(e: crate::store::StoreError) -> Self {
        RaftError::Storage(e.to_string())
    }
}
