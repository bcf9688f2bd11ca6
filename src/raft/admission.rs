//! Admission and removal of members: who may join (the cluster secret, proof that the joiner's
//! address reaches the node it names), replacing the record of a wiped node, promotion up to
//! `max_voters`, and graceful leave with leadership transfer.
//!
//! Every change happens on the leader; a follower checks the secret and forwards through the
//! [`LeaderForwarder`]. Refusals are logged with the words "join refused" and the reason, and
//! handed to the caller's `on_refuse` (the facade audits them, rate-limited: see
//! [`super::refusals`]). A refusal decided by the leader for a forwarded join is reported by the
//! leader only, not again by the forwarding node.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::forward::LeaderForwarder;
use super::membership::Member;
use super::types::{KeyraftNode, NodeId};
use super::{RaftError, RaftNode};

/// A node asking to join.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinSpec {
    /// Its Raft id (generated once, persisted, never reused).
    pub id: NodeId,
    /// Its unique name (the name in its TLS certificate).
    pub name: String,
    /// Where peers reach its gRPC listener.
    pub raft_addr: String,
    /// Its HKP address.
    pub http_addr: String,
    /// The cluster secret it presents. Never logged.
    pub secret: String,
}

impl std::fmt::Debug for JoinSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinSpec")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("raft_addr", &self.raft_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// What a join did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinOutcome {
    /// The leader that admitted the node.
    pub leader_id: NodeId,
    /// Whether the node votes (false: it stays a learner and serves reads).
    pub voter: bool,
    /// The id of an earlier member with the same name that this join replaced.
    pub replaced: Option<NodeId>,
}

/// Who may join and how many voters the cluster keeps.
#[derive(Clone)]
pub struct Admission {
    /// The secret joiners must present; `None` admits anyone who can reach the listener.
    secret: Option<String>,
    /// Most voters; further nodes stay learners.
    max_voters: usize,
    /// Held by every membership change this node makes as leader. openraft refuses a change
    /// while another is uncommitted, so two joins arriving together (add learner, promote)
    /// would otherwise leave the second joiner a learner.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// Secret checks under way; a wrong secret holds its permit for [`WRONG_SECRET_DELAY`],
    /// so this node checks at most [`CHECKS_AT_ONCE`] wrong guesses a second.
    checks: Arc<tokio::sync::Semaphore>,
}

/// How long a join with a wrong secret waits before it is answered.
const WRONG_SECRET_DELAY: Duration = Duration::from_secs(1);

/// Secret checks one node makes at once; further joins are refused unchecked until one ends.
const CHECKS_AT_ONCE: usize = 8;

impl std::fmt::Debug for Admission {
    /// Without the secret: only whether there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_voters", &self.max_voters)
            .finish_non_exhaustive()
    }
}

impl Default for Admission {
    fn default() -> Admission {
        Admission::new(None, 5)
    }
}

/// Compare secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Called with the joiner and the reason of every refusal decided on this node.
pub type OnRefuse<'a> = &'a (dyn Fn(&JoinSpec, &str) + Sync);

fn refuse(spec: &JoinSpec, reason: String, on_refuse: OnRefuse) -> RaftError {
    tracing::warn!(node_id = spec.id, name = %spec.name, raft_addr = %spec.raft_addr, "join refused: {reason}");
    on_refuse(spec, &reason);
    RaftError::Refused(reason)
}

/// A forwarded call's one-line error back as a [`RaftError`] of the same kind (the leader's
/// text starts with its error's prefix): refusals stay refusals (403), unknown members 404,
/// membership conflicts 409, the leader's own failures 500; anything else, the network or a
/// leader change, is retryable (503).
fn forwarded(e: String) -> RaftError {
    type Kind = fn(String) -> RaftError;
    let kinds: [(&str, Kind); 5] = [
        ("refused: ", RaftError::Refused),
        ("no such member: ", RaftError::UnknownMember),
        ("membership change refused: ", RaftError::Membership),
        ("storage error: ", RaftError::Storage),
        ("fatal raft error: ", RaftError::Fatal),
    ];
    for (prefix, kind) in kinds {
        if let Some(rest) = e.strip_prefix(prefix) {
            return kind(rest.to_string());
        }
    }
    RaftError::NoQuorum(format!("forwarding to the leader: {e}"))
}

