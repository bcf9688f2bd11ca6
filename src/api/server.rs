//! The HTTP listeners: plain HKP and, when configured, hkps (rustls), both serving the app built
//! by [`crate::api::app`] through [`RawTargetIo`] so gpg's raw search patterns reach the handlers.
//!
//! This mirrors what actix-web's `HttpServer` does internally (`actix-web/src/server.rs`), with
//! one difference: each accepted connection (after the TLS handshake, for hkps) is wrapped in
//! [`RawTargetIo`] before actix-http's HTTP/1.x dispatcher reads it. Only HTTP/1.0 and HTTP/1.1
//! are served; HTTP/2 is not offered.
//!
//! Every connection is bounded in time: the request head must arrive within
//! [`ServerSettings::request_timeout`], idle keep-alive connections close after
//! [`ServerSettings::keep_alive`], the TLS handshake and the close of a connection have their own
//! limits, and each worker accepts at most its share of [`ServerSettings::max_connections`].
//!
//! With `tls_client_ca`, the hkps listener asks every client for a certificate from that CA but
//! requires none (gpg and browsers connect without one). rustls refuses the handshake if a
//! presented certificate does not chain to the CA; a verified certificate's names are put in the
//! connection's data as [`ClientCertNames`], where the admin check reads them.
//!
//! The returned [`Server`] does nothing until it is awaited or spawned; OS signals are not
//! handled here (the caller stops it through [`Server::handle`]).
//!
//! This module may depend on actix, rustls, [`crate::certname`] and the `api` module's app
//! factory. It must not depend on `rpc`, `store` or `node`, and it holds no HKP logic.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_http::{error::DispatchError, h1::H1Service, Extensions, HttpService, KeepAlive};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt as _};
use actix_tls::accept::{
    rustls_0_23::{Acceptor, TlsStream},
    TlsError,
};
use actix_web::dev::{AppConfig, Server};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use super::rawtarget::RawTargetIo;
use super::AppState;

/// How long a closing connection may take to shut down (flush and TLS close_notify).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for in-flight requests, in seconds.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// actix-server's upper bound on workers.
const MAX_WORKERS: usize = 512;

/// Listener settings, resolved from the configuration file.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address of the plain HKP listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address of the hkps listener; `None` disables TLS.
    pub tls_listen: Option<SocketAddr>,
    /// PEM file with the certificate chain, leaf first. Required with `tls_listen`.
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Required with `tls_listen`.
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA(s) whose client certificates hkps accepts (asked for, not
    /// required); `None`: hkps asks for no client certificate.
    pub tls_client_ca: Option<PathBuf>,
    /// Address of the HAProxy agent-check listener ([`super::agent`]); `None` disables it.
    pub agent_listen: Option<SocketAddr>,
    /// Number of worker threads (clamped to 1..=512).
    pub workers: usize,
    /// Time a client has to send a complete request head; also the TLS handshake limit.
    pub request_timeout: Duration,
    /// Idle time after which a keep-alive connection is closed; zero disables keep-alive.
    pub keep_alive: Duration,
    /// Concurrent connections across all workers (split evenly between them).
    pub max_connections: usize,
}

/// The DNS names of the client certificate a hkps connection presented, which rustls verified
/// against `tls_client_ca`. Present in the connection data (`HttpRequest::conn_data`) only when
/// a certificate was presented; never on the plain listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertNames(pub Vec<String>);

/// Records the verified client certificate of a hkps connection, if any, in its data.
fn record_client_cert(io: &RawTargetIo<TlsStream<TcpStream>>, data: &mut Extensions) {
    let certs = io.get_ref().get_ref().1.peer_certificates();
    if certs.is_some_and(|c| !c.is_empty()) {
        data.insert(ClientCertNames(crate::certname::peer_names(certs)));
    }
}

