//! The database handle: what it holds, and its small accessors (runs, reads, closing). The
//! rest is in one module per concern:
//!
//! - `options`: [`Options`], and the size bound of one write;
//! - `open`: the lock, the snapshot, recovery, the log;
//! - `commit`: appending a commit, the queue of commits not yet applied, visibility;
//! - `checkpoint`: checkpoints, the automatic one, the clean-up they allow, reading snapshots;
//! - `checkpointer`: the thread automatic checkpoints run on;
//! - `install`: installing a snapshot image;
//! - `transaction`: [`Transaction`], and its spills to the log;
//! - `stats`: [`Stats`];
//! - `sync`: the one policy for a poisoned lock.

mod checkpoint;
mod checkpointer;
mod commit;
mod feed;
mod install;
mod open;
mod options;
mod stats;
mod sync;
mod transaction;

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use keel_recovery::RecoveryReport;
use keel_wal::{Durability, Lsn, RunId, Storage, TxnId, Wal};

pub use feed::{FeedChange, FeedCommit, FeedEvent, Subscription};
pub use options::Options;
pub use stats::Stats;
pub use transaction::{Isolation, Transaction};

use crate::retention::Spills;
use crate::state::{Change, RunInfo, RunRecord, RunState, SYSTEM_RUN, State};
use crate::{Error, Iter, Result, Snapshot, Versioned};
use commit::PendingQueue;
use options::WRITE_ENTRY_OVERHEAD;

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Where the snapshots live (the log has its own handle in its options).
    storage: Arc<dyn Storage>,
    wal: Wal,
    durability: Durability,
    /// Transactions' isolation unless they choose one.
    isolation: Isolation,
    max_record_bytes: u32,
    /// Shared with the log's acknowledgement hook, as are `pending`, `first_pending` and
    /// `state_bytes` (`commit::apply_on_acknowledgement`).
    state: Arc<RwLock<State>>,
    /// Commits queued in the log and not yet applied, in LSN order. The lock orders the
    /// appends that change the engine's own state with those changes, so that no one sees
    /// one without the other:
    ///
    /// - a commit is appended and queued here under it, so this queue is in LSN order, and
    ///   every commit the log took is either queued or applied;
    /// - a spill's `BeginTxn` is appended and registered in `spills` under it, so a
    ///   checkpoint or install (which takes it to pick its LSN) sees every spill head below;
    /// - an install appends its marker and applies everything queued before it under it.
    ///
    /// The log itself says where each append went (`keel_wal::Appended`); appends that
    /// change no engine state (later spills, aborts, a checkpoint's entry) do not take it.
    pending: Arc<Mutex<PendingQueue>>,
    /// The last LSN of the first commit in `pending` (`NONE_PENDING`: none), stored under
    /// its lock; read without it (see `Database::apply_visible`).
    first_pending: Arc<AtomicU64>,
    next_txn_id: AtomicU64,
    report: RecoveryReport,
    /// The snapshot the state was loaded from, and damaged newer ones passed over.
    snapshot_lsn: Option<Lsn>,
    snapshots_skipped: Vec<(PathBuf, String)>,
    checkpoint_log_bytes: u64,
    checkpoint_log_percent: u64,
    /// Log above the loaded snapshot that earlier processes wrote, every record recovery read
    /// there (see [`Database::log_bytes`]): it counts toward the first automatic checkpoint, or a
    /// database reopened between bursts under the threshold never took one and its log grew
    /// without bound (`tests/adversarial_checkpoint_percent.rs`).
    log_bytes_at_open: u64,
    /// [`Database::log_bytes`] when the last checkpoint took its view.
    checkpointed_at_bytes: AtomicU64,
    /// [`State::data_bytes`] of the state the newest snapshot holds (written, installed or
    /// loaded; 0: none).
    checkpointed_state_bytes: AtomicU64,
    /// [`State::data_bytes`] of `state`, stored after each change to it: read by every
    /// commit's [`Database::maybe_checkpoint`] without the state's lock.
    state_bytes: Arc<AtomicU64>,
    /// The size of the newest snapshot (written, installed or loaded; 0: none).
    snapshot_bytes: AtomicU64,
    /// An automatic checkpoint is asked for or running.
    checkpointing: AtomicBool,
    /// One was found due while `checkpointing` was set: the checkpointer looks again after
    /// the one running.
    checkpoint_missed: AtomicBool,
    /// How commits ask the checkpointer thread for one.
    checkpoint_signal: Arc<checkpointer::Signal>,
    checkpoints: AtomicU64,
    /// Held through a checkpoint or a snapshot install, so they run one at a time (each
    /// deletes snapshots and segments the other may be looking at).
    snapshot_turn: tokio::sync::Mutex<()>,
    spill_txn_bytes: usize,
    /// [`Options::feed_max_lag_bytes`]: also the most a subscription holds of transactions
    /// open in the log.
    feed_max_lag_bytes: u64,
    /// Spilled transactions whose heads the log must keep (see `retention`). Changed under
    /// the `pending` lock, with the append that begins or commits one.
    spills: Mutex<Spills>,
    /// LSN of the newest install marker in the log (0: none seen): no checkpoint may take
    /// its snapshot at it.
    last_install_marker: AtomicU64,
    /// What became of the installs whose markers this process knows: failed (the snapshot
    /// write failed; at open: replayed past, their snapshot absent), or taken effect here.
    /// An install holds the lock from before it logs its marker until its outcome is noted,
    /// so a change feed that read a marker learns the outcome by taking it. Taken under
    /// `pending` (never the reverse).
    installs: Arc<Mutex<install::InstallOutcomes>>,
    /// Snapshots known to read back whole (loaded at open, or checked as a fallback).
    verified_snapshots: Mutex<BTreeSet<Lsn>>,
    /// Automatic checkpoints that failed (the commit that ran one still succeeded), and the
    /// last failure's message.
    auto_checkpoint_failures: AtomicU64,
    last_auto_checkpoint_error: Mutex<Option<String>>,
    /// Commit latencies.
    latency: stats::Latencies,
    _lock: File,
}

