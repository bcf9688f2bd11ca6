//! Tests of the pure OpenPGP layer on generated keys and on Debian's real keyring.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use sequoia_openpgp::cert::prelude::*;
use sequoia_openpgp::packet::signature::SignatureBuilder;
use sequoia_openpgp::packet::UserID;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::SerializeInto;
use sequoia_openpgp::types::SignatureType;
use sequoia_openpgp::{Cert, Packet};

use super::*;

/// A fixed "now" so results do not depend on when the tests run.
pub(super) fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}

pub(super) fn gen(uid: &str) -> Cert {
    CertBuilder::general_purpose(Some(uid))
        .set_creation_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .generate()
        .unwrap()
        .0
}

/// The first self-signature of `c`'s first user id.
pub(super) fn first_binding(c: &Cert) -> sequoia_openpgp::packet::Signature {
    c.userids()
        .next()
        .unwrap()
        .self_signatures()
        .next()
        .unwrap()
        .clone()
}

pub(super) fn public(c: &Cert) -> Vec<u8> {
    c.to_vec().unwrap()
}

/// A signer with `cert`'s primary key (which must hold its secret).
fn primary_signer(cert: &Cert) -> sequoia_openpgp::crypto::KeyPair {
    cert.primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap()
}

/// `n` third-party certifications of `target`'s first user id, one second apart.
pub(super) fn flood(target: &Cert, n: usize) -> Cert {
    flood_at(target, (0..n as u64).map(|i| 1_700_000_100 + i))
}

/// Third-party certifications of `target`'s first user id made at each of `times` (seconds
/// since the epoch), by one signer.
pub(super) fn flood_at(target: &Cert, times: impl IntoIterator<Item = u64>) -> Cert {
    let signer = gen("Flooder <flood@example.org>");
    let mut keypair = primary_signer(&signer);
    let uid = target.userids().next().unwrap().userid().clone();
    let pk = target.primary_key().key();
    let mut sigs: Vec<Packet> = Vec::new();
    for t in times {
        let sig = SignatureBuilder::new(SignatureType::GenericCertification)
            .set_signature_creation_time(UNIX_EPOCH + Duration::from_secs(t))
            .unwrap()
            .sign_userid_binding(&mut keypair, pk, &uid)
            .unwrap();
        sigs.push(sig.into());
    }
    let (c, _) = target.clone().insert_packets(sigs).unwrap();
    Cert::from_bytes(&public(&c)).unwrap()
}

pub(super) fn third_party_count(c: &Cert) -> usize {
    c.userids().map(|u| u.certifications().count()).sum()
}

#[test]
fn secret_keys_are_refused_armored_and_binary() {
    let c = gen("Alice <alice@example.org>");
    let armored = c.as_tsk().armored().to_vec().unwrap();
    assert_eq!(
        parse_submission(&armored, &Limits::default()).unwrap_err(),
        PgpError::SecretKeyMaterial
    );
    let binary = c.as_tsk().to_vec().unwrap();
    assert_eq!(
        parse_submission(&binary, &Limits::default()).unwrap_err(),
        PgpError::SecretKeyMaterial
    );
    // A public cert followed by a secret one: the whole submission is refused.
    let mut both = gen("Bob <bob@example.org>").armored().to_vec().unwrap();
    both.extend(armored);
    assert_eq!(
        parse_submission(&both, &Limits::default()).unwrap_err(),
        PgpError::SecretKeyMaterial
    );
}

#[test]
fn several_armored_blocks_and_binary_keyrings_split_into_certs() {
    let (a, b) = (gen("A <a@example.org>"), gen("B <b@example.org>"));
    let mut text = a.armored().to_vec().unwrap();
    text.extend(b"\nsome text between\n");
    text.extend(b.armored().to_vec().unwrap());
    assert_eq!(
        parse_submission(&text, &Limits::default()).unwrap().len(),
        2
    );
    let mut bin = public(&a);
    bin.extend(public(&b));
    assert_eq!(parse_submission(&bin, &Limits::default()).unwrap().len(), 2);
}

/// Compressed-data packets are never decompressed: a certificate is never compressed, and a
/// decompression bomb (8 MB of bzip2 is terabytes) would otherwise burn CPU long after the
/// request timed out. Sequoia is built without its compression features, so such a packet
/// keeps an opaque body: here a zlib stream that is not even valid is not looked into, and the
/// packet is reported as what it is.
#[test]
fn compressed_data_is_never_decompressed() {
    use sequoia_openpgp::types::CompressionAlgorithm;
    for algo in [
        CompressionAlgorithm::Zip,
        CompressionAlgorithm::Zlib,
        CompressionAlgorithm::BZip2,
    ] {
        assert!(!algo.is_supported(), "{algo} would be decompressed");
    }
    // New-format tag 8, 6 bytes: algorithm 2 (zlib), then garbage.
    let body = [0xC8, 6, 2, 0x78, 0x9c, 0xff, 0xff, 0xff];
    let parsed = parse_submission(&body, &Limits::default());
    let text = format!("{parsed:?}");
    assert!(
        text.contains("not Compressed Data"),
        "reported as a stray compressed-data packet, not a decompression error: {text}"
    );
}

