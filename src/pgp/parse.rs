//! Splitting a submission into certificates.
//!
//! Input is armored (one or many `-----BEGIN PGP ...-----` blocks, with anything between
//! them ignored) or binary (a keyring: certificates back to back). Containers are not
//! entered (a compressed-data packet is not a certificate, and not decompressing bounds the
//! work a small body can cause), and packets over the packet cap are not buffered.
//!
//! A certificate is split off at each public-key packet and kept as the packets that came
//! ([`RawCert`]), not canonicalised: [`super::clean`] verifies and filters them and builds the
//! certificate once. (Canonicalising here as well, as sequoia's `CertParser` does, cost a
//! 200 KB certificate about a third more CPU to parse and clean.)
use sequoia_openpgp::armor::{Kind, Reader, ReaderMode};
use sequoia_openpgp::packet::Tag;
use sequoia_openpgp::parse::{
    Dearmor, PacketParser, PacketParserBuilder, PacketParserResult, Parse,
};
use sequoia_openpgp::{Cert, Fingerprint, Packet};
use std::io::Read;

use super::{Limits, PgpError};

/// One item of a submission: a certificate, or the reason a part could not be read.
#[derive(Debug)]
pub enum Parsed {
    /// A certificate as submitted (not yet cleaned).
    Cert(RawCert),
    /// A part that is not a certificate, with the reason.
    Unreadable(String),
}

/// Split `input` into certificates. Refuses the whole submission if any part carries secret
/// key material, and fails if nothing at all could be read.
/// Most certificates (and unreadable items) one submission may carry. Apply numbers the audit
/// entries and conflicts of one command with 16 bits, two numbers at most per item; and a bulk
/// import is better sent in parts anyway.
pub const MAX_SUBMISSION_ITEMS: usize = 10_000;

pub fn parse_submission(input: &[u8], limits: &Limits) -> Result<Vec<Parsed>, PgpError> {
    let mut out = Vec::new();
    let blocks = armor_blocks(input);
    if blocks.is_empty() {
        parse_binary(input, limits, &mut out)?;
    } else {
        for block in blocks {
            if find(block, b"PRIVATE").is_some() {
                return Err(PgpError::SecretKeyMaterial);
            }
            if let Some(bin) = super::armor::dearmor_public_key_block(block) {
                parse_binary(&bin, limits, &mut out)?;
                continue;
            }
            let mut bin = Vec::new();
            let mut r = Reader::from_bytes(block, ReaderMode::Tolerant(Some(Kind::PublicKey)));
            match r.read_to_end(&mut bin) {
                Ok(_) => parse_binary(&bin, limits, &mut out)?,
                Err(e) => out.push(Parsed::Unreadable(format!("bad armor: {e}"))),
            }
        }
    }
    if out.len() > MAX_SUBMISSION_ITEMS {
        return Err(PgpError::TooManyItems {
            count: out.len(),
            limit: MAX_SUBMISSION_ITEMS,
        });
    }
    if !out.iter().any(|p| matches!(p, Parsed::Cert(_))) {
        let why = out
            .iter()
            .find_map(|p| match p {
                Parsed::Unreadable(r) => Some(r.clone()),
                Parsed::Cert(_) => None,
            })
            .unwrap_or_else(|| "empty input".into());
        return Err(PgpError::Unparsable(why));
    }
    Ok(out)
}

/// The byte ranges of armored blocks, BEGIN line to END line inclusive.
pub fn armor_blocks(input: &[u8]) -> Vec<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN PGP ";
    const END: &[u8] = b"-----END PGP ";
    let mut blocks = Vec::new();
    let mut rest = input;
    let mut offset = 0;
    while let Some(b) = find(rest, BEGIN) {
        let start = offset + b;
        let after = &input[start..];
        let end = match find(after, END) {
            Some(e) => {
                let line_end = after[e..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(after.len(), |n| e + n + 1);
                start + line_end
            }
            None => input.len(),
        };
        blocks.push(&input[start..end]);
        offset = end;
        rest = &input[end..];
    }
    blocks
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// A certificate's packets as submitted: a public key first, then everything up to the next
/// public key. Not canonicalised and nothing verified yet.
#[derive(Debug, Clone)]
pub struct RawCert {
    packets: Vec<Packet>,
}

impl RawCert {
    /// The primary key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        match self.packets.first() {
            Some(Packet::PublicKey(k)) => k.fingerprint(),
            _ => unreachable!("a RawCert starts with a public key"),
        }
    }

    /// The packets, in the order they came.
    pub fn into_packets(self) -> Vec<Packet> {
        self.packets
    }

    /// The certificate as sequoia canonicalises it (nothing verified, nothing dropped).
    pub fn into_cert(self) -> Result<Cert, PgpError> {
        Cert::from_packets(self.packets.into_iter()).map_err(|e| PgpError::Invalid(one_line(&e)))
    }
}

