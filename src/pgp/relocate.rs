//! Signatures found away from the component they belong to.
//!
//! Software that merges certificates carelessly (old keyservers, keyring tools appending
//! certifications at the end) leaves signatures after the wrong user id or after a subkey.
//! [`super::clean`] reads a submission in the order it came, so it finds these here and puts
//! each back where it belongs, the way sequoia's canonicalisation would:
//! - a self-signature where it verifies: the primary key, or a subkey, user id or user
//!   attribute of the same certificate;
//! - a third-party certification on the user id or attribute its digest prefix matches
//!   (nobody here holds the signer's key; this is sequoia's own heuristic).
//!
//! A signature that fits nowhere is dropped. The work is bounded: a forged submission cannot
//! make a node verify every signature against every component.
use std::collections::btree_map::{BTreeMap, Entry};

use sequoia_openpgp::crypto::hash::{Context, Hash as _};
use sequoia_openpgp::packet::{Signature, UserAttribute, UserID};
use sequoia_openpgp::types::SignatureType;
use sequoia_openpgp::Packet;

use super::clean::Primary;

/// Most verifications spent on out-of-place self-signatures (each is a public-key
/// operation).
const MAX_VERIFICATIONS: usize = 64;
/// Most digests computed for out-of-place third-party certifications (each hashes the
/// primary key and one user id: microseconds).
const MAX_DIGESTS: usize = 16_384;
/// Most hash states [`Digests`] keeps at once (a SHA-1 state with collision detection is
/// about 2.4 KB): a submission of many user ids each with a certification must not make it
/// hold one per user id. A component's signatures come together, so few are needed.
const MAX_PREFIXES: usize = 64;

/// A user id certification of any of the four kinds.
pub(super) fn is_certification(t: SignatureType) -> bool {
    use SignatureType::*;
    matches!(
        t,
        GenericCertification | PersonaCertification | CasualCertification | PositiveCertification
    )
}

/// Whether the digest of `sig` over (`pk`, `uid`) starts with the signature's digest prefix.
pub(super) fn fits_userid(sig: &Signature, pk: &Primary, uid: &UserID) -> bool {
    prefix_matches(sig, |s, ctx| s.hash_userid_binding(ctx, pk, uid))
}

/// Whether the digest of `sig` over (`pk`, `ua`) starts with the signature's digest prefix.
pub(super) fn fits_user_attribute(sig: &Signature, pk: &Primary, ua: &UserAttribute) -> bool {
    prefix_matches(sig, |s, ctx| s.hash_user_attribute_binding(ctx, pk, ua))
}

fn prefix_matches(
    sig: &Signature,
    hash: impl FnOnce(&Signature, &mut Context) -> anyhow::Result<()>,
) -> bool {
    let Ok(builder) = sig.hash_algo().context() else {
        return false;
    };
    let mut ctx = builder.for_signature(sig.version());
    if hash(sig, &mut ctx).is_err() {
        return false;
    }
    digest_starts_with_prefix(ctx, sig)
}

fn digest_starts_with_prefix(ctx: Context, sig: &Signature) -> bool {
    ctx.into_digest()
        .is_ok_and(|d| d.get(..2) == Some(&sig.digest_prefix()[..]))
}

/// The digest-prefix test of [`fits_userid`] and [`fits_user_attribute`] for the many
/// certifications of one certificate. Each digest hashes the primary key, the user id or
/// attribute, then the signature's own fields; the first two, about nine tenths of the bytes
/// for an RSA key, are the same for every certification of a component, so they are hashed
/// once per component, hash algorithm and signature version, and each signature hashes only
/// its own fields on a copy of that state. v6 signatures hash a salt of their own first and
/// take the long way.
pub(super) struct Digests<'a> {
    pk: &'a Primary,
    /// (component's position, hash algorithm, signature version) → the state after hashing
    /// the primary key and the component.
    prefixes: BTreeMap<(usize, u8, u8), Context>,
}

impl<'a> Digests<'a> {
    pub(super) fn new(pk: &'a Primary) -> Self {
        Digests {
            pk,
            prefixes: BTreeMap::new(),
        }
    }

