//! `POST /cluster/sync` (admin token): bring lagging members up to date now, by snapshot if
//! asked; `GET /cluster/sync/status`: each member's lag behind the leader and the snapshot
//! transfers in progress or recently finished. Lags are only known to the leader, so a
//! follower passes both calls on to it ([`super::proxy`]) and adds what it received itself.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::cluster_admin::{authorize, member_id, parse};
use super::error::ApiError;
use super::proxy;
use super::AppState;

/// `POST /cluster/sync` body: which member (id or name; default every member) and whether to
/// send it a fresh snapshot instead of the log.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    id: Option<u64>,
    name: Option<String>,
    #[serde(default)]
    snapshot: bool,
}

/// `POST /cluster/sync`.
pub async fn sync(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let b: SyncBody = if body.iter().all(u8::is_ascii_whitespace) {
        SyncBody::default()
    } else {
        parse(&body)?
    };
    let raft = state.keys.raft();
    let target = match (b.id, b.name) {
        (None, None) => None,
        (id, name) => Some(member_id(raft, id, name.as_deref())?),
    };
    if raft.status().state != "Leader" {
        return proxy::to_leader(&req, &state, &body).await;
    }
    let outcome = raft.sync(target, b.snapshot).await?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// `GET /cluster/sync/status`.
pub async fn status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = state.keys.raft();
    let s = raft.status();
    let (outgoing, incoming) = raft.sync_tracker().views();
    if s.state != "Leader" && !req.headers().contains_key(proxy::PROXIED) {
        // The leader's view, plus the snapshot this node is receiving.
        let leader = proxy::to_leader(&req, &state, b"").await;
        let leader_view = match leader {
            Ok(r) if r.status().is_success() => {
                let bytes = actix_web::body::to_bytes(r.into_body())
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .unwrap_or_else(|e| json!({ "error": e.to_string() }))
            }
            Ok(r) => json!({ "error": format!("leader answered {}", r.status()) }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        return Ok(HttpResponse::Ok().json(json!({
            "answered_by": s.id,
            "state": s.state,
            "applied_index": s.applied_index,
            "incoming_snapshot": incoming,
            "leader_view": leader_view,
        })));
    }
    let last = s.last_log_index.unwrap_or(0);
    let members: Vec<_> = raft
        .members()
        .into_iter()
        .map(|m| {
            let matched = if m.id == s.id {
                s.last_log_index
            } else {
                s.matched.get(&m.id).copied().flatten()
            };
            json!({
                "id": m.id,
                "name": m.node.name,
                "voter": m.voter,
                "matched_index": matched,
                "lag": last.saturating_sub(matched.unwrap_or(0)),
                "last_heartbeat_ms_ago": s.millis_since_heartbeat.get(&m.id).copied().flatten(),
                "needs_snapshot": m.id != s.id
                    && s.purged_index.is_some_and(|p| matched.is_none_or(|i| i < p)),
                "appends": raft.sync_tracker().append_path_of(m.id),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "answered_by": s.id,
        "state": s.state,
        "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "members": members,
        "outgoing_snapshots": outgoing,
        "incoming_snapshot": incoming,
    })))
}