#[test]
fn truncated_armor_is_reported() {
    let text = gen("A <a@example.org>").armored().to_vec().unwrap();
    let cut = &text[..text.len() / 2];
    assert!(parse_submission(cut, &Limits::default()).is_err());
}

#[test]
fn a_user_id_with_a_forged_binding_is_dropped_and_not_indexed() {
    let c = gen("Alice <alice@example.org>");
    // Re-bind the signature of "Alice" to a user id she never signed.
    let good = first_binding(&c);
    let mut packets: Vec<Packet> = c.clone().into_packets().collect();
    packets.push(UserID::from("Mallory <mallory@example.org>").into());
    packets.push(good.into());
    let forged = Cert::from_packets(packets.into_iter()).unwrap();
    assert_eq!(forged.userids().count(), 2);
    let cleaned = clean(forged, &Limits::default(), t0()).unwrap();
    assert_eq!(cleaned.userids().count(), 1);
    let terms = index_terms(&cleaned);
    assert!(terms.emails.contains("alice@example.org"));
    assert!(!terms.emails.contains("mallory@example.org"));
}

#[test]
fn a_cert_without_any_valid_self_signature_is_rejected() {
    let c = gen("Alice <alice@example.org>");
    let packets: Vec<Packet> = c
        .into_packets()
        .filter(|p| !matches!(p, Packet::Signature(_)))
        .collect();
    let bare = Cert::from_packets(packets.into_iter()).unwrap();
    assert_eq!(
        clean(bare, &Limits::default(), t0()).unwrap_err(),
        PgpError::NoValidSelfSignature
    );
}

#[test]
fn flooding_defence_caps_drops_and_sheds_by_size() {
    let target = gen("Target <target@example.org>");
    let flooded = flood(&target, 3000);
    assert_eq!(third_party_count(&flooded), 3000);

    let cap = Limits {
        third_party: ThirdPartyPolicy::Cap(100),
        ..Limits::default()
    };
    let c = clean(flooded.clone(), &cap, t0()).unwrap();
    assert_eq!(third_party_count(&c), 100);
    // The newest are kept.
    let oldest_kept = c
        .userids()
        .flat_map(|u| u.certifications())
        .filter_map(|s| s.signature_creation_time())
        .min()
        .unwrap();
    assert_eq!(
        oldest_kept,
        UNIX_EPOCH + Duration::from_secs(1_700_000_100 + 2900)
    );

    let drop = Limits {
        third_party: ThirdPartyPolicy::Drop,
        ..Limits::default()
    };
    assert_eq!(
        third_party_count(&clean(flooded.clone(), &drop, t0()).unwrap()),
        0
    );

    // Keep everything, but the size cap sheds the oldest certifications first.
    let small = Limits {
        third_party: ThirdPartyPolicy::Keep,
        max_cert_bytes: 64 << 10,
        ..Limits::default()
    };
    let c = clean(flooded, &small, t0()).unwrap();
    let size = public(&c).len();
    assert!(size <= 64 << 10, "{size}");
    assert!(third_party_count(&c) > 100);
    assert_eq!(
        c.userids().next().unwrap().self_signatures().count(),
        1,
        "self-signature kept"
    );

    // Too big even without certifications: refused.
    let tiny = Limits {
        max_cert_bytes: 100,
        ..Limits::default()
    };
    assert!(matches!(
        clean(target, &tiny, t0()),
        Err(PgpError::TooLarge { .. })
    ));
}

#[test]
fn merge_is_union_and_keeps_revocations() {
    let c = gen("Alice <alice@example.org>");
    let rev = c.clone().insert_packets(
        // A self-revocation of the certificate.
        std::iter::once(Packet::from({
            let mut kp = primary_signer(&c);
            CertRevocationBuilder::new()
                .set_reason_for_revocation(
                    sequoia_openpgp::types::ReasonForRevocation::KeyCompromised,
                    b"test",
                )
                .unwrap()
                .build(&mut kp, &c, None)
                .unwrap()
        })),
    );
    let revoked = rev.unwrap().0;
    let base = public(&c);
    let with_rev = public(&revoked);
    let l = Limits::default();
    let MergeOutcome::Updated(_, m) =
        merge(Some(&base), Cert::from_bytes(&with_rev).unwrap(), &l).unwrap()
    else {
        panic!("revocation must update")
    };
    // Merging the old version back never drops the revocation.
    assert_eq!(
        merge(Some(&m), Cert::from_bytes(&base).unwrap(), &l).unwrap(),
        MergeOutcome::Unchanged
    );
    let s = summarize(&Cert::from_bytes(&m).unwrap(), t0());
    assert!(s.revoked);
}

