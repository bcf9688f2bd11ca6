//! Mutating cluster calls: `POST /cluster/join` (authenticated by the cluster secret in the
//! body, like a joining node) and `POST /cluster/leave` (an administrator: see [`authorize`],
//! the one admin check every mutating `/cluster` call uses). Both are executed by the leader;
//! a follower forwards them.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::server::ClientCertNames;
use super::{ApiSettings, AppState};
use crate::raft::JoinSpec;

/// Largest JSON body these calls accept.
const MAX_BODY: usize = 16 << 10;

/// Compare tokens in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The ways of authenticating as an administrator this node offers, for refusals.
fn admin_ways(settings: &ApiSettings) -> String {
    let mut ways = Vec::new();
    if settings.admin_token.is_some() {
        ways.push("Authorization: Bearer <admin token>");
    }
    if !settings.admin_cert_names.is_empty() {
        ways.push("an admin client certificate over hkps");
    }
    if ways.is_empty() {
        "this node accepts no admin credentials (configure cluster.admin_token_file or \
         cluster.admin_cert_names)"
            .into()
    } else {
        format!("this node accepts {}", ways.join(" or "))
    }
}

/// The one admin check for `/cluster` calls that change state or show personal data: the request carries the admin token
/// (`Authorization: Bearer <token>`), or came over hkps with a verified client certificate whose
/// name is in `cluster.admin_cert_names`. Returns the actor for the audit trail:
/// `admin-token`, or `cert:NAME`. Refusals are 401 with one line naming what was wrong and
/// the ways this node accepts.
pub(super) fn authorize(req: &HttpRequest, state: &AppState) -> Result<String, ApiError> {
    let settings = &state.settings;
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(g), Some(token)) = (given, &settings.admin_token) {
        if same(g.as_bytes(), token.as_bytes()) {
            return Ok("admin-token".into());
        }
    }
    let cert = req.conn_data::<ClientCertNames>();
    if let Some(ClientCertNames(names)) = cert {
        if let Some(n) = names.iter().find(|n| settings.admin_cert_names.contains(n)) {
            return Ok(format!("cert:{n}"));
        }
    }
    let ways = admin_ways(settings);
    let problem = match (given, cert) {
        (Some(_), _) => {
            tracing::warn!(peer = ?req.peer_addr(), path = req.path(), "refused: wrong admin token");
            "wrong admin token".to_string()
        }
        (None, Some(ClientCertNames(names))) => {
            tracing::warn!(peer = ?req.peer_addr(), path = req.path(), ?names,
                "refused: client certificate not in cluster.admin_cert_names");
            format!("the client certificate names {names:?}, none of them an admin")
        }
        (None, None) => "no admin credentials".to_string(),
    };
    Err(ApiError::Unauthorized(format!("{problem}; {ways}")))
}

/// The member named by `id` or `name` (neither: the node answering); 404 if none.
pub(super) fn member_id(
    raft: &crate::raft::RaftNode,
    id: Option<u64>,
    name: Option<&str>,
) -> Result<u64, ApiError> {
    let members = raft.members();
    match (id, name) {
        (Some(id), _) => members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.id)
            .ok_or_else(|| ApiError::NotFound(format!("no member with id {id}"))),
        (None, Some(name)) => members
            .iter()
            .find(|m| m.node.name == name)
            .map(|m| m.id)
            .ok_or_else(|| ApiError::NotFound(format!("no member named {name:?}"))),
        (None, None) => Ok(raft.id()),
    }
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}

/// `POST /cluster/join` with `{"id", "name", "raft_addr", "http_addr", "secret"}`.
pub async fn join(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let spec: JoinSpec = parse(&body)?;
    let client = req
        .peer_addr()
        .map_or_else(|| "an unknown address".into(), |a| a.to_string());
    let outcome = state.keys.join(spec, &client).await?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// Which member leaves: by id, by name, or (neither) the node answering.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LeaveBody {
    id: Option<u64>,
    name: Option<String>,
}

/// `POST /cluster/leave` with `{"id": N}`, `{"name": "..."}` or no body (this node).
pub async fn leave(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let b: LeaveBody = if body.iter().all(u8::is_ascii_whitespace) {
        LeaveBody::default()
    } else {
        parse(&body)?
    };
    let raft = state.keys.raft();
    let id = member_id(raft, b.id, b.name.as_deref())?;
    tracing::info!(node_id = id, %actor, "leave requested");
    let removed = state.keys.leave(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "removed": removed })))
}
