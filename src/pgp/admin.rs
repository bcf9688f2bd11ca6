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
//! [`super::POLICY`] the way Sequoia's verifier judges it at its creation time (signing-capable,
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
use super::{parse_submission, Limits, Parsed, PgpError, POLICY};

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
    let mut verifier = DetachedVerifierBuilder::from_bytes(keysig)
        .and_then(|b| b.with_policy(&*POLICY, Some(now), helper))
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
    let Ok(vc) = cert.with_policy(&*POLICY, now) else {
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
            Parsed::Cert(c) => *c,
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
mod tests {
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    use sequoia_openpgp::armor::{Kind, Writer};
    use sequoia_openpgp::cert::prelude::*;
    use sequoia_openpgp::serialize::stream::{Message, Signer};

    use super::*;

    fn created() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    /// A fixed "now", after the keys were made.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_100_000)
    }

    fn gen(uid: &str) -> Cert {
        CertBuilder::general_purpose(Some(uid))
            .set_creation_time(created())
            .generate()
            .unwrap()
            .0
    }

    fn public(c: &Cert) -> Cert {
        Cert::from_bytes(&c.to_vec().unwrap()).unwrap()
    }

    fn armored(c: &Cert) -> Vec<u8> {
        c.armored().to_vec().unwrap()
    }

    /// A detached armored signature over `data` by `signer`'s signing subkey, made at `at`.
    fn sign_at(signer: &Cert, data: &[u8], at: SystemTime) -> Vec<u8> {
        let keypair = signer
            .keys()
            .subkeys()
            .with_policy(&*POLICY, at)
            .for_signing()
            .secret()
            .next()
            .expect("a signing subkey")
            .key()
            .clone()
            .into_keypair()
            .unwrap();
        let mut out = Vec::new();
        let mut armor = Writer::new(&mut out, Kind::Signature).unwrap();
        {
            let message = Message::new(&mut armor);
            let mut s = Signer::new(message, keypair)
                .unwrap()
                .detached()
                .creation_time(at)
                .build()
                .unwrap();
            s.write_all(data).unwrap();
            s.finalize().unwrap();
        }
        armor.finalize().unwrap();
        out
    }

    fn sign(signer: &Cert, data: &[u8]) -> Vec<u8> {
        sign_at(signer, data, now() - Duration::from_secs(60))
    }

    fn keytext(command: &str, certs: &[&Cert]) -> Vec<u8> {
        let mut t = format!("{command}\n").into_bytes();
        for c in certs {
            t.extend_from_slice(&armored(c));
        }
        t
    }

    struct Fixture {
        admin: Cert,
        other: Cert,
        target: Cert,
    }

    fn fixture() -> Fixture {
        Fixture {
            admin: gen("Admin <admin@example.org>"),
            other: gen("Mallory <mallory@example.org>"),
            target: gen("Jane <jane@example.org>"),
        }
    }

    #[test]
    fn signed_replace_is_accepted() {
        let f = fixture();
        let text = keytext("/pks/replace", &[&f.target]);
        let sig = sign(&f.admin, &text);
        let req = verify_admin_request(&text, &sig, &[public(&f.admin)], now()).unwrap();
        assert_eq!(req.action, AdminAction::Replace);
        assert_eq!(req.fingerprints, vec![f.target.fingerprint().to_hex()]);
        assert_eq!(req.signer, f.admin.fingerprint().to_hex());
        let back = Cert::from_bytes(&req.certs[0]).unwrap();
        assert_eq!(back.fingerprint(), f.target.fingerprint());
        assert!(!back.is_tsk(), "only public parts are returned");
    }

    #[test]
    fn signed_delete_with_crlf_and_two_certs_is_accepted() {
        let f = fixture();
        let mut text = b"/pks/delete\r\n".to_vec();
        text.extend_from_slice(&armored(&f.target));
        text.extend_from_slice(&armored(&f.other));
        text.extend_from_slice(&armored(&f.target));
        let sig = sign(&f.admin, &text);
        let admins = [public(&f.other), public(&f.admin)];
        let req = verify_admin_request(&text, &sig, &admins, now()).unwrap();
        assert_eq!(req.action, AdminAction::Delete);
        assert_eq!(
            req.fingerprints,
            vec![
                f.target.fingerprint().to_hex(),
                f.other.fingerprint().to_hex()
            ],
            "in order of first appearance, duplicates merged"
        );
        assert_eq!(req.certs.len(), 2);
        assert_eq!(req.signer, f.admin.fingerprint().to_hex());
    }

    #[test]
    fn signature_by_a_non_admin_key_is_refused() {
        let f = fixture();
        let text = keytext("/pks/delete", &[&f.target]);
        let sig = sign(&f.other, &text);
        assert_eq!(
            verify_admin_request(&text, &sig, &[public(&f.admin)], now()),
            Err(AdminError::NoValidSignature)
        );
        assert_eq!(
            verify_admin_request(&text, &sig, &[], now()),
            Err(AdminError::NoValidSignature)
        );
    }

    #[test]
    fn tampered_keytext_is_refused() {
        let f = fixture();
        let text = keytext("/pks/replace", &[&f.target]);
        let sig = sign(&f.admin, &text);
        let mut tampered = text.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 0x01;
        assert_eq!(
            verify_admin_request(&tampered, &sig, &[public(&f.admin)], now()),
            Err(AdminError::NoValidSignature)
        );
        // A signed delete cannot be turned into a replace.
        let del = keytext("/pks/delete", &[&f.target]);
        let del_sig = sign(&f.admin, &del);
        let as_replace = keytext("/pks/replace", &[&f.target]);
        assert_eq!(
            verify_admin_request(&as_replace, &del_sig, &[public(&f.admin)], now()),
            Err(AdminError::NoValidSignature)
        );
    }

    #[test]
    fn missing_or_garbage_keysig_is_refused() {
        let f = fixture();
        let text = keytext("/pks/replace", &[&f.target]);
        let admins = [public(&f.admin)];
        for keysig in [&b""[..], b" \r\n", b"not a signature"] {
            assert_eq!(
                verify_admin_request(&text, keysig, &admins, now()),
                Err(AdminError::NoValidSignature)
            );
        }
    }

    #[test]
    fn keytext_without_the_command_line_is_refused() {
        let f = fixture();
        let admins = [public(&f.admin)];
        for text in [
            armored(&f.target),
            keytext("/pks/add", &[&f.target]),
            keytext("/pks/replace ", &[&f.target]),
            keytext(" /pks/delete", &[&f.target]),
            keytext("/pks/replacex", &[&f.target]),
            b"/pks/delete".to_vec(),
        ] {
            let sig = sign(&f.admin, &text);
            assert_eq!(
                verify_admin_request(&text, &sig, &admins, now()),
                Err(AdminError::NotAdminRequest)
            );
        }
    }

    #[test]
    fn signature_over_a_different_text_is_refused() {
        let f = fixture();
        let text = keytext("/pks/replace", &[&f.target]);
        let sig = sign(&f.admin, &keytext("/pks/replace", &[&f.other]));
        assert_eq!(
            verify_admin_request(&text, &sig, &[public(&f.admin)], now()),
            Err(AdminError::NoValidSignature)
        );
    }

    #[test]
    fn signature_by_the_certification_only_primary_is_refused() {
        let f = fixture();
        let text = keytext("/pks/delete", &[&f.target]);
        let keypair = f
            .admin
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap()
            .into_keypair()
            .unwrap();
        let mut sig = Vec::new();
        let mut armor = Writer::new(&mut sig, Kind::Signature).unwrap();
        {
            let mut s = Signer::new(Message::new(&mut armor), keypair)
                .unwrap()
                .detached()
                .creation_time(now() - Duration::from_secs(60))
                .build()
                .unwrap();
            s.write_all(&text).unwrap();
            s.finalize().unwrap();
        }
        armor.finalize().unwrap();
        assert_eq!(
            verify_admin_request(&text, &sig, &[public(&f.admin)], now()),
            Err(AdminError::NoValidSignature)
        );
    }

    #[test]
    fn admin_key_expired_at_now_is_refused() {
        let admin = CertBuilder::general_purpose(Some("Admin <admin@example.org>"))
            .set_creation_time(created())
            .set_validity_period(Duration::from_secs(50_000))
            .generate()
            .unwrap()
            .0;
        let target = gen("Jane <jane@example.org>");
        let text = keytext("/pks/delete", &[&target]);
        // Made while the key was alive, checked after it expired.
        let sig = sign_at(&admin, &text, created() + Duration::from_secs(1_000));
        let admins = [public(&admin)];
        assert!(
            verify_admin_request(&text, &sig, &admins, created() + Duration::from_secs(2_000))
                .is_ok()
        );
        assert_eq!(
            verify_admin_request(&text, &sig, &admins, now()),
            Err(AdminError::NoValidSignature)
        );
    }

    #[test]
    fn keytext_without_a_certificate_is_refused() {
        let f = fixture();
        let admins = [public(&f.admin)];
        let text = b"/pks/delete\n\n".to_vec();
        let sig = sign(&f.admin, &text);
        assert_eq!(
            verify_admin_request(&text, &sig, &admins, now()),
            Err(AdminError::NoCertificate)
        );
        let text = b"/pks/delete\nhello\n".to_vec();
        let sig = sign(&f.admin, &text);
        assert!(matches!(
            verify_admin_request(&text, &sig, &admins, now()),
            Err(AdminError::Unparsable(_))
        ));
    }

    #[test]
    fn every_copy_of_a_signature_is_one_use_and_another_signature_is_another() {
        use sequoia_openpgp::packet::signature::subpacket::{
            NotationData, NotationDataFlags, Subpacket, SubpacketValue,
        };
        use sequoia_openpgp::{Packet, PacketPile};
        let f = fixture();
        let admins = [public(&f.admin)];
        let text = keytext("/pks/delete", &[&f.target]);
        let at = now() - Duration::from_secs(60);
        let sig = sign_at(&f.admin, &text, at);
        let req = verify_admin_request(&text, &sig, &admins, now()).unwrap();
        assert_eq!(
            req.signed_at,
            at.duration_since(UNIX_EPOCH).unwrap().as_secs()
        );

        // The same signature, binary, with an extra unhashed subpacket: still valid, and
        // still the same use (a replayer cannot dodge the check by re-encoding it).
        let Some(Packet::Signature(mut packet)) =
            PacketPile::from_bytes(&sig).unwrap().into_children().next()
        else {
            panic!("a signature packet");
        };
        let note = NotationData::new("replay@example.org", b"x", NotationDataFlags::empty());
        packet
            .unhashed_area_mut()
            .add(Subpacket::new(SubpacketValue::NotationData(note), false).unwrap())
            .unwrap();
        let bare = Packet::from(packet).to_vec().unwrap();
        assert!(!bare.starts_with(b"-----"), "binary");
        let copy = verify_admin_request(&text, &bare, &admins, now()).unwrap();
        assert_eq!(copy.use_id, req.use_id);

        // A fresh signature over the same text a second later is a new use; so is the same
        // signing time over another text.
        let later = sign_at(&f.admin, &text, at + Duration::from_secs(1));
        let again = verify_admin_request(&text, &later, &admins, now()).unwrap();
        assert_ne!(again.use_id, req.use_id);
        let text2 = keytext("/pks/delete", &[&f.other]);
        let sig2 = sign_at(&f.admin, &text2, at);
        let other = verify_admin_request(&text2, &sig2, &admins, now()).unwrap();
        assert_ne!(other.use_id, req.use_id);
    }

    #[test]
    fn keyring_reads_armored_and_binary_and_refuses_secrets() {
        let a = gen("A <a@example.org>");
        let b = gen("B <b@example.org>");
        let mut armored_ring = armored(&a);
        armored_ring.extend_from_slice(b"\n# comment\n");
        armored_ring.extend_from_slice(&armored(&b));
        let mut binary = a.to_vec().unwrap();
        binary.extend_from_slice(&b.to_vec().unwrap());
        for ring in [armored_ring, binary] {
            let certs = parse_admin_keyring(&ring).unwrap();
            let fprs: Vec<_> = certs.iter().map(|c| c.fingerprint()).collect();
            assert_eq!(fprs, vec![a.fingerprint(), b.fingerprint()]);
        }
        assert!(parse_admin_keyring(b"").is_err());
        assert!(parse_admin_keyring(&a.as_tsk().armored().to_vec().unwrap()).is_err());
    }
}
