//! Read-only cluster endpoints (JSON): `/cluster/status`, `/cluster/nodes`, `/cluster/leader`,
//! `/cluster/health`. They read the raft facade's local view; mutating calls (join, leave) go
//! node to node over gRPC for now.
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

/// This node: id, name, role, term, leader, commit and applied index, members.
pub async fn status(state: web::Data<AppState>) -> HttpResponse {
    let raft = state.keys.raft();
    HttpResponse::Ok().json(json!({
        "node": raft.me(),
        "status": raft.status(),
        "members": raft.members(),
    }))
}

/// Every member with its addresses and whether it votes.
pub async fn nodes(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "nodes": state.keys.raft().members() }))
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

/// 200 when a leader is known and this node has applied what it knows committed.
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raft = state.keys.raft();
    let s = raft.status();
    if s.leader.is_none() {
        return Err(ApiError::Unavailable("no leader known".into()));
    }
    if !raft.has_leader_and_applied() {
        return Err(ApiError::Unavailable(
            "this node has not applied all committed entries".into(),
        ));
    }
    Ok(HttpResponse::Ok()
        .json(json!({ "healthy": true, "leader": s.leader, "term": s.current_term })))
}
