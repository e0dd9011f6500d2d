//! Snapshot images: the bytes of a snapshot file (`snapshots/<lsn>.snap`, format in
//! `snapshot.rs`), checked and decoded, for shipping a database's whole state to another
//! (a Raft follower, say) and installing it there with [`Database::install_snapshot`].
//!
//! [`Database::install_snapshot`]: crate::Database::install_snapshot

use keel_wal::{Lsn, RunId, TxnId};

use crate::snapshot::{self, Loaded};
use crate::state::{RunInfo, State, Versioned};
use crate::{Error, Result};

/// A checked, decoded engine snapshot: every run and every key of one database at one LSN.
///
/// Its LSNs (the snapshot's, the keys' versions, the runs' beginnings and ends) are those of
/// the database that wrote it; installing it elsewhere moves them all to the installing
/// database's own LSN.
#[derive(Debug)]
pub struct SnapshotImage {
    loaded: Loaded,
}

impl SnapshotImage {
    /// Checks and decodes the bytes of a snapshot file: magic, format version, checksum,
    /// payload length, then the archive. Any damage (truncation, a flipped bit, a foreign
    /// file, an unknown version) is an [`Error::InvalidSnapshotImage`] saying what is wrong;
    /// no input panics.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotImage> {
        let loaded = snapshot::decode(bytes).map_err(Error::InvalidSnapshotImage)?;
        Ok(SnapshotImage { loaded })
    }

    /// The snapshot's LSN in the database that wrote it: every commit at or below it is in.
    pub fn lsn(&self) -> Lsn {
        self.loaded.lsn
    }

    /// The highest transaction id the writing database had handed out.
    pub fn max_txn_id(&self) -> TxnId {
        self.loaded.max_txn_id
    }

    /// Every run, active and ended, in id order.
    pub fn runs(&self) -> Vec<RunInfo> {
        self.loaded.state.runs.values().cloned().collect()
    }

    /// A run's metadata.
    pub fn run_info(&self, run: RunId) -> Option<RunInfo> {
        self.loaded.state.runs.get(&run.as_u128()).cloned()
    }

    /// The newest run named `name` (the one that began last), if any.
    pub fn find_run(&self, name: &str) -> Option<RunId> {
        self.loaded
            .state
            .runs
            .values()
            .filter(|info| info.name == name)
            .max_by_key(|info| (info.began, info.id.as_u128()))
            .map(|info| info.id)
    }

    /// The value of `key` in `run`; `None` when either is absent.
    pub fn get(&self, run: RunId, key: &[u8]) -> Option<Versioned> {
        if !self.has_run(run) {
            return None;
        }
        self.loaded.state.get(run.as_u128(), key)
    }

    /// Every `(key, value)` of `run` whose key starts with `prefix`, in key order; empty when
    /// the run is absent.
    pub fn scan(&self, run: RunId, prefix: &[u8]) -> Vec<(Vec<u8>, Versioned)> {
        if !self.has_run(run) {
            return Vec::new();
        }
        self.loaded.state.scan(run.as_u128(), prefix)
    }

    /// How many keys the runs hold, all runs together (run metadata not counted).
    pub fn len(&self) -> usize {
        self.loaded
            .state
            .data
            .keys()
            .filter(|(run, _)| self.loaded.state.runs.contains_key(run))
            .count()
    }

    /// Whether the runs hold no key at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The run metadata (the system run) is not a run of the image.
    fn has_run(&self, run: RunId) -> bool {
        self.loaded.state.runs.contains_key(&run.as_u128())
    }

    /// The decoded state and transaction-id high mark, for installing.
    pub(crate) fn into_parts(self) -> (State, TxnId) {
        (self.loaded.state, self.loaded.max_txn_id)
    }
}
