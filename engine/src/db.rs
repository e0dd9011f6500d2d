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
use crate::{Error, Result, SnapshotImage, Versioned};

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
    /// A transaction whose buffered writes pass this many bytes writes them to the log ahead
    /// of its commit (after a `BeginTxn`), so its memory stays bounded; an abandoned one is
    /// closed with an `AbortTxn`.
    pub spill_txn_bytes: usize,
    /// Fault injection for tests (see `keel_wal::Faults`).
    #[doc(hidden)]
    pub faults: Option<Arc<keel_wal::Faults>>,
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
            spill_txn_bytes: 8 << 20,
            faults: None,
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
    /// Queued commits in LSN order; the lock also orders appends (every append is made
    /// holding it), so queue order is LSN order and `wal.next_lsn()` read under it is the LSN
    /// the next append gets.
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
    /// Held through a checkpoint or a snapshot install, so they run one at a time (each
    /// deletes snapshots and segments the other may be looking at).
    snapshot_turn: tokio::sync::Mutex<()>,
    spill_txn_bytes: usize,
    /// First LSN of every spilled transaction still open: checkpoints and installs keep the
    /// log from there. Registered under the `pending` lock, with the append.
    open_spills: Mutex<BTreeMap<TxnId, Lsn>>,
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
            fsutil::create_dir_all_durably(&path)?;
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
        let unreadable: Vec<Lsn> = snapshots_skipped
            .iter()
            .filter_map(|(path, _)| snapshot::lsn_of(path))
            .collect();
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
                "the log starts at LSN {first}, but the newest readable snapshot covers only up to LSN {after}: commits {} to {} cannot be recovered{}",
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
                    unreadable: &unreadable,
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
                faults: options.faults.clone(),
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
                snapshot_turn: tokio::sync::Mutex::new(()),
                spill_txn_bytes: options.spill_txn_bytes.max(1),
                open_spills: Mutex::new(BTreeMap::new()),
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
        use tracing::Instrument;
        let span = tracing::info_span!("checkpoint", path = %self.inner.path.display());
        self.write_checkpoint().instrument(span).await
    }

    async fn write_checkpoint(&self) -> Result<Lsn> {
        let _turn = self.inner.snapshot_turn.lock().await;
        let dir = self.snapshot_dir();
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
        let logged = {
            let _order = lock(&self.inner.pending);
            self.inner.wal.append_with(&[entry], Durability::Strict)
        };
        logged.await?;
        let snapshots = snapshot::list(&dir)?;
        if let Some((previous, _)) = snapshots.get(1) {
            let open_spill = lock(&self.inner.open_spills).values().min().copied();
            let keep_from = open_spill.map_or(previous + 1, |first| first.min(previous + 1));
            self.inner.wal.remove_segments_before(keep_from)?;
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

    fn snapshot_dir(&self) -> PathBuf {
        self.inner.path.join("snapshots")
    }

    /// The bytes of this database's snapshot at `lsn` (the LSN [`Database::checkpoint`] or
    /// [`Database::install_snapshot`] returned), once they decode whole: an image for
    /// [`SnapshotImage::decode`] and [`Database::install_snapshot`]. An error when there is no
    /// such snapshot (a later checkpoint may have deleted it; the newest two are kept) or it
    /// is damaged.
    pub fn read_snapshot(&self, lsn: Lsn) -> Result<Vec<u8>> {
        let path = snapshot::path_of(&self.snapshot_dir(), lsn);
        let (held, bytes) = snapshot::read_whole(&path)?;
        if held != lsn {
            return Err(Error::Metadata(format!(
                "snapshot {} holds LSN {held}, not the LSN its name gives",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// The newest of this database's snapshots that decodes whole, with its LSN; damaged newer
    /// ones are passed over (as at open). `None` when there is none.
    pub fn newest_snapshot(&self) -> Result<Option<(Lsn, Vec<u8>)>> {
        snapshot::newest_bytes(&self.snapshot_dir())
    }

    /// Replaces the database's whole state (runs, keys, values) with the snapshot image's,
    /// durably, and returns the LSN `L` it is installed at. The image is checked first: a bad
    /// one is an [`Error::InvalidSnapshotImage`] and changes nothing.
    ///
    /// Every LSN in the image (key versions, runs' beginnings and ends) belongs to the log of
    /// the database that wrote it, so all become `L`; transaction ids continue above both
    /// databases' highest. Commits queued before the install are applied first and then
    /// replaced; commits after it apply on top of the installed state. An open transaction is
    /// ordered after the install: its commit applies on top of the installed state, or fails
    /// with [`Error::UnknownRun`] when its run is not in the image. A spilled one keeps the log
    /// from its first entry, as a checkpoint does.
    ///
    /// The steps, each durable before the next (checkpoints wait meanwhile; commits wait
    /// during steps 1 to 3, as while a checkpoint writes its snapshot):
    ///
    /// 1. Under the lock that orders appends, every visible commit is applied and a
    ///    `Checkpoint { snapshot_lsn: L }` entry is logged durably at `L` itself (so the log
    ///    is durable through `L`). A checkpoint's entry always lands above its snapshot, so
    ///    this one marks an install.
    /// 2. The image, rebased onto `L`, is written as the snapshot `L.snap` (temporary file,
    ///    fsync, rename, directory fsync).
    /// 3. It becomes the in-memory state.
    /// 4. Every other snapshot file is deleted: an older snapshot plus the log would rebuild
    ///    the state from before the install.
    /// 5. Log segments wholly below `L + 1` (or below the oldest open spilled transaction)
    ///    are deleted.
    ///
    /// A crash before the rename in step 2 leaves the old state: at open, a marker without
    /// its snapshot file is an install that never happened. A crash after it leaves the
    /// installed state: `L.snap` is the newest snapshot, and commits after `L` replay on
    /// it. Should `L.snap` later be unreadable while the log still holds the marker, opening
    /// fails rather than fall back to the state before the install.
    ///
    /// An error in step 2 removes the new snapshot file (best effort) and leaves the state
    /// unchanged; an error in steps 4 or 5 comes after the install took effect, and only
    /// the clean-up is unfinished (the next checkpoint finishes it).
    pub async fn install_snapshot(&self, image: &[u8]) -> Result<Lsn> {
        use tracing::Instrument;
        let image = SnapshotImage::decode(image)?;
        let span = tracing::info_span!(
            "install_snapshot",
            path = %self.inner.path.display(),
            image_lsn = image.lsn()
        );
        self.write_install(image).instrument(span).await
    }

    async fn write_install(&self, image: SnapshotImage) -> Result<Lsn> {
        let _turn = self.inner.snapshot_turn.lock().await;
        let dir = self.snapshot_dir();
        let keys = image.len();
        let lsn = self.swap_in(&dir, image)?;
        snapshot::remove_all_but(&dir, lsn)?;
        // Spills open now began before the install (later ones start above `lsn`).
        let open_spill = lock(&self.inner.open_spills).values().min().copied();
        let keep_from = open_spill.map_or(lsn + 1, |first| first.min(lsn + 1));
        self.inner.wal.remove_segments_before(keep_from)?;
        self.inner
            .checkpointed_at_bytes
            .store(self.inner.wal.stats().bytes_written, Ordering::Relaxed);
        tracing::info!(path = %self.inner.path.display(), lsn, keys, "snapshot installed");
        Ok(lsn)
    }

    /// Steps 1 to 3 of an install, under the `pending` lock: logs the marker at `L`, writes
    /// the image rebased onto `L` as the snapshot at `L`, and makes it the state. Returns `L`.
    fn swap_in(&self, dir: &Path, image: SnapshotImage) -> Result<Lsn> {
        let (mut state, image_max_txn_id) = image.into_parts();
        let mut pending = lock(&self.inner.pending);
        let lsn = self.log_install_marker(&mut pending)?;
        state.rebase(lsn);
        let local_max_txn_id = self.inner.next_txn_id.load(Ordering::Relaxed) - 1;
        let max_txn_id = local_max_txn_id.max(image_max_txn_id);
        if let Err(error) = snapshot::write(dir, lsn, max_txn_id, &state) {
            self.discard_snapshot(dir, lsn);
            return Err(error);
        }
        self.inner
            .next_txn_id
            .fetch_max(max_txn_id.saturating_add(1), Ordering::Relaxed);
        *self
            .inner
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        Ok(lsn)
    }

    /// Logs the install marker (`Checkpoint { snapshot_lsn: L }` at `L`) and waits until it
    /// is durable; then every commit queued before it is visible, and is applied. Returns `L`.
    fn log_install_marker(&self, pending: &mut VecDeque<Pending>) -> Result<Lsn> {
        let lsn = self.inner.wal.next_lsn();
        let marker = WalEntry::Checkpoint {
            run_id: RunId::from_u128(SYSTEM_RUN),
            snapshot_lsn: lsn,
        };
        let logged = self
            .inner
            .wal
            .append_with(&[marker], Durability::Strict)
            .wait()?;
        assert_eq!(logged, lsn, "every append is made under the pending lock");
        self.apply_visible_locked(pending);
        assert!(
            pending.is_empty(),
            "commits queued before a durable LSN are visible"
        );
        Ok(lsn)
    }

    /// After a failed snapshot write: removes whatever reached the snapshot's name, so a
    /// reopen does not load a snapshot the live state never had.
    fn discard_snapshot(&self, dir: &Path, lsn: Lsn) {
        use std::io::ErrorKind::{NotADirectory, NotFound};
        let path = snapshot::path_of(dir, lsn);
        let outcome = match std::fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(dir).map_err(Error::from),
            Err(e) if matches!(e.kind(), NotFound | NotADirectory) => Ok(()),
            Err(e) => Err(keel_wal::Error::io("removing snapshot", &path, e).into()),
        };
        if let Err(error) = outcome {
            tracing::error!(snapshot = %path.display(), %error, "could not remove the snapshot of a failed install; a reopen may load it");
        }
    }

    /// Runs a checkpoint when the log has grown past the threshold since the last one.
    async fn maybe_checkpoint(&self) -> Result<()> {
        let threshold = self.inner.checkpoint_log_bytes;
        if threshold == 0 {
            return Ok(());
        }
        // A checkpoint finishing meanwhile may store a count newer than the one read here.
        let grown = self
            .inner
            .wal
            .stats()
            .bytes_written
            .saturating_sub(self.inner.checkpointed_at_bytes.load(Ordering::Relaxed));
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
            buffered_bytes: 0,
            spill: None,
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
        Ok(self.read().scan(run.as_u128(), prefix))
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
        let txn_id = self.new_txn_id();
        self.commit_unit(run, txn_id, changes, Vec::new()).await
    }

    fn new_txn_id(&self) -> TxnId {
        self.inner.next_txn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The log entries of `changes`.
    fn entries(run: u128, txn_id: TxnId, changes: &[Change]) -> Vec<WalEntry> {
        let run_id = RunId::from_u128(run);
        changes
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
            .collect()
    }

    /// Appends `entries` outside any commit (a spill or an abort); returns the first LSN.
    /// `opens` is a spilled transaction they begin: it is registered as open under the same
    /// lock as the append, so a checkpoint or install that follows the append sees it.
    fn append_uncommitted(
        &self,
        entries: &[WalEntry],
        opens: Option<TxnId>,
    ) -> Result<(Lsn, keel_wal::CommitFuture)> {
        let batch = EncodedBatch::encode(entries, self.inner.max_record_bytes)?;
        // Written, not synced: the commit's own fdatasync covers it.
        let written = Durability::Batched {
            max_delay: std::time::Duration::from_secs(1),
            max_bytes: u64::MAX,
        };
        let _order = lock(&self.inner.pending);
        let first = self.inner.wal.next_lsn();
        let future = self.inner.wal.append_encoded(batch, written);
        if let Some(txn_id) = opens {
            lock(&self.inner.open_spills).insert(txn_id, first);
        }
        Ok((first, future))
    }

    /// Reads back the entries at `lsns` (ascending) from the log.
    fn read_logged(
        &self,
        lsns: &[Lsn],
        mut f: impl FnMut(Lsn, &keel_wal::ArchivedWalEntry),
    ) -> Result<()> {
        let Some(&first) = lsns.first() else {
            return Ok(());
        };
        let last = *lsns.last().expect("not empty");
        let mut reader = keel_wal::LogReader::open_from(&self.inner.path.join("wal"), first)?;
        let mut wanted = lsns.iter().peekable();
        while let Some(record) = reader.next_record()? {
            if record.lsn > last {
                break;
            }
            if wanted.peek() == Some(&&record.lsn) {
                wanted.next();
                f(record.lsn, record.entry);
            }
        }
        match wanted.next() {
            None => Ok(()),
            Some(missing) => Err(Error::Metadata(format!(
                "spilled entry at LSN {missing} is not in the log"
            ))),
        }
    }

    /// Logs `logged` (and the `CommitTxn`) as one unit of transaction `txn_id`, whose
    /// `earlier` changes were spilled before; waits for the acknowledgement and applies
    /// `earlier` then `logged`.
    async fn commit_unit(
        &self,
        run: u128,
        txn_id: TxnId,
        logged: Vec<Change>,
        earlier: Vec<Change>,
    ) -> Result<Lsn> {
        let run_id = RunId::from_u128(run);
        let mut entries = Self::entries(run, txn_id, &logged);
        entries.push(WalEntry::CommitTxn { run_id, txn_id });
        let mut changes = earlier;
        changes.extend(logged);
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

/// Writes of a transaction already in the log.
#[derive(Debug)]
struct Spill {
    txn_id: TxnId,
    first_lsn: Lsn,
    /// Each spilled key's latest entry: its LSN, and whether it is a delete.
    entries: BTreeMap<Vec<u8>, (Lsn, bool)>,
    /// The latest spill's append: waited for (written) before reading spilled entries back.
    last: Option<keel_wal::CommitFuture>,
}

/// Buffered writes to one run, committed as one atomic unit. Past
/// [`Options::spill_txn_bytes`] the buffered writes go to the log ahead of the commit; a
/// transaction dropped without `commit` is then closed with an `AbortTxn`.
#[derive(Debug)]
pub struct Transaction {
    db: Database,
    run: RunId,
    /// `None` marks a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    buffered_bytes: usize,
    spill: Option<Spill>,
}

impl Transaction {
    /// The run this transaction writes to.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// Writes `value` under `key` (in this transaction). Fails only when a spill to the log
    /// fails.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.buffered_bytes += key.len() + value.len();
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        self.spill_if_large()
    }

    /// Deletes `key` (in this transaction).
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.buffered_bytes += key.len();
        self.writes.insert(key.to_vec(), None);
        self.spill_if_large()
    }

    /// Whether some of this transaction's writes are already in the log.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Empties the buffer into changes, in key order.
    fn take_writes(&mut self) -> Vec<Change> {
        self.buffered_bytes = 0;
        std::mem::take(&mut self.writes)
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Change::Put(key, value),
                None => Change::Delete(key),
            })
            .collect()
    }

    fn spill_if_large(&mut self) -> Result<()> {
        if self.buffered_bytes < self.db.inner.spill_txn_bytes {
            return Ok(());
        }
        let run = self.run.as_u128();
        let buffered = self.take_writes();
        let begin = self.spill.is_none();
        let txn_id = match &self.spill {
            Some(spill) => spill.txn_id,
            None => self.db.new_txn_id(),
        };
        let mut entries = Vec::with_capacity(buffered.len() + 1);
        if begin {
            entries.push(WalEntry::BeginTxn {
                run_id: self.run,
                txn_id,
            });
        }
        entries.extend(Database::entries(run, txn_id, &buffered));
        let (first, future) = self
            .db
            .append_uncommitted(&entries, begin.then_some(txn_id))?;
        let spill = self.spill.get_or_insert_with(|| Spill {
            txn_id,
            first_lsn: first,
            entries: BTreeMap::new(),
            last: None,
        });
        let data_first = first + u64::from(begin);
        for (i, change) in buffered.into_iter().enumerate() {
            let (key, delete) = match change {
                Change::Put(key, _) => (key, false),
                Change::Delete(key) => (key, true),
            };
            spill.entries.insert(key, (data_first + i as u64, delete));
        }
        spill.last = Some(future);
        tracing::debug!(
            txn_id,
            first_lsn = spill.first_lsn,
            "spilled a large transaction"
        );
        Ok(())
    }

    /// Waits until every spilled entry has been written, so it can be read back.
    fn spilled_written(&mut self) -> Result<()> {
        if let Some(future) = self.spill.as_mut().and_then(|s| s.last.take()) {
            future.wait()?;
        }
        Ok(())
    }

    /// The value this transaction would commit for `key`: its own write (buffered, or read
    /// back from the log when spilled), else the committed value. (`version` of an
    /// uncommitted value is 0.)
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>> {
        match self.writes.get(key) {
            Some(Some(value)) => {
                return Ok(Some(Versioned {
                    value: value.clone(),
                    version: 0,
                }));
            }
            Some(None) => return Ok(None),
            None => {}
        }
        let spilled = self
            .spill
            .as_ref()
            .and_then(|s| s.entries.get(key).copied());
        match spilled {
            Some((_, true)) => Ok(None),
            Some((lsn, false)) => {
                self.spilled_written()?;
                let mut value = None;
                self.db.read_logged(&[lsn], |_, entry| {
                    if let keel_wal::ArchivedWalEntry::Write { value: v, .. } = entry {
                        value = Some(v.as_slice().to_vec());
                    }
                })?;
                Ok(value.map(|value| Versioned { value, version: 0 }))
            }
            None => self.db.get(self.run, key),
        }
    }

    /// Commits: one unit in the log; resolves with the commit version (its LSN) once
    /// acknowledged, and the effects are then visible to every reader.
    pub async fn commit(mut self) -> Result<Lsn> {
        self.db.check_writable(self.run)?;
        let logged = self.take_writes();
        let run = self.run.as_u128();
        let Some(mut spill) = self.spill.take() else {
            return self.db.commit_changes(run, logged).await;
        };
        // The spilled writes, read back in LSN order, for the state.
        if let Some(future) = spill.last.take() {
            future.await?;
        }
        let mut lsns: Vec<Lsn> = spill.entries.values().map(|(lsn, _)| *lsn).collect();
        lsns.sort_unstable();
        let mut earlier = Vec::with_capacity(lsns.len());
        self.db.read_logged(&lsns, |_, entry| match entry {
            keel_wal::ArchivedWalEntry::Write { key, value, .. } => {
                earlier.push(Change::Put(
                    key.as_slice().to_vec(),
                    value.as_slice().to_vec(),
                ));
            }
            keel_wal::ArchivedWalEntry::Delete { key, .. } => {
                earlier.push(Change::Delete(key.as_slice().to_vec()));
            }
            _ => {}
        })?;
        let outcome = self
            .db
            .commit_unit(run, spill.txn_id, logged, earlier)
            .await;
        lock(&self.db.inner.open_spills).remove(&spill.txn_id);
        outcome
    }

    /// Drops the transaction's writes. Nothing reaches the log, unless it spilled: then an
    /// `AbortTxn` tells recovery to drop the spilled entries.
    pub fn abort(self) {}
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(spill) = self.spill.take() {
            let abort = WalEntry::AbortTxn {
                run_id: self.run,
                txn_id: spill.txn_id,
            };
            if let Err(error) = self.db.append_uncommitted(&[abort], None) {
                tracing::warn!(%error, txn_id = spill.txn_id, "could not log the abort of a spilled transaction; recovery will drop it as incomplete");
            }
            lock(&self.db.inner.open_spills).remove(&spill.txn_id);
        }
    }
}
