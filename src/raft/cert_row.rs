//! One certificate's stored row (canonical bytes, summary, index terms) and how apply gets
//! it: by merging, or from the proposer's precomputation carried in the command.
//!
//! Parsing a certificate costs far more than storing it (sequoia canonicalises every
//! signature; a 200 KB certificate takes milliseconds), and apply runs on every node. So the
//! proposer, which has parsed and cleaned the submission anyway, also merges it into the
//! record its own replica holds and sends the result along ([`Prepared`]). Apply uses that
//! result only if it merges into exactly the same record: the one last written at the log
//! index the proposer saw (`base_index`; every replica holds the same record after the same
//! index). Otherwise, or for any other kind of write, apply merges itself. Either way the
//! decision depends only on the command and the replicated state, so every node stores the
//! same bytes.
use std::time::{Duration, UNIX_EPOCH};

use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;
use serde::{Deserialize, Serialize};

use crate::pgp::{self, Limits, MergeOutcome, PgpError};
use crate::store::{CertRecord, IndexKind, IndexTerm};

/// What apply stores for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Primary fingerprint (binary).
    pub fpr: Vec<u8>,
    /// Canonical binary certificate.
    pub bytes: Vec<u8>,
    /// MessagePack of [`pgp::Summary`] at the command's time.
    pub summary: Vec<u8>,
    /// Index terms, in order.
    pub terms: Vec<IndexTerm>,
}

impl Row {
    /// The row of `cert` (whose canonical serialization is `bytes`) at command time `time`.
    pub fn of(cert: &Cert, bytes: Vec<u8>, time: u64) -> Row {
        let summary = pgp::summarize(cert, UNIX_EPOCH + Duration::from_secs(time));
        Row {
            fpr: cert.fingerprint().as_bytes().to_vec(),
            bytes,
            summary: rmp_serde::to_vec_named(&summary).expect("summaries serialize"),
            terms: store_terms(&pgp::index_terms(cert)),
        }
    }
}

/// The union of `stored` (binary, if any) and `incoming` as a row; `None` when the merge
/// changes nothing.
pub fn merged_row(
    stored: Option<&[u8]>,
    incoming: Cert,
    limits: &Limits,
    time: u64,
) -> Result<Option<Row>, PgpError> {
    Ok(match pgp::merge(stored, incoming, limits)? {
        MergeOutcome::Unchanged => None,
        MergeOutcome::New(c, b) | MergeOutcome::Updated(c, b) => Some(Row::of(&c, b, time)),
    })
}

/// The proposer's merge of one submitted certificate into the record it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// `updated_index` of the record merged into; `None`: merged into nothing.
    pub base_index: Option<u64>,
    /// The result; `None` when the merge changed nothing.
    pub row: Option<PreparedRow>,
}

/// A precomputed [`Row`] without what the command already carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRow {
    /// The merged bytes; `None` when they equal the submitted bytes (a new certificate).
    #[serde(with = "serde_bytes")]
    pub bytes: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub summary: Vec<u8>,
    pub terms: Vec<IndexTerm>,
}

impl Prepared {
    /// About how many bytes this adds to a command.
    pub fn size(&self) -> usize {
        self.row.as_ref().map_or(0, |r| {
            r.bytes.as_ref().map_or(0, Vec::len)
                + r.summary.len()
                + r.terms.iter().map(|t| t.1.len() + 2).sum::<usize>()
        })
    }

    /// Merge `incoming` (cleaned by [`pgp::clean`]; serialized as `submitted`) into `base`, as
    /// apply would at command time `time`. `None` if the merge fails: apply then merges and
    /// reports why.
    pub fn compute(
        incoming: Cert,
        submitted: &[u8],
        base: Option<&CertRecord>,
        limits: &Limits,
        time: u64,
    ) -> Option<Prepared> {
        let row = match base {
            // Merging into nothing is shedding and serializing: `clean` did both already (and
            // shedding twice changes nothing), so the row is the submitted bytes as they are.
            None => Some(Row::of(&incoming, submitted.to_vec(), time)),
            Some(r) => merged_row(Some(r.cert.as_slice()), incoming, limits, time).ok()?,
        };
        Some(Prepared {
            base_index: base.map(|r| r.updated_index),
            row: row.map(|r| PreparedRow {
                bytes: (r.bytes != submitted).then_some(r.bytes),
                summary: r.summary,
                terms: r.terms,
            }),
        })
    }

    /// Roughly how many bytes this adds to a command.
    pub fn payload_bytes(&self) -> usize {
        self.row.as_ref().map_or(0, |r| {
            r.bytes.as_ref().map_or(0, Vec::len)
                + r.summary.len()
                + r.terms.iter().map(|t| t.1.len() + 4).sum::<usize>()
        })
    }
}

/// A submitted certificate as apply sees it: its bytes, and the proposer's merge if any.
pub struct Incoming<'a> {
    pub fpr: &'a [u8],
    pub bytes: &'a [u8],
    pub prepared: Option<&'a Prepared>,
    pub limits: &'a Limits,
    pub time: u64,
}

impl Incoming<'_> {
    /// The union of `base` (nothing if `None`) and this certificate; `None` when nothing
    /// changes. Uses the proposer's result when it merged into this very record.
    pub fn merge_into(&self, base: Option<&CertRecord>) -> Result<Option<Row>, PgpError> {
        let base_index = base.map(|r| r.updated_index);
        if let Some(p) = self.prepared.filter(|p| p.base_index == base_index) {
            return Ok(p.row.as_ref().map(|r| Row {
                fpr: self.fpr.to_vec(),
                bytes: r.bytes.clone().unwrap_or_else(|| self.bytes.to_vec()),
                summary: r.summary.clone(),
                terms: r.terms.clone(),
            }));
        }
        let cert = Cert::from_bytes(self.bytes).map_err(|e| PgpError::Invalid(e.to_string()))?;
        if cert.fingerprint().as_bytes() != self.fpr {
            return Err(PgpError::Invalid("fingerprints differ".into()));
        }
        merged_row(
            base.map(|r| r.cert.as_slice()),
            cert,
            self.limits,
            self.time,
        )
    }
}

/// Convert pgp's terms into the store's, sorted (BTreeSets are ordered).
fn store_terms(t: &pgp::IndexTerms) -> Vec<IndexTerm> {
    let mut out: Vec<IndexTerm> = Vec::new();
    out.extend(
        t.fingerprints
            .iter()
            .map(|f| (IndexKind::Fingerprint, f.clone())),
    );
    out.extend(t.keyids64.iter().map(|k| (IndexKind::KeyId64, k.clone())));
    out.extend(t.keyids32.iter().map(|k| (IndexKind::KeyId32, k.clone())));
    out.extend(
        t.emails
            .iter()
            .map(|e| (IndexKind::Email, e.as_bytes().to_vec())),
    );
    out.extend(
        t.words
            .iter()
            .map(|w| (IndexKind::Word, w.as_bytes().to_vec())),
    );
    out
}
