//! [`Routing`]: how the cluster wants reads routed, set by operators (`PUT /cluster/routing`),
//! replicated as a command and stored in `sm_meta` like the conflict policies, so every node,
//! and a node that catches up from a snapshot, holds the same settings.
//!
//! - `default_consistency`: what a lookup without `consistency=` gets.
//! - `learners_serve_reads`: when false, a learner answers `/ready` 503 so load balancers stop
//!   sending it clients; it still answers lookups sent to it directly.
//! - `weights`: per node name, 0..=256 (absent: [`DEFAULT_WEIGHT`]); `/ready` reports the
//!   node's own weight, and a weight of 0 makes `/ready` answer 503 (drained).
//!
//! Validation happens at the edge ([`Routing::validate`], called by the API before proposing);
//! apply checks again, deterministically, and rejects what fails.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::Keyserver;
use super::records;
use super::RaftError;

/// The weight of a node the weights do not list.
pub const DEFAULT_WEIGHT: u16 = 100;
/// The largest weight (HAProxy's limit for server weights).
pub const MAX_WEIGHT: u16 = 256;
/// Most entries in `weights`.
pub const MAX_WEIGHTS: usize = 1024;
/// Longest node name in `weights`, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Read consistency of a lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Served from this node's replica as applied so far (may trail the leader briefly).
    #[default]
    Local,
    /// Confirmed with the leader first (ReadIndex); only the leader can answer it.
    Linearizable,
}

impl Consistency {
    /// `local` or `linearizable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Local => "local",
            Consistency::Linearizable => "linearizable",
        }
    }
}

/// The routing settings in force. Stored MessagePack with named fields; fields added later
/// must have a serde default so older stored values still decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// Consistency of lookups that do not ask for one.
    #[serde(default)]
    pub default_consistency: Consistency,
    /// Whether learners report themselves ready for client reads.
    #[serde(default = "yes")]
    pub learners_serve_reads: bool,
    /// Load-balancer weight per node name, 0..=256.
    #[serde(default)]
    pub weights: BTreeMap<String, u16>,
}

fn yes() -> bool {
    true
}

impl Default for Routing {
    /// Local reads, learners serve reads, every node at [`DEFAULT_WEIGHT`]: what keyraft did
    /// before routing settings existed.
    fn default() -> Routing {
        Routing {
            default_consistency: Consistency::Local,
            learners_serve_reads: true,
            weights: BTreeMap::new(),
        }
    }
}

impl Routing {
    /// The weight of the node named `name`.
    pub fn weight_of(&self, name: &str) -> u16 {
        self.weights.get(name).copied().unwrap_or(DEFAULT_WEIGHT)
    }

    /// Why these settings are invalid, if they are (one line).
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.len() > MAX_WEIGHTS {
            return Err(format!("at most {MAX_WEIGHTS} weights"));
        }
        for (name, w) in &self.weights {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "node names in weights have 1 to {MAX_NAME_BYTES} bytes"
                ));
            }
            if *w > MAX_WEIGHT {
                return Err(format!(
                    "weight of {name:?} is {w}; weights are 0 to {MAX_WEIGHT}"
                ));
            }
        }
        Ok(())
    }
}

impl Keyserver {
    /// The routing settings this replica has applied.
    pub fn routing(&self) -> Result<Routing, RaftError> {
        Ok(records::read_routing(self.store())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_bounded_and_default_to_100() {
        let mut r = Routing::default();
        assert_eq!(r.weight_of("n1"), DEFAULT_WEIGHT);
        r.weights.insert("n1".into(), 0);
        r.weights.insert("n2".into(), 256);
        assert!(r.validate().is_ok());
        assert_eq!(r.weight_of("n1"), 0);
        r.weights.insert("n3".into(), 257);
        assert!(r.validate().unwrap_err().contains("n3"));
        let mut r = Routing::default();
        r.weights.insert(String::new(), 1);
        assert!(r.validate().is_err());
    }

    #[test]
    fn stored_form_decodes_with_missing_fields() {
        #[derive(Serialize)]
        struct Old {
            default_consistency: Consistency,
        }
        let b = rmp_serde::to_vec_named(&Old {
            default_consistency: Consistency::Linearizable,
        })
        .unwrap();
        let r: Routing = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(r.default_consistency, Consistency::Linearizable);
        assert!(r.learners_serve_reads);
        assert!(r.weights.is_empty());
    }
}
