//! Signed admin requests, compatible with Hockeypuck's `/pks/replace` and `/pks/delete`.
//!
//! A request has two form fields. `keytext` starts with the line `/pks/replace` or
//! `/pks/delete` (ended by LF or CRLF) and continues with one or more armored certificates;
//! `keysig` is a detached OpenPGP signature (armored, or binary) over the whole `keytext`
//! bytes, command line included, so a signed delete cannot be replayed as a replace. The
//! signature must be made by a key of one of the configured admin certificates.
//!
//! Checks, in order: the command line, then the signature, then the certificates, so no
//! certificate parsing happens for an unauthenticated request. The signature must verify under
//! [`super::policy_at`] the way Sequoia's verifier judges it at its creation time (signing-capable,
//! live, unrevoked key; signature alive at `now`), and, because an admin key that has since
//! expired or been revoked must stop authorising anything, the admin certificate and the signing
//! key must also be valid, live, unrevoked and signing-capable at `now`.
//!
//! Replay: the request also reports when the signature was made ([`SignedAdminRequest::signed_at`])
//! and an identity of the signature ([`SignedAdminRequest::use_id`]) with which the caller
//! refuses a second use. The identity covers what the signature commits to (the keytext, the
//! signing key, the signature's type, algorithms and hashed subpackets), not the packet bytes:
//! the unhashed subpacket area (and, for some algorithms, the signature values) can be changed
//! without invalidating a signature, so a hash of the packet could be dodged by a replayer.
//!
//! Pure: no I/O, no clock (`now` is an argument); must not depend on the store, raft, api or
//! rpc layers.
//!
//! # Common operations
//! - [`parse_admin_keyring`]: read the admin certificates from the configured key file.
//! - [`verify_admin_request`]: authenticate a request and extract the certificates it names.
use std::collections::BTreeMap;
use std::time::SystemTime;

use sequoia_openpgp::cert::CertParser;
use sequoia_openpgp::packet::Signature;
use sequoia_openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::types::RevocationStatus;
use sequoia_openpgp::{Cert, Fingerprint, KeyHandle};
use sha2::{Digest, Sha256};

use super::parse::{armor_blocks, one_line};
use super::{parse_submission, policy_at, Limits, Parsed, PgpError};

/// The operation a signed admin request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminAction {
    /// Replace the stored certificate(s) with the given one(s) (`/pks/replace`).
    Replace,
    /// Delete the given certificate(s) (`/pks/delete`).
    Delete,
}

impl AdminAction {
    /// The command line that opens a `keytext` for this action.
    pub fn command(self) -> &'static str {
        match self {
            AdminAction::Replace => "/pks/replace",
            AdminAction::Delete => "/pks/delete",
        }
    }
}

/// An authenticated admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAdminRequest {
    /// What the admin asks for.
    pub action: AdminAction,
    /// The certificates from `keytext`, binary, public parts only, in order of first
    /// appearance; copies of one certificate are merged into one.
    pub certs: Vec<Vec<u8>>,
    /// Upper-case hex primary fingerprint of each of `certs`, same order.
    pub fingerprints: Vec<String>,
    /// Upper-case hex primary fingerprint of the admin certificate whose (sub)key signed.
    pub signer: String,
    /// When the signature says it was made, Unix seconds.
    pub signed_at: u64,
    /// The identity of this signed request (SHA-256, see the module docs): equal for every
    /// copy of the same signature, whatever its armor or unhashed subpackets.
    pub use_id: [u8; 32],
}

/// Why a signed admin request was refused. Each message is a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The first line of `keytext` is neither `/pks/replace` nor `/pks/delete`.
    #[error("keytext must start with the line /pks/replace or /pks/delete")]
    NotAdminRequest,
    /// The certificate part of `keytext` could not be read.
    #[error("keytext certificates unreadable: {0}")]
    Unparsable(String),
    /// `keysig` is missing, unreadable, not by an admin key, does not verify, or its key or
    /// the signature is not valid (expired, revoked, not signing-capable) at the request time.
    #[error("keysig is not a valid signature over keytext by a current admin signing key")]
    NoValidSignature,
    /// `keytext` holds no certificate after the command line.
    #[error("keytext holds no certificate after the command line")]
    NoCertificate,
}

