//! Auditing refusals that never become a write: a join refused by admission (wrong cluster
//! secret, a node that is not who it claims to be, ...), a signed admin request whose signature
//! this replica already knows as used. The refusing node proposes an
//! [`Op::AuditRefusal`](super::command::Op::AuditRefusal) entry so the refusal is in the
//! replicated audit trail on every node.
//!
//! Bounded so that nobody can flood the Raft log by being refused: each node audits at most
//! [`PER_MINUTE`] refusals per minute; the ones over the limit are only logged and counted, and
//! the count is carried by the next audited refusal ("N earlier refusals not audited"). The
//! proposal runs in its own task with a timeout: it never delays or changes the answer to the
//! refused request, and a refusal while there is no quorum is logged but not audited.
//!
//! Must not depend on the api or rpc layers.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::command::Op;
use super::keys::Keyserver;

/// Most refusals one node audits per minute.
pub const PER_MINUTE: u32 = 10;

/// How long an audit proposal may take before it is given up.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A fixed-window rate limit on audited refusals, with a count of the ones left out.
#[derive(Debug, Default)]
pub struct RefusalLimiter {
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    audited: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    /// Whether a refusal at `now` is audited: `Some(n)` with the number of refusals left out
    /// since the last audited one (the counter restarts), `None` when over the limit (counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60))
        {
            w.start = Some(now);
            w.audited = 0;
        }
        if w.audited >= PER_MINUTE {
            w.suppressed += 1;
            return None;
        }
        w.audited += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

impl Keyserver {
    /// Audit a refusal decided on this node (rate-limited, in the background; see the module
    /// docs). `action` is what was refused (`join`, `delete`, `replace`), `actor` who asked,
    /// `fingerprints` the certificates the request named (none for a join), `reason` one line.
    /// Never blocks and never fails the caller.
    pub fn note_refusal(&self, action: &str, actor: &str, fingerprints: &[String], reason: &str) {
        let Some(suppressed) = self.refusals().admit(Instant::now()) else {
            tracing::warn!(action, actor, "refusal not audited (rate limit): {reason}");
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let op = Op::AuditRefusal {
            action: action.to_string(),
            reason: reason.to_string(),
            fingerprints: fingerprints.to_vec(),
            suppressed,
        };
        let (keys, actor) = (self.clone(), actor.to_string());
        rt.spawn(async move {
            match tokio::time::timeout(PROPOSE_TIMEOUT, keys.propose(op, &actor)).await {
                Ok(Ok((_, index))) => tracing::debug!(index, "refusal audited"),
                Ok(Err(e)) => tracing::warn!(actor, "refusal not audited: {e}"),
                Err(_) => tracing::warn!(actor, "refusal not audited: no commit in time"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_per_minute_with_a_count_of_the_rest() {
        let l = RefusalLimiter::default();
        let t0 = Instant::now();
        for _ in 0..PER_MINUTE {
            assert_eq!(l.admit(t0), Some(0));
        }
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(59)), None);
        assert_eq!(
            l.admit(t0 + Duration::from_secs(60)),
            Some(2),
            "a new minute: audited, carrying the two left out"
        );
        assert_eq!(l.admit(t0 + Duration::from_secs(61)), Some(0));
    }
}
