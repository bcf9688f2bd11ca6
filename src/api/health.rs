//! `GET /health` (liveness: the process answers) and `GET /ready` (readiness for client reads,
//! what load balancers check).
//!
//! `/ready` answers 200 only when this node should get client traffic:
//! - another member has not removed it from the cluster (503 "removed from the cluster by
//!   node N (reason)");
//! - it is not still joining (a fresh node with `--join` serves HTTP while it asks to be
//!   admitted);
//! - Raft has a leader and this node has applied what it knows committed;
//! - on a leader, a quorum acknowledged it recently; on any other member, the leader's appends
//!   or heartbeats arrived within the last 3 s (or three heartbeat intervals, if longer), and
//!   at least once since this process started (a follower cut off from the leader, or restarted
//!   and not caught up, may serve stale reads; one on the minority side with the old leader
//!   still hears it, and relies on that leader's lost quorum showing in its writes);
//! - it is not a learner while the routing settings say `learners_serve_reads: false`;
//! - its routing weight is not 0 (an operator drained it).
//!
//! A 200 carries the node's routing weight (0..=256) in `X-Keyraft-Weight` and in the body
//! (`ready weight=N`), for balancers that can weigh servers. A 503 names the reason in one line.
//! Being drained or a learner changes only `/ready`: lookups sent to the node are still answered.
//! The HAProxy agent ([`super::agent`]) reports the same readiness in HAProxy's words.
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;

/// Liveness: answers as long as the HTTP server runs.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Whether this node should get client traffic (see the module docs).
pub(super) enum Readiness {
    /// Serving, with this routing weight (1..=256).
    Ready(u16),
    /// Otherwise ready, but an operator drained it (weight 0); the reason, one line.
    Drained(String),
    /// Not ready; the reason, one line.
    NotReady(String),
}

/// This node's readiness now.
pub(super) fn readiness(state: &AppState) -> Result<Readiness, ApiError> {
    use Readiness::*;
    if let Some(r) = state.keys.removal() {
        return Ok(NotReady(r.line()));
    }
    if state.keys.is_joining() {
        return Ok(NotReady(
            "not ready: joining the cluster (not admitted yet)".into(),
        ));
    }
    if state.keys.is_installing() {
        return Ok(NotReady("not ready: installing a snapshot".into()));
    }
    let raft = state.keys.raft();
    let status = raft.status();
    if status.leader_cut_off() {
        return Ok(NotReady(
            "not ready: this leader has no recent quorum acknowledgement".into(),
        ));
    }
    if status.leader_silent() {
        return Ok(NotReady(match status.millis_since_leader_heard {
            Some(ms) => format!("not ready: no word from the leader for {ms} ms"),
            None => "not ready: not heard from a leader since this node started".into(),
        }));
    }
    if !raft.has_leader_and_applied() {
        return Ok(NotReady(
            "not ready: no leader known or state not yet applied".into(),
        ));
    }
    let routing = state.keys.routing()?;
    if status.learners.contains(&raft.id()) && !routing.learners_serve_reads {
        return Ok(NotReady(
            "not ready: this node is a learner and routing.learners_serve_reads is false".into(),
        ));
    }
    let weight = routing.weight_of(&raft.me().name);
    if weight == 0 {
        return Ok(Drained(format!(
            "not ready: drained (routing weight of {:?} is 0)",
            raft.me().name
        )));
    }
    Ok(Ready(weight))
}

/// Readiness for load balancers.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match readiness(&state)? {
        Readiness::Ready(weight) => Ok(HttpResponse::Ok()
            .insert_header(("X-Keyraft-Weight", weight.to_string()))
            .content_type("text/plain")
            .body(format!("ready weight={weight}\n"))),
        Readiness::Drained(why) | Readiness::NotReady(why) => Err(ApiError::Unavailable(why)),
    }
}

/// Anything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such path".into()))
}