/// Read the admin certificates from a key file: armored (one or several blocks) or binary
/// (certificates back to back). Secret key material is refused: the file must hold public
/// certificates only.
pub fn parse_admin_keyring(bytes: &[u8]) -> Result<Vec<Cert>, String> {
    let blocks = armor_blocks(bytes);
    let parts: Vec<&[u8]> = if blocks.is_empty() {
        vec![bytes]
    } else {
        blocks
    };
    let mut certs = Vec::new();
    for part in parts {
        let parser = CertParser::from_bytes(part).map_err(|e| one_line(&e))?;
        for cert in parser {
            let cert = cert.map_err(|e| one_line(&e))?;
            if cert.is_tsk() {
                return Err(format!(
                    "admin key file holds secret key material (certificate {}); give public \
                     certificates only",
                    cert.fingerprint().to_hex()
                ));
            }
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err("admin key file holds no certificate".into());
    }
    Ok(certs)
}

/// Authenticate a Hockeypuck-style admin request (see the module docs) against `admins` at
/// time `now`, and return the action, the certificates it names and the admin that signed.
pub fn verify_admin_request(
    keytext: &[u8],
    keysig: &[u8],
    admins: &[Cert],
    now: SystemTime,
) -> Result<SignedAdminRequest, AdminError> {
    let (action, rest) = command(keytext).ok_or(AdminError::NotAdminRequest)?;
    let good = verify_signature(keytext, keysig, admins, now)?;
    let certs = read_certs(rest)?;
    let fingerprints = certs.iter().map(|c| c.fingerprint().to_hex()).collect();
    let certs = certs
        .iter()
        .map(|c| c.to_vec().map_err(|e| AdminError::Unparsable(one_line(&e))))
        .collect::<Result<_, _>>()?;
    Ok(SignedAdminRequest {
        action,
        certs,
        fingerprints,
        signer: good.signer,
        signed_at: good.signed_at,
        use_id: good.use_id,
    })
}

/// The action named by the first line and what follows that line. Like Hockeypuck, the line
/// must be exactly the command, ended by LF or CR (CRLF included).
fn command(keytext: &[u8]) -> Option<(AdminAction, &[u8])> {
    [AdminAction::Replace, AdminAction::Delete]
        .into_iter()
        .find_map(|action| {
            let rest = keytext.strip_prefix(action.command().as_bytes())?;
            let rest = rest
                .strip_prefix(b"\r\n")
                .or_else(|| rest.strip_prefix(b"\n"))
                .or_else(|| rest.strip_prefix(b"\r"))?;
            Some((action, rest))
        })
}

/// The signature that authenticated a request.
struct GoodSignature {
    signer: String,
    signed_at: u64,
    use_id: [u8; 32],
}

/// Verify `keysig` over `keytext`; the signature that verified.
fn verify_signature(
    keytext: &[u8],
    keysig: &[u8],
    admins: &[Cert],
    now: SystemTime,
) -> Result<GoodSignature, AdminError> {
    if keysig.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::NoValidSignature);
    }
    let helper = Helper {
        admins,
        now,
        keytext: Sha256::digest(keytext).into(),
        signer: None,
    };
    let policy = policy_at(now);
    let mut verifier = DetachedVerifierBuilder::from_bytes(keysig)
        .and_then(|b| b.with_policy(&policy, Some(now), helper))
        .map_err(|_| AdminError::NoValidSignature)?;
    verifier
        .verify_bytes(keytext)
        .map_err(|_| AdminError::NoValidSignature)?;
    verifier
        .into_helper()
        .signer
        .ok_or(AdminError::NoValidSignature)
}

