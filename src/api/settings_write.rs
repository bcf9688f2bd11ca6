//! Read-modify-write of the replicated settings (`PUT /cluster/routing`,
//! `PUT /cluster/conflicts/policies`): a patch is applied to the settings this replica holds,
//! and the command carries those settings as its expectation. Apply changes nothing when other
//! settings are in force by then (a concurrent change, or a follower that had not applied the
//! latest one), and the write is tried again on the settings as they are now, so two patches
//! of different fields never undo each other.
use super::error::ApiError;
use super::AppState;
use crate::raft::command::{ApplyOutcome, SETTINGS_CHANGED};
use crate::raft::Op;

/// Attempts before giving up on settings that keep changing under the patch.
const ATTEMPTS: usize = 8;

/// Read the settings with `read`, `patch` them, propose `op(patched, read)`; again while apply
/// says they changed. Returns the patched settings with the first outcome and the log index.
pub(super) async fn read_modify_write<T: Clone>(
    state: &AppState,
    actor: &str,
    read: impl Fn(&AppState) -> Result<T, ApiError>,
    patch: impl Fn(T) -> Result<T, ApiError>,
    op: impl Fn(T, T) -> Op,
) -> Result<(T, ApplyOutcome, u64), ApiError> {
    let _turn = state.keys.settings_turn().await;
    for _ in 0..ATTEMPTS {
        let current = read(state)?;
        let patched = patch(current.clone())?;
        let (outcomes, index) = state
            .keys
            .propose(op(patched.clone(), current), actor)
            .await?;
        let outcome = outcomes
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("no outcome for a settings change".into()))?;
        // The rejection is applied here before `propose` returns: the next read sees the
        // settings that were in force when it was.
        if !matches!(&outcome, ApplyOutcome::Rejected { reason, .. } if reason == SETTINGS_CHANGED)
        {
            return Ok((patched, outcome, index));
        }
    }
    Err(ApiError::Conflict(format!(
        "the settings changed under this change {ATTEMPTS} times in a row; try again"
    )))
}
