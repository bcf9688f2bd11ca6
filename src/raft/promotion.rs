//! Filling empty voter places. While this node leads and the cluster has fewer voters than
//! `max_voters`, a learner that answers the leader and holds the log is promoted
//! ([`super::NodeStatus::learner_to_promote`]). Joins and leaves promote at once; this loop
//! catches what they could not: a learner that was down or behind when a voter left, a joiner
//! stopped between its admission and its promotion, a removal that committed after its caller
//! gave up.
use std::time::Duration;

use super::Keyserver;

/// How often the leader looks for an empty voter place.
pub const TICK: Duration = Duration::from_secs(5);

/// Run forever: on every tick, promote a learner into an empty voter place if one fits.
pub async fn run(keys: Keyserver) {
    loop {
        tokio::time::sleep(TICK).await;
        if let Err(e) = keys.fill_voter_places().await {
            tracing::warn!(error = %e, "promotion of a learner failed; retrying later");
        }
    }
}