/// Hands the admin certificates to Sequoia's verifier and keeps the first signature that is
/// good and whose key is still fit to sign at `now`.
struct Helper<'a> {
    admins: &'a [Cert],
    now: SystemTime,
    /// SHA-256 of the keytext.
    keytext: [u8; 32],
    signer: Option<GoodSignature>,
}

/// The identity of a signature over a keytext (see the module docs).
fn use_id(keytext: &[u8; 32], key: &Fingerprint, sig: &Signature) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keyraft signed admin request v1\0");
    h.update(keytext);
    h.update([key.as_bytes().len() as u8]);
    h.update(key.as_bytes());
    h.update([
        sig.version(),
        u8::from(sig.typ()),
        u8::from(sig.pk_algo()),
        u8::from(sig.hash_algo()),
    ]);
    h.update(sig.hashed_area().to_vec().unwrap_or_default());
    h.finalize().into()
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> sequoia_openpgp::Result<Vec<Cert>> {
        Ok(self.admins.to_vec())
    }

    fn check(&mut self, structure: MessageStructure) -> sequoia_openpgp::Result<()> {
        for layer in structure {
            if let MessageLayer::SignatureGroup { results } = layer {
                for good in results.into_iter().flatten() {
                    let fpr = good.ka.key().fingerprint();
                    let signed_at = good
                        .sig
                        .signature_creation_time()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    let Some(signed_at) = signed_at else { continue };
                    if fit_to_sign_now(good.ka.cert(), &KeyHandle::from(&fpr), self.now) {
                        self.signer = Some(GoodSignature {
                            signer: good.ka.cert().fingerprint().to_hex(),
                            signed_at: signed_at.as_secs(),
                            use_id: use_id(&self.keytext, &fpr, good.sig),
                        });
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `cert` is valid, live and unrevoked at `now` and its key `key` is live, unrevoked
/// and signing-capable at `now`.
fn fit_to_sign_now(cert: &Cert, key: &KeyHandle, now: SystemTime) -> bool {
    let policy = policy_at(now);
    let Ok(vc) = cert.with_policy(&policy, now) else {
        return false;
    };
    if vc.alive().is_err() || matches!(vc.revocation_status(), RevocationStatus::Revoked(_)) {
        return false;
    }
    vc.keys()
        .key_handle(key.clone())
        .alive()
        .revoked(false)
        .for_signing()
        .next()
        .is_some()
}

/// The certificates after the command line, copies of one certificate merged.
fn read_certs(rest: &[u8]) -> Result<Vec<Cert>, AdminError> {
    if armor_blocks(rest).is_empty() && rest.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::NoCertificate);
    }
    // The request is authenticated by now; the configured caps apply later, when the
    // certificates are cleaned, so no packet cap here.
    let limits = Limits {
        max_packet_bytes: u32::MAX,
        ..Limits::default()
    };
    let parsed = parse_submission(rest, &limits).map_err(|e| match e {
        PgpError::Unparsable(why) => AdminError::Unparsable(why),
        other => AdminError::Unparsable(other.to_string()),
    })?;
    let mut order = Vec::new();
    let mut by_fpr: BTreeMap<String, Cert> = BTreeMap::new();
    for item in parsed {
        let cert = match item {
            Parsed::Cert(c) => c
                .into_cert()
                .map_err(|e| AdminError::Unparsable(e.to_string()))?,
            Parsed::Unreadable(why) => return Err(AdminError::Unparsable(why)),
        };
        let fpr = cert.fingerprint().to_hex();
        match by_fpr.remove(&fpr) {
            Some(seen) => {
                let merged = seen
                    .merge_public(cert)
                    .map_err(|e| AdminError::Unparsable(one_line(&e)))?;
                by_fpr.insert(fpr, merged);
            }
            None => {
                order.push(fpr.clone());
                by_fpr.insert(fpr, cert);
            }
        }
    }
    if order.is_empty() {
        return Err(AdminError::NoCertificate);
    }
    Ok(order.iter().filter_map(|fpr| by_fpr.remove(fpr)).collect())
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
