//! Writes on the proposing node, before and after the Raft log: parsing and cleaning a
//! submission ([`prepare`]), the per-item report a write answers ([`ItemReport`], built from
//! apply's outcomes by [`item_report`]) and why a write fails as a whole ([`SubmitError`]).
//!
//! Part of the raft facade; must not depend on the api or rpc layers.
use std::time::SystemTime;

use sequoia_openpgp::serialize::MarshalInto;

use super::command::ApplyOutcome;
use super::RaftError;
use crate::pgp::{self, Limits, MergeOutcome, Parsed, PgpError};

/// The result of one submitted item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    New,
    Updated,
    Unchanged,
    Rejected,
    /// The write raced another update and waits for an operator (`/cluster/conflicts`).
    Conflict,
    /// The reject policy refused the write as stale (HTTP 409).
    Stale,
    /// `If-Match` did not match the stored version (HTTP 412).
    PreconditionFailed,
}

/// One line of a submission report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemReport {
    pub fingerprint: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Refused for its size alone (a submission refused only for that is 413).
    #[serde(skip)]
    pub too_large: bool,
}

impl ItemReport {
    /// A certificate refused before proposing, for `e`.
    fn refused(fingerprint: String, e: &PgpError) -> ItemReport {
        ItemReport {
            fingerprint,
            status: Status::Rejected,
            reason: Some(e.to_string()),
            too_large: matches!(
                e,
                PgpError::TooLarge { .. } | PgpError::PacketTooLarge { .. }
            ),
        }
    }
}

impl SubmitError {
    /// Whether the submission was refused for its size: too many items, or every certificate
    /// too large.
    pub fn too_large(&self) -> bool {
        match self {
            SubmitError::Refused(PgpError::TooManyItems { .. }) => true,
            SubmitError::NothingValid(items) => {
                !items.is_empty() && items.iter().all(|i| i.too_large)
            }
            _ => false,
        }
    }
}

/// Why a submission failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The input was refused before proposing (secret keys, nothing parsable, nothing valid).
    #[error("{0}")]
    Refused(PgpError),
    /// Every certificate was rejected; the reasons, one per item.
    #[error("no valid certificate: {}", first_reasons(.0))]
    NothingValid(Vec<ItemReport>),
    /// A signed admin request's signature was used before (a replay).
    #[error("{}", super::replay::ALREADY_USED)]
    SignatureUsed,
    /// A signed admin request's signature was made too long before (or after) the request.
    #[error("{0}")]
    SignatureTime(String),
    /// The write could not be committed.
    #[error(transparent)]
    Raft(#[from] RaftError),
}

/// The first few items' reasons, and how many more there are: a body of 8 MiB can hold
/// hundreds of thousands of bad items, and the answer is one line.
fn first_reasons(items: &[ItemReport]) -> String {
    const SHOWN: usize = 5;
    let mut line = items
        .iter()
        .take(SHOWN)
        .map(|i| i.reason.clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > SHOWN {
        line.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    line
}

pub(super) fn item_report(o: ApplyOutcome) -> ItemReport {
    let (fingerprint, status, reason) = match o {
        ApplyOutcome::New { fingerprint } => (fingerprint, Status::New, None),
        ApplyOutcome::Updated { fingerprint }
        | ApplyOutcome::Deleted { fingerprint }
        | ApplyOutcome::Replaced { fingerprint } => (fingerprint, Status::Updated, None),
        ApplyOutcome::Conflict {
            fingerprint,
            id,
            policy,
            status,
        } => {
            let reason =
                format!("raced a concurrent update: conflict {id}, {status} (policy {policy:?})");
            let s = if status == "open" {
                Status::Conflict
            } else {
                Status::Updated
            };
            (fingerprint, s, Some(reason))
        }
        ApplyOutcome::Stale {
            fingerprint,
            current,
        } => (
            fingerprint,
            Status::Stale,
            Some(format!(
                "the certificate changed concurrently; current version {current}"
            )),
        ),
        ApplyOutcome::PreconditionFailed {
            fingerprint,
            current,
        } => (
            fingerprint,
            Status::PreconditionFailed,
            Some(format!(
                "If-Match does not match the current version {current}"
            )),
        ),
        ApplyOutcome::PoliciesSet
        | ApplyOutcome::Resolved { .. }
        | ApplyOutcome::Noted
        | ApplyOutcome::RoutingSet
        | ApplyOutcome::Checkpointed => (String::new(), Status::Updated, None),
        ApplyOutcome::SignatureRefused { reason, .. } => {
            (String::new(), Status::Rejected, Some(reason))
        }
        ApplyOutcome::Unchanged { fingerprint } | ApplyOutcome::NotFound { fingerprint } => {
            (fingerprint, Status::Unchanged, None)
        }
        ApplyOutcome::Rejected {
            fingerprint,
            reason,
        } => (fingerprint, Status::Rejected, Some(reason)),
        ApplyOutcome::Duplicate => (
            String::new(),
            Status::Unchanged,
            Some("duplicate request".into()),
        ),
    };
    ItemReport {
        fingerprint,
        status,
        reason,
        too_large: false,
    }
}

/// A cleaned certificate, parsed and serialized.
pub(super) struct CleanCert {
    /// Primary fingerprint (binary).
    pub fpr: Vec<u8>,
    pub cert: sequoia_openpgp::Cert,
    /// Canonical binary serialization of `cert`.
    pub bytes: Vec<u8>,
}

/// Parse and clean a submission (CPU-bound; runs on a blocking thread).
type Cleaned = Vec<CleanCert>;

pub(super) fn prepare(
    body: &[u8],
    limits: &Limits,
    now: SystemTime,
) -> Result<(Cleaned, Vec<ItemReport>), PgpError> {
    let mut clean: Vec<CleanCert> = Vec::new();
    // Where each fingerprint is in `clean`.
    let mut at: std::collections::BTreeMap<Vec<u8>, usize> = std::collections::BTreeMap::new();
    let mut report = Vec::new();
    for item in pgp::parse_submission(body, limits)? {
        let cert = match item {
            Parsed::Cert(c) => c,
            Parsed::Unreadable(reason) => {
                report.push(ItemReport {
                    fingerprint: String::new(),
                    status: Status::Rejected,
                    reason: Some(reason),
                    too_large: false,
                });
                continue;
            }
        };
        let fingerprint = cert.fingerprint().to_hex();
        let fpr = cert.fingerprint().as_bytes().to_vec();
        match pgp::clean(cert, limits, now).and_then(|c| {
            let bytes = c.to_vec().map_err(|e| PgpError::Invalid(e.to_string()))?;
            Ok((c, bytes))
        }) {
            Ok((cert, bytes)) => match at.get(&fpr).map(|&i| &mut clean[i]) {
                // The same certificate twice in one submission: one item, their union. Merged
                // one by one, each copy would merge into the record as it was before the
                // submission, and apply would see every copy after the first race the first.
                Some(earlier) => match pgp::merge(Some(&earlier.bytes), cert, limits) {
                    Ok(MergeOutcome::Updated(c, b) | MergeOutcome::New(c, b)) => {
                        (earlier.cert, earlier.bytes) = (*c, b);
                    }
                    Ok(MergeOutcome::Unchanged) => {}
                    Err(e) => report.push(ItemReport::refused(fingerprint, &e)),
                },
                None => {
                    at.insert(fpr.clone(), clean.len());
                    clean.push(CleanCert { fpr, cert, bytes });
                }
            },
            Err(e) => report.push(ItemReport::refused(fingerprint, &e)),
        }
    }
    Ok((clean, report))
}
