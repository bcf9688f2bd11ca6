//! `GET /health` (the process is alive) and `GET /ready` (Raft has a leader and this node's
//! state is applied, so reads are meaningful).
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;

/// Liveness: answers as long as the HTTP server runs.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness for load balancers.
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.keys.raft().has_leader_and_applied() {
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
