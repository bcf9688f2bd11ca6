//! Passing an operator's call on to the leader when only the leader can answer it
//! (`/cluster/sync`, `/cluster/sync/status`): the same method, path, body and
//! `Authorization` header, sent over HTTP to the leader's advertised HKP address, with its
//! answer returned unchanged. A proxied request carries [`PROXIED`] so that it is never passed
//! on twice (a leader change mid-way answers 503 instead of looping).
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};

use super::error::ApiError;
use super::AppState;

/// Header marking a request already passed on by another member.
pub const PROXIED: &str = "x-keyraft-proxied";

/// Bound on the leader's answer.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Send `req` (with `body`) to the leader and return its answer.
pub async fn to_leader(
    req: &HttpRequest,
    state: &AppState,
    body: &[u8],
) -> Result<HttpResponse, ApiError> {
    if req.headers().contains_key(PROXIED) {
        return Err(ApiError::Unavailable(
            "the leader changed while the call was passed on; retry".into(),
        ));
    }
    let leader = state
        .keys
        .raft()
        .leader()
        .ok_or_else(|| ApiError::Unavailable("no leader known".into()))?;
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = body.to_vec();
    let http_addr = leader.node.http_addr.clone();
    // Name resolution blocks: on a blocking thread, like the exchange, and bounded with it.
    let work = actix_web::rt::task::spawn_blocking(move || {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&http_addr)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("the leader's HTTP address {http_addr:?} does not resolve"))?;
        let mut headers = vec![(PROXIED, "1"), ("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        crate::client::request(addr, &method, &target, &headers, &body, TIMEOUT)
            .map_err(|e| format!("at {addr}: {e}"))
    });
    let r = tokio::time::timeout(TIMEOUT * 2, work)
        .await
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "leader {}: no answer within {:?}",
                leader.id,
                TIMEOUT * 2
            ))
        })?
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Unavailable(format!("leader {} {e}", leader.id)))?;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let ctype = r
        .header("content-type")
        .unwrap_or("application/json")
        .to_string();
    Ok(HttpResponse::build(status)
        .content_type(ctype)
        .insert_header(("x-keyraft-answered-by", leader.id.to_string()))
        .body(r.body))
}
