//! ASCII armor of public certificates (RFC 4880 §6): base64 in 64-column lines and a CRC-24
//! checksum line. Apply stores each certificate's armored form, so `op=get` sends stored bytes.
//! Written here, with a slicing-by-8 CRC, because Sequoia's writer computes the CRC bit by bit,
//! which cost more than everything else in an `op=get` (measured with perf; see
//! docs/benchmarks.md). Pure: no I/O.
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const CRC24_INIT: u32 = 0x00B7_04CE;
const CRC24_POLY: u32 = 0x0186_4CFB;

/// CRC-24 tables for slicing-by-8. The CRC is kept in the top 24 bits of a `u32` (MSB first,
/// as OpenPGP defines it), so eight bytes are folded in with eight independent table lookups.
const fn crc24_tables() -> [[u32; 256]; 8] {
    let poly = (CRC24_POLY & 0x00FF_FFFF) << 8;
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ poly
            } else {
                c << 1
            };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev << 8) ^ t[0][(prev >> 24) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

static CRC24_TABLES: [[u32; 256]; 8] = crc24_tables();

/// The OpenPGP CRC-24 of `data`.
pub fn crc24(data: &[u8]) -> u32 {
    let t = &CRC24_TABLES;
    let mut crc = CRC24_INIT << 8;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let a = crc ^ u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        let b = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(a >> 24) as usize]
            ^ t[6][((a >> 16) & 0xFF) as usize]
            ^ t[5][((a >> 8) & 0xFF) as usize]
            ^ t[4][(a & 0xFF) as usize]
            ^ t[3][(b >> 24) as usize]
            ^ t[2][((b >> 16) & 0xFF) as usize]
            ^ t[1][((b >> 8) & 0xFF) as usize]
            ^ t[0][(b & 0xFF) as usize];
    }
    for &byte in chunks.remainder() {
        crc = (crc << 8) ^ t[0][((crc >> 24) as u8 ^ byte) as usize];
    }
    crc >> 8
}

/// Armor concatenated binary certificates as one public key block.
pub fn armor_public_keys<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut data = Vec::new();
    for c in certs {
        data.extend_from_slice(c);
    }
    let mut out = Vec::with_capacity(data.len() * 4 / 3 + data.len() / 48 + 128);
    out.extend_from_slice(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n");
    let mut line = [0u8; 64];
    for chunk in data.chunks(48) {
        let n = STANDARD
            .encode_slice(chunk, &mut line)
            .expect("64 bytes hold 48 encoded");
        out.extend_from_slice(&line[..n]);
        out.push(b'\n');
    }
    let crc = crc24(&data).to_be_bytes();
    out.push(b'=');
    let n = STANDARD
        .encode_slice(&crc[1..], &mut line)
        .expect("4 bytes hold 3 encoded");
    out.extend_from_slice(&line[..n]);
    out.extend_from_slice(b"\n-----END PGP PUBLIC KEY BLOCK-----\n");
    out
}

const BEGIN_PUBLIC: &[u8] = b"-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END_PUBLIC: &[u8] = b"-----END PGP PUBLIC KEY BLOCK-----";

/// The contents of `block`, one armored public key block as gpg, sq and [`armor_public_keys`]
/// write it, if it is exactly that: the BEGIN line, `Key: value` header lines, an empty line,
/// lines of base64, optionally the checksum line, the END line (each line may end in CR and
/// a few blanks). `None` for anything else, which the caller hands to Sequoia's tolerant
/// reader.
///
/// Sequoia's reader gives the same bytes for such a block (a test checks it on Debian's
/// keyrings and on mangled armor) but filters the text one character at a time, which cost
/// as much as cleaning the certificate. Like Sequoia's, this does not check the checksum
/// (RFC 9580 §6.1: a checksum that disagrees must not make an implementation reject the
/// data).
pub fn dearmor_public_key_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut start = 0;
    // Each line without its line end and trailing blanks; `None` for a line with more than a
    // few trailing blanks, which Sequoia's reader, working through a window of the text at a
    // time, may take for the end of the data.
    let mut lines = memchr::memchr_iter(b'\n', block)
        .chain(std::iter::once(block.len()))
        .map(|end| {
            let raw = &block[start..end];
            start = end + 1;
            let line = raw.trim_ascii_end();
            (raw.len() - line.len() <= 8).then_some(line)
        });
    if lines.next()?? != BEGIN_PUBLIC {
        return None;
    }
    for line in lines.by_ref() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if !is_header(line) {
            return None;
        }
    }
    // Body lines are copied as they are: the decoder refuses any character outside the
    // alphabet, blanks included, and padding anywhere but at the end.
    let mut base64 = Vec::with_capacity(block.len());
    let (mut checksum, mut ended) = (false, false);
    for line in lines {
        let line = line?;
        match line {
            b"" if ended => {}
            _ if ended => return None,
            _ if line == END_PUBLIC => ended = true,
            [b'=', rest @ ..] if !checksum && rest.len() == 4 && rest.iter().all(is_base64) => {
                checksum = true;
            }
            _ if checksum || line.is_empty() || line.starts_with(b"-") => return None,
            _ => base64.extend_from_slice(line),
        }
    }
    if !ended {
        return None;
    }
    STANDARD.decode(&base64).ok()
}

