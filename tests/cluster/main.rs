//! Real multi-process clusters of the built binary on loopback addresses: formation, mTLS,
//! membership changes, partitions (iptables on test-only loopback addresses), random faults
//! under a write load (`nemesis`), snapshots, ten nodes, the container entry point and
//! make-certs.sh. Each test starts several processes; run with `--test-threads 1`.
mod harness;

mod conflicts;
mod deploy;
mod formation;
mod maintenance;
mod membership;
mod nemesis;
mod partition;
mod routing;
mod snapshot;
mod ten;
mod tls;
