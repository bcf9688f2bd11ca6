//! Reads of the conflict, audit and policy tables for the API, and the structured diff of a
//! conflict's two versions. Writes (resolutions, policy changes) are commands proposed through
//! [`Keyserver::propose`].
use serde::Serialize;

use super::keys::Keyserver;
use super::records::{self, AuditCursor, AuditEntry, ConflictRecord, Policies};
use super::RaftError;
use crate::pgp::{self, CertDiff};

/// Which conflicts to list.
#[derive(Debug, Clone, Default)]
pub struct ConflictFilter {
    /// Upper-case hex primary fingerprint.
    pub fingerprint: Option<String>,
    /// `add`, `add_after_delete`, `replace`, `delete`.
    pub kind: Option<String>,
    /// `open`, `resolved`, `rejected`.
    pub status: Option<String>,
    /// Only ids below this one (paging, newest first).
    pub before: Option<u64>,
    /// Most results.
    pub limit: usize,
}

/// A conflict with the diff between its versions.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictDetail {
    #[serde(flatten)]
    pub conflict: ConflictRecord,
    /// What the incoming version adds to or lacks from the current one; `None` when one side
    /// is a delete or a tombstone.
    pub diff: Option<CertDiff>,
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// From this position on.
    pub from: AuditCursor,
    pub fingerprint: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

/// Entries read from the store at a time while filtering.
const SCAN_CHUNK: usize = 1_000;

/// Most entries scanned for one filtered page, so a filter that matches little stays bounded;
/// a page cut short by it still says where to go on.
const SCAN_BUDGET: usize = 100_000;

/// A page of a listing: the items, and where the next page starts (`None`: nothing further).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// Filter a table read in chunks: `read(cursor)` returns up to [`SCAN_CHUNK`] records from
/// `cursor` on, `after(record)` the cursor past one. Stops at `limit` matches (next: past the
/// last match), at the table's end (next: none) or after [`SCAN_BUDGET`] records (next: past
/// the last record read).
fn filtered_page<T, C: Copy>(
    mut cursor: C,
    limit: usize,
    mut read: impl FnMut(C) -> Result<Vec<T>, RaftError>,
    after: impl Fn(&T) -> C,
    keep: impl Fn(&T) -> bool,
) -> Result<Page<T, C>, RaftError> {
    let mut items = Vec::new();
    let mut scanned = 0;
    loop {
        let chunk = read(cursor)?;
        let n = chunk.len();
        for r in chunk {
            cursor = after(&r);
            scanned += 1;
            if keep(&r) {
                items.push(r);
                if items.len() == limit {
                    return Ok(Page {
                        items,
                        next: Some(cursor),
                    });
                }
            }
        }
        if n < SCAN_CHUNK {
            return Ok(Page { items, next: None });
        }
        if scanned >= SCAN_BUDGET {
            return Ok(Page {
                items,
                next: Some(cursor),
            });
        }
    }
}

impl Keyserver {
    /// Conflicts matching `f`, newest first; `next` is the `before` of the next page.
    pub fn conflicts(&self, f: &ConflictFilter) -> Result<Page<ConflictRecord, u64>, RaftError> {
        if f.before == Some(0) {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let store = self.store();
        filtered_page(
            f.before.unwrap_or(u64::MAX),
            f.limit,
            |before| Ok(records::scan_conflicts(store, Some(before), SCAN_CHUNK)?),
            |c| c.id,
            |c| {
                f.fingerprint.as_ref().is_none_or(|x| *x == c.fingerprint)
                    && f.kind.as_ref().is_none_or(|x| *x == c.kind)
                    && f.status.as_ref().is_none_or(|x| *x == c.status)
            },
        )
    }

    /// One conflict with its diff.
    pub fn conflict(&self, id: u64) -> Result<Option<ConflictDetail>, RaftError> {
        let Some(c) = records::read_conflict(self.store(), id)? else {
            return Ok(None);
        };
        let diff = match (&c.current.cert, &c.incoming.cert) {
            (Some(a), Some(b)) => pgp::cert_diff(a, b).ok(),
            _ => None,
        };
        Ok(Some(ConflictDetail { conflict: c, diff }))
    }

    /// The policies in force on this replica.
    pub fn policies(&self) -> Result<Policies, RaftError> {
        Ok(records::read_policies(self.store())?)
    }

    /// Audit entries matching `f`, in log order; `next` is the `from` of the next page.
    pub fn audit(&self, f: &AuditFilter) -> Result<Page<AuditEntry, AuditCursor>, RaftError> {
        let store = self.store();
        filtered_page(
            f.from,
            f.limit,
            |from| Ok(records::scan_audit(store, from, SCAN_CHUNK)?),
            AuditCursor::after,
            |e| {
                f.fingerprint
                    .as_ref()
                    .is_none_or(|x| e.fingerprint.as_ref() == Some(x))
                    && f.action.as_ref().is_none_or(|x| *x == e.action)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages over the numbers `0..n`, `read(c)` giving up to a chunk from `c` on.
    fn page(n: u64, from: u64, limit: usize, keep: impl Fn(&u64) -> bool) -> Page<u64, u64> {
        filtered_page(
            from,
            limit,
            |c| Ok((c..n).take(SCAN_CHUNK).collect()),
            |x| x + 1,
            keep,
        )
        .unwrap()
    }

    #[test]
    fn a_filtered_page_goes_past_a_chunk_and_says_where_it_stopped() {
        // Matches beyond the first chunk are found; the next page starts past the last match.
        let p = page(5_000, 0, 2, |x| x % 1_500 == 7);
        assert_eq!(p.items, vec![7, 1_507]);
        assert_eq!(p.next, Some(1_508));
        let p = page(5_000, 1_508, 10, |x| x % 1_500 == 7);
        assert_eq!(p.items, vec![3_007, 4_507]);
        assert_eq!(p.next, None, "the end of the table");
        // Nothing matches within the budget: an empty page that still says where to go on.
        let n = (SCAN_BUDGET + 3 * SCAN_CHUNK) as u64;
        let p = page(n, 0, 10, |x| *x == n - 1);
        assert!(p.items.is_empty());
        assert_eq!(p.next, Some(SCAN_BUDGET as u64));
        let p = page(n, SCAN_BUDGET as u64, 10, |x| *x == n - 1);
        assert_eq!((p.items, p.next), (vec![n - 1], None));
    }

    #[test]
    fn an_audit_cursor_parses_prints_and_steps_past_an_entry() {
        let c = AuditCursor::parse("12.3").unwrap();
        assert_eq!(c, AuditCursor { index: 12, seq: 3 });
        assert_eq!(c.to_string(), "12.3");
        assert_eq!(
            AuditCursor::parse("12"),
            Some(AuditCursor { index: 12, seq: 0 })
        );
        for bad in ["", "x", "1.", "1.70000", "-1"] {
            assert_eq!(AuditCursor::parse(bad), None, "{bad:?}");
        }
    }
}