/// Binds the listeners and builds the server. Returns the server (await or spawn it to run it)
/// and the bound local addresses: the plain listener first, then the hkps listener if any.
///
/// Fails if a listener cannot be bound, or if TLS is configured but the certificate or key is
/// missing or unreadable.
pub async fn start(
    state: AppState,
    settings: ServerSettings,
) -> io::Result<(Server, Vec<SocketAddr>)> {
    let tls = match settings.tls_listen {
        Some(addr) => Some((addr, load_tls_config(&settings)?)),
        None => None,
    };

    let workers = settings.workers.clamp(1, MAX_WORKERS);
    let per_worker = settings.max_connections.div_ceil(workers).max(1);
    // Process-wide actix-tls setting: concurrent handshakes per worker.
    actix_tls::accept::max_concurrent_tls_connect(per_worker);

    let mut builder = Server::build()
        .workers(workers)
        .max_concurrent_connections(per_worker)
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .disable_signals();
    let mut addrs = Vec::new();

    let lst = TcpListener::bind(settings.listen)?;
    let addr = lst.local_addr()?;
    addrs.push(addr);
    let (st, cfg) = (state.clone(), settings.clone());
    builder = builder.listen(format!("hkp-{addr}"), lst, move || {
        fn_service(|io: TcpStream| {
            let peer = io.peer_addr().ok();
            let _ = io.set_nodelay(true);
            std::future::ready(Ok::<_, DispatchError>((RawTargetIo::new(io), peer)))
        })
        .and_then(h1_service(st.clone(), &cfg, addr, false, |_, _| {}))
    })?;

    if let Some(agent_addr) = settings.agent_listen {
        let lst = TcpListener::bind(agent_addr)?;
        let addr = lst.local_addr()?;
        addrs.push(addr);
        let st = state.clone();
        builder = builder.listen(format!("agent-{addr}"), lst, move || {
            let st = st.clone();
            fn_service(move |io: TcpStream| {
                let st = st.clone();
                async move {
                    super::agent::answer(&st, io).await;
                    Ok::<_, io::Error>(())
                }
            })
        })?;
    }

    if let Some((tls_addr, tls_config)) = tls {
        let lst = TcpListener::bind(tls_addr)?;
        let addr = lst.local_addr()?;
        addrs.push(addr);
        let mut acceptor = Acceptor::new(tls_config);
        acceptor.set_handshake_timeout(settings.request_timeout);
        let (st, cfg) = (state, settings);
        builder = builder.listen(format!("hkps-{addr}"), lst, move || {
            acceptor
                .clone()
                .map_err(TlsError::into_service_error)
                .map(|io: TlsStream<TcpStream>| {
                    let peer = io.get_ref().0.peer_addr().ok();
                    let _ = io.get_ref().0.set_nodelay(true);
                    (RawTargetIo::new(io), peer)
                })
                .and_then(
                    h1_service(st.clone(), &cfg, addr, true, record_client_cert)
                        .map_err(TlsError::<io::Error, _>::Service),
                )
        })?;
    }

    Ok((builder.run(), addrs))
}

/// The HTTP/1.x service for one worker, over connections of type `T`; `on_connect` may put
/// connection data (the client certificate) where handlers find it.
fn h1_service<T>(
    state: AppState,
    settings: &ServerSettings,
    local: SocketAddr,
    secure: bool,
    on_connect: impl Fn(&T, &mut Extensions) + 'static,
) -> impl actix_service::ServiceFactory<
    (T, Option<SocketAddr>),
    Config = (),
    Response = (),
    Error = DispatchError,
    InitError = (),
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let keep_alive = if settings.keep_alive.is_zero() {
        KeepAlive::Disabled
    } else {
        KeepAlive::Timeout(settings.keep_alive)
    };
    let host = local.to_string();
    let app = super::app(state)
        .into_factory()
        .map_err(|err: actix_web::Error| err.error_response());
    let service: H1Service<T, _, _> = HttpService::build()
        .keep_alive(keep_alive)
        .client_request_timeout(settings.request_timeout)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .local_addr(local)
        .on_connect_ext(on_connect)
        .h1(map_config(app, move |()| {
            // The same constructor actix-web's own HttpServer uses (public but doc-hidden).
            AppConfig::__priv_test_new(secure, host.clone(), local)
        }));
    service
}

/// Reads the certificate chain and key named in `settings` into a rustls server config that
/// offers HTTP/1.1 over ALPN and, with `tls_client_ca`, asks for (but does not require) a client
/// certificate from that CA.
fn load_tls_config(settings: &ServerSettings) -> io::Result<rustls::ServerConfig> {
    let (cert_path, key_path) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tls_listen needs both tls_cert and tls_key",
            ))
        }
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(cert_path, e))?;
    if certs.is_empty() {
        return Err(pem_error(
            cert_path,
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let setup = |e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("TLS setup: {e}"))
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?;
    let builder = match &settings.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(ca_path).map_err(|e| pem_error(ca_path, e))? {
                let ca = ca.map_err(|e| pem_error(ca_path, e))?;
                roots
                    .add(ca)
                    .map_err(|e| setup(&format!("{}: {e}", ca_path.display())))?;
            }
            if roots.is_empty() {
                return Err(pem_error(
                    ca_path,
                    rustls_pki_types::pem::Error::NoItemsFound,
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| setup(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| setup(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn pem_error(path: &Path, err: rustls_pki_types::pem::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {err}", path.display()),
    )
}
