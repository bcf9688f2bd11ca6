//! Applying one committed command to the state machine. Deterministic: the only time is
//! the proposer's, the only inputs are the command and the committed state, and every
//! collection iterated is ordered.
use std::time::{Duration, UNIX_EPOCH};

use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;

use super::command::{ApplyOutcome, Command, Op, Response};
use crate::pgp::{self, MergeOutcome};
use crate::store::{ApplyBatch, CertRecord, IndexKind, IndexTerm, StoreError};

/// Apply `cmd`, committed at log `index`, into `batch`. Errors are storage errors only
/// (they stop the node); per-item problems become [`ApplyOutcome::Rejected`].
pub fn apply_command(
    batch: &mut ApplyBatch,
    cmd: &Command,
    index: u64,
) -> Result<Response, StoreError> {
    let Command::V1(c) = cmd;
    if batch.seen_request(c.request_id)? {
        return Ok(Response {
            outcomes: vec![ApplyOutcome::Duplicate],
        });
    }
    batch.record_request(c.request_id, index)?;
    let mut outcomes = Vec::new();
    match &c.op {
        Op::Submit { certs, limits } => {
            for bytes in certs {
                outcomes.push(apply_submit(batch, bytes, limits, c.time, index)?);
            }
        }
        Op::Delete { fingerprints } => {
            for fpr in fingerprints {
                let outcome = match pgp::Fingerprint::from_hex(fpr) {
                    Some(f) if batch.delete_cert(&f.0)? => ApplyOutcome::Deleted {
                        fingerprint: f.to_hex(),
                    },
                    Some(f) => ApplyOutcome::NotFound {
                        fingerprint: f.to_hex(),
                    },
                    None => ApplyOutcome::Rejected {
                        fingerprint: fpr.clone(),
                        reason: "not a fingerprint".into(),
                    },
                };
                outcomes.push(outcome);
            }
        }
    }
    Ok(Response { outcomes })
}

fn apply_submit(
    batch: &mut ApplyBatch,
    bytes: &[u8],
    limits: &pgp::Limits,
    time: u64,
    index: u64,
) -> Result<ApplyOutcome, StoreError> {
    let incoming = match Cert::from_bytes(bytes) {
        Ok(c) => c,
        Err(e) => {
            return Ok(ApplyOutcome::Rejected {
                fingerprint: String::new(),
                reason: e.to_string(),
            })
        }
    };
    let fpr = incoming.fingerprint().as_bytes().to_vec();
    let fingerprint = incoming.fingerprint().to_hex();
    let stored = batch.get_cert(&fpr)?;
    let (cert, merged) =
        match pgp::merge(stored.as_ref().map(|r| r.cert.as_slice()), incoming, limits) {
            Ok(MergeOutcome::Unchanged) => return Ok(ApplyOutcome::Unchanged { fingerprint }),
            Ok(MergeOutcome::New(c, b)) | Ok(MergeOutcome::Updated(c, b)) => (c, b),
            Err(e) => {
                return Ok(ApplyOutcome::Rejected {
                    fingerprint,
                    reason: e.to_string(),
                })
            }
        };
    let summary = pgp::summarize(&cert, UNIX_EPOCH + Duration::from_secs(time));
    let created_at = stored.as_ref().map_or(time, |r| r.created_at);
    batch.put_rendered(&fpr, pgp::armor_public_keys([merged.as_slice()]));
    batch.put_cert(CertRecord {
        fingerprint: fpr,
        cert: merged,
        summary: rmp_serde::to_vec_named(&summary).expect("summaries serialize"),
        terms: store_terms(&pgp::index_terms(&cert)),
        created_at,
        updated_at: time,
        updated_index: index,
    })?;
    Ok(if stored.is_some() {
        ApplyOutcome::Updated { fingerprint }
    } else {
        ApplyOutcome::New { fingerprint }
    })
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
