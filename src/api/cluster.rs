//! Read-only cluster endpoints (JSON): `/cluster/status`, `/cluster/nodes`, `/cluster/leader`,
//! `/cluster/health`, `/cluster/consensus`, `/cluster/digest`. They read the raft facade's local view; the
//! mutating calls are in [`super::cluster_admin`].
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::raft::UNREACHABLE_AFTER_MS;

/// This node: id, name, role, term, leader, commit and applied index, members, and whether
/// another member removed it (`removed`, with `removal`: who and why).
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let raft = state.keys.raft();
    let removal = state.keys.removal();
    HttpResponse::Ok().json(json!({
        "node": raft.me(),
        "status": raft.status(),
        "members": raft.members(),
        "removed": removal.is_some(),
        "removal": removal,
    }))
}

/// Every member with its addresses, whether it votes, and (answered by the leader) the log
/// index replicated to it and its lag behind the leader's last entry.
pub async fn nodes(state: web::Data<AppState>) -> HttpResponse {
    let raft = state.keys.raft();
    let s = raft.status();
    let last = s.last_log_index.unwrap_or(0);
    let nodes: Vec<_> = raft
        .members()
        .into_iter()
        .map(|m| {
            let matched = s.matched.get(&m.id).copied().flatten();
            let heartbeat = s.millis_since_heartbeat.get(&m.id).copied().flatten();
            json!({
                "id": m.id,
                "node": m.node,
                "voter": m.voter,
                "matched_index": matched,
                "lag": (!s.matched.is_empty()).then(|| last.saturating_sub(matched.unwrap_or(0))),
                "last_heartbeat_ms_ago": heartbeat,
                "reachable": (!s.millis_since_heartbeat.is_empty() && m.id != s.id)
                    .then(|| heartbeat.is_some_and(|ms| ms < UNREACHABLE_AFTER_MS)),
            })
        })
        .collect();
    // `fresh`: this node holds no Raft state at all (no vote, log or applied entry), so it is
    // in no cluster yet; deploy/keyraft-start.sh creates a cluster only when every peer is.
    let fresh = raft.is_fresh().unwrap_or(false);
    HttpResponse::Ok().json(json!({
        "answered_by": raft.id(),
        "leader": s.leader,
        "fresh": fresh,
        "nodes": nodes,
    }))
}

/// Raft's view on this node: term, vote, last log, committed, applied, snapshot, purged.
pub async fn consensus(state: web::Data<AppState>) -> HttpResponse {
    let raft = state.keys.raft();
    let s = raft.status();
    HttpResponse::Ok().json(json!({
        "id": s.id,
        "state": s.state,
        "term": s.current_term,
        "vote": s.vote,
        "leader": s.leader,
        "last_log_index": s.last_log_index,
        "committed": s.committed_index,
        "applied": s.applied_index,
        "snapshot": s.snapshot_index,
        "purged": s.purged_index,
        "millis_since_quorum_ack": s.millis_since_quorum_ack,
        "elections_since_start": raft.elections_since_start(),
    }))
}

/// The leader's id, name and addresses; 503 while none is known.
pub async fn leader(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let leader = state
        .keys
        .raft()
        .leader()
        .ok_or_else(|| ApiError::Unavailable("no leader known".into()))?;
    Ok(HttpResponse::Ok().json(json!({
        "id": leader.id,
        "name": leader.node.name,
        "raft_addr": leader.node.raft_addr,
        "http_addr": leader.node.http_addr,
    })))
}

/// 200 when a leader is known (and, on the leader, a quorum acknowledged it recently) and this node has applied what it knows committed.
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raft = state.keys.raft();
    let s = raft.status();
    if s.leader.is_none() {
        return Err(ApiError::Unavailable("no leader known".into()));
    }
    if s.leader_cut_off() {
        return Err(ApiError::Unavailable(format!(
            "leader without a recent quorum acknowledgement ({:?} ms ago)",
            s.millis_since_quorum_ack
        )));
    }
    if !raft.has_leader_and_applied() {
        return Err(ApiError::Unavailable(
            "this node has not applied all committed entries".into(),
        ));
    }
    Ok(HttpResponse::Ok()
        .json(json!({ "healthy": true, "leader": s.leader, "term": s.current_term })))
}

/// `GET /cluster/digest`: SHA-256 of this replica's state at the index it has applied. Replicas
/// that applied the same index must agree; compare them after writes stop.
/// With `?index=N`: the digest taken at checkpoint entry N (see `/cluster/repair`), waiting
/// up to 15 s for this node to apply it; 404 if this node did not apply that entry itself.
pub async fn digest(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let index = super::query::pairs(req.query_string())
        .find(|(k, _)| k == "index")
        .map(|(_, v)| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::BadRequest("index must be a number".into()))
        })
        .transpose()?;
    let raft = state.keys.raft();
    match index {
        None => Ok(HttpResponse::Ok().json(raft.state_digest().await?)),
        Some(i) => match raft
            .checkpoint_digest(i, std::time::Duration::from_secs(15))
            .await?
        {
            Some(d) => Ok(HttpResponse::Ok().json(d)),
            None => Err(ApiError::NotFound(format!(
                "no checkpoint digest at index {i} on this node"
            ))),
        },
    }
}
