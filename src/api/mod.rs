//! HKP over HTTP (actix-web): `/pks/lookup`, `/pks/add`, `/health`, `/ready`, and the
//! cluster API under `/cluster/`.
//!
//! Reads and writes go through [`crate::raft::Keyserver`]; this layer never touches the store
//! and never imports `rpc`. [`app`] is the one app factory, used by the server and by the
//! in-process tests; it wraps every request in a middleware that counts it and keeps it in the
//! in-flight gauge until its response is ready ([`crate::metrics::Load`]). Status codes come
//! from one place, [`error::ApiError`].
pub mod add;
pub mod admin;
pub mod agent;
pub mod body;
pub mod cluster;
pub mod cluster_admin;
pub mod conflicts;
pub mod error;
pub mod format;
pub mod health;
pub mod lookup;
pub mod observe;
pub mod proxy;
pub mod query;
pub mod rawtarget;
pub mod repair;
pub mod routing;
pub mod server;
mod settings_write;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App};

use crate::pgp::Limits;
use crate::raft::Keyserver;

pub use server::ServerSettings;

/// Per-request settings of the HKP API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Most certificates one lookup returns.
    pub result_limit: usize,
    /// Largest accepted `/pks/add` body.
    pub max_body_bytes: usize,
    /// Bound on a write (commit and apply).
    pub write_timeout: Duration,
    /// Limits and flooding defence for submissions.
    pub limits: Limits,
    /// Bearer token for mutating `/cluster` calls; `None`: the token is not accepted.
    pub admin_token: Option<String>,
    /// Names of verified hkps client certificates accepted for mutating `/cluster` calls (in
    /// place of the token); empty: no certificate is accepted.
    pub admin_cert_names: Vec<String>,
    /// Certificates whose signatures authorise `/pks/delete` and `/pks/replace`.
    pub admin_keys: Arc<Vec<sequoia_openpgp::Cert>>,
    /// Most seconds between a signed admin request's signature and its arrival.
    pub admin_signature_window_secs: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            result_limit: 100,
            max_body_bytes: 8 << 20,
            write_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            admin_token: None,
            admin_cert_names: Vec::new(),
            admin_keys: Arc::default(),
            admin_signature_window_secs: 3600,
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub keys: Keyserver,
    pub settings: Arc<ApiSettings>,
}

async fn method_not_allowed() -> Result<actix_web::HttpResponse, error::ApiError> {
    Err(error::ApiError::MethodNotAllowed)
}

/// The one app factory (production and tests).
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let load = state.keys.raft().metrics().load.clone();
    App::new()
        .app_data(web::Data::new(state))
        .wrap_fn(move |req, srv| {
            let guard = load.begin();
            let response = srv.call(req);
            async move {
                let r = response.await;
                guard.finish(match &r {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => e.as_response_error().status_code().as_u16(),
                });
                r
            }
        })
        .service(
            web::resource("/pks/lookup")
                .route(web::get().to(lookup::lookup))
                .route(web::head().to(lookup::lookup))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/pks/add")
                .route(web::post().to(add::add))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/pks/delete")
                .route(web::post().to(admin::signed))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/pks/replace")
                .route(web::post().to(admin::signed))
                .default_service(web::to(method_not_allowed)),
        )
        .route("/health", web::get().to(health::health))
        .route("/ready", web::get().to(health::ready))
        .route("/cluster/status", web::get().to(cluster::status))
        .route("/cluster/nodes", web::get().to(cluster::nodes))
        .route("/cluster/leader", web::get().to(cluster::leader))
        .route("/cluster/health", web::get().to(cluster::health))
        .route("/cluster/consensus", web::get().to(cluster::consensus))
        .route("/cluster/digest", web::get().to(cluster::digest))
        .route("/cluster/sync", web::post().to(sync::sync))
        .route("/cluster/sync/status", web::get().to(sync::status))
        .route("/cluster/repair", web::post().to(repair::repair))
        .route("/cluster/load", web::get().to(observe::load))
        .route("/cluster/performance", web::get().to(observe::performance))
        .route("/cluster/routing", web::get().to(routing::get))
        .route("/cluster/routing", web::put().to(routing::put))
        .route("/cluster/join", web::post().to(cluster_admin::join))
        .route("/cluster/leave", web::post().to(cluster_admin::leave))
        .route("/cluster/admin/delete", web::post().to(admin::delete))
        .route("/cluster/admin/replace", web::post().to(admin::replace))
        .route("/cluster/audit", web::get().to(conflicts::audit))
        .route("/cluster/conflicts", web::get().to(conflicts::list))
        .route(
            "/cluster/conflicts/policies",
            web::get().to(conflicts::policies),
        )
        .route(
            "/cluster/conflicts/policies",
            web::put().to(conflicts::set_policies),
        )
        .route("/cluster/conflicts/{id}", web::get().to(conflicts::show))
        .route(
            "/cluster/conflicts/{id}/resolve",
            web::post().to(conflicts::resolve),
        )
        .default_service(web::to(health::not_found))
}
