//! Optional automatic removal of members the leader has not heard from for a while
//! (`[cluster] auto_remove_after`, off by default).
//!
//! Only the leader acts, and only on what it observes itself: the time since each member last
//! acknowledged a heartbeat or an append. A silent learner is removed; a silent voter is
//! removed only while at least [`MIN_VOTERS`] voters remain afterwards, so an outage of a small
//! cluster never shrinks it to a size where one more failure loses quorum. A removed voter is
//! replaced by a reachable learner when one exists ([`Keyserver::leave`]). Every removal is logged and,
//! being a membership change, recorded in the audit trail; the removed member is told why if it
//! can be reached ([`super::removal`]).
use std::collections::BTreeMap;
use std::time::Duration;

use super::keys::Keyserver;
use super::types::NodeId;

/// The auto-remover never leaves fewer voters than this.
pub const MIN_VOTERS: usize = 3;

/// How often the leader looks.
const TICK: Duration = Duration::from_millis(500);

/// Members silent for longer than `after`, in a removal order that keeps the cluster safe:
/// learners first, then voters while more than [`MIN_VOTERS`] would remain. `silent_for` maps a
/// member to how long the leader has not heard from it.
pub fn to_remove(
    voters: &[NodeId],
    learners: &[NodeId],
    silent_for: &BTreeMap<NodeId, Duration>,
    after: Duration,
) -> Vec<NodeId> {
    let silent = |id: &NodeId| silent_for.get(id).is_some_and(|d| *d > after);
    let mut out: Vec<NodeId> = learners.iter().copied().filter(silent).collect();
    let mut remaining = voters.len();
    for v in voters.iter().filter(|v| silent(v)) {
        if remaining <= MIN_VOTERS {
            break;
        }
        out.push(*v);
        remaining -= 1;
    }
    out
}

/// Run forever: while this node leads, remove members silent for longer than `after`.
pub async fn run(keys: Keyserver, after: Duration) {
    let raft = keys.raft().clone();
    // When this node first saw each member silent (openraft reports `None` for members that
    // have not answered since this node became leader).
    let mut silent_since: BTreeMap<NodeId, tokio::time::Instant> = BTreeMap::new();
    let mut warned_floor = false;
    loop {
        tokio::time::sleep(TICK).await;
        let s = raft.status();
        if s.state != "Leader" {
            silent_since.clear();
            continue;
        }
        let now = tokio::time::Instant::now();
        let mut silent_for = BTreeMap::new();
        for (id, ms) in &s.millis_since_heartbeat {
            if *id == s.id {
                continue;
            }
            let d = match ms {
                Some(ms) if *ms < TICK.as_millis() as u64 * 2 => {
                    silent_since.remove(id);
                    continue;
                }
                Some(ms) => Duration::from_millis(*ms),
                None => now - *silent_since.entry(*id).or_insert(now),
            };
            silent_for.insert(*id, d);
        }
        let voters: Vec<NodeId> = s.voters.iter().copied().filter(|v| *v != s.id).collect();
        let all_voters: Vec<NodeId> = s.voters.clone();
        let doomed = to_remove(&all_voters, &s.learners, &silent_for, after);
        let silent_voters = voters
            .iter()
            .filter(|v| silent_for.get(v).is_some_and(|d| *d > after))
            .count();
        let held_back = silent_voters > doomed.iter().filter(|d| voters.contains(d)).count();
        if held_back && !warned_floor {
            tracing::warn!(
                voters = all_voters.len(),
                "auto-remove: a voter is unreachable for longer than {after:?} but removing it \
                 would leave fewer than {MIN_VOTERS} voters; keeping it"
            );
        }
        warned_floor = held_back;
        for id in doomed {
            tracing::warn!(
                node_id = id,
                silent = ?silent_for.get(&id),
                "auto-remove: member unreachable for longer than {after:?}; removing it"
            );
            keys.note_removal_reason(
                id,
                format!("auto-remove: no heartbeat acknowledged for longer than {after:?}"),
            );
            match keys.leave(id).await {
                Ok(_) => {
                    silent_since.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(node_id = id, error = %e, "auto-remove failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silent(ids: &[(NodeId, u64)]) -> BTreeMap<NodeId, Duration> {
        ids.iter()
            .map(|(id, s)| (*id, Duration::from_secs(*s)))
            .collect()
    }

    #[test]
    fn never_below_three_voters_and_learners_first() {
        let after = Duration::from_secs(10);
        // Three voters, one silent: kept.
        assert!(to_remove(&[1, 2, 3], &[], &silent(&[(3, 60)]), after).is_empty());
        // Four voters, two silent: only one goes.
        assert_eq!(
            to_remove(&[1, 2, 3, 4], &[], &silent(&[(3, 60), (4, 60)]), after),
            vec![3]
        );
        // Silent learners always go, before voters.
        assert_eq!(
            to_remove(&[1, 2, 3, 4], &[5], &silent(&[(4, 60), (5, 60)]), after),
            vec![5, 4]
        );
        // Not silent long enough: nothing.
        assert!(to_remove(&[1, 2, 3, 4], &[5], &silent(&[(4, 5), (5, 9)]), after).is_empty());
    }
}