/// An open database. Cheap to clone; every clone is the same database.
#[derive(Clone, Debug)]
pub struct Database {
    inner: Arc<Inner>,
    /// The automatic checkpoints' thread, held by every user handle (`None` in the thread's
    /// own handle, and when automatic checkpoints are off): the last user handle stops it.
    owner: Option<Arc<checkpointer::Checkpointer>>,
}

impl Database {
    /// The LSN of the snapshot the state was loaded from at open, if any.
    pub fn snapshot_lsn(&self) -> Option<Lsn> {
        self.inner.snapshot_lsn
    }

    /// Snapshots that could not be read at open (newest first), with the reason; the state
    /// came from an older one plus the log.
    pub fn snapshots_skipped(&self) -> &[(PathBuf, String)] {
        &self.inner.snapshots_skipped
    }

    /// What recovery found and did when this database was opened: counts, and each anomaly
    /// ([`Anomaly`](crate::Anomaly)) with its [`Finding`](crate::Finding) and the policy's
    /// [`Decision`](crate::Decision), all named through keel.
    ///
    /// ```
    /// use keel::{Database, Decision, Finding, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let db = Database::open(dir.path().join("db"), Options::default())?;
    /// let report = db.recovery_report();
    /// for anomaly in &report.anomalies {
    ///     match (&anomaly.finding, anomaly.decision) {
    ///         (Finding::TornTail { lsn, .. }, Decision::Truncate) => {
    ///             println!("an interrupted commit at LSN {lsn} was cut off")
    ///         }
    ///         (finding, decision) => println!("{finding}: {decision}"),
    ///     }
    /// }
    /// assert!(report.is_clean()); // a new database: nothing found
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Begins a run named `name` and returns its id, once the run is committed. Names are
    /// unique among active runs: [`Error::RunNameTaken`] names the active run that has it.
    pub async fn begin_run(&self, name: &str) -> Result<RunId> {
        let id = loop {
            let random = keel_wal::DatabaseId::random()
                .map_err(|e| keel_wal::Error::io("generating a run id", &self.inner.path, e))?;
            let id = RunId::from_u128(u128::from_le_bytes(random.0));
            let reserved = [SYSTEM_RUN, crate::state::ABANDONED_INSTALL_RUN];
            if !reserved.contains(&id.as_u128()) && self.run_info(id).is_none() {
                break id;
            }
        };
        let record = RunRecord {
            name: name.to_owned(),
            ended: false,
            deleted: false,
        };
        self.write_run_record(id, &record).await?;
        Ok(id)
    }

