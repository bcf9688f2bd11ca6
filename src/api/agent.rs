//! The HAProxy agent-check listener (`hkp.agent_listen`): every TCP connection gets one line
//! with this node's readiness, in the words HAProxy's `agent-check` understands, and is closed.
//!
//! - ready: `up ready W%`, W being the node's routing weight (`PUT /cluster/routing`; 100 by
//!   default), so HAProxy scales the server's configured weight by it;
//! - drained (weight 0): `drain` (no new traffic, established connections finish);
//! - not ready: `down #reason`, the reason `/ready` gives.
//!
//! The answer is computed like `/ready` ([`super::health::readiness`]); an HTTP check on
//! `/ready` and this agent never disagree.
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::health::{readiness, Readiness};
use super::AppState;

/// How long writing the line may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The agent's line for `r`.
fn line(r: &Readiness) -> String {
    match r {
        Readiness::Ready(w) => format!("up ready {w}%\n"),
        Readiness::Drained(_) => "drain\n".into(),
        Readiness::NotReady(why) => format!("down #{}\n", why.replace(['\r', '\n'], " ")),
    }
}

/// Answer one agent connection.
pub async fn answer<S: tokio::io::AsyncWrite + Unpin>(state: &AppState, mut io: S) {
    let text = match readiness(state) {
        Ok(r) => line(&r),
        Err(e) => format!("down #{e}\n"),
    };
    let write = async {
        io.write_all(text.as_bytes()).await?;
        io.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "agent-check: answer not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_what_haproxy_expects() {
        assert_eq!(line(&Readiness::Ready(100)), "up ready 100%\n");
        assert_eq!(line(&Readiness::Ready(25)), "up ready 25%\n");
        assert_eq!(line(&Readiness::Drained("x".into())), "drain\n");
        assert_eq!(
            line(&Readiness::NotReady("not ready: no\nleader".into())),
            "down #not ready: no leader\n"
        );
    }
}
