//! The one HKP query parser. Works on the raw query string, because gpg sends `+ @ / < > #`
//! raw in search patterns (`RawTargetIo` has already percent-encoded what the HTTP stack would
//! reject, so decoding once gives back exactly what the client meant).
//!
//! Rules: pairs split on `&`, each on its first `=` (sq does not escape `=`); `%XX` decoded;
//! `+` is a literal plus (gpg sends `jane+x@example.org` raw; word search splits on it anyway).
use crate::raft::{search_email, search_words, Consistency, Search};

use super::error::ApiError;

/// Longest accepted search string, in bytes after decoding.
pub const MAX_SEARCH_BYTES: usize = 512;

/// The `op` of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupOp {
    Get,
    Index,
    Vindex,
    Stats,
}

/// A parsed `/pks/lookup` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupQuery {
    pub op: LookupOp,
    pub search: Option<Search>,
    /// `options=mr`: machine-readable output.
    pub mr: bool,
    /// `exact=on`.
    pub exact: bool,
    /// `fingerprint=on` (always honoured: full fingerprints are listed).
    pub fingerprint: bool,
    /// `consistency=local|linearizable`; `None` when not given: the cluster's routing
    /// `default_consistency` applies. Linearizable confirms with the leader (ReadIndex) first.
    pub consistency: Option<Consistency>,
    /// `min_index=N`: wait (bounded) until this node has applied log index N, e.g. the index a
    /// write returned in `X-Keyraft-Log-Index`.
    pub min_index: Option<u64>,
}

/// Percent-decode (no `+` rewriting).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Split a raw query or form body into decoded `(name, value)` pairs.
pub fn pairs(raw: &str) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (
            String::from_utf8_lossy(&percent_decode(k)).to_ascii_lowercase(),
            percent_decode(v),
        )
    })
}

fn is_on(v: &[u8]) -> bool {
    matches!(v, b"on" | b"1" | b"true" | b"yes")
}

/// Parse a `/pks/lookup` query string.
pub fn parse_lookup(raw: &str) -> Result<LookupQuery, ApiError> {
    let mut op = None;
    let mut search = None;
    let (mut mr, mut exact, mut fingerprint) = (false, false, false);
    let (mut consistency, mut min_index) = (None, None);
    for (k, v) in pairs(raw) {
        match k.as_str() {
            "op" => op = Some(String::from_utf8_lossy(&v).to_ascii_lowercase()),
            "search" => search = Some(v),
            "options" => {
                mr = String::from_utf8_lossy(&v)
                    .split(',')
                    .any(|o| o.trim() == "mr")
            }
            "exact" => exact = is_on(&v),
            "fingerprint" => fingerprint = is_on(&v),
            "consistency" => {
                consistency = match v.as_slice() {
                    b"linearizable" => Some(Consistency::Linearizable),
                    b"local" => Some(Consistency::Local),
                    _ => {
                        return Err(ApiError::BadRequest(
                            "consistency is \"local\" or \"linearizable\"".into(),
                        ))
                    }
                }
            }
            "min_index" => {
                let n = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
                min_index = Some(
                    n.ok_or_else(|| ApiError::BadRequest("min_index is not a number".into()))?,
                );
            }
            _ => {}
        }
    }
    let op = match op.as_deref() {
        Some("get") => LookupOp::Get,
        Some("index") => LookupOp::Index,
        Some("vindex") => LookupOp::Vindex,
        Some("stats") => LookupOp::Stats,
        Some(other) => return Err(ApiError::NotImplemented(other.chars().take(32).collect())),
        None => return Err(ApiError::BadRequest("missing op parameter".into())),
    };
    let search = match (op.clone(), search) {
        (LookupOp::Stats, _) => None,
        (_, None) => return Err(ApiError::BadRequest("missing search parameter".into())),
        (_, Some(s)) => Some(parse_search(&s)?),
    };
    Ok(LookupQuery {
        op,
        search,
        mr,
        exact,
        fingerprint,
        consistency,
        min_index,
    })
}

