//! Cleaning: the one function every certificate goes through before it is proposed.
//!
//! 1. Drop packets that are not part of a public certificate (unknown packets, trust
//!    packets, markers) and optional packets over the packet cap.
//! 2. Verify every self-signature against its component; drop those that do not verify,
//!    and drop user ids, attributes and subkeys left without a valid self-signature.
//! 3. Apply the flooding defence ([`shed`]): third-party certifications by policy, then the
//!    certificate size cap, shedding the oldest third-party certifications first. Never a
//!    self-signature or a revocation.
//! 4. Require a valid self-signed user id or a direct-key signature under [`super::POLICY`].
use std::time::SystemTime;

use sequoia_openpgp::packet::key::{PrimaryRole, PublicParts, SubordinateRole};
use sequoia_openpgp::packet::{Key, Signature, UserAttribute, UserID};
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::types::SignatureType;
use sequoia_openpgp::{Cert, KeyHandle, Packet};

use super::parse::one_line;
use super::{Limits, PgpError, ThirdPartyPolicy, POLICY};

type Primary = Key<PublicParts, PrimaryRole>;
type Subkey = Key<PublicParts, SubordinateRole>;

/// The component a signature packet follows in the canonical packet order.
enum Component {
    Primary,
    Subkey(Subkey),
    UserId(UserID),
    UserAttribute(UserAttribute),
    Dropped,
}

/// Clean an incoming certificate (see the module docs). `time` is the proposer's time.
pub fn clean(cert: Cert, limits: &Limits, time: SystemTime) -> Result<Cert, PgpError> {
    let primary: Primary = cert.primary_key().key().clone();
    let primary_handle = KeyHandle::from(primary.fingerprint());
    // The certificate is always rebuilt from the kept packets, even when none was dropped:
    // canonicalising after the self-signatures were verified adds the issuer subpackets they
    // lack, and only that form is a fixed point of merge (storing the first parse made the
    // same upload, sent again, count as an update). It costs about as much as the parse.
    let mut kept = Vec::new();
    let mut current = Component::Primary;
    for packet in cert.into_packets() {
        let keep = match &packet {
            Packet::PublicKey(_) => {
                current = Component::Primary;
                true
            }
            Packet::PublicSubkey(k) => {
                current = Component::Subkey(k.clone());
                true
            }
            Packet::UserID(u) => {
                current = Component::UserId(u.clone());
                true
            }
            Packet::UserAttribute(ua) => {
                if ua.value().len() > limits.max_packet_bytes as usize {
                    current = Component::Dropped;
                    false
                } else {
                    current = Component::UserAttribute(ua.clone());
                    true
                }
            }
            Packet::Signature(sig) => {
                keep_signature(sig, &current, &primary, &primary_handle, limits)
            }
            _ => false,
        };
        if keep {
            kept.push(packet);
        }
    }
    let cert = Cert::from_packets(kept.into_iter()).map_err(|e| PgpError::Invalid(one_line(&e)))?;
    // A component without a verified self-signature is unbound: drop it, so nobody can
    // make a key findable under a user id its owner never signed. One that only carries
    // a verified self-revocation stays: clients must learn it is revoked.
    let cert = cert
        .retain_userids(|ua| {
            ua.self_signatures().next().is_some() || ua.self_revocations().next().is_some()
        })
        .retain_user_attributes(|ua| {
            ua.self_signatures().next().is_some() || ua.self_revocations().next().is_some()
        })
        .retain_subkeys(|ka| ka.self_signatures().next().is_some());
    let cert = shed(cert, limits)?;
    check_valid(&cert, time)?;
    Ok(cert)
}

fn claims_primary(sig: &Signature, primary: &KeyHandle) -> bool {
    let issuers = sig.get_issuers();
    issuers.is_empty() || issuers.iter().any(|h| h.aliases(primary))
}

