//! `POST /pks/add`: submit certificates.
//!
//! Accepts `application/x-www-form-urlencoded` with a `keytext` field (gpg escapes every
//! non-alphanumeric byte, sq does not escape `=`), or a raw armored/binary body with any
//! other content type; without a `Content-Type`, a body with a `keytext` field is a form and
//! any other a raw body. Answers once the write is committed, fsynced and applied on this node,
//! with a per-key summary: text, or JSON with `options=mr` or `Accept: application/json`.
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::body::read_limited;
use super::error::ApiError;
use super::query::pairs;
use super::AppState;
use crate::raft::{ItemReport, Status};

/// Handle one submission: the body and then the write each bounded by the write timeout.
pub async fn add(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(
        body,
        state.settings.max_body_bytes,
        state.settings.write_timeout,
    )
    .await?;
    let work = async {
        let keytext = keytext(&req, body)?;
        let (report, index) = state
            .keys
            .submit(keytext, state.settings.limits, &actor(&req))
            .await?;
        Ok::<_, ApiError>(respond(&req, &report, index))
    };
    match tokio::time::timeout(state.settings.write_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::Unavailable(
            "write not committed in time; it may still be applied".into(),
        )),
    }
}

/// Whether the body is a form: by its media type (case does not matter), or, without a
/// `Content-Type`, by a `keytext` field in it.
fn is_form(req: &HttpRequest, body: &[u8]) -> bool {
    match req.headers().get(header::CONTENT_TYPE) {
        Some(v) => v.to_str().ok().is_some_and(|ct| {
            let media = ct.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
        None => body.starts_with(b"keytext=") || body.windows(9).any(|w| w == b"&keytext="),
    }
}

fn keytext(req: &HttpRequest, body: web::BytesMut) -> Result<Vec<u8>, ApiError> {
    if !is_form(req, &body) {
        return Ok(body.to_vec());
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("form body is not valid UTF-8".into()))?;
    // gpg escapes every byte and sq sends the armor's `+` raw, so a `+` is kept as it is;
    // but a standard form encoder (HTML forms, Python's urlencode) writes spaces as `+` and a
    // real `+` as `%2B`, which shows in the armor header.
    let standard = text.contains("-----BEGIN+PGP+");
    let text = if standard {
        std::borrow::Cow::Owned(text.replace('+', " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    let found = pairs(&text).find(|(k, _)| k == "keytext").map(|(_, v)| v);
    found.ok_or_else(|| ApiError::BadRequest("missing keytext field".into()))
}

fn wants_json(req: &HttpRequest) -> bool {
    let mr = pairs(req.query_string())
        .any(|(k, v)| k == "options" && v.split(|c| *c == b',').any(|o| o == b"mr"));
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    mr || accept
}

/// Who submitted, for the audit trail.
pub fn actor(req: &HttpRequest) -> String {
    match req.peer_addr() {
        Some(a) => format!("hkp {}", a.ip()),
        None => "hkp".into(),
    }
}

/// The HTTP status of a report: 409 when a write was refused as stale, 412 when `If-Match`
/// failed, else 200 (per-item results are in the body).
pub fn report_status(report: &[ItemReport]) -> actix_web::http::StatusCode {
    use actix_web::http::StatusCode;
    if report.iter().any(|r| r.status == Status::Stale) {
        StatusCode::CONFLICT
    } else if report
        .iter()
        .any(|r| r.status == Status::PreconditionFailed)
    {
        StatusCode::PRECONDITION_FAILED
    } else {
        StatusCode::OK
    }
}

/// The answer to a write: per-item lines (or JSON with `options=mr`) and the log index.
pub fn respond(req: &HttpRequest, report: &[ItemReport], index: u64) -> HttpResponse {
    let mut b = HttpResponse::build(report_status(report));
    b.insert_header(("X-Keyraft-Log-Index", index.to_string()));
    if wants_json(req) {
        return b.json(serde_json::json!({ "keys": report, "log_index": index }));
    }
    let mut text = String::new();
    for r in report {
        let status = serde_json::to_value(&r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let fpr = if r.fingerprint.is_empty() {
            "-"
        } else {
            &r.fingerprint
        };
        text.push_str(&format!("{status} {fpr}"));
        if let Some(reason) = &r.reason {
            text.push_str(&format!(": {reason}"));
        }
        text.push('\n');
    }
    b.content_type("text/plain; charset=utf-8").body(text)
}
