//! The one integration-test binary: real RocksDB, real Raft, real sockets, real gpg.
mod http_api;
