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

/// A path whose other methods are answered 405 (not 404: the path exists).
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
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
            resource("/pks/lookup")
                .route(web::get().to(lookup::lookup))
                .route(web::head().to(lookup::lookup)),
        )
        .service(resource("/pks/add").route(web::post().to(add::add)))
        .service(resource("/pks/delete").route(web::post().to(admin::signed)))
        .service(resource("/pks/replace").route(web::post().to(admin::signed)))
        .service(
            resource("/health")
                .route(web::get().to(health::health))
                .route(web::head().to(health::health)),
        )
        .service(
            resource("/ready")
                .route(web::get().to(health::ready))
                .route(web::head().to(health::ready)),
        )
        .service(resource("/cluster/status").route(web::get().to(cluster::status)))
        .service(resource("/cluster/nodes").route(web::get().to(cluster::nodes)))
        .service(resource("/cluster/leader").route(web::get().to(cluster::leader)))
        .service(resource("/cluster/health").route(web::get().to(cluster::health)))
        .service(resource("/cluster/consensus").route(web::get().to(cluster::consensus)))
        .service(resource("/cluster/digest").route(web::get().to(cluster::digest)))
        .service(resource("/cluster/sync").route(web::post().to(sync::sync)))
        .service(resource("/cluster/sync/status").route(web::get().to(sync::status)))
        .service(resource("/cluster/repair").route(web::post().to(repair::repair)))
        .service(resource("/cluster/load").route(web::get().to(observe::load)))
        .service(resource("/cluster/performance").route(web::get().to(observe::performance)))
        .service(
            resource("/cluster/routing")
                .route(web::get().to(routing::get))
                .route(web::put().to(routing::put)),
        )
        .service(resource("/cluster/join").route(web::post().to(cluster_admin::join)))
        .service(resource("/cluster/leave").route(web::post().to(cluster_admin::leave)))
        .service(resource("/cluster/admin/delete").route(web::post().to(admin::delete)))
        .service(resource("/cluster/admin/replace").route(web::post().to(admin::replace)))
        .service(resource("/cluster/audit").route(web::get().to(conflicts::audit)))
        .service(resource("/cluster/conflicts").route(web::get().to(conflicts::list)))
        .service(
            resource("/cluster/conflicts/policies")
                .route(web::get().to(conflicts::policies))
                .route(web::put().to(conflicts::set_policies)),
        )
        .service(resource("/cluster/conflicts/{id}").route(web::get().to(conflicts::show)))
        .service(
            resource("/cluster/conflicts/{id}/resolve").route(web::post().to(conflicts::resolve)),
        )
        .default_service(web::to(health::not_found))
}
