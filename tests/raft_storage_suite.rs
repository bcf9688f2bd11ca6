//! openraft's storage conformance suite against the real RocksDB store.
//!
//! Every case gets a fresh store in its own temp dir; the `TempDir` guard is the suite's `G`
//! value, so the directory lives exactly as long as the case.
use keyraft::raft::log_store::LogStore;
use keyraft::raft::state_machine::StateMachine;
use keyraft::raft::types::TypeConfig;
use keyraft::store::Store;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

struct RocksBuilder;

fn sto_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError<TypeConfig> {
    StorageError::from_io_error(
        ErrorSubject::Store,
        ErrorVerb::Write,
        std::io::Error::other(e),
    )
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(sto_err)?;
        let store = Store::open(dir.path()).map_err(sto_err)?;
        let sm = StateMachine::open(store.clone()).map_err(sto_err)?;
        Ok((dir, LogStore::new(store).map_err(sto_err)?, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}