impl From<Cert> for RawCert {
    fn from(cert: Cert) -> RawCert {
        RawCert {
            packets: cert.into_packets().collect(),
        }
    }
}

fn parse_binary(bin: &[u8], limits: &Limits, out: &mut Vec<Parsed>) -> Result<(), PgpError> {
    let mut ppr = PacketParserBuilder::from_bytes(bin)
        .and_then(|b| {
            b.dearmor(Dearmor::Disabled)
                .max_recursion_depth(0)
                .max_packet_size(limits.max_packet_bytes)
                .build()
        })
        .map_err(|e| PgpError::Unparsable(e.to_string()))?;
    let mut current: Option<Vec<Packet>> = None;
    let mut stray: Option<Tag> = None;
    while let PacketParserResult::Some(pp) = ppr {
        let (packet, next) = match pp.next() {
            Ok(x) => x,
            Err(e) => {
                // The framing is broken: nothing after this point can be trusted, and the
                // certificate it interrupted is incomplete.
                current = None;
                out.push(Parsed::Unreadable(one_line(&e)));
                break;
            }
        };
        ppr = next;
        match packet {
            Packet::SecretKey(_) | Packet::SecretSubkey(_) => {
                return Err(PgpError::SecretKeyMaterial)
            }
            Packet::PublicKey(_) => {
                if let Some(packets) = current.replace(vec![packet]) {
                    out.push(Parsed::Cert(RawCert { packets }));
                }
            }
            // Markers may appear anywhere and mean nothing.
            Packet::Marker(_) => {}
            p => match &mut current {
                Some(packets) => packets.push(p),
                None => stray = stray.or(Some(p.tag())),
            },
        }
    }
    if let Some(packets) = current {
        out.push(Parsed::Cert(RawCert { packets }));
    }
    if let Some(tag) = stray {
        out.push(Parsed::Unreadable(format!(
            "a certificate starts with a public key, not {tag}"
        )));
    }
    Ok(())
}

/// The primary key's fingerprint of a binary certificate, from its first packet alone (no
/// canonicalisation: cheap even for a large certificate).
pub fn primary_fingerprint(bin: &[u8]) -> Result<super::Fingerprint, PgpError> {
    let ppr = PacketParser::from_bytes(bin).map_err(|e| PgpError::Unparsable(one_line(&e)))?;
    match ppr {
        PacketParserResult::Some(pp) => match &pp.packet {
            Packet::PublicKey(k) => Ok(super::Fingerprint(k.fingerprint().as_bytes().to_vec())),
            other => Err(PgpError::Unparsable(format!(
                "a certificate starts with a public key, not {}",
                other.tag()
            ))),
        },
        PacketParserResult::EOF(_) => Err(PgpError::Unparsable("empty input".into())),
    }
}

/// An error chain as one line.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for c in e.chain().skip(1) {
        s.push_str(": ");
        s.push_str(&c.to_string());
    }
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_armor_blocks_and_ignores_text_between() {
        let s = b"junk\n-----BEGIN PGP PUBLIC KEY BLOCK-----\nA\n-----END PGP PUBLIC KEY BLOCK-----\nmid\n-----BEGIN PGP PUBLIC KEY BLOCK-----\nB\n-----END PGP PUBLIC KEY BLOCK-----\n";
        let b = armor_blocks(s);
        assert_eq!(b.len(), 2);
        assert!(b[1].starts_with(b"-----BEGIN") && b[1].ends_with(b"-----\n"));
    }

    #[test]
    fn garbage_is_unparsable() {
        assert!(matches!(
            parse_submission(b"hello world", &Limits::default()),
            Err(PgpError::Unparsable(_))
        ));
        assert!(matches!(
            parse_submission(b"", &Limits::default()),
            Err(PgpError::Unparsable(_))
        ));
    }

    #[test]
    fn private_key_block_is_refused() {
        let s = b"-----BEGIN PGP PRIVATE KEY BLOCK-----\nxx\n-----END PGP PRIVATE KEY BLOCK-----\n";
        assert_eq!(
            parse_submission(s, &Limits::default()).unwrap_err(),
            PgpError::SecretKeyMaterial
        );
    }
}
