//! Joining an existing cluster at first start: find the leader through the `--join` seeds
//! (each resolved through DNS to every address behind it) and ask it over gRPC to admit this
//! node, retrying what the network explains and giving up on refusals.
use std::time::Duration;

use tracing::info;

use crate::raft::{JoinSpec, KeyraftNode, LeaderForwarder, RaftNode};
use crate::rpc::client::GrpcTransport;

/// A join error that retrying cannot fix: the leader's admission refused (its reasons start
/// with "refused: "), or TLS rejected a certificate (ours or the leader's). Connection
/// failures and membership changes in progress are retried.
fn is_refusal(e: &str) -> bool {
    let lower = e.to_ascii_lowercase();
    e.starts_with("refused: ") || lower.contains("certificate") || lower.contains("fatal alert")
}

/// Every address a seed names: `host:port` (or `http://host:port`) resolved through DNS, so a
/// name with several A/AAAA records (a Kubernetes headless service, a round-robin name) yields
/// every member behind it. Resolved again on every attempt: members come and go.
fn seed_addrs(seed: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    let seed = seed.trim_start_matches("http://");
    let mut addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(seed)
        .map_err(|e| format!("{seed}: {e}"))?
        .collect();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{seed}: no address"));
    }
    Ok(addrs)
}

/// The leader as a member behind `seed` names it (`GET /cluster/leader`), asking each address
/// the seed resolves to until one answers.
async fn leader_via(seed: &str) -> Result<KeyraftNode, String> {
    let seed = seed.to_string();
    tokio::task::spawn_blocking(move || {
        let mut last = format!("{seed}: no address");
        for addr in seed_addrs(&seed)? {
            let r = match crate::client::request(
                addr,
                "GET",
                "/cluster/leader",
                &[],
                b"",
                Duration::from_secs(5),
            ) {
                Ok(r) if r.status == 200 => r,
                Ok(r) => {
                    last = format!("{seed} ({addr}): {} {}", r.status, r.text().trim());
                    continue;
                }
                Err(e) => {
                    last = format!("{seed} ({addr}): {e}");
                    continue;
                }
            };
            return serde_json::from_slice::<KeyraftNode>(&r.body)
                .map_err(|e| format!("{seed} ({addr}): {e}"));
        }
        Err(last)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Join through the members at HTTP addresses `seeds`: ask one for the leader, then ask the
/// leader over gRPC (mTLS when configured) to admit this node. Unreachable members are retried
/// for two minutes; a refusal (wrong secret, certificate) ends the attempt at once.
pub(super) async fn join(
    transport: &GrpcTransport,
    raft: &RaftNode,
    me: &KeyraftNode,
    seeds: &[String],
    secret: String,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::from("no member answered");
    // The leader answered over HTTP but its gRPC calls failed: after this many in a row the
    // cause is almost certainly configuration (TLS on one side only), not the network.
    let mut grpc_failures = 0;
    for seed in seeds.iter().cycle() {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let spec = JoinSpec {
            id: raft.id(),
            name: me.name.clone(),
            raft_addr: me.raft_addr.clone(),
            http_addr: me.http_addr.clone(),
            secret: secret.clone(),
        };
        match leader_via(seed).await {
            Ok(leader) => match transport.join(&leader, spec).await {
                Ok(r) => {
                    info!(leader = r.leader_id, voter = r.voter, replaced = ?r.replaced,
                        "joined the cluster through {seed} (leader {})", leader.name);
                    return Ok(());
                }
                Err(e) if is_refusal(&e) => {
                    let hint = if e.contains("fatal alert") {
                        " (the leader rejected this node's TLS certificate: is it issued by the \
                         cluster CA?)"
                    } else {
                        ""
                    };
                    anyhow::bail!(
                        "join refused by {} ({}): {e}{hint}",
                        leader.name,
                        leader.raft_addr
                    )
                }
                Err(e) => {
                    last = format!("leader {} at {}: {e}", leader.name, leader.raft_addr);
                    // A refused or timed-out TCP connection is the network (or a leader still
                    // starting); a connection that opens and then fails is the protocol.
                    if !e.contains("tcp connect error") && !e.contains("timed out") {
                        grpc_failures += 1;
                    }
                    if grpc_failures >= 20 {
                        anyhow::bail!(
                            "join refused: the leader answers over HTTP but not over gRPC \
                             (is TLS configured alike on both sides?): {last}"
                        );
                    }
                }
            },
            Err(e) => last = e,
        }
        tracing::warn!("join attempt failed ({last}); retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("could not join the cluster: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_resolve_to_every_address_of_a_name() {
        let a = seed_addrs("localhost:11371").unwrap();
        assert!(a.iter().all(|a| a.port() == 11371), "{a:?}");
        assert!(a.iter().any(|a| a.ip().is_loopback()), "{a:?}");
        let b = seed_addrs("http://127.0.0.2:80").unwrap();
        assert_eq!(b, vec!["127.0.0.2:80".parse().unwrap()]);
        assert!(seed_addrs("no-port-here").is_err());
        assert!(seed_addrs("name.invalid:80").is_err());
    }
}
