//! A structured diff of two versions of one certificate, for the conflicts API.
//!
//! Both versions are parsed (so packet order does not matter: Sequoia canonicalises), then
//! compared component by component: user ids by value, subkeys by fingerprint, signatures by
//! their serialized bytes, gathered across all components and counted as a multiset. Lists
//! are sorted, so the same two inputs always give the same diff.
//!
//! Pure: no I/O, no clock; must not depend on the store, raft, api or rpc layers.
use std::collections::{BTreeMap, BTreeSet};

use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::{Cert, Packet};

use super::parse::one_line;

/// How `incoming` differs from `current`. "Added" means in `incoming` and not in `current`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertDiff {
    /// User ids in `incoming` only (lossy UTF-8), sorted.
    pub user_ids_added: Vec<String>,
    /// User ids in `current` only (lossy UTF-8), sorted.
    pub user_ids_removed: Vec<String>,
    /// Upper-case hex fingerprints of subkeys in `incoming` only, sorted.
    pub subkeys_added: Vec<String>,
    /// Upper-case hex fingerprints of subkeys in `current` only, sorted.
    pub subkeys_removed: Vec<String>,
    /// Signatures (of any component) in `incoming` and not in `current`.
    pub signatures_added: usize,
    /// Signatures (of any component) in `current` and not in `incoming`.
    pub signatures_removed: usize,
    /// Whether both versions serialize to the same canonical bytes. A difference none of the
    /// fields above shows (an unsigned user attribute, say) still makes this false.
    pub same: bool,
}

/// Diff two binary versions of one certificate. Fails if either does not parse or if they
/// are not the same certificate (different primary fingerprints).
pub fn cert_diff(current: &[u8], incoming: &[u8]) -> Result<CertDiff, String> {
    let cur = Cert::from_bytes(current).map_err(|e| format!("current: {}", one_line(&e)))?;
    let inc = Cert::from_bytes(incoming).map_err(|e| format!("incoming: {}", one_line(&e)))?;
    if cur.fingerprint() != inc.fingerprint() {
        return Err(format!(
            "not the same certificate: {} and {}",
            cur.fingerprint().to_hex(),
            inc.fingerprint().to_hex()
        ));
    }
    let same = canonical(&cur)? == canonical(&inc)?;

    let (uids_cur, uids_inc) = (user_ids(&cur), user_ids(&inc));
    let (subs_cur, subs_inc) = (subkeys(&cur), subkeys(&inc));
    let (sigs_cur, sigs_inc) = (signatures(&cur)?, signatures(&inc)?);
    Ok(CertDiff {
        user_ids_added: lossy(uids_inc.difference(&uids_cur)),
        user_ids_removed: lossy(uids_cur.difference(&uids_inc)),
        subkeys_added: subs_inc.difference(&subs_cur).cloned().collect(),
        subkeys_removed: subs_cur.difference(&subs_inc).cloned().collect(),
        signatures_added: surplus(&sigs_inc, &sigs_cur),
        signatures_removed: surplus(&sigs_cur, &sigs_inc),
        same,
    })
}

fn canonical(cert: &Cert) -> Result<Vec<u8>, String> {
    cert.to_vec().map_err(|e| one_line(&e))
}

fn user_ids(cert: &Cert) -> BTreeSet<Vec<u8>> {
    cert.userids()
        .map(|u| u.userid().value().to_vec())
        .collect()
}

fn subkeys(cert: &Cert) -> BTreeSet<String> {
    cert.keys()
        .subkeys()
        .map(|k| k.key().fingerprint().to_hex())
        .collect()
}

