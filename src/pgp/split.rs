//! Splitting a binary OpenPGP stream into certificate-sized chunks by packet headers alone,
//! without parsing packets: what `keyraft import` uses to stream dumps of any size cheaply.
//! The node parses and validates each chunk; this only finds the boundaries (a certificate
//! starts at each public-key or secret-key packet).
use std::io::Read;

/// Iterator over chunks of a binary keyring. Bytes before the first key packet come out as
/// their own chunk (the node will reject them with a reason).
pub struct CertSplitter<R> {
    input: R,
    /// A key packet already read that starts the next chunk.
    carry: Option<Vec<u8>>,
    done: bool,
}

impl<R: Read> CertSplitter<R> {
    /// Split `input`.
    pub fn new(input: R) -> Self {
        CertSplitter {
            input,
            carry: None,
            done: false,
        }
    }

    /// Read one whole packet (header and body); `None` at a clean end of input.
    fn packet(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut ctb = [0u8; 1];
        if self.input.read(&mut ctb)? == 0 {
            return Ok(None);
        }
        let mut out = vec![ctb[0]];
        if ctb[0] & 0x80 == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not an OpenPGP packet header",
            ));
        }
        if ctb[0] & 0x40 != 0 {
            let tag = ctb[0] & 0x3f;
            loop {
                let first = self.byte(&mut out)?;
                let (len, partial) = match first {
                    0..=191 => (first as usize, false),
                    192..=223 => (
                        (((first as usize) - 192) << 8) + self.byte(&mut out)? as usize + 192,
                        false,
                    ),
                    255 => {
                        let mut b = [0u8; 4];
                        self.input.read_exact(&mut b)?;
                        out.extend_from_slice(&b);
                        (u32::from_be_bytes(b) as usize, false)
                    }
                    _ => (1usize << (first & 0x1f), true),
                };
                self.body(len, &mut out)?;
                if !partial {
                    return Ok(Some((tag, out)));
                }
            }
        }
        let tag = (ctb[0] >> 2) & 0x0f;
        let len = match ctb[0] & 3 {
            0 => self.byte(&mut out)? as usize,
            1 => (self.byte(&mut out)? as usize) << 8 | self.byte(&mut out)? as usize,
            2 => {
                let mut b = [0u8; 4];
                self.input.read_exact(&mut b)?;
                out.extend_from_slice(&b);
                u32::from_be_bytes(b) as usize
            }
            _ => {
                self.input.read_to_end(&mut out)?;
                return Ok(Some((tag, out)));
            }
        };
        self.body(len, &mut out)?;
        Ok(Some((tag, out)))
    }

    fn byte(&mut self, out: &mut Vec<u8>) -> std::io::Result<u8> {
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b)?;
        out.push(b[0]);
        Ok(b[0])
    }

    fn body(&mut self, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        out.resize(start + len, 0);
        self.input.read_exact(&mut out[start..])
    }
}

impl<R: Read> Iterator for CertSplitter<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut chunk = self.carry.take().unwrap_or_default();
        loop {
            match self.packet() {
                Ok(Some((tag, p))) if (tag == 6 || tag == 5) && !chunk.is_empty() => {
                    self.carry = Some(p);
                    return Some(Ok(chunk));
                }
                Ok(Some((_, p))) => chunk.extend_from_slice(&p),
                Ok(None) => {
                    self.done = true;
                    return (!chunk.is_empty()).then_some(Ok(chunk));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sequoia_openpgp::cert::CertBuilder;
    use sequoia_openpgp::serialize::SerializeInto;

    #[test]
    fn splits_a_keyring_into_its_certificates() {
        let certs: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                CertBuilder::general_purpose(Some(format!("U{i} <u{i}@example.org>")))
                    .generate()
                    .unwrap()
                    .0
                    .to_vec()
                    .unwrap()
            })
            .collect();
        let ring = certs.concat();
        let got: Vec<Vec<u8>> = CertSplitter::new(ring.as_slice())
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, certs);
    }

    #[test]
    fn real_debian_keyring_splits_like_sequoia_parses_it() {
        use sequoia_openpgp::parse::Parse;
        let bytes = std::fs::read("/usr/share/keyrings/debian-keyring.gpg").unwrap();
        let chunks: Vec<Vec<u8>> = CertSplitter::new(bytes.as_slice())
            .map(Result::unwrap)
            .collect();
        let n = sequoia_openpgp::cert::CertParser::from_bytes(&bytes)
            .unwrap()
            .count();
        assert_eq!(chunks.len(), n);
        assert_eq!(chunks.concat(), bytes);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut it = CertSplitter::new(&b"hello"[..]);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        // A truncated packet.
        let mut it = CertSplitter::new(&[0x99u8, 0x01, 0x0d, 0x04][..]);
        assert!(it.next().unwrap().is_err());
    }
}
