//! Deterministic merging of a stored and an incoming certificate.
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::Cert;

use super::parse::one_line;
use super::{shed, Limits, PgpError};

/// What a merge produced.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeOutcome {
    /// Nothing was stored before; the certificate and the bytes to store.
    New(Box<Cert>, Vec<u8>),
    /// The stored certificate gained packets; the merged certificate and its bytes.
    Updated(Box<Cert>, Vec<u8>),
    /// The merge changed nothing.
    Unchanged,
}

/// Merge `new` (a cleaned certificate) into `stored` (binary, if any).
///
/// The result is the union of packets (revocations included; nothing is ever removed except
/// by the flooding defence, which never removes a revocation or a self-signature), in
/// Sequoia's canonical order, so the same set of inputs gives the same bytes whatever the
/// order of submissions.
pub fn merge(stored: Option<&[u8]>, new: Cert, limits: &Limits) -> Result<MergeOutcome, PgpError> {
    let Some(stored) = stored else {
        let cert = shed(new, limits)?;
        let bytes = serialize(&cert)?;
        return Ok(MergeOutcome::New(Box::new(cert), bytes));
    };
    let old = Cert::from_bytes(stored).map_err(|e| PgpError::Invalid(one_line(&e)))?;
    if old.fingerprint() != new.fingerprint() {
        return Err(PgpError::Invalid("fingerprints differ".into()));
    }
    let merged = old
        .merge_public(new)
        .map_err(|e| PgpError::Invalid(one_line(&e)))?;
    let merged = shed(merged, limits)?;
    let bytes = serialize(&merged)?;
    if bytes == stored {
        Ok(MergeOutcome::Unchanged)
    } else {
        Ok(MergeOutcome::Updated(Box::new(merged), bytes))
    }
}

pub(crate) fn serialize(cert: &Cert) -> Result<Vec<u8>, PgpError> {
    cert.to_vec().map_err(|e| PgpError::Invalid(one_line(&e)))
}