/// The bytes of Debian's three keyrings (package `debian-keyring`).
pub(super) fn debian_keyrings() -> Vec<Vec<u8>> {
    [
        "debian-keyring.gpg",
        "debian-maintainers.gpg",
        "debian-nonupload.gpg",
    ]
    .iter()
    .map(|f| {
        std::fs::read(format!("/usr/share/keyrings/{f}"))
            .expect("debian-keyring is installed by scripts/deps.sh")
    })
    .collect()
}

/// Real certificates from Debian's keyring, split into parts for the merge properties.
fn debian_certs(max: usize) -> Vec<Cert> {
    let bytes = std::fs::read("/usr/share/keyrings/debian-keyring.gpg")
        .expect("debian-keyring is installed by scripts/deps.sh");
    sequoia_openpgp::cert::CertParser::from_bytes(&bytes)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|c| c.userids().count() >= 2 && c.keys().subkeys().count() >= 1)
        .take(max)
        .collect()
}

/// A partial view of `cert`: the primary key with its signatures plus the components
/// selected by `mask`, each with a selection of its signatures.
fn part(cert: &Cert, mask: u64, sig_mask: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut component = 0u32;
    let mut sig_no = 0u32;
    let mut keep = true;
    for p in cert.clone().into_packets() {
        match &p {
            Packet::PublicKey(_) => keep = true,
            Packet::UserID(_) | Packet::UserAttribute(_) | Packet::PublicSubkey(_) => {
                component += 1;
                keep = mask & (1 << (component % 64)) != 0;
            }
            Packet::Signature(s)
                if keep
                    && component > 0
                    && s.get_issuers()
                        .iter()
                        .all(|h| !h.aliases(cert.key_handle())) =>
            {
                sig_no += 1;
                if sig_mask & (1 << (sig_no % 64)) == 0 {
                    continue;
                }
            }
            _ => {}
        }
        if keep {
            out.push(p);
        }
    }
    Cert::from_packets(out.into_iter())
        .unwrap()
        .to_vec()
        .unwrap()
}