    /// The primary key the digests are over.
    pub(super) fn primary(&self) -> &'a Primary {
        self.pk
    }

    /// Whether `sig`, a certification or certification revocation, fits `component` (a user
    /// id or attribute; `at` tells components apart) by its digest prefix. The same answer as
    /// [`fits_userid`] and [`fits_user_attribute`].
    pub(super) fn fits(&mut self, sig: &Signature, at: usize, component: &Packet) -> bool {
        let typ = sig.typ();
        if !(is_certification(typ) || typ == SignatureType::CertificationRevocation) {
            return false;
        }
        if sig.version() >= 6 {
            return match component {
                Packet::UserID(u) => fits_userid(sig, self.pk, u),
                Packet::UserAttribute(ua) => fits_user_attribute(sig, self.pk, ua),
                _ => false,
            };
        }
        let memo = (at, u8::from(sig.hash_algo()), sig.version());
        if self.prefixes.len() >= MAX_PREFIXES && !self.prefixes.contains_key(&memo) {
            self.prefixes.clear();
        }
        let mut ctx = match self.prefixes.entry(memo) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                let Ok(builder) = sig.hash_algo().context() else {
                    return false;
                };
                let mut ctx = builder.for_signature(sig.version());
                let hashed = self.pk.hash(&mut ctx).and_then(|()| match component {
                    Packet::UserID(u) => u.hash(&mut ctx),
                    Packet::UserAttribute(ua) => ua.hash(&mut ctx),
                    _ => Err(anyhow::anyhow!("not a user id or attribute")),
                });
                if hashed.is_err() {
                    return false;
                }
                e.insert(ctx).clone()
            }
        };
        if sig.hash(&mut ctx).is_err() {
            return false;
        }
        digest_starts_with_prefix(ctx, sig)
    }
}

/// `kept` (primary key first) with each of `misplaced` (a signature, and whether it claims
/// to be made by the primary key) placed after the component it belongs to, or dropped.
pub(super) fn relocate(
    misplaced: Vec<(Signature, bool)>,
    kept: Vec<Packet>,
    pk: &Primary,
) -> Vec<Packet> {
    if misplaced.is_empty() {
        return kept;
    }
    let mut verifications = 0usize;
    let mut digests = 0usize;
    let mut prefixes = Digests::new(pk);
    // For each kept packet, the signatures to put right after it.
    let mut after: Vec<Vec<Packet>> = vec![Vec::new(); kept.len()];
    for (sig, by_primary) in misplaced {
        let home = if by_primary {
            self_signature_home(&sig, &kept, pk, &mut verifications)
        } else {
            kept.iter().enumerate().position(|(at, p)| {
                if digests >= MAX_DIGESTS
                    || !matches!(p, Packet::UserID(_) | Packet::UserAttribute(_))
                {
                    return false;
                }
                digests += 1;
                prefixes.fits(&sig, at, p)
            })
        };
        if let Some(i) = home {
            after[i].push(Packet::Signature(sig));
        }
    }
    let mut out = Vec::with_capacity(kept.len());
    for (p, sigs) in kept.into_iter().zip(after) {
        out.push(p);
        out.extend(sigs);
    }
    out
}

/// The position in `kept` of the component `sig` verifies on, within the budget.
fn self_signature_home(
    sig: &Signature,
    kept: &[Packet],
    pk: &Primary,
    verifications: &mut usize,
) -> Option<usize> {
    use SignatureType::*;
    let typ = sig.typ();
    kept.iter().position(|p| {
        if *verifications >= MAX_VERIFICATIONS {
            return false;
        }
        let applies = match (p, typ) {
            (Packet::PublicKey(_), DirectKey | KeyRevocation) => true,
            (Packet::PublicSubkey(_), SubkeyBinding | SubkeyRevocation) => true,
            (Packet::UserID(_) | Packet::UserAttribute(_), t) => {
                is_certification(t) || t == CertificationRevocation
            }
            _ => false,
        };
        if !applies {
            return false;
        }
        *verifications += 1;
        match (p, typ) {
            (Packet::PublicKey(_), DirectKey) => sig.verify_direct_key(pk, pk).is_ok(),
            (Packet::PublicKey(_), _) => sig.verify_primary_key_revocation(pk, pk).is_ok(),
            (Packet::PublicSubkey(k), SubkeyBinding) => {
                sig.verify_subkey_binding(pk, pk, k).is_ok()
            }
            (Packet::PublicSubkey(k), _) => sig.verify_subkey_revocation(pk, pk, k).is_ok(),
            (Packet::UserID(u), CertificationRevocation) => {
                sig.verify_userid_revocation(pk, pk, u).is_ok()
            }
            (Packet::UserID(u), _) => sig.verify_userid_binding(pk, pk, u).is_ok(),
            (Packet::UserAttribute(ua), CertificationRevocation) => {
                sig.verify_user_attribute_revocation(pk, pk, ua).is_ok()
            }
            (Packet::UserAttribute(ua), _) => sig.verify_user_attribute_binding(pk, pk, ua).is_ok(),
            _ => false,
        }
    })
}

#[cfg(test)]
#[path = "relocate_tests.rs"]
mod tests;
