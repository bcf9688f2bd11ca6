//! Cleaning: the one function every certificate goes through before it is proposed.
//!
//! 1. Drop packets that are not part of a public certificate (unknown packets, trust
//!    packets, markers) and optional packets over the packet cap.
//! 2. Verify every self-signature against its component; drop those that do not verify,
//!    and drop user ids, attributes and subkeys left without a valid self-signature.
//! 3. Apply the flooding defence ([`shed`]): third-party certifications by policy, then the
//!    certificate size cap, shedding the oldest third-party certifications first. Never a
//!    self-signature or a revocation.
//! 4. Require a valid self-signed user id or a direct-key signature under [`super::policy_at`].
use std::time::SystemTime;

use sequoia_openpgp::crypto::mpi;
use sequoia_openpgp::packet::key::{PrimaryRole, PublicParts};
use sequoia_openpgp::packet::{Key, Signature};
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::types::SignatureType;
use sequoia_openpgp::{Cert, KeyHandle, Packet};

use super::parse::{one_line, RawCert};
use super::relocate::{is_certification, relocate, Digests};
use super::{policy_at, Limits, PgpError, ThirdPartyPolicy};

pub(super) type Primary = Key<PublicParts, PrimaryRole>;

/// Clean an incoming certificate (see the module docs). `time` is the proposer's time.
pub fn clean(
    cert: impl Into<RawCert>,
    limits: &Limits,
    time: SystemTime,
) -> Result<Cert, PgpError> {
    let packets = cert.into().into_packets();
    let primary: Primary = match packets.first() {
        Some(Packet::PublicKey(k)) => k.clone(),
        _ => {
            return Err(PgpError::Invalid(
                "a certificate starts with a public key".into(),
            ))
        }
    };
    let handle = KeyHandle::from(primary.fingerprint());
    // The packets come as submitted: each is checked against the component it follows, and
    // the certificate is built once from what is kept. Building it after the self-signatures
    // were verified also matters for the result: verification adds the issuer subpackets they
    // lack, and only that form is a fixed point of merge (storing the form parsed before
    // verification made the same upload, sent again, count as an update).
    let on = components(&packets, limits);
    let verdicts = verdicts(&packets, &on, &primary, &handle, limits);
    let mut kept = Vec::with_capacity(packets.len());
    let mut misplaced = Vec::new();
    for (packet, verdict) in packets.into_iter().zip(verdicts) {
        match (verdict, packet) {
            (Verdict::Keep, p) => kept.push(p),
            (Verdict::Elsewhere, Packet::Signature(sig)) => {
                let by_primary = claims_primary(&sig, &handle);
                misplaced.push((sig, by_primary));
            }
            _ => {}
        }
    }
    let kept = relocate(misplaced, kept, &primary);
    let kept = prune_certifications(kept, &handle, limits);
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

/// What happens to one packet of a submission.
enum Verdict {
    Keep,
    Drop,
    /// A signature that does not belong to the component it follows; perhaps to another
    /// one ([`relocate`]).
    Elsewhere,
}

fn claims_primary(sig: &Signature, primary: &KeyHandle) -> bool {
    let issuers = sig.get_issuers();
    issuers.is_empty() || issuers.iter().any(|h| h.aliases(primary))
}

/// For each packet, the position of the component it follows (a key, user id or user
/// attribute; `None` when that component is dropped: a user attribute over the packet cap).
fn components(packets: &[Packet], limits: &Limits) -> Vec<Option<usize>> {
    let mut current = Some(0);
    packets
        .iter()
        .enumerate()
        .map(|(i, p)| {
            match p {
                Packet::PublicKey(_) | Packet::PublicSubkey(_) | Packet::UserID(_) => {
                    current = Some(i)
                }
                Packet::UserAttribute(ua) => {
                    current = (ua.value().len() <= limits.max_packet_bytes as usize).then_some(i)
                }
                _ => {}
            }
            current
        })
        .collect()
}

/// The verdict on every packet: components are kept (unless dropped), signatures checked
/// against the component they follow, everything else dropped.
fn verdicts(
    packets: &[Packet],
    on: &[Option<usize>],
    pk: &Primary,
    handle: &KeyHandle,
    limits: &Limits,
) -> Vec<Verdict> {
    let mut digests = Digests::new(pk);
    packets
        .iter()
        .zip(on)
        .enumerate()
        .map(|(i, (p, on))| match p {
            Packet::PublicKey(_) | Packet::PublicSubkey(_) | Packet::UserID(_) => Verdict::Keep,
            Packet::UserAttribute(_) if *on == Some(i) => Verdict::Keep,
            Packet::Signature(sig) => match on {
                Some(c) => keep_signature(sig, (*c, &packets[*c]), &mut digests, handle, limits),
                None => Verdict::Drop,
            },
            _ => Verdict::Drop,
        })
        .collect()
}

/// The verdict on `sig`, which follows the component `on` (its position and packet).
fn keep_signature(
    sig: &Signature,
    (at, on): (usize, &Packet),
    digests: &mut Digests,
    handle: &KeyHandle,
    limits: &Limits,
) -> Verdict {
    let pk = digests.primary();
    use SignatureType::*;
    if !claims_primary(sig, handle) {
        // Third-party: certifications and revocations on user ids and attributes, and
        // revocations of the key by a designated revoker. Flood control happens in `shed`.
        // Nobody here holds the signer's key, so where a certification belongs is judged by
        // its digest prefix, as sequoia does.
        let is_revocation = matches!(sig.typ(), KeyRevocation | CertificationRevocation);
        if !is_revocation && sig.serialized_len() > limits.max_packet_bytes as usize {
            return Verdict::Drop;
        }
        let on_user = is_certification(sig.typ()) || sig.typ() == CertificationRevocation;
        return match on {
            Packet::UserID(_) | Packet::UserAttribute(_)
                if on_user && digests.fits(sig, at, on) =>
            {
                Verdict::Keep
            }
            Packet::PublicKey(_) if sig.typ() == KeyRevocation => Verdict::Keep,
            _ if on_user => Verdict::Elsewhere,
            _ => Verdict::Drop,
        };
    }
    let verified = match (on, sig.typ()) {
        (Packet::PublicKey(_), DirectKey) => sig.verify_direct_key(pk, pk),
        (Packet::PublicKey(_), KeyRevocation) => sig.verify_primary_key_revocation(pk, pk),
        (Packet::PublicSubkey(k), SubkeyBinding) => sig.verify_subkey_binding(pk, pk, k),
        (Packet::PublicSubkey(k), SubkeyRevocation) => sig.verify_subkey_revocation(pk, pk, k),
        (
            Packet::UserID(u),
            GenericCertification
            | PersonaCertification
            | CasualCertification
            | PositiveCertification,
        ) => sig.verify_userid_binding(pk, pk, u),
        (Packet::UserID(u), CertificationRevocation) => sig.verify_userid_revocation(pk, pk, u),
        (
            Packet::UserAttribute(ua),
            GenericCertification
            | PersonaCertification
            | CasualCertification
            | PositiveCertification,
        ) => sig.verify_user_attribute_binding(pk, pk, ua),
        (Packet::UserAttribute(ua), CertificationRevocation) => {
            sig.verify_user_attribute_revocation(pk, pk, ua)
        }
        _ => return Verdict::Elsewhere,
    };
    if verified.is_ok() {
        Verdict::Keep
    } else {
        Verdict::Elsewhere
    }
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

/// Drop the third-party certifications that [`shed`] is sure to drop, before the
/// certificate is built: under a cap of N per user id, those with at least N distinct
/// certifications made strictly later on the same user id or attribute. Sequoia then hashes
/// fewer signatures, and a flooded certificate is built once instead of twice. Which of the
/// rest go (ties at the cap, the size cap) is still for `shed` to decide on the canonical
/// form, so the result is the same: signatures count as distinct by creation time and value
/// only (copies sequoia merges agree on both, as they agree on all they sign), which never
/// counts more than sequoia keeps, and a user id sent twice is counted per copy, which never
/// counts more than the merged user id holds.
fn prune_certifications(packets: Vec<Packet>, handle: &KeyHandle, limits: &Limits) -> Vec<Packet> {
    let cap = match limits.third_party {
        ThirdPartyPolicy::Keep => return packets,
        ThirdPartyPolicy::Drop => 0,
        ThirdPartyPolicy::Cap(n) => n as usize,
    };
    // Most certificates have no component with more than `cap` signatures of any kind.
    let mut on_component = 0usize;
    let over_cap = packets.iter().any(|p| {
        on_component = match p {
            Packet::Signature(_) => on_component + 1,
            _ => 0,
        };
        on_component > cap
    });
    if !over_cap {
        return packets;
    }
    let certifications = third_party(&packets, handle);
    let mut drop = vec![false; packets.len()];
    for on_one in certifications.chunk_by(|a, b| a.component == b.component) {
        if on_one.len() <= cap {
            continue;
        }
        // One creation time per distinct (creation time, signature value), newest first:
        // copies sequoia merges share both, so they count once.
        let mut distinct: Vec<(SystemTime, &mpi::Signature)> = on_one
            .iter()
            .filter_map(|c| match &packets[c.position] {
                Packet::Signature(sig) => Some((c.created, sig.mpis())),
                _ => None,
            })
            .collect();
        distinct.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        distinct.dedup();
        let newest: Vec<SystemTime> = distinct.into_iter().map(|(t, _)| t).collect();
        for c in on_one {
            if newest.partition_point(|t| *t > c.created) >= cap {
                drop[c.position] = true;
            }
        }
    }
    without_dropped(packets, drop).collect()
}

/// The packets whose `drop` flag is false, in order.
pub(super) fn without_dropped(
    packets: Vec<Packet>,
    drop: Vec<bool>,
) -> impl Iterator<Item = Packet> {
    packets
        .into_iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(p, _)| p)
}

/// The flooding defence, applied at ingestion and after every merge. Deterministic: the
/// canonical packet order breaks ties between certifications made at the same second.
///
/// Most certificates are within the limits; [`within_limits`] finds that by reading the
/// certificate in place, and only the others are taken apart into packets.
pub fn shed(cert: Cert, limits: &Limits) -> Result<Cert, PgpError> {
    if within_limits(&cert, limits) {
        return Ok(cert);
    }
    let handle = KeyHandle::from(cert.fingerprint());
    let packets: Vec<Packet> = cert.into_packets().collect();
    let drop = to_shed(&packets, &handle, limits)?;
    Cert::from_packets(without_dropped(packets, drop)).map_err(|e| PgpError::Invalid(one_line(&e)))
}

/// True when [`to_shed`] would drop nothing from `cert`'s packets: no user id or attribute
/// carries more third-party certifications than the policy allows, and the whole is within
/// the size cap. It counts the same signatures `third_party` finds in the packets (sequoia
/// files a signature under `certifications` by the same issuer test as `claims_primary`).
/// A certificate holding signatures sequoia could not place says false: the packet path
/// decides those.
fn within_limits(cert: &Cert, limits: &Limits) -> bool {
    if cert.bad_signatures().next().is_some() {
        return false;
    }
    let over_cap = |n: usize| match limits.third_party {
        ThirdPartyPolicy::Keep => false,
        ThirdPartyPolicy::Drop => n > 0,
        ThirdPartyPolicy::Cap(cap) => n > cap as usize,
    };
    let third = |sigs: &mut dyn Iterator<Item = &Signature>| {
        sigs.filter(|s| is_certification(s.typ())).count()
    };
    if cert
        .userids()
        .any(|u| over_cap(third(&mut u.certifications())))
        || cert
            .user_attributes()
            .any(|u| over_cap(third(&mut u.certifications())))
    {
        return false;
    }
    cert.serialized_len() <= limits.max_cert_bytes as usize
}

/// Which of `packets` (a certificate's, in canonical order) the flooding defence drops.
fn to_shed(packets: &[Packet], handle: &KeyHandle, limits: &Limits) -> Result<Vec<bool>, PgpError> {
    let mut certs = third_party(packets, handle);
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
    Ok(drop)
}

fn check_valid(cert: &Cert, time: SystemTime) -> Result<(), PgpError> {
    let policy = policy_at(time);
    let vc = cert
        .with_policy(&policy, time)
        .map_err(|_| PgpError::NoValidSelfSignature)?;
    if vc.userids().next().is_some() || vc.direct_key_signature().is_ok() {
        Ok(())
    } else {
        Err(PgpError::NoValidSelfSignature)
    }
}

#[cfg(test)]
#[path = "clean_tests.rs"]
mod tests;