fn merged(a: &[u8], b: &[u8]) -> Vec<u8> {
    let b = Cert::from_bytes(b).unwrap();
    match merge(
        Some(a),
        b,
        &Limits {
            third_party: ThirdPartyPolicy::Keep,
            ..Limits::default()
        },
    )
    .unwrap()
    {
        MergeOutcome::Unchanged => a.to_vec(),
        MergeOutcome::Updated(_, m) | MergeOutcome::New(_, m) => m,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_idempotent_commutative_and_associative(
        which in 0usize..8, m1: u64, m2: u64, m3: u64, s1: u64, s2: u64, s3: u64,
    ) {
        static CERTS: std::sync::OnceLock<Vec<Cert>> = std::sync::OnceLock::new();
        let certs = CERTS.get_or_init(|| debian_certs(8));
        let cert = &certs[which % certs.len()];
        let (a, b, c) = (part(cert, m1, s1), part(cert, m2, s2), part(cert, m3, s3));
        prop_assert_eq!(merged(&a, &a), a.clone());
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }
}

/// Every certificate of Debian's keyrings ingests, or is rejected with a stated reason.
#[test]
fn debian_keyrings_ingest_or_are_rejected_with_a_reason() {
    let mut accepted = 0usize;
    let mut rejected = std::collections::BTreeMap::<String, usize>::new();
    for bytes in debian_keyrings() {
        for item in parse_submission(&bytes, &Limits::default()).unwrap() {
            match item {
                Parsed::Cert(c) => {
                    let fpr = c.fingerprint().as_bytes().to_vec();
                    match clean(c, &Limits::default(), t0()) {
                        Ok(clean) => {
                            let t = index_terms(&clean);
                            assert!(t.fingerprints.contains(&fpr));
                            assert!(t.keyids64.contains(&fpr[12..]));
                            assert!(t.keyids32.contains(&fpr[16..]));
                            let s = summarize(&clean, t0());
                            assert!(!s.uids.is_empty() || clean.userids().count() == 0);
                            accepted += 1;
                        }
                        Err(e) => *rejected.entry(e.to_string()).or_default() += 1,
                    }
                }
                Parsed::Unreadable(r) => {
                    assert!(!r.is_empty());
                    *rejected.entry(r).or_default() += 1
                }
            }
        }
    }
    eprintln!("accepted {accepted}, rejected {rejected:?}");
    assert!(rejected.keys().all(|r| !r.is_empty()));
    let total = accepted + rejected.values().sum::<usize>();
    assert!(
        accepted * 100 >= total * 95,
        "accepted {accepted} of {total}: {rejected:?}"
    );
}

/// Revoked user ids in Debian's keyring carry only a revocation; they must stay (and be
/// listed as revoked) so clients learn of the revocation.
#[test]
fn user_ids_with_only_a_self_revocation_are_kept_and_listed_revoked() {
    let c = gen("Alice <alice@example.org>");
    let uid = UserID::from("Old <old@example.org>");
    let mut kp = primary_signer(&c);
    let rev = UserIDRevocationBuilder::new()
        .set_reason_for_revocation(
            sequoia_openpgp::types::ReasonForRevocation::UIDRetired,
            b"gone",
        )
        .unwrap()
        .build(&mut kp, &c, &uid, None)
        .unwrap();
    let (with_rev, _) = c
        .insert_packets(vec![Packet::from(uid), rev.into()])
        .unwrap();
    let cleaned = clean(with_rev, &Limits::default(), t0()).unwrap();
    assert_eq!(cleaned.userids().count(), 2);
    assert!(index_terms(&cleaned).emails.contains("old@example.org"));
    let s = summarize(&cleaned, t0());
    let old = s.uids.iter().find(|u| u.uid.starts_with(b"Old")).unwrap();
    assert!(old.revoked);
    assert!(
        !s.uids
            .iter()
            .find(|u| u.uid.starts_with(b"Alice"))
            .unwrap()
            .revoked
    );
}

/// What `clean` produces is what merge keeps: the same upload sent again merges as
/// unchanged (no spurious update, no version bump). Real Debian certificates, whose old
/// self-signatures lack issuer-fingerprint subpackets, are the case that broke this once.
#[test]
fn a_cleaned_debian_certificate_merged_with_itself_is_unchanged() {
    let limits = Limits::default();
    let now = SystemTime::now();
    for cert in debian_certs(40) {
        let fpr = cert.fingerprint();
        let first = clean(cert.clone(), &limits, now).unwrap();
        let stored = first.to_vec().unwrap();
        let again = clean(
            Cert::from_bytes(&cert.to_vec().unwrap()).unwrap(),
            &limits,
            now,
        )
        .unwrap();
        assert!(
            matches!(
                merge(Some(&stored), again, &limits).unwrap(),
                MergeOutcome::Unchanged
            ),
            "{fpr}: a second upload of the same certificate changed it"
        );
    }
}

/// The policy judges algorithms at the time it is given (a command's time), not by the clock
/// of the node applying: MD5 signatures were acceptable in 1995 and are not later.
#[test]
fn the_policy_judges_algorithms_at_the_given_time_not_the_wall_clock() {
    use sequoia_openpgp::policy::{HashAlgoSecurity, Policy};
    use sequoia_openpgp::types::HashAlgorithm;
    let (cert, _) = CertBuilder::new()
        .set_creation_time(UNIX_EPOCH + Duration::from_secs(700_000_000))
        .add_signing_subkey()
        .generate()
        .unwrap();
    let mut signer = primary_signer(&cert);
    let sig = SignatureBuilder::new(SignatureType::Binary)
        .set_hash_algo(HashAlgorithm::MD5)
        .set_signature_creation_time(UNIX_EPOCH + Duration::from_secs(790_000_000))
        .unwrap()
        .sign_message(&mut signer, b"1995")
        .unwrap();
    let at = |year_secs: u64| policy_at(UNIX_EPOCH + Duration::from_secs(year_secs));
    let sec = HashAlgoSecurity::CollisionResistance;
    assert!(
        at(800_000_000).signature(&sig, sec).is_ok(),
        "1995: MD5 accepted"
    );
    assert!(
        at(1_700_000_000).signature(&sig, sec).is_err(),
        "2023: MD5 refused"
    );
    assert_eq!(
        policy_at(UNIX_EPOCH + Duration::from_secs(1_700_000_000)).time(),
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    );
}

/// A submission of more items than one command may number is refused as a whole, with a
/// one-line reason, before anything is proposed.
#[test]
fn a_submission_over_the_item_limit_is_refused() {
    let (cert, _) = CertBuilder::new()
        .add_userid("many <many@example.org>")
        .generate()
        .unwrap();
    let one = cert.to_vec().unwrap();
    let body = one.repeat(MAX_SUBMISSION_ITEMS + 1);
    let e = parse_submission(&body, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, PgpError::TooManyItems { count, limit }
            if count == MAX_SUBMISSION_ITEMS + 1 && limit == MAX_SUBMISSION_ITEMS),
        "{e}"
    );
    assert_eq!(e.to_string().lines().count(), 1);
    let body = one.repeat(3);
    assert_eq!(
        parse_submission(&body, &Limits::default()).unwrap().len(),
        3
    );
}
