//! Normalised identifiers: fingerprints and e-mail addresses.
use std::fmt;

/// A primary or subkey fingerprint: 20 bytes (v4) or 32 bytes (v6). Displayed as upper-case
/// hex without spaces, which is what HKP clients send and expect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub Vec<u8>);

impl Fingerprint {
    /// Parse 40 or 64 hex digits (any case).
    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        if s.len() != 40 && s.len() != 64 {
            return None;
        }
        hex::decode(s).ok().map(Fingerprint)
    }

    /// Upper-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(&self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Normalise an e-mail address for indexing and lookup: trimmed, Unicode lower case (NFKC
/// first, so compatibility forms match), surrounding angle brackets removed. Returns `None`
/// for something that is not `local@domain`.
pub fn normalize_email(s: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization;
    let s = s
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let (local, domain) = s.rsplit_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || s.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
    {
        return None;
    }
    Some(s.nfkc().collect::<String>().to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_normalise() {
        assert_eq!(
            normalize_email(" <Jane+X@Example.ORG> ").as_deref(),
            Some("jane+x@example.org")
        );
        assert_eq!(
            normalize_email("ÄRGER@Bücher.example").as_deref(),
            Some("ärger@bücher.example")
        );
        assert_eq!(normalize_email("no at sign"), None);
        assert_eq!(normalize_email("a b@c.d"), None);
        assert_eq!(normalize_email("@c.d"), None);
    }

    #[test]
    fn fingerprints_parse_v4_and_v6() {
        let v4 = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(
            Fingerprint::from_hex(v4).unwrap().to_hex(),
            v4.to_uppercase()
        );
        assert!(Fingerprint::from_hex(&"A".repeat(64)).is_some());
        assert!(Fingerprint::from_hex(&"A".repeat(41)).is_none());
        assert!(Fingerprint::from_hex(&"G".repeat(40)).is_none());
    }
}