    /// Ends a run: later writes to it fail with [`Error::RunEnded`]; its keys stay readable.
    pub async fn end_run(&self, run: RunId) -> Result<Lsn> {
        let info = self.run_info(run).ok_or(Error::UnknownRun(run))?;
        if let RunState::Ended(_) = info.state {
            return Err(Error::RunEnded(run));
        }
        let record = RunRecord {
            name: info.name,
            ended: true,
            deleted: false,
        };
        self.write_run_record(run, &record).await
    }

    /// Deletes a run, active or ended, with all its keys: one commit in the log, so recovery
    /// and checkpoints honour it, and the run no longer takes memory. Its open transactions
    /// then fail to commit with [`Error::UnknownRun`] (also while the delete is being
    /// acknowledged); its name is free again.
    pub async fn delete_run(&self, run: RunId) -> Result<Lsn> {
        let info = self.run_info(run).ok_or(Error::UnknownRun(run))?;
        let record = RunRecord {
            name: info.name,
            ended: true,
            deleted: true,
        };
        self.write_run_record(run, &record).await
    }

    /// The active run named `name` (names are unique among active runs).
    pub fn find_run(&self, name: &str) -> Option<RunId> {
        let state = self.read();
        let mut runs = state.runs.values();
        let found = runs.find(|info| info.state == RunState::Active && info.name == name);
        found.map(|info| info.id)
    }

    async fn write_run_record(&self, run: RunId, record: &RunRecord) -> Result<Lsn> {
        let changes = vec![Change::Put(crate::state::run_key(run), record.encode())];
        self.commit_changes(SYSTEM_RUN, changes).await
    }

    /// A run's metadata.
    pub fn run_info(&self, run: RunId) -> Option<RunInfo> {
        self.read().runs.get(&run.as_u128()).cloned()
    }

    /// Every run, active and ended (deleted ones are gone).
    pub fn list_runs(&self) -> Vec<RunInfo> {
        self.read().runs.values().cloned().collect()
    }

    /// Starts a transaction in `run`, under [`Options::isolation`] (see
    /// [`Transaction::isolation`]).
    pub fn transaction(&self, run: RunId) -> Result<Transaction> {
        self.check_writable(run)?;
        Ok(Transaction::new(self.clone(), run, self.inner.isolation))
    }

    /// Refuses a write whose log entry could exceed the record limit: its key and value may
    /// hold the limit less [`WRITE_ENTRY_OVERHEAD`], a bound never below the encoded size.
    /// A limit under that overhead holds no write, not even an empty one (which `put` let
    /// through to be refused at commit: `tests/adversarial_tiny_limit.rs`).
    fn check_write_size(&self, key_bytes: usize, value_bytes: usize) -> Result<()> {
        let room = u64::from(self.inner.max_record_bytes).checked_sub(WRITE_ENTRY_OVERHEAD);
        let limit_bytes = room.unwrap_or(0);
        let bytes = (key_bytes as u64).saturating_add(value_bytes as u64);
        if room.is_none_or(|room| bytes > room) {
            return Err(Error::TooLarge {
                key_bytes,
                value_bytes,
                limit_bytes,
                option: crate::RECORD_LIMIT_OPTION,
            });
        }
        Ok(())
    }

