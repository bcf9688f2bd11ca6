//! `POST /cluster/repair` (admin token): every member digests its state at one new log index
//! (a checkpoint entry) and the answers are compared; with `{"rebuild": true}` each member that
//! differs from the majority leaves and rebuilds itself from the cluster at its next start.
//! See [`crate::raft::repair`].
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::cluster_admin::{authorize, parse};
use super::error::ApiError;
use super::AppState;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RepairBody {
    #[serde(default)]
    rebuild: bool,
}

/// `POST /cluster/repair`: 200 with the report when every member agrees, 409 with the same
/// report when some differ or could not answer.
pub async fn repair(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let b: RepairBody = if body.iter().all(u8::is_ascii_whitespace) {
        RepairBody::default()
    } else {
        parse(&body)?
    };
    let report = state.keys.repair(b.rebuild, &actor).await?;
    Ok(if report.consistent {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::Conflict().json(report)
    })
}
