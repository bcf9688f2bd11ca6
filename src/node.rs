//! The composition root: opens the store, starts Raft, initialises a fresh one-member cluster
//! once, and serves HKP. The only module that sees every layer.
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::api::{self, ApiSettings, AppState, ServerSettings};
use crate::config::Config;
use crate::raft::{Admission, KeyraftNode, Keyserver, RaftNode, RaftSettings};
use crate::rpc::{self, client::GrpcTransport, tls::ClusterTls};
use crate::store::{FlushPolicy, Store, FLUSH_WHEN_IDLE};
use std::sync::Arc;

mod join;

use join::join;

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

/// After `/cluster/repair` found this replica different and it left the cluster, wipe its
/// state (`db/`, `snapshots/`) so that it joins again under a new id and receives the state
/// from the leader. Refuses to start without a join list: wiping then would create a new,
/// empty cluster.
fn rebuild_if_marked(data_dir: &std::path::Path, join: &[String]) -> anyhow::Result<()> {
    let marker = data_dir.join(crate::raft::repair::REBUILD_MARKER);
    if !marker.exists() {
        return Ok(());
    }
    anyhow::ensure!(
        !join.is_empty(),
        "{} asks for a rebuild from the cluster, but no `join` addresses are configured; \
         set --join (or remove the file to start with the old state)",
        marker.display()
    );
    for sub in ["db", "snapshots"] {
        let p = data_dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("wiping {}", p.display()))?;
        }
    }
    std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    tracing::warn!(
        data_dir = %data_dir.display(),
        "rebuild: wiped the old replica; joining the cluster again under a new id"
    );
    Ok(())
}

/// Flush the memtables when writes pause (`FlushPolicy`): apply skips RocksDB's WAL, so
/// this bounds what a crash makes the node re-apply from the log and how far `keyraft
/// export` next to the running node lags (see `crate::store`).
async fn flush_when_idle(store: Store) {
    let mut policy = FlushPolicy::default();
    loop {
        tokio::time::sleep(FLUSH_WHEN_IDLE).await;
        let seq = store.sequence();
        if !policy.check(seq) {
            continue;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.flush()).await {
            Ok(Ok(())) => policy.flushed(seq),
            Ok(Err(e)) => tracing::warn!("flushing the state machine: {e}"),
            Err(_) => return,
        }
    }
}

/// A running node.
pub struct Node {
    pub keys: Keyserver,
    pub raft: RaftNode,
    pub server: actix_server::Server,
    pub addrs: Vec<std::net::SocketAddr>,
    rpc_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The gRPC server, ended by `rpc_stop`.
    rpc_task: Option<tokio::task::JoinHandle<()>>,
    /// Background loops (membership watch, auto-remove); aborted at stop.
    loops: Vec<tokio::task::JoinHandle<()>>,
    /// Closed last, once every other handle is gone.
    store: Store,
    /// A fresh node's join, run by [`Node::run`] once HTTP serves (see [`PendingJoin`]).
    pending_join: Option<PendingJoin>,
}

/// A join still to make. It runs after the HTTP listener is up, so that while a node joins it
/// answers `/health`, `/ready` (503: joining) and `/cluster/nodes` (`"fresh": true`: the
/// bootstrap script's sign that no cluster exists yet), and handles SIGTERM.
struct PendingJoin {
    transport: GrpcTransport,
    me: KeyraftNode,
    seeds: Vec<String>,
    secret: String,
}

