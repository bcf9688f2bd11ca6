//! openraft's storage conformance suite against the real RocksDB store.
//!
//! Every case gets a fresh store in its own temp dir; the `TempDir` guard is the suite's `G`
//! value, so the directory lives exactly as long as the case. Every store is closed before the
//! test returns: RocksDB still open (a log writer thread winding down) while the process exits
//! races the exit and can abort it ("pthread lock: Invalid argument").
use keyraft::raft::log_store::LogStore;
use keyraft::raft::state_machine::StateMachine;
use keyraft::raft::types::TypeConfig;
use keyraft::store::Store;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;

/// Builds the cases' stores and keeps a handle of each, to close them all at the end.
#[derive(Default)]
struct RocksBuilder {
    stores: std::sync::Mutex<Vec<Store>>,
}

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
        self.stores.lock().unwrap().push(store.clone());
        let sm = StateMachine::open(store.clone()).map_err(sto_err)?;
        Ok((dir, LogStore::new(store).map_err(sto_err)?, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<TypeConfig>> {
    let builder = std::sync::Arc::new(RocksBuilder::default());
    Suite::test_all(Shared(builder.clone())).await?;
    let stores = std::mem::take(&mut *builder.stores.lock().unwrap());
    tokio::task::spawn_blocking(move || {
        for s in stores {
            // Bounded: waits until every other user of the store has let go.
            s.close(std::time::Duration::from_secs(5));
        }
    })
    .await
    .unwrap();
    Ok(())
}

/// The builder shared with the suite, which takes it by value.
struct Shared(std::sync::Arc<RocksBuilder>);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Shared {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        self.0.build().await
    }
}