fn keep_signature(
    sig: &Signature,
    on: &Component,
    pk: &Primary,
    handle: &KeyHandle,
    limits: &Limits,
) -> bool {
    use SignatureType::*;
    if !claims_primary(sig, handle) {
        // Third-party: certifications and revocations on user ids and attributes, and
        // revocations of the key by a designated revoker. Flood control happens in `shed`.
        let allowed = match on {
            Component::UserId(_) | Component::UserAttribute(_) => matches!(
                sig.typ(),
                GenericCertification
                    | PersonaCertification
                    | CasualCertification
                    | PositiveCertification
                    | CertificationRevocation
            ),
            Component::Primary => sig.typ() == KeyRevocation,
            _ => false,
        };
        let is_revocation = matches!(sig.typ(), KeyRevocation | CertificationRevocation);
        let size = sig.serialized_len();
        return allowed && (is_revocation || size <= limits.max_packet_bytes as usize);
    }
    let verified = match (on, sig.typ()) {
        (Component::Primary, DirectKey) => sig.verify_direct_key(pk, pk),
        (Component::Primary, KeyRevocation) => sig.verify_primary_key_revocation(pk, pk),
        (Component::Subkey(k), SubkeyBinding) => sig.verify_subkey_binding(pk, pk, k),
        (Component::Subkey(k), SubkeyRevocation) => sig.verify_subkey_revocation(pk, pk, k),
        (
            Component::UserId(u),
            GenericCertification
            | PersonaCertification
            | CasualCertification
            | PositiveCertification,
        ) => sig.verify_userid_binding(pk, pk, u),
        (Component::UserId(u), CertificationRevocation) => sig.verify_userid_revocation(pk, pk, u),
        (
            Component::UserAttribute(ua),
            GenericCertification
            | PersonaCertification
            | CasualCertification
            | PositiveCertification,
        ) => sig.verify_user_attribute_binding(pk, pk, ua),
        (Component::UserAttribute(ua), CertificationRevocation) => {
            sig.verify_user_attribute_revocation(pk, pk, ua)
        }
        _ => return false,
    };
    verified.is_ok()
}

/// A third-party certification found by [`third_party`]: which component, when, how big.
struct Certification {
    component: usize,
    position: usize,
    created: SystemTime,
    size: usize,
}

/// Positions of third-party certifications (not revocations) in the packet list.
fn third_party(packets: &[Packet], handle: &KeyHandle) -> Vec<Certification> {
    use SignatureType::*;
    let mut out = Vec::new();
    let mut component = 0usize;
    let mut on_user = false;
    for (position, p) in packets.iter().enumerate() {
        match p {
            Packet::UserID(_) | Packet::UserAttribute(_) => {
                component += 1;
                on_user = true;
            }
            Packet::PublicKey(_) | Packet::PublicSubkey(_) => {
                component += 1;
                on_user = false;
            }
            Packet::Signature(sig)
                if on_user
                    && !claims_primary(sig, handle)
                    && matches!(
                        sig.typ(),
                        GenericCertification
                            | PersonaCertification
                            | CasualCertification
                            | PositiveCertification
                    ) =>
            {
                out.push(Certification {
                    component,
                    position,
                    created: sig
                        .signature_creation_time()
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    size: sig.serialized_len(),
                });
            }
            _ => {}
        }
    }
    out
}

/// The flooding defence, applied at ingestion and after every merge. Deterministic: the
/// canonical packet order breaks ties between certifications made at the same second.
pub fn shed(cert: Cert, limits: &Limits) -> Result<Cert, PgpError> {
    let handle = KeyHandle::from(cert.fingerprint());
    let packets: Vec<Packet> = cert.clone().into_packets().collect();
    let mut certs = third_party(&packets, &handle);
    let mut drop = vec![false; packets.len()];
    match limits.third_party {
        ThirdPartyPolicy::Keep => {}
        ThirdPartyPolicy::Drop => certs.iter().for_each(|c| drop[c.position] = true),
        ThirdPartyPolicy::Cap(n) => {
            // Newest first within each component; drop beyond n.
            let mut sorted: Vec<&Certification> = certs.iter().collect();
            sorted.sort_by(|a, b| {
                a.component
                    .cmp(&b.component)
                    .then(b.created.cmp(&a.created))
                    .then(a.position.cmp(&b.position))
            });
            let mut seen = (usize::MAX, 0u32);
            for c in sorted {
                if seen.0 != c.component {
                    seen = (c.component, 0);
                }
                seen.1 += 1;
                if seen.1 > n {
                    drop[c.position] = true;
                }
            }
        }
    }
    certs.retain(|c| !drop[c.position]);
    let total: usize = packets
        .iter()
        .zip(&drop)
        .filter(|(_, d)| !**d)
        .map(|(p, _)| p.serialized_len())
        .sum();
    let limit = limits.max_cert_bytes as usize;
    if total > limit {
        // Oldest first, across all user ids.
        certs.sort_by(|a, b| a.created.cmp(&b.created).then(a.position.cmp(&b.position)));
        let mut size = total;
        for c in &certs {
            if size <= limit {
                break;
            }
            drop[c.position] = true;
            size -= c.size;
        }
        if size > limit {
            return Err(PgpError::TooLarge { size, limit });
        }
    }
    if !drop.iter().any(|d| *d) {
        return Ok(cert);
    }
    let kept = packets
        .into_iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(p, _)| p);
    Cert::from_packets(kept).map_err(|e| PgpError::Invalid(one_line(&e)))
}

fn check_valid(cert: &Cert, time: SystemTime) -> Result<(), PgpError> {
    let vc = cert
        .with_policy(&*POLICY, time)
        .map_err(|_| PgpError::NoValidSelfSignature)?;
    if vc.userids().next().is_some() || vc.direct_key_signature().is_ok() {
        Ok(())
    } else {
        Err(PgpError::NoValidSelfSignature)
    }
}
