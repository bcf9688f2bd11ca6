//! Rendering lookup results: armored certificates, machine-readable index lines, HTML.
use crate::raft::Summary;

/// %-escape for `options=mr` fields: `:`, `%` and every byte that is not printable 7-bit
/// ASCII (what gpg decodes).
pub fn mr_escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c == b':' || c == b'%' || !(0x20..0x7f).contains(&c) {
            s.push_str(&format!("%{c:02X}"));
        } else {
            s.push(c as char);
        }
    }
    s
}

fn opt(t: Option<u64>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

fn flags(revoked: bool, expires: Option<u64>, now: u64) -> String {
    let mut f = String::new();
    if revoked {
        f.push('r');
    }
    if expires.is_some_and(|e| e <= now) {
        f.push('e');
    }
    f
}

/// The `options=mr` index listing. `now` decides the `e` (expired) flag.
pub fn mr_index(summaries: &[&Summary], now: u64) -> String {
    let mut out = format!("info:1:{}\n", summaries.len());
    for s in summaries {
        out.push_str(&format!(
            "pub:{}:{}:{}:{}:{}:{}\n",
            s.fingerprint,
            s.algo,
            s.bits,
            s.created,
            opt(s.expires),
            flags(s.revoked, s.expires, now)
        ));
        for u in &s.uids {
            out.push_str(&format!(
                "uid:{}:{}:{}:{}\n",
                mr_escape(&u.uid),
                opt(u.created),
                opt(u.expires),
                flags(u.revoked, u.expires, now)
            ));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn date(t: u64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm), no clock involved.
    let z = (t / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The human-readable index listing; `sigs` adds signature lines (vindex).
pub fn html_index(
    title: &str,
    summaries: &[&Summary],
    sigs: &[Vec<crate::raft::SigLine>],
    now: u64,
) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title></head><body>\n<h1>{0}</h1>\n",
        html_escape(title)
    );
    for (i, s) in summaries.iter().enumerate() {
        let f = flags(s.revoked, s.expires, now);
        out.push_str(&format!(
            "<pre>pub  {}/<a href=\"/pks/lookup?op=get&amp;search=0x{}\">{}</a> {} {}\n",
            s.bits,
            s.fingerprint,
            s.fingerprint,
            date(s.created),
            if f.is_empty() {
                String::new()
            } else {
                format!("[{f}]")
            }
        ));
        for (n, u) in s.uids.iter().enumerate() {
            out.push_str(&format!(
                "uid  {}\n",
                html_escape(&String::from_utf8_lossy(&u.uid))
            ));
            for sig in sigs
                .get(i)
                .map(|v| v.as_slice())
                .unwrap_or(&[])
                .iter()
                .filter(|g| g.uid == n)
            {
                out.push_str(&format!(
                    "sig  {:02x} {} {}\n",
                    sig.typ,
                    html_escape(&sig.issuer),
                    sig.created.map(date).unwrap_or_default()
                ));
            }
        }
        out.push_str("</pre>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::UidSummary;

    #[test]
    fn mr_index_is_exact() {
        let s = Summary {
            fingerprint: "AB".repeat(20),
            keyid: "AB".repeat(8),
            algo: 1,
            bits: 4096,
            created: 1_600_000_000,
            expires: Some(1_700_000_000),
            revoked: false,
            uids: vec![UidSummary {
                uid: "Jöhn: <j%@x.example>".as_bytes().to_vec(),
                created: Some(1_600_000_001),
                expires: None,
                revoked: true,
            }],
        };
        let out = mr_index(&[&s], 1_800_000_000);
        assert_eq!(
            out,
            format!(
                "info:1:1\npub:{}:1:4096:1600000000:1700000000:e\nuid:J%C3%B6hn%3A <j%25@x.example>:1600000001::r\n",
                "AB".repeat(20)
            )
        );
    }

    #[test]
    fn dates_render() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_700_000_000), "2023-11-14");
    }
}
