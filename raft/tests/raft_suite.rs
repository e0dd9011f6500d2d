//! openraft's own conformance suite (`openraft::testing::Suite::test_all`) on a Keel log store
//! and state machine, each store in a fresh directory, on every backend this machine runs.

use keel_raft::{KeelLogStore, KeelStateMachine, TypeConfig};
use keel_wal::{BackendChoice, WalOptions};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

/// Opens a fresh Keel log store and state machine in a temporary directory (removed when the
/// guard drops).
struct KeelBuilder {
    backend: BackendChoice,
}

impl StoreBuilder<TypeConfig, KeelLogStore<TypeConfig>, KeelStateMachine, tempfile::TempDir>
    for KeelBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            KeelLogStore<TypeConfig>,
            KeelStateMachine,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = KeelLogStore::open(
            dir.path().join("log"),
            WalOptions {
                backend: self.backend,
                segment_bytes: 1 << 20,
                max_record_bytes: 256 << 10,
                ..WalOptions::default()
            },
        )?;
        let sm = KeelStateMachine::open(
            dir.path().join("sm"),
            keel::Options {
                backend: self.backend,
                segment_bytes: 1 << 20,
                max_record_bytes: 256 << 10,
                ..keel::Options::default()
            },
        )
        .await?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite_passes_on_every_backend() {
    for &backend in BackendChoice::available() {
        eprintln!(
            "openraft::testing::Suite::test_all on the {} backend",
            backend.name()
        );
        Suite::test_all(KeelBuilder { backend })
            .unwrap_or_else(|e| panic!("suite failed on {}: {e}", backend.name()));
    }
}
