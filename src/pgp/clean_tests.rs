//! The flooding defence's shortcuts, on every certificate of Debian's keyrings and under
//! limits that do and do not bite: [`super::within_limits`] says "nothing to shed" exactly
//! when the packet path would drop nothing, and pruning before the certificate is built
//! ([`super::prune_certifications`]) never drops what shedding the built one would keep.
use sequoia_openpgp::cert::CertParser;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::{Cert, KeyHandle, Packet};

use super::super::tests::{debian_keyrings, flood_at, gen, t0};
use super::super::{parse_submission, Parsed};
use super::super::{Limits, ThirdPartyPolicy};
use super::{clean, shed, to_shed, within_limits, without_dropped};

/// The flooding defence without the shortcut: always through the packets.
fn shed_by_packets(cert: &Cert, limits: &Limits) -> Option<Vec<u8>> {
    let handle = KeyHandle::from(cert.fingerprint());
    let packets: Vec<Packet> = cert.clone().into_packets().collect();
    let drop = to_shed(&packets, &handle, limits).ok()?;
    if !drop.iter().any(|d| *d) {
        return Some(cert.to_vec().unwrap());
    }
    Some(
        Cert::from_packets(without_dropped(packets, drop))
            .unwrap()
            .to_vec()
            .unwrap(),
    )
}

#[test]
fn the_shortcut_agrees_with_the_packet_path_on_every_debian_certificate() {
    let limits = [
        Limits::default(),
        Limits {
            third_party: ThirdPartyPolicy::Cap(3),
            ..Limits::default()
        },
        Limits {
            third_party: ThirdPartyPolicy::Drop,
            ..Limits::default()
        },
        Limits {
            third_party: ThirdPartyPolicy::Keep,
            max_cert_bytes: 40 << 10,
            ..Limits::default()
        },
    ];
    let keep_all = Limits {
        third_party: ThirdPartyPolicy::Keep,
        max_cert_bytes: u32::MAX,
        ..Limits::default()
    };
    let now = std::time::SystemTime::now();
    let mut within = [0usize; 4];
    let mut total = 0;
    for bytes in debian_keyrings() {
        for raw in CertParser::from_bytes(&bytes)
            .unwrap()
            .filter_map(Result::ok)
        {
            // What `shed` is given: a cleaned certificate (here cleaned without shedding).
            let Ok(cert) = clean(raw, &keep_all, now) else {
                continue;
            };
            total += 1;
            for (i, l) in limits.iter().enumerate() {
                let fast = within_limits(&cert, l);
                within[i] += usize::from(fast);
                let expected = shed_by_packets(&cert, l);
                let got = shed(cert.clone(), l).ok().map(|c| c.to_vec().unwrap());
                assert!(got == expected, "{} under {l:?}", cert.fingerprint());
                if fast {
                    assert!(
                        expected.as_deref() == Some(cert.to_vec().unwrap().as_slice()),
                        "{}: shortcut taken but the packet path sheds",
                        cert.fingerprint()
                    );
                }
            }
        }
    }
    // Both paths are exercised under every limit but the lenient default.
    assert!(total > 1000, "{total} certificates");
    assert!(within[0] > total * 9 / 10, "{within:?} of {total}");
    for (i, w) in within.iter().enumerate().skip(1) {
        assert!(*w > 0 && *w < total, "limits {i}: {w} of {total} within");
    }
}

/// Cleaning under `limits` gives what cleaning without any and then shedding through the
/// packets gives: pruning early changed nothing but the cost.
fn assert_pruning_changes_nothing(raw: impl Into<super::RawCert>, limits: &[Limits]) -> usize {
    let raw = raw.into();
    let fpr = raw.fingerprint();
    let keep_all = Limits {
        third_party: ThirdPartyPolicy::Keep,
        max_cert_bytes: u32::MAX,
        ..Limits::default()
    };
    let Ok(unlimited) = clean(raw.clone(), &keep_all, t0()) else {
        return 0;
    };
    let mut shed_something = 0;
    for l in limits {
        let expected = shed_by_packets(&unlimited, l);
        let got = clean(raw.clone(), l, t0())
            .ok()
            .map(|c| c.to_vec().unwrap());
        assert!(got == expected, "{fpr} under {l:?}");
        shed_something += usize::from(expected != Some(unlimited.to_vec().unwrap()));
    }
    shed_something
}

#[test]
fn pruning_before_the_build_gives_what_shedding_after_it_gives() {
    let limits = [
        Limits::default(),
        Limits {
            third_party: ThirdPartyPolicy::Cap(3),
            ..Limits::default()
        },
        Limits {
            third_party: ThirdPartyPolicy::Cap(1),
            max_cert_bytes: 30 << 10,
            ..Limits::default()
        },
        Limits {
            third_party: ThirdPartyPolicy::Drop,
            ..Limits::default()
        },
    ];
    let (mut certs, mut shed) = (0, 0);
    for bytes in debian_keyrings() {
        for item in parse_submission(&bytes, &Limits::default()).unwrap() {
            if let Parsed::Cert(raw) = item {
                shed += assert_pruning_changes_nothing(raw, &limits);
                certs += 1;
            }
        }
    }
    assert!(certs > 1000, "{certs} certificates");
    assert!(
        shed > 1000,
        "only {shed} (certificate, limit) pairs shed anything"
    );

    // Certifications made at the same second as the cap's last: which of them stay is for
    // `shed` to decide (by canonical order), so pruning must leave them all.
    let target = gen("Target <target@example.org>");
    let tied = flood_at(
        &target,
        [10, 20, 30, 30, 30, 30, 40, 50].map(|t| 1_700_000_000 + t),
    );
    let caps = (0..=8).map(|n| Limits {
        third_party: ThirdPartyPolicy::Cap(n),
        ..Limits::default()
    });
    let caps: Vec<Limits> = caps.collect();
    assert!(assert_pruning_changes_nothing(tied.clone(), &caps) >= 7);

    // What sequoia merges: the same certification sent twice, and the user id sent twice with
    // the certifications split between the copies. Counting a copy twice, or counting per
    // merged user id, would prune what `shed` keeps.
    let packets: Vec<Packet> = tied.into_packets().collect();
    let uid_at = packets
        .iter()
        .position(|p| matches!(p, Packet::UserID(_)))
        .unwrap();
    let own = KeyHandle::from(target.fingerprint());
    let by_others = |p: &&Packet| match p {
        Packet::Signature(s) => s.get_issuers().iter().all(|i| !i.aliases(&own)),
        _ => false,
    };
    let certifications: Vec<&Packet> = packets.iter().filter(by_others).collect();
    assert_eq!(certifications.len(), 8);
    let mut twice = packets.clone();
    twice.extend(certifications.iter().take(5).map(|p| (*p).clone()));
    twice.push(packets[uid_at].clone());
    twice.extend(certifications.iter().skip(3).map(|p| (*p).clone()));
    let bin: Vec<u8> = twice.iter().flat_map(|p| p.to_vec().unwrap()).collect();
    let Parsed::Cert(raw) = parse_submission(&bin, &Limits::default())
        .unwrap()
        .remove(0)
    else {
        panic!("not a certificate")
    };
    assert!(assert_pruning_changes_nothing(raw, &caps) >= 7);
}
