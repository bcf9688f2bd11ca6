//! The one integration-test binary: real RocksDB, real Raft, real sockets, real gpg and sq.
mod admin;
mod admin_cert;
mod common;
mod durability;
mod gpg_e2e;
mod haproxy;
mod http_api;
mod observe;
