//! Out-of-place signatures: put back where they belong, or dropped; and the one-pass clean
//! gives what canonicalising first gave, on every certificate of Debian's keyrings.
use sequoia_openpgp::packet::{Tag, UserID};
use sequoia_openpgp::serialize::SerializeInto;
use sequoia_openpgp::types::SignatureType;
use sequoia_openpgp::Packet;

use super::super::tests::{debian_keyrings, first_binding, flood, gen, t0, third_party_count};
use super::super::{clean, parse_submission, Limits, Parsed, RawCert};

/// The certificate of `packets`, as a submission of their serialization.
fn raw(packets: &[Packet]) -> RawCert {
    let bin: Vec<u8> = packets.iter().flat_map(|p| p.to_vec().unwrap()).collect();
    match parse_submission(&bin, &Limits::default())
        .unwrap()
        .remove(0)
    {
        Parsed::Cert(raw) => raw,
        Parsed::Unreadable(why) => panic!("{why}"),
    }
}

fn cleaned_bytes(raw: impl Into<RawCert>) -> Vec<u8> {
    clean(raw, &Limits::default(), t0())
        .unwrap()
        .to_vec()
        .unwrap()
}

#[test]
fn self_and_third_party_signatures_out_of_place_are_put_back() {
    let c = flood(&gen("Alice <alice@example.org>"), 3);
    let expected = cleaned_bytes(c.clone());
    assert_eq!(
        third_party_count(&clean(c.clone(), &Limits::default(), t0()).unwrap()),
        3
    );
    // Move the user id's self-signature and its certifications behind the subkeys, where
    // careless tools append them.
    let packets: Vec<Packet> = c.into_packets().collect();
    let uid_at = packets.iter().position(|p| p.tag() == Tag::UserID).unwrap();
    let (mut head, mut moved) = (Vec::new(), Vec::new());
    let mut on_uid = false;
    for (i, p) in packets.into_iter().enumerate() {
        match p.tag() {
            Tag::UserID | Tag::PublicKey | Tag::PublicSubkey => {
                on_uid = i == uid_at;
                head.push(p);
            }
            Tag::Signature if on_uid => moved.push(p),
            _ => head.push(p),
        }
    }
    assert_eq!(
        moved.len(),
        4,
        "one self-signature and three certifications moved"
    );
    head.extend(moved);
    assert_eq!(cleaned_bytes(raw(&head)), expected);
}

#[test]
fn a_signature_that_fits_no_component_is_dropped_with_the_user_id_it_came_with() {
    let c = gen("Alice <alice@example.org>");
    let foreign = first_binding(&gen("Mallory <mallory@example.org>"));
    // Mallory's own binding, claimed for Alice's key: it carries Mallory's issuer, so it
    // reads as a third-party certification whose digest fits no user id of Alice's.
    let mut packets: Vec<Packet> = c.clone().into_packets().collect();
    packets.push(UserID::from("Mallory <mallory@example.org>").into());
    packets.push(foreign.into());
    let cleaned = clean(raw(&packets), &Limits::default(), t0()).unwrap();
    assert_eq!(cleaned.userids().count(), 1);
    assert_eq!(cleaned.to_vec().unwrap(), cleaned_bytes(c));
    assert!(cleaned.userids().all(|u| u
        .self_signatures()
        .all(|s| s.typ() == SignatureType::PositiveCertification)));
}

/// Cleaning in one pass over the packets as they came gives the same bytes as canonicalising
/// first and cleaning that (what keyraft did before, at twice the parse cost).
#[test]
fn one_pass_clean_equals_canonicalise_then_clean_on_debian_keyrings() {
    let mut compared = 0;
    for bytes in debian_keyrings() {
        for item in parse_submission(&bytes, &Limits::default()).unwrap() {
            let Parsed::Cert(raw) = item else { continue };
            let fpr = raw.fingerprint();
            let one_pass =
                clean(raw.clone(), &Limits::default(), t0()).map(|c| c.to_vec().unwrap());
            let canonical_first = raw
                .into_cert()
                .and_then(|c| clean(c, &Limits::default(), t0()))
                .map(|c| c.to_vec().unwrap());
            assert_eq!(one_pass, canonical_first, "{fpr}");
            compared += 1;
        }
    }
    assert!(compared > 1000, "compared {compared} certificates");
}

/// The shared-prefix digest test answers as the one that hashes everything, for every
/// certification of Debian's certificates against its own user id and against the next one.
#[test]
fn digests_with_a_shared_prefix_fit_where_full_digests_fit() {
    use super::{fits_userid, Digests};
    let (mut fits, mut misfits) = (0, 0);
    for bytes in debian_keyrings().into_iter().take(1) {
        for item in parse_submission(&bytes, &Limits::default()).unwrap() {
            let Parsed::Cert(raw) = item else { continue };
            let Ok(cert) = raw.into_cert() else { continue };
            let pk = cert.primary_key().key().clone();
            let mut digests = Digests::new(&pk);
            let uids: Vec<Packet> = cert.userids().map(|u| u.userid().clone().into()).collect();
            for (i, u) in cert.userids().enumerate() {
                for sig in u.certifications().chain(u.self_signatures()) {
                    for at in [i, (i + 1) % uids.len()] {
                        let Packet::UserID(uid) = &uids[at] else {
                            unreachable!()
                        };
                        let full = fits_userid(sig, &pk, uid);
                        assert_eq!(
                            digests.fits(sig, at, &uids[at]),
                            full,
                            "{}",
                            cert.fingerprint()
                        );
                        if full {
                            fits += 1
                        } else {
                            misfits += 1
                        }
                    }
                }
            }
        }
    }
    assert!(
        fits > 10_000 && misfits > 5_000,
        "{fits} fit, {misfits} do not"
    );
}

/// A submission of many user ids, each with a certification, does not make the digest cache
/// hold a hash state per user id.
#[test]
fn the_digest_cache_is_bounded() {
    use super::{Digests, MAX_PREFIXES};
    let c = flood(&gen("Alice <alice@example.org>"), 1);
    let pk = c.primary_key().key().clone();
    let sig = c
        .userids()
        .next()
        .unwrap()
        .certifications()
        .next()
        .unwrap()
        .clone();
    let uid: Packet = c.userids().next().unwrap().userid().clone().into();
    let mut digests = Digests::new(&pk);
    for at in 0..10 * MAX_PREFIXES {
        assert!(digests.fits(&sig, at, &uid));
        assert!(digests.prefixes.len() <= MAX_PREFIXES);
    }
}