fn leader_elsewhere(raft: &RaftNode) -> Result<Option<KeyraftNode>, RaftError> {
    match raft.leader() {
        Some(l) if l.id == raft.id() => Ok(None),
        Some(l) => Ok(Some(l.node)),
        None => Err(RaftError::NotLeader { leader: None }),
    }
}

/// Refuse to remove voter `id` (named `name`) unless a majority of the voters left answer this
/// leader: the removal could never commit, and every write behind it would wait with it.
fn keeps_quorum(s: &super::NodeStatus, id: NodeId, name: &str) -> Result<(), RaftError> {
    let (up, left) = s.quorum_without(id);
    if up * 2 > left {
        return Ok(());
    }
    Err(RaftError::Membership(format!(
        "removing {name} would leave {left} voter(s) of which only {up} answered the leader in \
         the last 3 s: the change could not commit; bring the silent voters back (or remove \
         them) first"
    )))
}

impl Admission {
    /// Joiners must present `secret` (if any); at most `max_voters` members vote.
    pub fn new(secret: Option<String>, max_voters: usize) -> Admission {
        Admission {
            secret,
            max_voters,
            changes: Arc::default(),
            checks: Arc::new(tokio::sync::Semaphore::new(CHECKS_AT_ONCE)),
        }
    }

    /// Admit `spec`: on the leader, or forwarded to it. Checks the secret first (a follower
    /// never forwards a wrong one), then, on the leader, that the joiner answers at its address
    /// under its id and name. Every refusal decided here is also handed to `on_refuse`.
    pub async fn join(
        &self,
        raft: &RaftNode,
        fwd: Option<&dyn LeaderForwarder>,
        spec: JoinSpec,
        on_refuse: OnRefuse<'_>,
    ) -> Result<JoinOutcome, RaftError> {
        if let Some(secret) = &self.secret {
            // Guessing is slowed: a wrong secret is answered after a delay, and only a few are
            // checked at once (the others are refused without being checked, so they learn
            // nothing).
            let Ok(check) = self.checks.clone().try_acquire_owned() else {
                // Not a refusal: a genuine joiner caught in a flood of guesses retries.
                tracing::warn!(node_id = spec.id, name = %spec.name,
                    "join not checked: {CHECKS_AT_ONCE} secret checks already under way");
                return Err(RaftError::Timeout(
                    "too many joins being checked at once; retry in a few seconds".into(),
                ));
            };
            if !same_secret(secret, &spec.secret) {
                // The permit is held for the whole delay by a task of its own: a caller that
                // hangs up early does not get its check back sooner.
                let held = tokio::spawn(async move {
                    tokio::time::sleep(WRONG_SECRET_DELAY).await;
                    drop(check);
                });
                let _ = held.await;
                return Err(refuse(&spec, "wrong cluster secret".into(), on_refuse));
            }
            // A right secret frees its check at once: the rest of a join may take a while.
            drop(check);
        }
        if spec.id == 0 || spec.name.is_empty() || spec.raft_addr.is_empty() {
            return Err(refuse(
                &spec,
                "a join needs an id, a name and a raft address".into(),
                on_refuse,
            ));
        }
        if let Some(leader) = leader_elsewhere(raft)? {
            let f = fwd.ok_or(RaftError::NotLeader { leader: None })?;
            return f.join(&leader, spec).await.map_err(forwarded);
        }
        let node = KeyraftNode {
            name: spec.name.clone(),
            raft_addr: spec.raft_addr.clone(),
            http_addr: spec.http_addr.clone(),
        };
        if let Some(f) = fwd {
            match f.probe(&node).await {
                Ok((id, name)) if id == spec.id && name == spec.name => {}
                Ok((id, name)) => {
                    return Err(refuse(
                        &spec,
                        format!("{} answers as {name} (id {id})", spec.raft_addr),
                        on_refuse,
                    ))
                }
                Err(e) => {
                    return Err(refuse(
                        &spec,
                        format!("cannot reach {} at {}: {e}", spec.name, spec.raft_addr),
                        on_refuse,
                    ))
                }
            }
        }
        let _changing = self.changing(raft).await?;
        let members = raft.members();
        if let Some(m) = members.iter().find(|m| m.id == spec.id) {
            tracing::info!(node_id = spec.id, name = %spec.name, "join: already a member");
            // A joiner retries when its promotion failed (a leader change, or a timeout after
            // it was added, perhaps while it still installs a snapshot): finish the job here,
            // once it holds the log.
            if !m.voter {
                raft.catch_up(spec.id).await?;
            }
            let voter = m.voter || self.promote_if_room(raft, spec.id).await?;
            return Ok(JoinOutcome {
                leader_id: raft.id(),
                voter,
                replaced: None,
            });
        }
        if raft.removed_ids().await?.contains(&spec.id) {
            return Err(refuse(
                &spec,
                format!(
                    "id {} was removed from this cluster and is never admitted again; wipe the \
                     data directory of {} to join under a new id",
                    spec.id, spec.name
                ),
                on_refuse,
            ));
        }
        let replaced = members
            .iter()
            .find(|m| m.node.name == spec.name)
            .map(|m| m.id);
        if let Some(old) = replaced {
            if old == raft.id() {
                return Err(refuse(
                    &spec,
                    format!("the leader is named {}", spec.name),
                    on_refuse,
                ));
            }
            let s = raft.status();
            if s.acked_recently(old) {
                // A wiped node cannot answer under its old id (peers check the id a message is
                // for), so this is a second live node with the same name: keep the member. A
                // retry passes once the old id has been silent for a few seconds.
                return Err(RaftError::Membership(format!(
                    "member {} (id {old}) is still answering; a node of the same name can replace \
                     it only once it is down (names must be unique)",
                    spec.name
                )));
            }
            if members.iter().any(|m| m.id == old && m.voter) {
                keeps_quorum(&s, old, &spec.name)?;
            }
            tracing::warn!(old_id = old, new_id = spec.id, name = %spec.name,
                "join: replacing the record of a member with the same name (wiped data directory)");
            raft.remove(BTreeSet::from([old])).await?;
        }
        if let Err(e) = raft.prepare_for_joiner().await {
            tracing::warn!(error = %e, "join: no snapshot arranged; the new member replays the log");
        }
        tracing::info!(node_id = spec.id, name = %spec.name, raft_addr = %spec.raft_addr, "join: adding learner");
        raft.add_learner(spec.id, node).await?;
        let voter = self.promote_if_room(raft, spec.id).await?;
        Ok(JoinOutcome {
            leader_id: raft.id(),
            voter,
            replaced,
        })
    }