impl Node {
    /// Start a node from a validated configuration.
    pub async fn start(config: &Config) -> anyhow::Result<Node> {
        rebuild_if_marked(&config.node.data_dir, &config.cluster.join)?;
        let store = Store::open(&config.node.data_dir).with_context(|| {
            format!("opening data directory {}", config.node.data_dir.display())
        })?;
        let id = node_id(&store)?;
        let cluster = &config.cluster;
        let name = if cluster.name.is_empty() {
            hostname()
        } else {
            cluster.name.clone()
        };
        let tls = match &cluster.tls_dir {
            Some(dir) => Some(ClusterTls::load(dir, &name)?),
            None => None,
        };
        let listener = match cluster.raft_listen {
            Some(addr) => {
                if tls.is_none() {
                    tracing::warn!(
                        "INSECURE: node-to-node traffic on {addr} is plaintext and unauthenticated \
                         (--insecure-plaintext); use only for local experiments"
                    );
                }
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
            name,
            raft_addr,
            http_addr: http_advertise(config.hkp.listen, cluster.advertise.as_deref()),
        };
        let settings = RaftSettings {
            heartbeat_ms: config.raft.heartbeat_ms,
            election_min_ms: config.raft.election_min_ms,
            election_max_ms: config.raft.election_max_ms,
            snapshot_logs_since_last: config.raft.snapshot_every,
            max_in_snapshot_log_to_keep: config.raft.keep_logs,
            ..RaftSettings::default()
        };
        let secret = read_secret(cluster.secret_file.as_deref(), "the cluster secret")?;
        if secret.is_none() && cluster.raft_listen.is_some() {
            tracing::warn!(
                "INSECURE: no cluster secret (cluster.secret_file): POST /cluster/join admits \
                 any node that asks{}",
                if tls.is_some() {
                    " with a certificate of the cluster CA"
                } else {
                    ""
                }
            );
        }
        let admin_token = read_secret(cluster.admin_token_file.as_deref(), "the admin token")?;
        let transport = || GrpcTransport::new(tls.clone(), cluster.source_ip);
        let (raft, keys, rpc_stop, rpc_task) = match listener {
            None => {
                let raft = RaftNode::start(store.clone(), id, me.clone(), settings).await?;
                let keys = Keyserver::new(raft.clone(), store.clone(), id);
                (raft, keys, None, None)
            }
            Some(listener) => {
                let raft = RaftNode::start_with_transport(
                    store.clone(),
                    id,
                    me.clone(),
                    settings,
                    transport(),
                )
                .await?;
                let keys = Keyserver::new(raft.clone(), store.clone(), id)
                    .with_forwarder(Arc::new(transport()))
                    .with_admission(Admission::new(secret.clone(), cluster.max_voters));
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let (keys2, tls2) = (keys.clone(), tls.clone());
                let task = tokio::spawn(async move {
                    let server = rpc::server::serve(keys2, tls2.as_ref(), listener, async {
                        let _ = stopped.await;
                    });
                    if let Err(e) = server.await {
                        tracing::error!(error = %e, "gRPC server stopped");
                    }
                });
                (raft, keys, Some(stop), Some(task))
            }
        };
        // Persisted state, not the membership in openraft's metrics (still empty for a moment
        // after start): a restarted member must never join again, least of all one that was
        // removed while it was down (it would be re-admitted under its old id).
        let pending_join = if !raft.is_fresh()? {
            info!(node_id = id, "restarted with existing Raft state");
            None
        } else if cluster.join.is_empty() {
            if raft.initialize_if_fresh().await? {
                info!(node_id = id, "initialised a new one-member cluster");
            }
            None
        } else {
            keys.set_joining(true);
            Some(PendingJoin {
                transport: transport(),
                me: me.clone(),
                seeds: cluster.join.clone(),
                secret: secret.unwrap_or_default(),
            })
        };
        let mut loops = vec![
            tokio::spawn(crate::raft::removal::watch_membership(keys.clone())),
            tokio::spawn(flush_when_idle(store.clone())),
            tokio::spawn(crate::raft::promotion::run(keys.clone())),
        ];
        if cluster.auto_remove_after > 0 {
            let after = Duration::from_secs(cluster.auto_remove_after);
            info!(?after, "auto-remove of unreachable members is on");
            loops.push(tokio::spawn(crate::raft::auto_remove::run(
                keys.clone(),
                after,
            )));
        }
        let state = AppState {
            keys: keys.clone(),
            settings: std::sync::Arc::new(ApiSettings {
                result_limit: config.hkp.result_limit,
                max_body_bytes: config.hkp.max_body_bytes,
                write_timeout: Duration::from_secs(config.hkp.write_timeout_secs),
                limits: config.limits.to_limits()?,
                admin_token,
                admin_cert_names: cluster.admin_cert_names.clone(),
                admin_keys: Arc::new(match &cluster.admin_keyring {
                    Some(p) => {
                        let bytes = std::fs::read(p).with_context(|| {
                            format!("reading the admin keyring {}", p.display())
                        })?;
                        crate::pgp::parse_admin_keyring(&bytes)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                    }
                    None => Vec::new(),
                }),
                admin_signature_window_secs: cluster.admin_signature_window_secs,
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
            tls_client_ca: config.hkp.tls_client_ca.clone(),
            agent_listen: config.hkp.agent_listen,
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
            rpc_task,
            loops,
            store,
            pending_join,
        })
    }

    /// Serve until SIGINT or SIGTERM: stop accepting, let in-flight requests finish (bounded
    /// by the write timeout), shut Raft down, then close RocksDB once nothing else holds it
    /// (RocksDB still open while the process exits can abort the exit).
    pub async fn run(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let mut term = signal(SignalKind::terminate())?;
        let mut joining = self.pending_join.map(|j| {
            let keys = self.keys.clone();
            tokio::spawn(async move {
                join(&j.transport, keys.raft(), &j.me, &j.seeds, j.secret).await?;
                keys.set_joining(false);
                anyhow::Ok(())
            })
        });
        // Why the node stops, if it failed; returned after the clean shutdown below (returning
        // at once would leave Raft running and RocksDB open while the process exits).
        let mut failed: Option<anyhow::Error> = None;
        let server_ended = loop {
            tokio::select! {
                r = &mut server => {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failed = Some(anyhow::Error::from(e).context("HTTP server")),
                        Err(e) => failed = Some(anyhow::anyhow!("the HTTP server task failed: {e}")),
                    }
                    break true
                }
                _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break false }
                _ = term.recv() => { info!("SIGTERM: stopping"); break false }
                _ = removed(&self.keys) => {
                    tracing::warn!("this node left the cluster: stopping");
                    break false
                }
                r = async { joining.as_mut().expect("guarded").await }, if joining.is_some() => {
                    joining = None;
                    match r {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => failed = Some(e),
                        Err(e) => failed = Some(anyhow::anyhow!("the join task failed: {e}")),
                    }
                    break false;
                }
            }
        };
        if let Some(j) = joining {
            j.abort();
            // The leader may already have added it (as a learner, or even promoted it): the
            // entries were proposed there and commit without this node.
            let raft = self.keys.raft();
            if raft.members().iter().any(|m| m.id == raft.id()) {
                tracing::warn!(
                    node_id = raft.id(),
                    name = %raft.me().name,
                    "stopped during its join, but the cluster already lists this node: start it \
                     again (it catches up as a member and the leader promotes it if there is \
                     room among the voters), or remove it (keyraft leave --name NAME)"
                );
            }
        }
        handle.stop(true).await;
        // The server future returns once its workers have dropped their state.
        if !server_ended {
            if let Ok(Ok(Err(e))) = tokio::time::timeout(CLOSE_WAIT, server).await {
                tracing::warn!(error = %e, "HTTP server ended with an error");
            }
        }
        if let Some(stop) = self.rpc_stop {
            let _ = stop.send(());
        }
        for l in &self.loops {
            l.abort();
        }
        info!("HTTP stopped; shutting Raft down");
        self.raft.shutdown().await;
        if let Some(task) = self.rpc_task {
            let _ = tokio::time::timeout(CLOSE_WAIT, task).await;
        }
        for l in self.loops {
            let _ = l.await;
        }
        drop((self.keys, self.raft));
        let store = self.store;
        let closed = tokio::task::spawn_blocking(move || store.close(CLOSE_WAIT)).await?;
        if closed {
            info!("stopped; database closed");
        } else {
            tracing::warn!(
                "stopped; the database was still in use after {CLOSE_WAIT:?} (every \
                 acknowledged write is in its fsynced write-ahead log)"
            );
        }
        failed.map_or(Ok(()), Err)
    }
}

