//! [`RaftSettings`]: the raft knobs the config layer sets, converted to openraft's `Config`.
use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};

use crate::raft::error::RaftError;

/// Raft tuning. `Default` gives the values keyraft ships with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// Leader heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout, milliseconds.
    pub election_min_ms: u64,
    /// Upper bound (exclusive) of the randomised election timeout, milliseconds.
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one; 0 = never.
    pub snapshot_logs_since_last: u64,
    /// Log entries to keep behind the last snapshot (so lagging followers catch up from the log).
    pub max_in_snapshot_log_to_keep: u64,
    /// Purge log entries in batches of at least this many.
    pub purge_batch_size: u64,
    /// How long `write` and `ensure_linearizable` wait before giving up, milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_logs_since_last: 10_000,
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            request_timeout_ms: 10_000,
        }
    }
}

impl RaftSettings {
    /// The validated openraft config for these settings.
    pub fn to_openraft(&self) -> Result<Arc<Config>, RaftError> {
        let snapshot_policy = match self.snapshot_logs_since_last {
            0 => SnapshotPolicy::Never,
            n => SnapshotPolicy::LogsSinceLast(n),
        };
        let config = Config {
            cluster_name: "keyraft".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy,
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            purge_batch_size: self.purge_batch_size,
            ..Config::default()
        };
        let config = config
            .validate()
            .map_err(|e| RaftError::InvalidSettings(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = RaftSettings::default().to_openraft().unwrap();
        assert_eq!(c.heartbeat_interval, 100);
        assert_eq!(c.snapshot_policy, SnapshotPolicy::LogsSinceLast(10_000));
    }

    #[test]
    fn election_must_exceed_heartbeat() {
        let s = RaftSettings {
            election_min_ms: 600,
            election_max_ms: 300,
            ..RaftSettings::default()
        };
        assert!(matches!(
            s.to_openraft(),
            Err(RaftError::InvalidSettings(_))
        ));
    }
}