    /// Remove member `id` gracefully. A leader that is asked to remove itself hands leadership
    /// to another voter first (the reachable one furthest along) and lets the new leader remove
    /// it. A voter is removed only while a majority of the voters left answer this leader (see
    /// [`super::NodeStatus::quorum_without`]). A removed voter is replaced by a learner while
    /// there are fewer than `max_voters` ([`Self::promote_in_place_of`]).
    pub async fn leave(
        &self,
        raft: &RaftNode,
        fwd: Option<&dyn LeaderForwarder>,
        id: NodeId,
        removed: &(dyn Fn(&Member) + Send + Sync),
    ) -> Result<NodeId, RaftError> {
        let members = raft.members();
        let Some(member) = members.iter().find(|m| m.id == id) else {
            return Err(RaftError::UnknownMember(id.to_string()));
        };
        if let Some(leader) = leader_elsewhere(raft)? {
            let f = fwd.ok_or(RaftError::NotLeader { leader: None })?;
            return f.leave(&leader, id).await.map_err(forwarded);
        }
        if id == raft.id() {
            if !members.iter().any(|m| m.voter && m.id != id) {
                return Err(RaftError::Membership("the last voter cannot leave".into()));
            }
            // Under the lock: a join in progress here would be cut off by the hand-over.
            let _changing = self.changing(raft).await?;
            let s = raft.status();
            keeps_quorum(&s, id, &member.node.name)?;
            let Some(next) = s.voter_to_hand_over_to() else {
                return Err(RaftError::NoQuorum(
                    "no other voter has acknowledged this leader in the last 3 s to take over"
                        .into(),
                ));
            };
            tracing::info!(to = next, "leave: transferring leadership before leaving");
            raft.transfer_leader(next, Duration::from_secs(10)).await?;
            let leader = leader_elsewhere(raft)?.ok_or(RaftError::NotLeader { leader: None })?;
            let f = fwd.ok_or(RaftError::NotLeader { leader: None })?;
            return f.leave(&leader, id).await.map_err(forwarded);
        }
        let _changing = self.changing(raft).await?;
        // Read again under the lock: a concurrent leave of the same member may have removed it.
        let Some(member) = raft.members().into_iter().find(|m| m.id == id) else {
            return Err(RaftError::UnknownMember(id.to_string()));
        };
        if member.voter {
            keeps_quorum(&raft.status(), id, &member.node.name)?;
        }
        tracing::info!(node_id = id, name = %member.node.name, "leave: removing member");
        raft.remove(BTreeSet::from([id])).await?;
        removed(&member);
        if member.voter {
            self.promote_in_place_of(raft, id).await;
        }
        Ok(id)
    }

