//! Index terms and listing summaries derived from a certificate.
//!
//! Terms: primary and subkey fingerprints, 64- and 32-bit key ids, normalised e-mail
//! addresses, and user id words (Unicode NFKC, lower case, split on anything that is not a
//! letter or digit, 2 to 64 bytes, at most [`MAX_WORDS`] per certificate).
use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use sequoia_openpgp::cert::amalgamation::{ValidAmalgamation, ValidateAmalgamation};
use sequoia_openpgp::types::RevocationStatus;
use sequoia_openpgp::Cert;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::{normalize_email, policy_at};

/// At most this many distinct words per certificate are indexed.
pub const MAX_WORDS: usize = 256;

/// Everything a certificate is found by. Sorted sets, so iteration is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexTerms {
    pub fingerprints: BTreeSet<Vec<u8>>,
    pub keyids64: BTreeSet<Vec<u8>>,
    pub keyids32: BTreeSet<Vec<u8>>,
    pub emails: BTreeSet<String>,
    pub words: BTreeSet<String>,
}

/// Compute the index terms of a certificate.
pub fn index_terms(cert: &Cert) -> IndexTerms {
    let mut t = IndexTerms::default();
    for key in cert.keys() {
        let fpr = key.key().fingerprint().as_bytes().to_vec();
        let id = key.key().keyid().as_bytes().to_vec();
        t.keyids32.insert(id[id.len() - 4..].to_vec());
        t.keyids64.insert(id);
        t.fingerprints.insert(fpr);
    }
    for ua in cert.userids() {
        let text = String::from_utf8_lossy(ua.userid().value());
        if let Ok(Some(e)) = ua.userid().email() {
            if let Some(e) = normalize_email(e) {
                t.emails.insert(e);
            }
        } else if let Some(e) = normalize_email(&text) {
            t.emails.insert(e);
        }
        for w in words(&text) {
            if t.words.len() >= MAX_WORDS {
                break;
            }
            t.words.insert(w);
        }
    }
    t
}

/// Split text into normalised search words (also used for queries, so both sides agree).
pub fn words(text: &str) -> Vec<String> {
    text.nfkc()
        .collect::<String>()
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| (2..=64).contains(&w.len()))
        .map(str::to_string)
        .collect()
}

/// One user id as `op=index` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidSummary {
    #[serde(with = "serde_bytes")]
    pub uid: Vec<u8>,
    pub created: Option<u64>,
    pub expires: Option<u64>,
    pub revoked: bool,
}

/// A certificate as `op=index` lists it, computed at apply time with the proposer's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub fingerprint: String,
    pub keyid: String,
    pub algo: u8,
    pub bits: u32,
    pub created: u64,
    pub expires: Option<u64>,
    pub revoked: bool,
    pub uids: Vec<UidSummary>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Summarise a certificate at `time`.
pub fn summarize(cert: &Cert, time: SystemTime) -> Summary {
    let pk = cert.primary_key().key();
    let mut s = Summary {
        fingerprint: pk.fingerprint().to_hex(),
        keyid: pk.keyid().to_hex(),
        algo: u8::from(pk.pk_algo()),
        bits: pk.mpis().bits().unwrap_or(0) as u32,
        created: secs(pk.creation_time()),
        expires: None,
        revoked: false,
        uids: Vec::new(),
    };
    let policy = policy_at(time);
    let Ok(vc) = cert.with_policy(&policy, time) else {
        return s;
    };
    s.expires = vc.primary_key().key_expiration_time().map(secs);
    s.revoked = matches!(vc.revocation_status(), RevocationStatus::Revoked(_));
    for ua in cert.userids() {
        let valid = ua.clone().with_policy(&policy, time).ok();
        let binding = valid.as_ref().map(|v| v.binding_signature().clone());
        s.uids.push(UidSummary {
            uid: ua.userid().value().to_vec(),
            created: binding
                .as_ref()
                .and_then(|b| b.signature_creation_time())
                .map(secs),
            expires: binding
                .as_ref()
                .and_then(|b| b.signature_expiration_time())
                .map(secs),
            revoked: match &valid {
                Some(v) => matches!(v.revocation_status(), RevocationStatus::Revoked(_)),
                None => ua.self_revocations().next().is_some(),
            },
        });
    }
    s
}

/// One signature line of `op=vindex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigLine {
    /// Which user id (index into `Summary::uids` order) it certifies.
    pub uid: usize,
    pub issuer: String,
    pub created: Option<u64>,
    pub typ: u8,
}

/// Signatures on user ids, for `op=vindex`.
pub fn vindex_sigs(cert: &Cert) -> Vec<SigLine> {
    let mut out = Vec::new();
    for (i, ua) in cert.userids().enumerate() {
        let all = ua
            .self_signatures()
            .chain(ua.certifications())
            .chain(ua.self_revocations())
            .chain(ua.other_revocations());
        for sig in all {
            out.push(SigLine {
                uid: i,
                issuer: sig
                    .get_issuers()
                    .first()
                    .map(|h| h.to_hex())
                    .unwrap_or_default(),
                created: sig.signature_creation_time().map(secs),
                typ: u8::from(sig.typ()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unicode_lowercase_and_bounded() {
        assert_eq!(
            words("Jane Doe (Work) <Jane.Doe@Example.org>"),
            ["jane", "doe", "work", "jane", "doe", "example", "org"]
        );
        assert_eq!(words("ÉMILE Zola"), ["émile", "zola"]);
        assert!(words("a b c").is_empty());
    }
}
