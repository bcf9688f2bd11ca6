//! Administrator writes. Hockeypuck-compatible signed requests, `POST /pks/delete` and
//! `POST /pks/replace` (form fields `keytext`, starting with the line `/pks/delete` or
//! `/pks/replace`, and `keysig`, a detached signature over the whole keytext by a key in the
//! admin keyring), and the JSON admin API with the admin token: `POST /cluster/admin/delete`
//! (`{"fingerprint", "reason"}`) and `POST /cluster/admin/replace` (an armored or binary
//! certificate as the body). Both JSON calls honour `If-Match` (412 when the version changed).
//!
//! A signed request is accepted once: its signature must have been made within
//! `[cluster] admin_signature_window_secs` of the request (403 otherwise), and a second use of
//! the same signature is refused with 409 "signature already used" (checked again in apply,
//! deterministically, so copies racing through two nodes cannot both apply).
use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::add::respond;
use super::body::read_limited;
use super::cluster_admin::{authorize, parse};
use super::error::ApiError;
use super::query::pairs;
use super::AppState;
use crate::pgp::{self, AdminAction};

fn if_match(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn form_field(body: &[u8], name: &str) -> Result<Vec<u8>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("form body is not valid UTF-8".into()))?;
    pairs(text)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::BadRequest(format!("missing {name} field")))
}

/// `POST /pks/delete` and `POST /pks/replace`: signed by an admin key.
pub async fn signed(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(
        body,
        state.settings.max_body_bytes,
        state.settings.write_timeout,
    )
    .await?;
    let keytext = form_field(&body, "keytext")?;
    let keysig = form_field(&body, "keysig")
        .map_err(|_| ApiError::Forbidden("missing keysig: admin requests must be signed".into()))?;
    let admins = state.settings.admin_keys.clone();
    let verified = web::block(move || {
        pgp::verify_admin_request(&keytext, &keysig, &admins, SystemTime::now())
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    let path_action = if req.path().ends_with("/delete") {
        AdminAction::Delete
    } else {
        AdminAction::Replace
    };
    if verified.action != path_action {
        return Err(ApiError::BadRequest(format!(
            "keytext asks for {} but was posted to {}",
            verified.action.command(),
            req.path()
        )));
    }
    tracing::info!(signer = %verified.signer, action = ?verified.action, certs = ?verified.fingerprints, "signed admin request");
    let (report, index) = state
        .keys
        .signed_admin(
            verified,
            state.settings.limits,
            state.settings.admin_signature_window_secs,
        )
        .await?;
    Ok(respond(&req, &report, index))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    fingerprint: String,
    #[serde(default)]
    reason: String,
}

/// `POST /cluster/admin/delete` with `{"fingerprint", "reason"}` and the admin token.
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let b: DeleteBody = parse(&body)?;
    let fpr = b.fingerprint.trim_start_matches("0x").to_uppercase();
    if pgp::Fingerprint::from_hex(&fpr).is_none() {
        return Err(ApiError::BadRequest(format!(
            "{fpr:?} is not a fingerprint"
        )));
    }
    let (report, index) = state
        .keys
        .delete(vec![fpr], if_match(&req), &b.reason, &actor)
        .await?;
    Ok(respond(&req, &report, index))
}

/// `POST /cluster/admin/replace`: the body is the new certificate; the admin token.
pub async fn replace(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let body = read_limited(
        body,
        state.settings.max_body_bytes,
        state.settings.write_timeout,
    )
    .await?;
    let (report, index) = state
        .keys
        .replace(body.to_vec(), state.settings.limits, if_match(&req), &actor)
        .await?;
    Ok(respond(&req, &report, index))
}