/// `Name: value`, as armor headers are written, with a value (Sequoia's reader takes a first
/// line `Name:` for data).
fn is_header(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&c| c == b':') else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|c| c.is_ascii_graphic())
        && line.get(colon + 1) == Some(&b' ')
        && line.len() > colon + 2
}

fn is_base64(c: &u8) -> bool {
    c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequoia_openpgp::armor::{Kind, Reader, ReaderMode};
    use std::io::Read;

    #[test]
    fn crc24_matches_the_rfc_reference() {
        // RFC 4880 §6.1: the CRC of no data is the initial value.
        assert_eq!(crc24(b""), CRC24_INIT);
        // Bitwise reference implementation from the RFC.
        let reference = |data: &[u8]| {
            let mut crc = CRC24_INIT;
            for &b in data {
                crc ^= (b as u32) << 16;
                for _ in 0..8 {
                    crc <<= 1;
                    if crc & 0x0100_0000 != 0 {
                        crc ^= CRC24_POLY;
                    }
                }
            }
            crc & 0x00FF_FFFF
        };
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 1000, 4999, 5000] {
            assert_eq!(crc24(&data[..len]), reference(&data[..len]), "length {len}");
        }
    }

    /// What Sequoia's tolerant reader makes of `block`.
    fn sequoia(block: &[u8]) -> Option<Vec<u8>> {
        let mut r = Reader::from_bytes(block, ReaderMode::Tolerant(Some(Kind::PublicKey)));
        let mut back = Vec::new();
        r.read_to_end(&mut back).ok().map(|_| back)
    }

    #[test]
    fn the_fast_dearmor_agrees_with_sequoia_on_debian_certificates_as_clients_write_them() {
        let mut compared = 0;
        for keyring in crate::pgp::tests::debian_keyrings() {
            for cert in
                <sequoia_openpgp::cert::CertParser as sequoia_openpgp::parse::Parse<_>>::from_bytes(
                    &keyring,
                )
                .unwrap()
                .filter_map(Result::ok)
                .step_by(7)
            {
                let bin = sequoia_openpgp::serialize::MarshalInto::to_vec(&cert).unwrap();
                let ours = armor_public_keys([bin.as_slice()]);
                // gpg's form: CRLF when sent from Windows, a header, no checksum.
                let text = String::from_utf8(ours.clone()).unwrap();
                let with_header = text.replacen("\n\n", "\nComment: a b: c\n\n", 1);
                let crlf = with_header.replace('\n', "\r\n");
                let no_crc: String = text
                    .lines()
                    .filter(|l| !l.starts_with('='))
                    .map(|l| format!("{l}\n"))
                    .collect();
                for block in [
                    ours,
                    with_header.into_bytes(),
                    crlf.into_bytes(),
                    no_crc.into_bytes(),
                ] {
                    assert_eq!(dearmor_public_key_block(&block).as_ref(), Some(&bin));
                    assert_eq!(sequoia(&block).as_ref(), Some(&bin));
                }
                compared += 1;
            }
        }
        assert!(compared > 150, "{compared} certificates");
    }

    #[test]
    fn armor_sequoia_would_refuse_is_left_to_sequoia() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 256) as u8).collect();
        let good = String::from_utf8(armor_public_keys([data.as_slice()])).unwrap();
        assert_eq!(
            dearmor_public_key_block(good.as_bytes()),
            Some(data.clone())
        );
        // A first header without a value: Sequoia reads it as data and fails.
        let empty_header = good.replacen("\n\n", "\nComment:\n\n", 1);
        assert_eq!(dearmor_public_key_block(empty_header.as_bytes()), None);
        assert_eq!(sequoia(empty_header.as_bytes()), None);
        // Many blanks after a line of data: Sequoia may stop there.
        let first_line_end = good.find("\n\n").unwrap() + 2 + 64;
        let padded = format!(
            "{}{}{}",
            &good[..first_line_end],
            " ".repeat(200_000),
            &good[first_line_end..]
        );
        assert_eq!(dearmor_public_key_block(padded.as_bytes()), None);
    }

    proptest::proptest! {
        /// Whatever armor the fast path accepts, Sequoia reads the same bytes from it.
        #[test]
        fn mangled_armor_is_read_as_sequoia_reads_it_or_left_to_sequoia(
            len in 0usize..400,
            edits in proptest::collection::vec((0usize..1000, proptest::sample::select(
                b"AZaz09+/=\n\r -:.!\t".to_vec())), 0..4),
            cut in proptest::option::of(0usize..1000),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i * 131 % 256) as u8).collect();
            let mut block = armor_public_keys([data.as_slice()]);
            for (at, c) in edits {
                let at = at % (block.len() + 1);
                match at % 3 {
                    0 => block.insert(at, c),
                    1 if at < block.len() => { block.remove(at); }
                    _ if at < block.len() => block[at] = c,
                    _ => {}
                }
            }
            if let Some(cut) = cut {
                block.truncate(cut % (block.len() + 1));
            }
            if let Some(fast) = dearmor_public_key_block(&block) {
                proptest::prop_assert_eq!(Some(fast), sequoia(&block));
            }
        }
    }

    #[test]
    fn sequoia_reads_back_what_we_write() {
        for len in [0usize, 1, 47, 48, 49, 1000, 31_337] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let armored = armor_public_keys([data.as_slice()]);
            let mut r = Reader::from_bytes(&armored, ReaderMode::Tolerant(Some(Kind::PublicKey)));
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }
}
