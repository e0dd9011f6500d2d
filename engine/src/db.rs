//! The database handle, its options, and transactions.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use keel_recovery::{RecoveryPolicy, RecoveryReport};
use keel_wal::{
    BackendChoice, Durability, EncodedBatch, Lsn, RunId, TxnId, Wal, WalEntry, WalOptions,
    WalStats, fsutil,
};

use crate::snapshot;
use crate::state::{Change, RunInfo, RunRecord, RunState, SYSTEM_RUN, State, StateReplay};
use crate::{Error, Result, Versioned};

/// Options of [`Database::open`].
#[derive(Clone, Debug)]
pub struct Options {
    /// When a commit resolves (see [`Durability`]); also when its effects become visible.
    pub durability: Durability,
    pub backend: BackendChoice,
    /// What recovery accepts at open.
    pub recovery_policy: RecoveryPolicy,
    /// Size of each log segment.
    pub segment_bytes: u64,
    /// Largest single entry.
    pub max_record_bytes: u32,
    /// Create the database when the directory holds none.
    pub create_if_missing: bool,
    /// A checkpoint runs (in the commit that crosses it) once the log has grown by this many
    /// bytes since the last one, bounding recovery time and disk use; 0 turns it off.
    pub checkpoint_log_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        let wal = WalOptions::default();
        Options {
            durability: Durability::Strict,
            backend: BackendChoice::Auto,
            recovery_policy: RecoveryPolicy::default(),
            segment_bytes: wal.segment_bytes,
            max_record_bytes: wal.max_record_bytes,
            create_if_missing: true,
            checkpoint_log_bytes: 256 << 20,
        }
    }
}

/// A commit queued in the log and not yet applied to the state, in LSN order.
#[derive(Debug)]
struct Pending {
    first_lsn: Lsn,
    last_lsn: Lsn,
    run: u128,
    changes: Vec<Change>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    wal: Wal,
    durability: Durability,
    max_record_bytes: u32,
    state: RwLock<State>,
    /// Queued commits in LSN order; the lock also orders appends, so queue order is LSN order.
    pending: Mutex<VecDeque<Pending>>,
    next_txn_id: AtomicU64,
    report: RecoveryReport,
    /// The snapshot the state was loaded from, and damaged newer ones passed over.
    snapshot_lsn: Option<Lsn>,
    snapshots_skipped: Vec<(PathBuf, String)>,
    checkpoint_log_bytes: u64,
    /// Log bytes written when the last checkpoint ran (this process).
    checkpointed_at_bytes: AtomicU64,
    checkpointing: std::sync::atomic::AtomicBool,
    checkpoints: AtomicU64,
    /// Commit latencies in nanoseconds.
    latency: Mutex<hdrhistogram::Histogram<u64>>,
    _lock: File,
}