/// How long the stop waits for each server to end and for the last database handle.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Resolves once this node has left through a leave call it answered (it stops then, as the
/// caller asked). A node removed through another member is not stopped: when the membership it
/// applied no longer lists it, it marks itself removed (the leader's notice usually does so
/// first, see [`crate::raft::removal`]) and keeps answering with 503 until an operator stops it.
async fn removed(keys: &Keyserver) {
    let raft = keys.raft();
    let mut was_member = false;
    loop {
        if keys.has_left() {
            // Let the HTTP answer of the leave reach its client first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        let member = raft.members().iter().any(|m| m.id == raft.id());
        if was_member && !member && keys.removal().is_none() {
            keys.mark_removed(
                raft.status().leader.filter(|l| *l != raft.id()),
                "the membership this node applied no longer lists it",
            );
        }
        was_member |= member;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Read a one-line secret file (trimmed); never logged.
fn read_secret(path: Option<&std::path::Path>, what: &str) -> anyhow::Result<Option<String>> {
    let Some(p) = path else { return Ok(None) };
    let s = std::fs::read_to_string(p)
        .with_context(|| format!("reading {what} from {}", p.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(!s.is_empty(), "{} ({what}) is empty", p.display());
    Ok(Some(s))
}

/// The HKP address recorded in the membership: the listen address, or, when that is a
/// wildcard (`0.0.0.0`, `[::]`), the host of the advertised Raft address with the HKP port.
fn http_advertise(listen: std::net::SocketAddr, raft_advertise: Option<&str>) -> String {
    let host = raft_advertise
        .and_then(|a| a.rsplit_once(':'))
        .map(|(h, _)| h);
    match host {
        Some(h) if listen.ip().is_unspecified() => format!("{h}:{}", listen.port()),
        _ => listen.to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "keyraft".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_advertises_the_raft_host() {
        let any: std::net::SocketAddr = "0.0.0.0:11371".parse().unwrap();
        assert_eq!(http_advertise(any, Some("10.0.0.5:7000")), "10.0.0.5:11371");
        let one: std::net::SocketAddr = "127.0.0.3:11371".parse().unwrap();
        assert_eq!(
            http_advertise(one, Some("10.0.0.5:7000")),
            "127.0.0.3:11371"
        );
    }
}
