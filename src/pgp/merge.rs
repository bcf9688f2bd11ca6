//! Deterministic merging of a stored and an incoming certificate.
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::Cert;

use super::parse::one_line;
use super::{shed, Limits, PgpError};

/// What a merge produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Nothing was stored before; these are the bytes to store.
    New(Vec<u8>),
    /// The stored certificate gained packets; these are the merged bytes.
    Updated(Vec<u8>),
    /// The merge changed nothing.
    Unchanged,
}

/// Merge `incoming` (a cleaned certificate, binary) into `stored` (binary, if any).
///
/// The result is the union of packets (revocations included; nothing is ever removed except
/// by the flooding defence, which never removes a revocation or a self-signature), in
/// Sequoia's canonical order, so the same set of inputs gives the same bytes whatever the
/// order of submissions.
pub fn merge(stored: Option<&[u8]>, incoming: &[u8], limits: &Limits) -> Result<MergeOutcome, PgpError> {
    let new = Cert::from_bytes(incoming).map_err(|e| PgpError::Invalid(one_line(&e)))?;
    let Some(stored) = stored else {
        let cert = shed(new, limits)?;
        return Ok(MergeOutcome::New(serialize(&cert)?));
    };
    let old = Cert::from_bytes(stored).map_err(|e| PgpError::Invalid(one_line(&e)))?;
    if old.fingerprint() != new.fingerprint() {
        return Err(PgpError::Invalid("fingerprints differ".into()));
    }
    let merged = old.merge_public(new).map_err(|e| PgpError::Invalid(one_line(&e)))?;
    let merged = serialize(&shed(merged, limits)?)?;
    if merged == stored {
        Ok(MergeOutcome::Unchanged)
    } else {
        Ok(MergeOutcome::Updated(merged))
    }
}

pub(crate) fn serialize(cert: &Cert) -> Result<Vec<u8>, PgpError> {
    cert.to_vec().map_err(|e| PgpError::Invalid(one_line(&e)))
}
