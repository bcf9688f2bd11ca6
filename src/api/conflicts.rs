//! The conflicts API (JSON): `GET /cluster/conflicts`, `GET /cluster/conflicts/{id}`,
//! `POST /cluster/conflicts/{id}/resolve`, `GET|PUT /cluster/conflicts/policies`, and the audit
//! trail `GET /cluster/audit`. Reads come from the local replica; resolutions and policy
//! changes are replicated commands. Everything but reading the policies needs admin
//! credentials: conflicts and the audit trail name who uploaded what, by client address.
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::cluster_admin::{authorize, parse};
use super::error::ApiError;
use super::query::pairs;
use super::settings_write::read_modify_write;
use super::AppState;
use crate::raft::{AuditCursor, AuditFilter, ConflictFilter, Op, Policies};

/// Largest page.
const MAX_LIMIT: usize = 1000;

fn query(req: &HttpRequest) -> Vec<(String, String)> {
    pairs(req.query_string())
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

fn get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn number(q: &[(String, String)], key: &str) -> Result<Option<u64>, ApiError> {
    get(q, key)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::BadRequest(format!("{key} must be a number")))
        })
        .transpose()
}

fn limit(q: &[(String, String)]) -> Result<usize, ApiError> {
    Ok(number(q, "limit")?.map_or(100, |n| (n as usize).clamp(1, MAX_LIMIT)))
}

/// `GET /cluster/conflicts?fingerprint=&kind=&status=&before=&limit=`, newest first.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let q = query(&req);
    let f = ConflictFilter {
        fingerprint: get(&q, "fingerprint").map(|s| s.trim_start_matches("0x").to_uppercase()),
        kind: get(&q, "kind").map(str::to_string),
        status: get(&q, "status").map(str::to_string),
        before: number(&q, "before")?,
        limit: limit(&q)?,
    };
    let page = state.keys.conflicts(&f)?;
    Ok(HttpResponse::Ok().json(json!({ "conflicts": page.items, "next_before": page.next })))
}

fn conflict_id(path: &str) -> Result<u64, ApiError> {
    path.parse()
        .map_err(|_| ApiError::BadRequest(format!("conflict id {path:?} is not a number")))
}

/// `GET /cluster/conflicts/{id}`: both versions, clocks, origins, and the diff.
pub async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let id = conflict_id(&path)?;
    let c = state
        .keys
        .conflict(id)?
        .ok_or_else(|| ApiError::NotFound(format!("no conflict {id}")))?;
    Ok(HttpResponse::Ok().json(c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    choose: String,
    #[serde(default)]
    note: String,
}

/// `POST /cluster/conflicts/{id}/resolve` with `{"choose": "current|incoming|merge", "note"}`.
pub async fn resolve(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let id = conflict_id(&path)?;
    let b: ResolveBody = parse(&body)?;
    if !["current", "incoming", "merge"].contains(&b.choose.as_str()) {
        return Err(ApiError::BadRequest(
            "choose must be current, incoming or merge".into(),
        ));
    }
    let op = Op::Resolve {
        id,
        choose: b.choose,
        note: b.note,
        limits: Some(state.settings.limits),
    };
    let (outcomes, index) = state.keys.propose(op, &actor).await?;
    match outcomes.first() {
        Some(crate::raft::command::ApplyOutcome::Resolved { id, .. }) => Ok(HttpResponse::Ok()
            .insert_header(("X-Keyraft-Log-Index", index.to_string()))
            .json(json!({ "resolved": id, "log_index": index }))),
        Some(crate::raft::command::ApplyOutcome::Rejected { reason, .. })
            if reason.starts_with("no conflict") =>
        {
            Err(ApiError::NotFound(reason.clone()))
        }
        Some(crate::raft::command::ApplyOutcome::Rejected { reason, .. }) => {
            Err(ApiError::Conflict(reason.clone()))
        }
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// `GET /cluster/conflicts/policies`.
pub async fn policies(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.keys.policies()?))
}

/// `PUT /cluster/conflicts/policies` with any of `add`, `add_after_delete`, `replace`,
/// `delete` set to `merge`, `last-writer-wins`, `reject` or `manual`; the others keep their
/// value. Replicated: every node uses the new policies from the command's log index on.
pub async fn set_policies(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let patch: serde_json::Map<String, serde_json::Value> = parse(&body)?;
    let (policies, _, index) = read_modify_write(
        &state,
        &actor,
        |state| Ok(state.keys.policies()?),
        |current| {
            let mut current =
                serde_json::to_value(current).map_err(|e| ApiError::Internal(e.to_string()))?;
            for (k, v) in &patch {
                if current.get(k).is_none() {
                    return Err(ApiError::BadRequest(format!("unknown policy kind {k:?}")));
                }
                current[k] = v.clone();
            }
            serde_json::from_value::<Policies>(current)
                .map_err(|e| ApiError::BadRequest(format!("bad policy: {e}")))
        },
        |policies, expect| Op::SetPolicies {
            policies,
            expect: Some(expect),
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Keyraft-Log-Index", index.to_string()))
        .json(json!({ "policies": policies, "log_index": index })))
}

/// `GET /cluster/audit?from=INDEX[.SEQ]&fingerprint=&action=&limit=[&format=jsonl]`, in log
/// order. The next page starts at `next_from` (JSON) or the `X-Keyraft-Next-From` header; both
/// are absent at the end of the trail.
pub async fn audit(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let q = query(&req);
    let f = AuditFilter {
        from: get(&q, "from")
            .map(|v| {
                AuditCursor::parse(v).ok_or_else(|| {
                    ApiError::BadRequest("from must be INDEX or INDEX.SEQ (numbers)".into())
                })
            })
            .transpose()?
            .unwrap_or_default(),
        fingerprint: get(&q, "fingerprint").map(|s| s.trim_start_matches("0x").to_uppercase()),
        action: get(&q, "action").map(str::to_string),
        limit: limit(&q)?,
    };
    let page = state.keys.audit(&f)?;
    let mut resp = HttpResponse::Ok();
    if let Some(next) = page.next {
        resp.insert_header(("X-Keyraft-Next-From", next.to_string()));
    }
    if get(&q, "format") == Some("jsonl") {
        let mut out = String::new();
        for e in &page.items {
            out.push_str(&serde_json::to_string(e).map_err(|e| ApiError::Internal(e.to_string()))?);
            out.push('\n');
        }
        return Ok(resp.content_type("application/x-ndjson").body(out));
    }
    let next = page.next.map(|c| c.to_string());
    Ok(resp.json(json!({ "entries": page.items, "next_from": next })))
}