/// An open database. Cheap to clone; every clone is the same database.
#[derive(Clone, Debug)]
pub struct Database {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Database {
    /// Opens (or creates) the database in `path`: takes its lock, recovers the log into the
    /// state under `options.recovery_policy`, and starts the writer.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Database> {
        let path = path.as_ref().to_path_buf();
        let _span = tracing::info_span!("database_open", path = %path.display()).entered();
        if options.create_if_missing {
            std::fs::create_dir_all(&path)
                .map_err(|e| keel_wal::Error::io("creating directory", &path, e))?;
        }
        let lock = fsutil::lock_dir(&path)?;
        let wal_dir = path.join("wal");
        let (loaded, snapshots_skipped) = snapshot::load_newest(&path.join("snapshots"))?;
        let snapshot_lsn = loaded.as_ref().map(|l| l.lsn);
        let (mut state, snapshot_txn) = match loaded {
            Some(loaded) => (loaded.state, loaded.max_txn_id),
            None => (State::default(), 0),
        };
        let after = snapshot_lsn.unwrap_or(0);
        let log_start = if wal_dir.exists() {
            keel_wal::segment::list_directory(&wal_dir)?
                .segments
                .first()
                .map(|s| s.first_lsn)
        } else {
            None
        };
        if let Some(first) = log_start
            && first > after + 1
        {
            return Err(Error::Metadata(format!(
                "the log starts at LSN {first}, but the newest readable snapshot covers only up                  to LSN {after}: commits {} to {} cannot be recovered{}",
                after + 1,
                first - 1,
                if snapshots_skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (unreadable snapshots: {})",
                        snapshots_skipped
                            .iter()
                            .map(|(p, why)| format!("{}: {why}", p.display()))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            )));
        }
        let report = if wal_dir.exists() {
            keel_recovery::recover(
                &wal_dir,
                options.recovery_policy,
                &mut StateReplay {
                    state: &mut state,
                    after,
                },
            )?
        } else {
            keel_recovery::recover_empty(options.recovery_policy)
        };
        let wal = Wal::open(
            &wal_dir,
            WalOptions {
                durability: options.durability,
                segment_bytes: options.segment_bytes,
                max_record_bytes: options.max_record_bytes,
                backend: options.backend,
                create_if_missing: options.create_if_missing,
                ..WalOptions::default()
            },
        )?;
        if wal.next_lsn() <= after {
            return Err(Error::Metadata(format!(
                "the snapshot covers LSN {after} but the log ends at LSN {}",
                wal.next_lsn() - 1
            )));
        }
        state.applied_through = wal.next_lsn() - 1;
        let next_txn_id = report.max_txn_id.unwrap_or(0).max(snapshot_txn) + 1;
        tracing::info!(
            runs = state.runs.len(),
            keys = state.data.len(),
            next_lsn = wal.next_lsn(),
            "opened database"
        );
        Ok(Database {
            inner: Arc::new(Inner {
                path,
                wal,
                durability: options.durability,
                max_record_bytes: options.max_record_bytes,
                state: RwLock::new(state),
                pending: Mutex::new(VecDeque::new()),
                next_txn_id: AtomicU64::new(next_txn_id),
                report,
                snapshot_lsn,
                snapshots_skipped,
                checkpoint_log_bytes: options.checkpoint_log_bytes,
                checkpointed_at_bytes: AtomicU64::new(0),
                checkpointing: std::sync::atomic::AtomicBool::new(false),
                checkpoints: AtomicU64::new(0),
                latency: Mutex::new(
                    hdrhistogram::Histogram::new_with_bounds(1_000, 600_000_000_000, 3)
                        .map_err(|e| Error::Metadata(format!("latency histogram: {e}")))?,
                ),
                _lock: lock,
            }),
        })
    }

    /// The LSN of the snapshot the state was loaded from at open, if any.
    pub fn snapshot_lsn(&self) -> Option<Lsn> {
        self.inner.snapshot_lsn
    }

    /// Snapshots that could not be read at open (newest first), with the reason; the state
    /// came from an older one plus the log.
    pub fn snapshots_skipped(&self) -> &[(PathBuf, String)] {
        &self.inner.snapshots_skipped
    }