/// Every signature packet of the certificate, serialized, with its multiplicity.
fn signatures(cert: &Cert) -> Result<BTreeMap<Vec<u8>, usize>, String> {
    let mut out = BTreeMap::new();
    for packet in cert.clone().into_packets() {
        if let Packet::Signature(sig) = packet {
            let bytes = sig.to_vec().map_err(|e| one_line(&e))?;
            *out.entry(bytes).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// How many signatures `a` holds beyond those in `b`, counting multiplicity.
fn surplus(a: &BTreeMap<Vec<u8>, usize>, b: &BTreeMap<Vec<u8>, usize>) -> usize {
    a.iter()
        .map(|(sig, n)| n.saturating_sub(b.get(sig).copied().unwrap_or(0)))
        .sum()
}

fn lossy<'a>(values: impl Iterator<Item = &'a Vec<u8>>) -> Vec<String> {
    let mut out: Vec<String> = values
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use sequoia_openpgp::cert::prelude::*;
    use sequoia_openpgp::packet::signature::SignatureBuilder;
    use sequoia_openpgp::packet::UserID;
    use sequoia_openpgp::types::SignatureType;

    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn gen(uid: &str) -> Cert {
        CertBuilder::general_purpose(Some(uid))
            .set_creation_time(t(0))
            .generate()
            .unwrap()
            .0
    }

    fn bytes(c: &Cert) -> Vec<u8> {
        c.to_vec().unwrap()
    }

    fn primary_signer(c: &Cert) -> sequoia_openpgp::crypto::KeyPair {
        c.primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap()
            .into_keypair()
            .unwrap()
    }

    #[test]
    fn identical_versions_are_the_same() {
        let c = gen("Jane <jane@example.org>");
        let d = cert_diff(&bytes(&c), &bytes(&c)).unwrap();
        assert!(d.same);
        assert!(d.user_ids_added.is_empty() && d.user_ids_removed.is_empty());
        assert!(d.subkeys_added.is_empty() && d.subkeys_removed.is_empty());
        assert_eq!((d.signatures_added, d.signatures_removed), (0, 0));
    }

    #[test]
    fn added_user_id_is_listed_with_its_self_signature() {
        let c = gen("Jane <jane@example.org>");
        let mut signer = primary_signer(&c);
        let uid = UserID::from("Jane Doe <jane@work.example>");
        let sig = SignatureBuilder::new(SignatureType::PositiveCertification)
            .set_signature_creation_time(t(10))
            .unwrap()
            .sign_userid_binding(&mut signer, None, &uid)
            .unwrap();
        let (grown, _) = c
            .clone()
            .insert_packets(vec![Packet::from(uid), sig.into()])
            .unwrap();
        let d = cert_diff(&bytes(&c), &bytes(&grown)).unwrap();
        assert!(!d.same);
        assert_eq!(d.user_ids_added, vec!["Jane Doe <jane@work.example>"]);
        assert!(d.user_ids_removed.is_empty());
        assert_eq!((d.signatures_added, d.signatures_removed), (1, 0));
        // And the other way round.
        let back = cert_diff(&bytes(&grown), &bytes(&c)).unwrap();
        assert_eq!(back.user_ids_removed, vec!["Jane Doe <jane@work.example>"]);
        assert_eq!((back.signatures_added, back.signatures_removed), (0, 1));
    }

    #[test]
    fn removed_subkey_is_listed_with_its_binding_signature() {
        let c = gen("Jane <jane@example.org>");
        let gone = c.keys().subkeys().next().unwrap().key().fingerprint();
        let binding_sigs = c
            .keys()
            .subkeys()
            .find(|k| k.key().fingerprint() == gone)
            .unwrap()
            .signatures()
            .count();
        let shrunk = c.clone().retain_subkeys(|k| k.key().fingerprint() != gone);
        let d = cert_diff(&bytes(&c), &bytes(&shrunk)).unwrap();
        assert!(!d.same);
        assert_eq!(d.subkeys_removed, vec![gone.to_hex()]);
        assert!(d.subkeys_added.is_empty());
        assert_eq!(
            (d.signatures_added, d.signatures_removed),
            (0, binding_sigs)
        );
    }

    #[test]
    fn added_third_party_certification_is_counted() {
        let c = gen("Jane <jane@example.org>");
        let mut signer = primary_signer(&gen("Bob <bob@example.org>"));
        let uid = c.userids().next().unwrap().userid().clone();
        let sig = SignatureBuilder::new(SignatureType::GenericCertification)
            .set_signature_creation_time(t(20))
            .unwrap()
            .sign_userid_binding(&mut signer, c.primary_key().key(), &uid)
            .unwrap();
        let (certified, _) = c.clone().insert_packets(Some(sig)).unwrap();
        let d = cert_diff(&bytes(&c), &bytes(&certified)).unwrap();
        assert!(!d.same);
        assert!(d.user_ids_added.is_empty() && d.subkeys_added.is_empty());
        assert_eq!((d.signatures_added, d.signatures_removed), (1, 0));
    }

    #[test]
    fn different_certificates_and_garbage_are_errors() {
        let a = gen("A <a@example.org>");
        let b = gen("B <b@example.org>");
        assert!(cert_diff(&bytes(&a), &bytes(&b)).is_err());
        assert!(cert_diff(b"junk", &bytes(&b)).is_err());
    }

    #[test]
    fn diff_serializes_to_json() {
        let c = gen("Jane <jane@example.org>");
        let d = cert_diff(&bytes(&c), &bytes(&c)).unwrap();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["same"], true);
        assert_eq!(v["user_ids_added"], serde_json::json!([]));
    }
}
