//! Read paths over the state machine: certificate by fingerprint, index prefix scans, stats.
use rocksdb::{Direction, IteratorMode};

use super::db::{CF_CERTS, CF_RENDERED};
use super::record::{CertRecord, IndexKind};
use super::{Store, StoreError};

/// Figures for `op=stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Stored certificates.
    pub certificates: u64,
    /// RocksDB's estimate of live data size in bytes.
    pub live_data_bytes: u64,
}

impl Store {
    /// The record stored under a primary fingerprint.
    pub fn get_cert(&self, fingerprint: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        match self.db.get_pinned_cf(self.cf(CF_CERTS), fingerprint)? {
            Some(v) => Ok(Some(CertRecord::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The rendered (armored) form stored with a certificate.
    pub fn get_rendered(&self, fingerprint: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_RENDERED), fingerprint)?)
    }

    /// The rendered form of a certificate with its record, both read from one RocksDB snapshot:
    /// an apply batch landing between two separate reads could pair one version's body with
    /// the next version's record (and ETag).
    pub fn get_rendered_with_cert(
        &self,
        fingerprint: &[u8],
    ) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError> {
        let view = self.db.snapshot();
        let Some(rendered) = view.get_cf(self.cf(CF_RENDERED), fingerprint)? else {
            return Ok(None);
        };
        let record = match view.get_pinned_cf(self.cf(CF_CERTS), fingerprint)? {
            Some(v) => CertRecord::decode(&v)?,
            None => return Ok(None),
        };
        Ok(Some((record, rendered)))
    }

    /// Primary fingerprints of certificates carrying `term` in index `kind`, at most `limit`,
    /// in fingerprint order.
    pub fn find(
        &self,
        kind: IndexKind,
        term: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = kind.prefix(term);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(kind.cf()),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(k[prefix.len()..].to_vec());
        }
        Ok(out)
    }

    /// Whether the certificate with primary fingerprint `fpr` is indexed under `term`.
    pub fn is_indexed(&self, kind: IndexKind, term: &[u8], fpr: &[u8]) -> Result<bool, StoreError> {
        let key = [kind.prefix(term), fpr.to_vec()].concat();
        Ok(self.db.get_pinned_cf(self.cf(kind.cf()), key)?.is_some())
    }

    /// Store-wide figures.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let live = self
            .db
            .property_int_value_cf(self.cf(CF_CERTS), "rocksdb.estimate-live-data-size")?
            .unwrap_or(0);
        Ok(StoreStats {
            certificates: self.cert_count()?,
            live_data_bytes: live,
        })
    }

    /// Every stored record, in fingerprint order (for `keyraft export`).
    pub fn for_each_cert(
        &self,
        mut f: impl FnMut(CertRecord) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        for item in self.db.iterator_cf(self.cf(CF_CERTS), IteratorMode::Start) {
            let (_, v) = item?;
            f(CertRecord::decode(&v)?)?;
        }
        Ok(())
    }
}
