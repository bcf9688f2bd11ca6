//! OpenPGP handling: parse, clean, merge, index. Pure: no I/O, no async, no clock.
//!
//! Every function that needs "now" takes it as an argument (the Raft proposer's time), so the
//! same inputs give the same bytes on every node. Everything goes through [`policy_at`], the one
//! policy shared by ingestion and apply, judged at that time too.
//!
//! # Common operations
//! - [`parse_submission`]: split armored or binary input into certificates, refuse secret keys.
//! - [`clean`]: verify self-signatures, drop junk, apply the flooding defence, check validity.
//! - [`merge`]: union of a stored and an incoming certificate, deterministic.
//! - [`index_terms`] and [`summarize`]: what the store indexes and what `op=index` lists.
//! - [`verify_admin_request`]: authenticate a Hockeypuck-style signed `/pks/replace` or
//!   `/pks/delete` request.
//! - [`cert_diff`]: what differs between two versions of one certificate.
pub mod admin;
mod armor;
mod clean;
pub mod diff;
mod index;
mod limits;
mod merge;
mod parse;
mod relocate;
mod split;
mod types;

pub use admin::{
    parse_admin_keyring, verify_admin_request, AdminAction, AdminError, SignedAdminRequest,
};
pub use armor::{armor_public_keys, crc24};
pub use clean::{clean, shed};
pub use diff::{cert_diff, CertDiff};
pub use index::{
    index_terms, summarize, vindex_sigs, words, IndexTerms, SigLine, Summary, UidSummary,
};
pub use limits::{Limits, ThirdPartyPolicy};
pub use merge::{merge, MergeOutcome};
pub use parse::{
    armor_blocks, parse_submission, primary_fingerprint, Parsed, RawCert, MAX_SUBMISSION_ITEMS,
};
pub use split::CertSplitter;
pub use types::{normalize_email, Fingerprint};

use std::time::SystemTime;

use sequoia_openpgp::policy::{AsymmetricAlgorithm, StandardPolicy};
use sequoia_openpgp::types::HashAlgorithm;

/// The one OpenPGP policy of keyraft.
///
/// A keyserver distributes certificates; it does not decide whom to trust. It must check that
/// self-signatures are cryptographically valid, but it must not refuse a certificate because
/// its owner chose an algorithm a client's policy now calls weak (Debian's keyring still holds
/// SHA-1 self-signatures and 1024-bit DSA keys). So this is Sequoia's standard policy with
/// every hash and public-key algorithm it knows accepted; MD5 stays rejected.
///
/// Sequoia's cut-off dates (when an algorithm stops being accepted) are compared with the
/// policy's reference time, which is the wall clock unless set: set to `time` (the proposer's
/// time of a command), two nodes with different clocks judge a certificate alike.
pub fn policy_at(time: SystemTime) -> StandardPolicy<'static> {
    let mut p = StandardPolicy::at(time);
    for h in [HashAlgorithm::SHA1, HashAlgorithm::RipeMD] {
        p.accept_hash(h);
    }
    use AsymmetricAlgorithm::*;
    for a in [
        RSA1024,
        RSA2048,
        RSA3072,
        RSA4096,
        ElGamal1024,
        ElGamal2048,
        ElGamal3072,
        ElGamal4096,
        DSA1024,
        DSA2048,
        DSA3072,
        DSA4096,
        NistP256,
        NistP384,
        NistP521,
        BrainpoolP256,
        BrainpoolP384,
        BrainpoolP512,
        Cv25519,
        X25519,
        X448,
        Ed25519,
        Ed448,
        EdDSA,
    ] {
        p.accept_asymmetric_algo(a);
    }
    p
}

/// Why a certificate or a submission was refused. Every variant's text is a one-line reason
/// suitable for an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgpError {
    /// The submission contains secret key material; nothing from it is stored.
    #[error("submission contains secret key material; refusing to store any of it")]
    SecretKeyMaterial,
    /// No OpenPGP data could be read at all.
    #[error("no OpenPGP certificate found: {0}")]
    Unparsable(String),
    /// The certificate has no valid self-signed user id or direct-key signature.
    #[error("no valid self-signed user id or direct-key signature")]
    NoValidSelfSignature,
    /// The certificate is larger than the configured cap even without third-party
    /// certifications.
    #[error("certificate is {size} bytes, over the {limit}-byte cap even without third-party certifications")]
    TooLarge { size: usize, limit: usize },
    /// A packet the certificate cannot do without is over the packet size cap.
    #[error("{what} packet is {size} bytes, over the {limit}-byte packet cap")]
    PacketTooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// Sequoia refused the certificate.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// More items than one submission may carry (see [`MAX_SUBMISSION_ITEMS`]).
    #[error(
        "{count} certificates in one submission, over the limit of {limit}; send them in several"
    )]
    TooManyItems { count: usize, limit: usize },
}

#[cfg(test)]
mod tests;
