//! `GET /health` (the process is alive) and `GET /ready` (Raft has a leader, this node's state
//! is applied, and, on a leader, a quorum acknowledged it recently: reads are meaningful).
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;

/// Liveness: answers as long as the HTTP server runs.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness for load balancers.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raft = state.keys.raft();
    if raft.status().leader_cut_off() {
        return Err(ApiError::Unavailable(
            "not ready: this leader has no recent quorum acknowledgement".into(),
        ));
    }
    if raft.has_leader_and_applied() {
        Ok(HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"))
    } else {
        Err(ApiError::Unavailable(
            "not ready: no leader known or state not yet applied".into(),
        ))
    }
}

/// Anything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such path".into()))
}