/// Interpret a decoded search string.
pub fn parse_search(raw: &[u8]) -> Result<Search, ApiError> {
    if raw.len() > MAX_SEARCH_BYTES {
        return Err(ApiError::BadRequest(format!(
            "search longer than {MAX_SEARCH_BYTES} bytes"
        )));
    }
    let s = std::str::from_utf8(raw)
        .map_err(|_| ApiError::BadRequest("search is not valid UTF-8".into()))?;
    let s = s.trim();
    if s.is_empty() {
        return Err(ApiError::BadRequest("empty search".into()));
    }
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    if let Some(h) = hex {
        let bytes = hex::decode(h)
            .map_err(|_| ApiError::BadRequest("search 0x... is not hexadecimal".into()))?;
        return match bytes.len() {
            4 => Ok(Search::KeyId32(bytes)),
            8 => Ok(Search::KeyId64(bytes)),
            20 | 32 => Ok(Search::Fingerprint(bytes)),
            _ => Err(ApiError::BadRequest(
                "key ids have 8 or 16 hex digits, fingerprints 40 or 64".into(),
            )),
        };
    }
    if (s.len() == 40 || s.len() == 64) && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Ok(Search::Fingerprint(hex::decode(s).expect("checked hex")));
    }
    if s.contains('@') {
        // "Name <addr>" or a bare address.
        let inner = match (s.rfind('<'), s.rfind('>')) {
            (Some(a), Some(b)) if a < b => &s[a + 1..b],
            _ => s,
        };
        if let Some(e) = search_email(inner) {
            return Ok(Search::Email(e));
        }
    }
    let words = search_words(s);
    if words.is_empty() {
        return Err(ApiError::BadRequest(
            "search has no word of 2 or more characters".into(),
        ));
    }
    Ok(Search::Words(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpg_patterns_parse() {
        let q = parse_lookup(
            "op=index&options=mr&fingerprint=on&search=Jane%20%3Cjane+x@example.org%3E",
        )
        .unwrap();
        assert_eq!(q.op, LookupOp::Index);
        assert!(q.mr && q.fingerprint && !q.exact);
        assert_eq!(q.search, Some(Search::Email("jane+x@example.org".into())));
        let q = parse_lookup("op=get&options=mr&search=jane@example.org&exact=on").unwrap();
        assert!(q.exact);
        assert_eq!(q.search, Some(Search::Email("jane@example.org".into())));
    }

    #[test]
    fn key_ids_and_fingerprints() {
        assert_eq!(
            parse_search(b"0xDEADBEEF").unwrap(),
            Search::KeyId32(vec![0xDE, 0xAD, 0xBE, 0xEF])
        );
        assert!(
            matches!(parse_search(b"0x0123456789ABCDEF").unwrap(), Search::KeyId64(v) if v.len() == 8)
        );
        let f = "0x".to_string() + &"AB".repeat(20);
        assert!(
            matches!(parse_search(f.as_bytes()).unwrap(), Search::Fingerprint(v) if v.len() == 20)
        );
        let f6 = "cd".repeat(32);
        assert!(
            matches!(parse_search(f6.as_bytes()).unwrap(), Search::Fingerprint(v) if v.len() == 32)
        );
        assert!(parse_search(b"0x123").is_err());
        assert!(parse_search(b"0xZZZZZZZZ").is_err());
    }

    #[test]
    fn words_and_bad_searches() {
        assert_eq!(
            parse_search(b"Jane Doe").unwrap(),
            Search::Words(vec!["jane".into(), "doe".into()])
        );
        assert!(matches!(
            parse_search(&[0xff, 0xfe]),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_search(&[b'a'; 600]),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse_search(b"  "), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse_search(b"a"), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn ops_and_missing_parameters() {
        assert!(matches!(
            parse_lookup("op=frobnicate&search=x"),
            Err(ApiError::NotImplemented(_))
        ));
        assert!(matches!(
            parse_lookup("search=jane"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_lookup("op=get"),
            Err(ApiError::BadRequest(_))
        ));
        assert_eq!(
            parse_lookup("op=stats&options=mr").unwrap().op,
            LookupOp::Stats
        );
    }

    #[test]
    fn read_consistency_options() {
        let q =
            parse_lookup("op=get&search=0xDEADBEEF&consistency=linearizable&min_index=42").unwrap();
        assert_eq!(q.consistency, Some(Consistency::Linearizable));
        assert_eq!(q.min_index, Some(42));
        assert_eq!(
            parse_lookup("op=get&search=0xDEADBEEF&consistency=local")
                .unwrap()
                .consistency,
            Some(Consistency::Local)
        );
        assert_eq!(
            parse_lookup("op=get&search=0xDEADBEEF")
                .unwrap()
                .consistency,
            None,
            "unset: the routing default applies"
        );
        assert!(parse_lookup("op=get&search=0xDEADBEEF&consistency=eventual").is_err());
        assert!(parse_lookup("op=get&search=0xDEADBEEF&min_index=x").is_err());
    }

    #[test]
    fn form_pairs_split_on_first_equals_and_keep_plus() {
        let p: Vec<_> = pairs("keytext=abc==&x=a+b%2B").collect();
        assert_eq!(p[0], ("keytext".to_string(), b"abc==".to_vec()));
        assert_eq!(p[1], ("x".to_string(), b"a+b+".to_vec()));
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }
}
