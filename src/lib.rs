//! keyraft: a Raft-replicated OpenPGP keyserver speaking HKP.
//!
//! Layers, with dependencies pointing one way only:
//! `main → node → {api, rpc} → raft → {store, pgp}`; `config`, `metrics` and `certname` are leaves
//! every layer may use.
//! - [`pgp`]: pure OpenPGP handling (parse, canonicalise, merge, index terms). No I/O, no clock.
//! - [`store`]: RocksDB column families and record formats. Knows nothing of openraft or HTTP.
//! - [`raft`]: openraft type config, log store, state machine, and the facade the upper layers use.
//! - [`api`]: HKP over HTTP (actix-web). Reads through the raft facade, never the store.
//! - [`rpc`]: node-to-node gRPC (tonic).
//! - [`node`]: the composition root, the only module that sees everything.
//! - [`certname`]: the names a verified certificate proves (node mTLS, hkps admin certificates).
//! - [`metrics`]: node-local latency histograms and load figures (never replicated).
pub mod api;
pub mod certname;
pub mod cli;
pub mod client;
pub mod config;
pub mod metrics;
pub mod node;
pub mod pgp;
pub mod raft;
pub mod rpc;
pub mod store;
