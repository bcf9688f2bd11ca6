//! The composition root: opens the store, starts Raft, initialises a fresh one-member cluster
//! once, and serves HKP. The only module that sees every layer.
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::api::{self, ApiSettings, AppState, ServerSettings};
use crate::config::Config;
use crate::raft::{KeyraftNode, Keyserver, RaftNode, RaftSettings};
use crate::rpc::{self, client::GrpcTransport, proto::JoinRequest, server::JoinPolicy};
use crate::store::Store;
use std::sync::Arc;

const NODE_ID_KEY: &str = "node_id";

/// This node's Raft id: generated once, persisted, never reused.
fn node_id(store: &Store) -> anyhow::Result<u64> {
    if let Some(b) = store.raft_meta_get(NODE_ID_KEY)? {
        let arr: [u8; 8] = b
            .as_slice()
            .try_into()
            .context("stored node id is not 8 bytes")?;
        return Ok(u64::from_be_bytes(arr));
    }
    let mut h = Sha256::new();
    h.update(format!("{:?}", std::time::SystemTime::now()));
    h.update(std::process::id().to_be_bytes());
    h.update(store.data_dir().display().to_string());
    let d = h.finalize();
    // Keep ids positive and human-sized (53 bits, exact in JSON numbers); never 0.
    let id = (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) >> 11).max(1);
    store.raft_meta_put(NODE_ID_KEY, &id.to_be_bytes())?;
    Ok(id)
}

/// A running node.
pub struct Node {
    pub keys: Keyserver,
    pub raft: RaftNode,
    pub server: actix_server::Server,
    pub addrs: Vec<std::net::SocketAddr>,
    rpc_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    /// Start a node from a validated configuration.
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        let store = Store::open(&config.node.data_dir).with_context(|| {
            format!("opening data directory {}", config.node.data_dir.display())
        })?;
        let id = node_id(&store)?;
        let cluster = &config.cluster;
        let listener = match cluster.raft_listen {
            Some(addr) => {
                tracing::warn!(
                    "INSECURE: node-to-node traffic on {addr} is plaintext and unauthenticated \
                     (--insecure-plaintext); use only for local experiments"
                );
                Some(
                    rpc::server::bind(addr)
                        .await
                        .with_context(|| format!("listening on {addr}"))?,
                )
            }
            None => None,
        };
        let raft_addr = match (&cluster.advertise, &listener) {
            (Some(a), _) => a.clone(),
            (None, Some(l)) => l.local_addr()?.to_string(),
            (None, None) => String::new(),
        };
        let me = KeyraftNode {
            name: if cluster.name.is_empty() {
                hostname()
            } else {
                cluster.name.clone()
            },
            raft_addr,
            http_addr: config.hkp.listen.to_string(),
        };
        let settings = RaftSettings {
            heartbeat_ms: config.raft.heartbeat_ms,
            election_min_ms: config.raft.election_min_ms,
            election_max_ms: config.raft.election_max_ms,
            snapshot_logs_since_last: config.raft.snapshot_every,
            max_in_snapshot_log_to_keep: config.raft.keep_logs,
            ..RaftSettings::default()
        };
        let secret = match &cluster.secret_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the cluster secret {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let (raft, keys, rpc_stop) = match listener {
            None => {
                let raft = RaftNode::start(store.clone(), id, me.clone(), settings).await?;
                let keys = Keyserver::new(raft.clone(), store, id);
                (raft, keys, None)
            }
            Some(listener) => {
                let raft = RaftNode::start_with_transport(
                    store.clone(),
                    id,
                    me.clone(),
                    settings,
                    GrpcTransport::new(),
                )
                .await?;
                let keys = Keyserver::new(raft.clone(), store, id)
                    .with_forwarder(Arc::new(GrpcTransport::new()));
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let policy = JoinPolicy {
                    secret: secret.clone(),
                    max_voters: cluster.max_voters,
                };
                let server = rpc::server::serve(keys.clone(), policy, listener, async {
                    let _ = stopped.await;
                });
                tokio::spawn(async move {
                    if let Err(e) = server.await {
                        tracing::error!(error = %e, "gRPC server stopped");
                    }
                });
                (raft, keys, Some(stop))
            }
        };
        if !raft.members().is_empty() {
            info!(node_id = id, "restarted with existing Raft state");
        } else if cluster.join.is_empty() {
            if raft.initialize_if_fresh().await? {
                info!(node_id = id, "initialised a new one-member cluster");
            }
        } else {
            join(&raft, &me, &cluster.join, secret.unwrap_or_default()).await?;
        }
        let state = AppState {
            keys: keys.clone(),
            settings: std::sync::Arc::new(ApiSettings {
                result_limit: config.hkp.result_limit,
                max_body_bytes: config.hkp.max_body_bytes,
                write_timeout: Duration::from_secs(config.hkp.write_timeout_secs),
                limits: config.limits.to_limits()?,
            }),
        };
        let workers = if config.hkp.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.hkp.workers
        };
        let server_settings = ServerSettings {
            listen: config.hkp.listen,
            tls_listen: config.hkp.tls_listen,
            tls_cert: config.hkp.tls_cert.clone(),
            tls_key: config.hkp.tls_key.clone(),
            workers,
            request_timeout: Duration::from_secs(config.hkp.client_timeout_secs),
            keep_alive: Duration::from_secs(config.hkp.client_timeout_secs),
            max_connections: config.hkp.max_connections,
        };
        let (server, addrs) = api::server::start(state, server_settings)
            .await
            .with_context(|| format!("listening on {}", config.hkp.listen))?;
        for a in &addrs {
            info!(%a, "HKP listening");
        }
        Ok(Node {
            keys,
            raft,
            server,
            addrs,
            rpc_stop,
        })
    }

    /// Serve until SIGINT or SIGTERM: stop accepting, let in-flight requests finish (bounded
    /// by the write timeout), then shut Raft down.
    pub async fn run(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = &mut server => { r??; }
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
            _ = term.recv() => info!("SIGTERM: stopping"),
        }
        handle.stop(true).await;
        if let Some(stop) = self.rpc_stop {
            let _ = stop.send(());
        }
        info!("HTTP stopped; shutting Raft down");
        self.raft.shutdown().await;
        info!("stopped");
        Ok(())
    }
}

