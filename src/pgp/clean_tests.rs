//! The flooding defence's shortcut: [`super::within_limits`] says "nothing to shed" exactly
//! when the packet path would drop nothing, on every certificate of Debian's keyrings and
//! under limits that do and do not bite.
use sequoia_openpgp::cert::CertParser;
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::serialize::MarshalInto;
use sequoia_openpgp::{Cert, KeyHandle, Packet};

use super::super::tests::debian_keyrings;
use super::super::{Limits, ThirdPartyPolicy};
use super::{clean, shed, to_shed, within_limits};

/// The flooding defence without the shortcut: always through the packets.
fn shed_by_packets(cert: &Cert, limits: &Limits) -> Option<Vec<u8>> {
    let handle = KeyHandle::from(cert.fingerprint());
    let packets: Vec<Packet> = cert.clone().into_packets().collect();
    let drop = to_shed(&packets, &handle, limits).ok()?;
    if !drop.iter().any(|d| *d) {
        return Some(cert.to_vec().unwrap());
    }
    let kept = packets
        .into_iter()
        .zip(drop)
        .filter(|(_, d)| !d)
        .map(|(p, _)| p);
    Some(Cert::from_packets(kept).unwrap().to_vec().unwrap())
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