    /// After voter `gone` was removed: promote a learner in its place while there are fewer
    /// than `max_voters`. The removal is done and answered as such; a promotion that fails, or
    /// finds no learner fit for it, is logged and left to [`super::promotion`]. The caller holds
    /// `changes`.
    async fn promote_in_place_of(&self, raft: &RaftNode, gone: NodeId) {
        let s = raft.status();
        if s.learners.is_empty() || s.voters.len() >= self.max_voters {
            return;
        }
        let Some(learner) = s.learner_to_promote() else {
            tracing::warn!(
                removed = gone,
                learners = ?s.learners,
                "leave: no learner has acknowledged this leader recently and holds the log; none \
                 promoted for now"
            );
            return;
        };
        tracing::info!(
            node_id = learner,
            removed = gone,
            "leave: promoting a learner to voter"
        );
        if let Err(e) = raft.promote(BTreeSet::from([learner])).await {
            tracing::warn!(node_id = learner, error = %e,
                "leave: the member is removed, but promoting a learner failed");
        }
    }

    /// On the leader, with no other change in progress: promote the learner
    /// [`super::NodeStatus::learner_to_promote`] names while there are fewer than `max_voters`
    /// voters (and the membership is not joint).
    pub async fn fill_voter_places(&self, raft: &RaftNode) -> Result<(), RaftError> {
        let wanted = |s: &super::NodeStatus| {
            s.state == "Leader" && !s.joint && s.voters.len() < self.max_voters
        };
        if !wanted(&raft.status()) {
            return Ok(());
        }
        let Ok(_changing) = self.changes.try_lock() else {
            return Ok(());
        };
        let s = raft.status();
        let Some(learner) = s.learner_to_promote().filter(|_| wanted(&s)) else {
            return Ok(());
        };
        tracing::info!(
            node_id = learner,
            voters = s.voters.len(),
            max_voters = self.max_voters,
            "promoting a learner into an empty voter place"
        );
        raft.promote(BTreeSet::from([learner])).await
    }

    /// Take the lock every membership change on this leader holds, waiting at most the request
    /// timeout for a change in progress (each step of which is itself bounded, see
    /// [`RaftNode::promote`]): a join or leave behind a change that cannot commit gets a
    /// retryable timeout instead of queueing without end.
    async fn changing(
        &self,
        raft: &RaftNode,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, RaftError> {
        let limit = raft.request_timeout();
        tokio::time::timeout(limit, self.changes.lock())
            .await
            .map_err(|_| {
                RaftError::Timeout(format!(
                    "another membership change is still in progress after {} s",
                    limit.as_secs()
                ))
            })
    }

    /// Make learner `id` a voter if the cluster has fewer than `max_voters`; whether it now
    /// votes. The caller holds `changes`.
    async fn promote_if_room(&self, raft: &RaftNode, id: NodeId) -> Result<bool, RaftError> {
        let voters = raft.members().iter().filter(|m| m.voter).count();
        if voters >= self.max_voters {
            return Ok(false);
        }
        raft.promote(BTreeSet::from([id])).await?;
        tracing::info!(node_id = id, "join: promoted to voter");
        Ok(true)
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