/// Ask the members in `seeds` (following "not the leader" answers to the leader) to add this
/// node; bounded: two minutes of attempts.
async fn join(
    raft: &RaftNode,
    me: &KeyraftNode,
    seeds: &[String],
    secret: String,
) -> anyhow::Result<()> {
    let transport = GrpcTransport::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut targets: Vec<String> = seeds.to_vec();
    let mut last = String::from("no member answered");
    while tokio::time::Instant::now() < deadline {
        let Some(target) = targets.first().cloned() else {
            break;
        };
        targets.rotate_left(1);
        let req = JoinRequest {
            node_id: raft.id(),
            name: me.name.clone(),
            raft_addr: me.raft_addr.clone(),
            http_addr: me.http_addr.clone(),
            secret: secret.clone(),
        };
        match transport.join(&target, req, Duration::from_secs(90)).await {
            Ok(r) if r.error.is_empty() => {
                info!(
                    leader = r.leader_id,
                    voter = r.voter,
                    "joined the cluster through {target}"
                );
                return Ok(());
            }
            Ok(r) => {
                last = format!("{target}: {}", r.error);
                if !r.leader_raft_addr.is_empty() && !targets.contains(&r.leader_raft_addr) {
                    targets.insert(0, r.leader_raft_addr);
                    continue;
                }
            }
            Err(e) if e.contains("secret") => anyhow::bail!("join refused by {target}: {e}"),
            Err(e) => last = format!("{target}: {e}"),
        }
        tracing::warn!("join attempt failed ({last}); retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("could not join the cluster: {last}")
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "keyraft".into())
}
