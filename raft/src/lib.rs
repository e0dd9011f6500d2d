//! keel-raft: Keel as the durable store of [openraft](https://docs.rs/openraft/0.9).
//!
//! - [`KeelLogStore`]: openraft's `RaftLogStorage` and `RaftLogReader` on a keel-wal log, for
//!   any type configuration whose types serialize (openraft's `serde` feature). Appends go
//!   through the log's group commit; vote, committed, truncation and purge are durable marker
//!   records; reads go through an index of record positions. See `log_store` and the Raft
//!   section of `docs/FORMAT.md`.
//! - [`KeelStateMachine`]: openraft's `RaftStateMachine` on a keel [`keel::Database`], for the
//!   key-value [`TypeConfig`] here; snapshots are the database's checkpoints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_raft::{KeelLogStore, KeelStateMachine, TypeConfig};
//! let log = KeelLogStore::<TypeConfig>::open("/tmp/node-1/log", keel_wal::WalOptions::default())?;
//! let sm = KeelStateMachine::open("/tmp/node-1/sm", keel::Options::default()).await?;
//! // openraft::Raft::new(1, config, network, log, sm).await?
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![expect(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError by value"
)]

mod log_store;
pub mod record;
mod state_machine;

pub use log_store::{KeelLogStore, LogStoreStats, LogSummary};
pub use state_machine::{AppliedIndex, KeelSnapshotBuilder, KeelStateMachine, SM_RUN};

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A client request to the replicated key-value map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Sets `key` to `value`; the response carries the value set.
    Set {
        /// The key to set.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Removes `key`, if present.
    Delete {
        /// The key to remove.
        key: String,
    },
}

/// The answer to a [`KvRequest`]: the value set, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// The value a `Set` wrote; `None` for a `Delete` and for blank or membership entries.
    pub value: Option<String>,
}

openraft::declare_raft_types!(
    /// The type configuration of the replicated key-value map.
    pub TypeConfig:
        D = KvRequest,
        R = KvResponse,
);

/// The README's Rust blocks, compiled and run as doc-tests (`cargo test -p keel-raft --doc`):
/// keel-raft is the one crate whose dependencies include every crate they use (keel, keel-wal,
/// keel-recovery, keel-raft, openraft, tokio, tempfile).
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
