//! Tests of signed admin requests: real signatures made with Sequoia, replays, expiry.
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
        .with_policy(&policy_at(at), at)
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
        verify_admin_request(&text, &sig, &admins, created() + Duration::from_secs(2_000)).is_ok()
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