    fn check_writable(&self, run: RunId) -> Result<()> {
        let state = self.read().runs.get(&run.as_u128()).map(|info| info.state);
        match state {
            None => Err(Error::UnknownRun(run)),
            Some(RunState::Ended(_)) => Err(Error::RunEnded(run)),
            Some(RunState::Active) => Ok(()),
        }
    }

    /// The committed value of `key` in `run`.
    pub fn get(&self, run: RunId, key: impl AsRef<[u8]>) -> Result<Option<Versioned>> {
        let state = self.read();
        if !state.runs.contains_key(&run.as_u128()) {
            return Err(Error::UnknownRun(run));
        }
        Ok(state.get(run.as_u128(), key.as_ref()))
    }

    /// Every committed `(key, value)` of `run` whose key starts with `prefix`, in key order
    /// ([`Database::prefix`], collected).
    pub fn scan(&self, run: RunId, prefix: impl AsRef<[u8]>) -> Result<Vec<(Vec<u8>, Versioned)>> {
        Ok(self.prefix(run, prefix)?.collect())
    }

    /// The committed `(key, value)` pairs of `run` in `range`, in key order from either end,
    /// as of this call ([`Snapshot::range`] on a new [`Database::snapshot`]).
    pub fn range<K: AsRef<[u8]>>(&self, run: RunId, range: impl RangeBounds<K>) -> Result<Iter> {
        self.snapshot().range(run, range)
    }

    /// The committed `(key, value)` pairs of `run` whose keys start with `prefix`, as of
    /// this call.
    pub fn prefix(&self, run: RunId, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.snapshot().prefix(run, prefix)
    }

    /// Every committed `(key, value)` pair of `run`, as of this call, in key order from
    /// either end.
    pub fn iter(&self, run: RunId) -> Result<Iter> {
        self.snapshot().iter(run)
    }

    /// A read-only view of the whole database with every commit acknowledged so far: O(1).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.view())
    }

    /// Closes the database: queued commits are written and synced, the writer stops, the
    /// directory's lock is released. An automatic checkpoint being written is interrupted
    /// (its partial snapshot removed).
    ///
    /// It needs the last handle: every clone of the [`Database`] is one, and so is every open
    /// [`Transaction`] (a [`Subscription`] is not: it ends when the database closes; nor are a
    /// [`Snapshot`](crate::Snapshot) and an [`Iter`](crate::Iter), views that outlive it). While
    /// others are alive nothing is closed and [`CloseError::InUse`] gives this handle back, as
    /// [`Arc::try_unwrap`] does, so the close can be retried once they are dropped. Dropping
    /// the last handle closes the database too, without reporting a failed final sync.
    ///
    /// [`CloseError::InUse`]: crate::CloseError::InUse
    pub fn close(self) -> std::result::Result<(), crate::CloseError> {
        let handles = match &self.owner {
            Some(owner) => Arc::strong_count(owner) - 1,
            None => Arc::strong_count(&self.inner) - 1,
        };
        if handles > 0 {
            return Err(crate::CloseError::InUse { db: self, handles });
        }
        let Database { inner, owner } = self;
        // The last user handle: stopping the thread releases the thread's handle.
        drop(owner);
        let inner = match Arc::try_unwrap(inner) {
            Ok(inner) => inner,
            // Every handle but the thread's holds `owner`: none is left to count here.
            Err(inner) => {
                let handles = Arc::strong_count(&inner) - 1;
                let db = Database { inner, owner: None };
                return Err(crate::CloseError::InUse { db, handles });
            }
        };
        inner
            .wal
            .close()
            .map_err(|e| crate::CloseError::Failed(e.into()))
    }

    /// The state with every acknowledged commit applied.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.apply_visible();
        sync::read(&self.inner.state)
    }

    fn new_txn_id(&self) -> TxnId {
        self.inner.next_txn_id.fetch_add(1, Ordering::Relaxed)
    }
}
