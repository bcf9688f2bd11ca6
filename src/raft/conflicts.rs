//! Reads of the conflict, audit and policy tables for the API, and the structured diff of a
//! conflict's two versions. Writes (resolutions, policy changes) are commands proposed through
//! [`Keyserver::propose`].
use serde::Serialize;

use super::keys::Keyserver;
use super::records::{self, AuditEntry, ConflictRecord, Policies};
use super::RaftError;
use crate::pgp::{self, CertDiff};

/// Which conflicts to list.
#[derive(Debug, Clone, Default)]
pub struct ConflictFilter {
    /// Upper-case hex primary fingerprint.
    pub fingerprint: Option<String>,
    /// `add`, `add_after_delete`, `replace`, `delete`.
    pub kind: Option<String>,
    /// `open`, `resolved`.
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
    /// From this log index on.
    pub from: u64,
    pub fingerprint: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

/// Most entries scanned for one filtered page, so a filter that matches little stays bounded.
const SCAN_CAP: usize = 10_000;

impl Keyserver {
    /// Conflicts matching `f`, newest first.
    pub fn conflicts(&self, f: &ConflictFilter) -> Result<Vec<ConflictRecord>, RaftError> {
        let all = records::scan_conflicts(self.store(), f.before, SCAN_CAP)?;
        Ok(all
            .into_iter()
            .filter(|c| f.fingerprint.as_ref().is_none_or(|x| *x == c.fingerprint))
            .filter(|c| f.kind.as_ref().is_none_or(|x| *x == c.kind))
            .filter(|c| f.status.as_ref().is_none_or(|x| *x == c.status))
            .take(f.limit)
            .collect())
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

    /// Audit entries matching `f`, in log order.
    pub fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, RaftError> {
        let all = records::scan_audit(self.store(), f.from, SCAN_CAP)?;
        Ok(all
            .into_iter()
            .filter(|e| {
                f.fingerprint
                    .as_ref()
                    .is_none_or(|x| e.fingerprint.as_ref() == Some(x))
            })
            .filter(|e| f.action.as_ref().is_none_or(|x| *x == e.action))
            .take(f.limit)
            .collect())
    }
}
