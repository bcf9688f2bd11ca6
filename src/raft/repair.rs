//! `/cluster/repair`: compare every replica's state at one log index and rebuild the ones that
//! differ.
//!
//! Raft keeps the logs identical; a replica's state can still drift through a bug, a disk that
//! returned wrong bytes, or someone editing a data directory. [`Keyserver::repair`] proposes an
//! [`Op::Checkpoint`]: every node digests its state right after applying that entry
//! ([`super::digest::Checkpoints`]), so the digests are comparable even while writes go on. The
//! digest most members agree on (a strict majority of all members) is the reference; members
//! that differ are reported and, on request, rebuilt: such a member writes a [`REBUILD_MARKER`]
//! into its data directory and leaves the cluster (stopping itself); at its next start it wipes
//! its data directory and joins again under a new id, receiving the state from the leader.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::command::Op;
use super::digest::StateDigest;
use super::keys::Keyserver;
use super::types::NodeId;
use super::RaftError;

/// File in the data directory that makes the next start wipe it and join afresh.
pub const REBUILD_MARKER: &str = "REBUILD";

/// How long each member may take to answer with its checkpoint digest.
const DIGEST_WAIT: Duration = Duration::from_secs(20);

/// One member in a repair report.
#[derive(Debug, Clone, Serialize)]
pub struct MemberDigest {
    pub id: NodeId,
    pub name: String,
    /// `agrees`, `differs`, `unknown` (it did not apply the checkpoint entry itself, e.g. it
    /// installed a snapshot past it) or `unreachable`.
    pub state: String,
    pub digest: Option<StateDigest>,
    pub error: Option<String>,
    /// True when a rebuild was requested and the member accepted it.
    pub rebuild_requested: bool,
}

/// What `POST /cluster/repair` found (and did).
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The checkpoint's log index: every digest covers exactly the state at this index.
    pub index: u64,
    /// The digest a strict majority of members hold, if any.
    pub reference: Option<String>,
    /// True when every member answered and agrees with the reference.
    pub consistent: bool,
    pub members: Vec<MemberDigest>,
}

impl Keyserver {
    /// Digest every member at a new checkpoint and compare; with `rebuild`, ask each member that
    /// differs from the majority to rebuild itself.
    pub async fn repair(&self, rebuild: bool, actor: &str) -> Result<RepairReport, RaftError> {
        let (_, index) = self.propose(Op::Checkpoint, actor).await?;
        let raft = self.raft().clone();
        let mut members = Vec::new();
        for m in raft.members() {
            let got = if m.id == raft.id() {
                raft.checkpoint_digest(index, DIGEST_WAIT)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                match self.forwarder() {
                    Some(f) => tokio::time::timeout(DIGEST_WAIT, f.digest_at(&m.node, m.id, index))
                        .await
                        .unwrap_or_else(|_| Err("timed out".into())),
                    None => Err("no transport to other members".into()),
                }
            };
            let (state, digest, error) = match got {
                Ok(Some(d)) => (String::new(), Some(d), None),
                Ok(None) => ("unknown".to_string(), None, None),
                Err(e) => ("unreachable".to_string(), None, Some(e)),
            };
            members.push(MemberDigest {
                id: m.id,
                name: m.node.name,
                state,
                digest,
                error,
                rebuild_requested: false,
            });
        }
        let reference = majority(&members);
        for m in &mut members {
            if let Some(d) = &m.digest {
                m.state = if Some(&d.sha256) == reference.as_ref() {
                    "agrees".into()
                } else {
                    "differs".into()
                };
            }
        }
        let consistent = reference.is_some() && members.iter().all(|m| m.state == "agrees");
        if rebuild && reference.is_some() {
            for m in members.iter_mut().filter(|m| m.state == "differs") {
                tracing::warn!(node_id = m.id, name = %m.name, "repair: asking a differing member to rebuild");
                let r = if m.id == self.raft().id() {
                    self.rebuild_self().await.map_err(|e| e.to_string())
                } else {
                    let node = self.raft().members().into_iter().find(|x| x.id == m.id);
                    match (self.forwarder(), node) {
                        (Some(f), Some(node)) => f.rebuild(&node.node, m.id).await,
                        _ => Err("member gone or no transport".into()),
                    }
                };
                match r {
                    Ok(()) => m.rebuild_requested = true,
                    Err(e) => m.error = Some(format!("rebuild: {e}")),
                }
            }
        }
        Ok(RepairReport {
            index,
            reference,
            consistent,
            members,
        })
    }

    /// Mark this node's data directory for a rebuild at the next start, then leave the cluster
    /// (the node stops itself once removed).
    pub async fn rebuild_self(&self) -> Result<(), RaftError> {
        let raft = self.raft();
        if raft.members().iter().filter(|m| m.voter).count() < 2 {
            return Err(RaftError::Refused(
                "the only voter cannot rebuild from the cluster".into(),
            ));
        }
        let marker = raft.local_store().data_dir().join(REBUILD_MARKER);
        std::fs::write(&marker, b"rebuild requested by /cluster/repair\n")
            .map_err(|e| RaftError::Storage(format!("{}: {e}", marker.display())))?;
        tracing::warn!(marker = %marker.display(), "repair: this replica differs; leaving, to rebuild at the next start");
        if let Err(e) = self.leave(raft.id()).await {
            let _ = std::fs::remove_file(&marker);
            return Err(e);
        }
        Ok(())
    }
}

/// The digest held by a strict majority of `members` (all of them count, answering or not).
fn majority(members: &[MemberDigest]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in members.iter().filter_map(|m| m.digest.as_ref()) {
        *counts.entry(d.sha256.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .find(|(_, n)| *n * 2 > members.len())
        .map(|(s, _)| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: NodeId, sha: Option<&str>) -> MemberDigest {
        MemberDigest {
            id,
            name: format!("n{id}"),
            state: String::new(),
            digest: sha.map(|s| StateDigest {
                applied_index: Some(7),
                sha256: s.into(),
                bytes: 1,
            }),
            error: None,
            rebuild_requested: false,
        }
    }

    #[test]
    fn the_reference_needs_a_strict_majority_of_all_members() {
        assert_eq!(
            majority(&[m(1, Some("a")), m(2, Some("a")), m(3, Some("b"))]),
            Some("a".into())
        );
        // Two of four is not a majority; nor is one answer out of three.
        assert_eq!(
            majority(&[
                m(1, Some("a")),
                m(2, Some("a")),
                m(3, Some("b")),
                m(4, Some("b"))
            ]),
            None
        );
        assert_eq!(majority(&[m(1, Some("a")), m(2, None), m(3, None)]), None);
    }
}