    /// Writes a snapshot of the state, logs a `Checkpoint` entry, and deletes what it makes
    /// redundant: the log is kept back to the previous snapshot (so a damaged newest snapshot
    /// can fall back to it), older snapshots and segments are removed. Returns the snapshot's
    /// LSN. Commits wait while the snapshot is written.
    pub async fn checkpoint(&self) -> Result<Lsn> {
        let dir = self.inner.path.join("snapshots");
        let lsn = {
            let mut pending = lock(&self.inner.pending);
            self.apply_visible_locked(&mut pending);
            let lsn = pending
                .front()
                .map_or(self.inner.wal.next_lsn() - 1, |p| p.first_lsn - 1);
            // The log must be durable through the snapshot, or a crash could leave a log that
            // restarts below it.
            if self.inner.wal.stats().durable_lsn < lsn {
                self.inner.wal.sync().wait()?;
            }
            let state = self
                .inner
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let max_txn_id = self.inner.next_txn_id.load(Ordering::Relaxed) - 1;
            snapshot::write(&dir, lsn, max_txn_id, &state)?;
            lsn
        };
        let entry = WalEntry::Checkpoint {
            run_id: RunId::from_u128(SYSTEM_RUN),
            snapshot_lsn: lsn,
        };
        self.inner
            .wal
            .append_with(&[entry], Durability::Strict)
            .await?;
        let snapshots = snapshot::list(&dir)?;
        if let Some((previous, _)) = snapshots.get(1) {
            self.inner.wal.remove_segments_before(previous + 1)?;
        }
        let mut removed = false;
        for (_, old) in snapshots.iter().skip(2) {
            std::fs::remove_file(old)
                .map_err(|e| keel_wal::Error::io("removing old snapshot", old, e))?;
            removed = true;
        }
        if removed {
            fsutil::sync_dir(&dir)?;
        }
        self.inner
            .checkpointed_at_bytes
            .store(self.inner.wal.stats().bytes_written, Ordering::Relaxed);
        self.inner.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %self.inner.path.display(), lsn, "checkpoint written");
        Ok(lsn)
    }

    /// Runs a checkpoint when the log has grown past the threshold since the last one.
    async fn maybe_checkpoint(&self) -> Result<()> {
        let threshold = self.inner.checkpoint_log_bytes;
        if threshold == 0 {
            return Ok(());
        }
        let grown = self.inner.wal.stats().bytes_written
            - self.inner.checkpointed_at_bytes.load(Ordering::Relaxed);
        if grown < threshold || self.inner.checkpointing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let outcome = self.checkpoint().await.map(drop);
        self.inner.checkpointing.store(false, Ordering::Release);
        outcome
    }

    /// What recovery found and did when this database was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Begins a run named `name` and returns its id, once the run is committed.
    pub async fn begin_run(&self, name: &str) -> Result<RunId> {
        let id = loop {
            let random = keel_wal::DatabaseId::random()
                .map_err(|e| keel_wal::Error::io("generating a run id", &self.inner.path, e))?;
            let id = RunId::from_u128(u128::from_le_bytes(random.0));
            if id.as_u128() != SYSTEM_RUN && self.run_info(id).is_none() {
                break id;
            }
        };
        let record = RunRecord {
            name: name.to_owned(),
            ended: false,
        };
        self.write_run_record(id, &record).await?;
        Ok(id)
    }

    /// Ends a run: later writes to it fail with [`Error::RunEnded`].
    pub async fn end_run(&self, run: RunId) -> Result<Lsn> {
        let info = self.run_info(run).ok_or(Error::UnknownRun(run))?;
        if let RunState::Ended(_) = info.state {
            return Err(Error::RunEnded(run));
        }
        let record = RunRecord {
            name: info.name,
            ended: true,
        };
        self.write_run_record(run, &record).await
    }

    async fn write_run_record(&self, run: RunId, record: &RunRecord) -> Result<Lsn> {
        let changes = vec![Change::Put(crate::state::run_key(run), record.encode())];
        self.commit_changes(SYSTEM_RUN, changes).await
    }

    /// A run's metadata.
    pub fn run_info(&self, run: RunId) -> Option<RunInfo> {
        self.read().runs.get(&run.as_u128()).cloned()
    }

    /// Every run, active and ended.
    pub fn list_runs(&self) -> Vec<RunInfo> {
        self.read().runs.values().cloned().collect()
    }

    /// Starts a transaction in `run`.
    pub fn transaction(&self, run: RunId) -> Result<Transaction> {
        self.check_writable(run)?;
        Ok(Transaction {
            db: self.clone(),
            run,
            writes: BTreeMap::new(),
        })
    }

    fn check_writable(&self, run: RunId) -> Result<()> {
        match self.run_info(run) {
            None => Err(Error::UnknownRun(run)),
            Some(RunInfo {
                state: RunState::Ended(_),
                ..
            }) => Err(Error::RunEnded(run)),
            Some(_) => Ok(()),
        }
    }

    /// The committed value of `key` in `run`.
    pub fn get(&self, run: RunId, key: &[u8]) -> Result<Option<Versioned>> {
        if self.run_info(run).is_none() {
            return Err(Error::UnknownRun(run));
        }
        Ok(self
            .read()
            .data
            .get(&(run.as_u128(), key.to_vec()))
            .cloned())
    }

    /// Every committed `(key, value)` of `run` whose key starts with `prefix`, in key order.
    pub fn scan(&self, run: RunId, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>> {
        if self.run_info(run).is_none() {
            return Err(Error::UnknownRun(run));
        }
        let run = run.as_u128();
        let state = self.read();
        Ok(state
            .data
            .range((run, prefix.to_vec())..)
            .take_while(|((r, key), _)| *r == run && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    /// Counters: the log's (commits, bytes, fsyncs, batch sizes, backend in use) and the
    /// database's (commit latency percentiles, checkpoints, runs, keys).
    pub fn stats(&self) -> Stats {
        let latency = lock(&self.inner.latency);
        let micros = |q: f64| {
            if latency.is_empty() {
                0.0
            } else {
                latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let state = self.read();
        Stats {
            wal: self.inner.wal.stats(),
            commits: latency.len(),
            commit_p50_us: micros(0.50),
            commit_p99_us: micros(0.99),
            commit_p999_us: micros(0.999),
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            runs: state.runs.len(),
            keys: state.data.len(),
        }
    }

    /// Closes the database: queued commits are written and synced, the writer stops.
    pub fn close(self) -> Result<()> {
        let inner = Arc::try_unwrap(self.inner).map_err(|_| {
            Error::Wal(keel_wal::Error::InvalidOptions(
                "close() needs the last handle; other clones are still open".into(),
            ))
        })?;
        inner.wal.close()?;
        Ok(())
    }

    /// The state with every acknowledged commit applied.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.apply_visible();
        self.inner
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies, in LSN order, every queued commit the log has acknowledged.
    fn apply_visible(&self) {
        let mut pending = lock(&self.inner.pending);
        self.apply_visible_locked(&mut pending);
    }

    fn apply_visible_locked(&self, pending: &mut VecDeque<Pending>) {
        let visible = self.visible_lsn();
        if pending.front().is_none_or(|p| p.last_lsn > visible) {
            return;
        }
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while pending.front().is_some_and(|p| p.last_lsn <= visible) {
            let commit = pending.pop_front().expect("checked");
            if let Err(error) = state.apply(commit.run, commit.last_lsn, &commit.changes) {
                tracing::error!(%error, lsn = commit.last_lsn, "could not apply a commit");
            }
        }
    }

    /// The highest LSN acknowledged under the database's durability.
    fn visible_lsn(&self) -> Lsn {
        let stats = self.inner.wal.stats();
        match self.inner.durability {
            Durability::Strict => stats.durable_lsn,
            Durability::Batched { .. } => stats.written_lsn,
            Durability::Async { .. } => self.inner.wal.next_lsn() - 1,
        }
    }

    /// Logs `changes` of `run` as one transaction and waits for its acknowledgement.
    async fn commit_changes(&self, run: u128, changes: Vec<Change>) -> Result<Lsn> {
        let txn_id: TxnId = self.inner.next_txn_id.fetch_add(1, Ordering::Relaxed);
        let run_id = RunId::from_u128(run);
        let mut entries: Vec<WalEntry> = changes
            .iter()
            .map(|change| match change {
                Change::Put(key, value) => WalEntry::Write {
                    run_id,
                    txn_id,
                    key: key.clone(),
                    value: value.clone(),
                },
                Change::Delete(key) => WalEntry::Delete {
                    run_id,
                    txn_id,
                    key: key.clone(),
                },
            })
            .collect();
        entries.push(WalEntry::CommitTxn { run_id, txn_id });
        let batch = EncodedBatch::encode(&entries, self.inner.max_record_bytes)?;
        let count = u64::from(batch.len());
        let started = std::time::Instant::now();
        let future = {
            let mut pending = lock(&self.inner.pending);
            let first_lsn = self.inner.wal.next_lsn();
            let future = self.inner.wal.append_encoded(batch, self.inner.durability);
            pending.push_back(Pending {
                first_lsn,
                last_lsn: first_lsn + count - 1,
                run,
                changes,
            });
            future
        };
        let lsn = future.await?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        lock(&self.inner.latency).saturating_record(nanos);
        self.apply_visible();
        self.maybe_checkpoint().await?;
        Ok(lsn)
    }
}

/// A snapshot of a database's counters.
#[derive(Clone, Debug)]
pub struct Stats {
    /// The log's counters, including the backend in use.
    pub wal: WalStats,
    /// Commits made through this handle since open (transactions and run changes).
    pub commits: u64,
    /// Commit latency, from `commit()` to its acknowledgement, in microseconds.
    pub commit_p50_us: f64,
    pub commit_p99_us: f64,
    pub commit_p999_us: f64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    pub runs: usize,
    pub keys: usize,
}

/// Buffered writes to one run, committed as one atomic unit.
#[derive(Debug)]
pub struct Transaction {
    db: Database,
    run: RunId,
    /// `None` marks a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Transaction {
    /// The run this transaction writes to.
    pub fn run(&self) -> RunId {
        self.run
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    /// The value this transaction would commit for `key`: its own write, else the committed
    /// value. (`version` of an uncommitted value is 0.)
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        match self.writes.get(key) {
            Some(Some(value)) => Ok(Some(Versioned {
                value: value.clone(),
                version: 0,
            })),
            Some(None) => Ok(None),
            None => self.db.get(self.run, key),
        }
    }

    /// Commits: one unit in the log; resolves with the commit version (its LSN) once
    /// acknowledged, and the effects are then visible to every reader.
    pub async fn commit(self) -> Result<Lsn> {
        self.db.check_writable(self.run)?;
        let changes = self
            .writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Change::Put(key, value),
                None => Change::Delete(key),
            })
            .collect();
        self.db.commit_changes(self.run.as_u128(), changes).await
    }

    /// Drops the transaction's writes; nothing reaches the log.
    pub fn abort(self) {}
}
