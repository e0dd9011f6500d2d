//! The database handle, its options, and transactions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use keel_recovery::{RecoveryPolicy, RecoveryReport};
use keel_wal::{
    BackendChoice, Durability, EncodedBatch, Lsn, RunId, TxnId, Wal, WalEntry, WalOptions,
    WalStats, fsutil,
};

use crate::retention::Spills;
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

/// The most a `Write` entry's archive adds to its key and value: the 48-byte archived entry
/// and alignment padding of the two byte strings (checked by a test against the encoder).
pub(crate) const WRITE_ENTRY_OVERHEAD: u64 = 64;

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
    /// Spilled transactions whose heads the log must keep (see `retention`). Changed under
    /// the `pending` lock, with the append that begins, commits or aborts one.
    spills: Mutex<Spills>,
    /// LSN of the newest install marker in the log (0: none seen): no checkpoint may take
    /// its snapshot at it.
    last_install_marker: AtomicU64,
    /// Snapshots known to read back whole (loaded at open, or checked as a fallback).
    verified_snapshots: Mutex<BTreeSet<Lsn>>,
    /// Automatic checkpoints that failed (the commit that ran one still succeeded), and the
    /// last failure's message.
    auto_checkpoint_failures: AtomicU64,
    last_auto_checkpoint_error: Mutex<Option<String>>,
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
        if log_start.is_none()
            && let Some(covered) = snapshot_lsn
        {
            // Every checkpoint and install logs above its snapshot before writing it, and no
            // segment holding the newest records is ever deleted: a snapshot with no log
            // behind it is a database missing its log, and what was committed after the
            // snapshot cannot be known. Refused before anything on disk changes.
            return Err(Error::Metadata(format!(
                "the snapshot covers LSN {covered}, but the log ({}) has no segment: the commits after LSN {covered} cannot be known; restore the log directory, or install the snapshot into a new database (SnapshotImage, Database::install_snapshot)",
                wal_dir.display()
            )));
        }
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
        let mut replay = StateReplay {
            state: &mut state,
            after,
            unreadable: &unreadable,
            spills: Vec::new(),
            last_install_marker: 0,
        };
        let report = if wal_dir.exists() {
            // Recovery knows the snapshot: damage it covers cuts nothing above it, and a
            // transaction committed above it must be read whole.
            let recovery = keel_recovery::RecoveryOptions {
                policy: options.recovery_policy,
                covered_through: snapshot_lsn,
                ..keel_recovery::RecoveryOptions::default()
            };
            keel_recovery::recover_with(&wal_dir, recovery, &mut replay)?
        } else {
            keel_recovery::recover_empty(options.recovery_policy)
        };
        let last_install_marker = replay.last_install_marker;
        let mut spills = Spills::default();
        for (txn_id, head, commit) in std::mem::take(&mut replay.spills) {
            spills.committed(txn_id, head, commit);
        }
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
        // The previous process may have died before syncing the entries it created here
        // (a snapshot's rename, the snapshots directory itself); the log directory is synced
        // by `Wal::open`. Nothing is acknowledged before these are durable.
        fsutil::sync_dir(&path)?;
        if path.join("snapshots").is_dir() {
            fsutil::sync_dir(&path.join("snapshots"))?;
        }
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
                spills: Mutex::new(spills),
                last_install_marker: AtomicU64::new(last_install_marker),
                verified_snapshots: Mutex::new(snapshot_lsn.into_iter().collect()),
                auto_checkpoint_failures: AtomicU64::new(0),
                last_auto_checkpoint_error: Mutex::new(None),
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
        // A snapshot is named by its LSN, and `L.snap` at an install marker's LSN `L` means
        // "the installed state" to recovery. Should the last record be the marker of an
        // install whose snapshot write failed, an empty commit first moves the snapshot above
        // it, so the name never says "install" for a checkpoint of the state before it.
        while self.snapshot_lsn_now() == self.inner.last_install_marker.load(Ordering::Acquire) {
            let txn_id = self.new_txn_id();
            let empty = self.queue_commit(SYSTEM_RUN, txn_id, Vec::new(), Vec::new(), None)?;
            empty.await?;
        }
        let lsn = {
            let mut pending = lock(&self.inner.pending);
            self.apply_visible_locked(&mut pending);
            let lsn = pending
                .front()
                .map_or(self.inner.wal.next_lsn() - 1, |p| p.first_lsn - 1);
            assert_ne!(
                lsn,
                self.inner.last_install_marker.load(Ordering::Acquire),
                "only commits move the snapshot LSN, and the turn is held"
            );
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
        self.release_before(&dir, lsn)?;
        self.inner
            .checkpointed_at_bytes
            .store(self.inner.wal.stats().bytes_written, Ordering::Relaxed);
        self.inner.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %self.inner.path.display(), lsn, "checkpoint written");
        Ok(lsn)
    }

    /// After the snapshot at `newest` is durable: keeps the newest older snapshot that reads
    /// back whole as its fallback, deletes every other older one (damaged and partial ones
    /// included), and removes the log below what a restart from the fallback needs (see
    /// `retention`).
    fn release_before(&self, dir: &Path, newest: Lsn) -> Result<()> {
        let older: Vec<(Lsn, PathBuf)> = snapshot::list(dir)?
            .into_iter()
            .filter(|(lsn, _)| *lsn < newest)
            .collect();
        let mut fallback = None;
        let mut doomed = Vec::new();
        for (lsn, path) in older {
            if fallback.is_none() && self.snapshot_reads_whole(lsn, &path)? {
                fallback = Some(lsn);
            } else {
                doomed.push(path);
            }
        }
        // Spills are known for commits above the snapshot this process loaded (replay
        // registers those); below it they are not, so a fallback older than that snapshot
        // (a checkpoint at the very LSN it loaded) removes no log this time.
        let known_from = self.inner.snapshot_lsn.unwrap_or(0);
        if let Some(fallback) = fallback.filter(|f| *f >= known_from) {
            let keep_from = lock(&self.inner.spills).keep_from(fallback);
            self.inner.wal.remove_segments_before(keep_from)?;
        }
        for path in &doomed {
            match keel_wal::fsutil::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(keel_wal::Error::io("removing old snapshot", path, e).into()),
            }
        }
        // Partial snapshots a crashed process left go too, best effort.
        let partials = snapshot::remove_partials(dir);
        if !doomed.is_empty() || partials > 0 {
            fsutil::sync_dir(dir)?;
        }
        lock(&self.inner.verified_snapshots).retain(|lsn| Some(*lsn) >= fallback);
        Ok(())
    }

    /// The LSN a checkpoint taken now would get: the last one before the first commit not yet
    /// applied.
    fn snapshot_lsn_now(&self) -> Lsn {
        let mut pending = lock(&self.inner.pending);
        self.apply_visible_locked(&mut pending);
        pending
            .front()
            .map_or(self.inner.wal.next_lsn() - 1, |p| p.first_lsn - 1)
    }

    /// Whether the snapshot at `lsn` decodes whole (checked once, then remembered). A damaged
    /// one is `false`; failing to read it at all is an error.
    fn snapshot_reads_whole(&self, lsn: Lsn, path: &Path) -> Result<bool> {
        if lock(&self.inner.verified_snapshots).contains(&lsn) {
            return Ok(true);
        }
        let bytes = snapshot::read_bytes(path)?;
        match snapshot::decode(&bytes) {
            Ok(loaded) if loaded.lsn == lsn => {
                lock(&self.inner.verified_snapshots).insert(lsn);
                Ok(true)
            }
            Ok(loaded) => {
                tracing::error!(snapshot = %path.display(), held = loaded.lsn, "snapshot holds another LSN than its name; not kept as a fallback");
                Ok(false)
            }
            Err(why) => {
                tracing::error!(snapshot = %path.display(), %why, "snapshot unreadable; not kept as a fallback");
                Ok(false)
            }
        }
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
        lock(&self.inner.verified_snapshots).clear();
        // Spills open now, or committed after the marker, began before the install.
        let keep_from = lock(&self.inner.spills).keep_from(lsn);
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
        self.inner.last_install_marker.store(lsn, Ordering::Release);
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
        let outcome = match keel_wal::fsutil::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(dir).map_err(Error::from),
            Err(e) if matches!(e.kind(), NotFound | NotADirectory) => Ok(()),
            Err(e) => Err(keel_wal::Error::io("removing snapshot", &path, e).into()),
        };
        if let Err(error) = outcome {
            tracing::error!(snapshot = %path.display(), %error, "could not remove the snapshot of a failed install; a reopen may load it");
        }
    }

    /// Runs a checkpoint when the log has grown past the threshold since the last one. It
    /// runs after a commit's acknowledgement, so it cannot fail that commit: a failure is
    /// logged and counted ([`Stats::auto_checkpoint_failures`]), and the next automatic or
    /// explicit checkpoint tries again. Dropped part-way (the commit's future cancelled), it
    /// leaves the next commit free to run one.
    async fn maybe_checkpoint(&self) {
        let threshold = self.inner.checkpoint_log_bytes;
        if threshold == 0 {
            return;
        }
        // A checkpoint finishing meanwhile may store a count newer than the one read here.
        let grown = self
            .inner
            .wal
            .stats()
            .bytes_written
            .saturating_sub(self.inner.checkpointed_at_bytes.load(Ordering::Relaxed));
        if grown < threshold || self.inner.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _running = ClearOnDrop(&self.inner.checkpointing);
        if let Err(error) = self.checkpoint().await {
            tracing::error!(path = %self.inner.path.display(), %error, "automatic checkpoint failed; the next one retries");
            self.inner
                .auto_checkpoint_failures
                .fetch_add(1, Ordering::Relaxed);
            *lock(&self.inner.last_auto_checkpoint_error) = Some(error.to_string());
        }
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

    /// Refuses a write whose log entry could exceed the record limit. The bound is the key
    /// and value plus [`WRITE_ENTRY_OVERHEAD`], never less than the encoded size.
    fn check_write_size(&self, key_bytes: usize, value_bytes: usize) -> Result<()> {
        let record_bytes = (key_bytes as u64)
            .saturating_add(value_bytes as u64)
            .saturating_add(WRITE_ENTRY_OVERHEAD);
        let max_record_bytes = self.inner.max_record_bytes;
        if record_bytes > u64::from(max_record_bytes) {
            return Err(Error::ValueTooLarge {
                key_bytes,
                value_bytes,
                record_bytes,
                max_record_bytes,
            });
        }
        Ok(())
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
            auto_checkpoint_failures: self.inner.auto_checkpoint_failures.load(Ordering::Relaxed),
            last_auto_checkpoint_error: lock(&self.inner.last_auto_checkpoint_error).clone(),
            spills_tracked: lock(&self.inner.spills).len(),
            pending_commits: lock(&self.inner.pending).len(),
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
        let started = std::time::Instant::now();
        let future = self.queue_commit(run, txn_id, changes, Vec::new(), None)?;
        self.finish_commit(future, started).await
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
        if let Some(txn_id) = opens
            && self.inner.wal.next_lsn() > first
        {
            lock(&self.inner.spills).begin(txn_id, first);
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
        // Never reads past the last entry wanted: the record after it may be mid-write.
        while wanted.peek().is_some() {
            let Some(record) = reader.next_record()? else {
                break;
            };
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

    /// Queues `logged` and the commit as one unit of transaction `txn_id`, whose `earlier`
    /// changes were spilled before (from `spilled_head` on). Once this returns `Ok` the
    /// commit is in the log's queue: its outcome is the returned future's, whatever happens
    /// to the caller. An `Err` means nothing was queued.
    fn queue_commit(
        &self,
        run: u128,
        txn_id: TxnId,
        logged: Vec<Change>,
        earlier: Vec<Change>,
        spilled_head: Option<Lsn>,
    ) -> Result<keel_wal::CommitFuture> {
        let run_id = RunId::from_u128(run);
        let entries = Self::entries(run, txn_id, &logged);
        let mut batch = EncodedBatch::encode(&entries, self.inner.max_record_bytes)?;
        let count = u64::from(batch.len()) + 1;
        let mut changes = earlier;
        changes.extend(logged);
        let mut pending = lock(&self.inner.pending);
        let first_lsn = self.inner.wal.next_lsn();
        // Only the commit record is framed under the lock: it names the unit's first LSN.
        let commit = WalEntry::CommitSpan {
            run_id,
            txn_id,
            first_lsn: spilled_head.unwrap_or(first_lsn),
        };
        batch.push(&commit, self.inner.max_record_bytes)?;
        let future = self.inner.wal.append_encoded(batch, self.inner.durability);
        if self.inner.wal.next_lsn() == first_lsn {
            // Refused (a poisoned or closing log): the future holds the error. A spilled
            // transaction is over: its registration would otherwise pin the log for good.
            if spilled_head.is_some() {
                lock(&self.inner.spills).abandon(txn_id);
            }
            return Ok(future);
        }
        let last_lsn = first_lsn + count - 1;
        assert_eq!(
            self.inner.wal.next_lsn(),
            last_lsn + 1,
            "appends are ordered by this lock"
        );
        if spilled_head.is_some() {
            lock(&self.inner.spills).commit(txn_id, last_lsn);
        }
        pending.push_back(Pending {
            first_lsn,
            last_lsn,
            run,
            changes,
        });
        Ok(future)
    }

    /// Waits for a queued commit's acknowledgement; then its effects are visible, and an
    /// automatic checkpoint may run (which cannot turn the commit into an error).
    async fn finish_commit(
        &self,
        future: keel_wal::CommitFuture,
        started: std::time::Instant,
    ) -> Result<Lsn> {
        let lsn = future.await?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        lock(&self.inner.latency).saturating_record(nanos);
        self.apply_visible();
        self.maybe_checkpoint().await;
        Ok(lsn)
    }
}

/// Clears a flag when dropped: an operation that set it may be cancelled at any await.
struct ClearOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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
    /// Automatic checkpoints that failed since open (each commit that ran one succeeded);
    /// the next automatic or explicit checkpoint retries.
    pub auto_checkpoint_failures: u64,
    /// The last automatic checkpoint failure's message.
    pub last_auto_checkpoint_error: Option<String>,
    /// Spilled transactions whose heads the log keeps: open ones, and committed ones above
    /// the oldest snapshot a restart may load. Bounded by those; a leak here pins the log.
    pub spills_tracked: usize,
    /// Commits queued in the log and not yet visible. Bounded by the log's queue: a refused
    /// commit (a poisoned log) is never queued here.
    pub pending_commits: usize,
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
    /// Why a spill failed, once one did: every later read back and the commit fail with it.
    failed: Option<String>,
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

    /// Writes `value` under `key` (in this transaction). A key and value too large for one
    /// log record ([`Error::ValueTooLarge`]) are refused before anything is buffered. A
    /// failed spill to the log leaves the transaction as it was before this call.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.check_write_size(key.len(), value.len())?;
        let previous = self.writes.insert(key.to_vec(), Some(value.to_vec()));
        self.buffered_bytes += key.len() + value.len();
        self.spill_or_undo(key, previous, key.len() + value.len())
    }

    /// Deletes `key` (in this transaction); refused and undone as [`Transaction::put`] is.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.db.check_write_size(key.len(), 0)?;
        let previous = self.writes.insert(key.to_vec(), None);
        self.buffered_bytes += key.len();
        self.spill_or_undo(key, previous, key.len())
    }

    /// Spills when the buffer is large; when that fails, takes back the write of `key` that
    /// was just buffered (restoring `previous`), so the error leaves the transaction as it was.
    fn spill_or_undo(
        &mut self,
        key: &[u8],
        previous: Option<Option<Vec<u8>>>,
        added: usize,
    ) -> Result<()> {
        let outcome = self.spill_if_large();
        if outcome.is_err() {
            match previous {
                Some(previous) => self.writes.insert(key.to_vec(), previous),
                None => self.writes.remove(key),
            };
            self.buffered_bytes -= added;
        }
        outcome
    }

    /// Whether some of this transaction's writes are already in the log.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Puts changes taken by [`Transaction::take_writes`] back into the (empty) buffer.
    fn restore_writes(&mut self, changes: Vec<Change>, bytes: usize) {
        for change in changes {
            match change {
                Change::Put(key, value) => self.writes.insert(key, Some(value)),
                Change::Delete(key) => self.writes.insert(key, None),
            };
        }
        self.buffered_bytes = bytes;
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
        let bytes = self.buffered_bytes;
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
        let (first, future) = match self
            .db
            .append_uncommitted(&entries, begin.then_some(txn_id))
        {
            Ok(queued) => queued,
            Err(error) => {
                // Nothing was queued: the writes go back into the buffer.
                self.restore_writes(buffered, bytes);
                return Err(error);
            }
        };
        let spill = self.spill.get_or_insert_with(|| Spill {
            txn_id,
            first_lsn: first,
            entries: BTreeMap::new(),
            last: None,
            failed: None,
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
        self.spill_failure()?;
        if let Some(future) = self.spill.as_mut().and_then(|s| s.last.take()) {
            let outcome = future.wait();
            self.note_spill(outcome)?;
        }
        Ok(())
    }

    /// An error once a spill failed, every time it is asked (the failure is reported by the
    /// first wait only; without this, a later commit went on to read back entries that were
    /// never written, and failed with a misleading error).
    fn spill_failure(&self) -> Result<()> {
        match self.spill.as_ref().and_then(|s| s.failed.clone()) {
            Some(why) => Err(Error::SpillFailed(why)),
            None => Ok(()),
        }
    }

    /// Records the outcome of a spill's append.
    fn note_spill(&mut self, outcome: keel_wal::Result<Lsn>) -> Result<()> {
        if let (Err(error), Some(spill)) = (&outcome, self.spill.as_mut()) {
            spill.failed = Some(error.to_string());
        }
        outcome.map(|_| ()).map_err(Error::from)
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
    ///
    /// Cancel-safe: dropped before the commit is queued in the log, the transaction is
    /// abandoned as if dropped (a spilled one is closed with an `AbortTxn`); dropped after,
    /// the commit goes ahead and becomes visible once acknowledged.
    pub async fn commit(mut self) -> Result<Lsn> {
        self.db.check_writable(self.run)?;
        let run = self.run.as_u128();
        if self.spill.is_none() {
            let logged = self.take_writes();
            return self.db.commit_changes(run, logged).await;
        }
        // The spilled writes, read back in LSN order, for the state. The spill stays in
        // `self` until the commit is queued, so a drop before then aborts it.
        self.spill_failure()?;
        if let Some(future) = self.spill.as_mut().and_then(|s| s.last.take()) {
            let outcome = future.await;
            self.note_spill(outcome)?;
        }
        let earlier = self.read_spilled()?;
        let spill = self.spill.as_ref().expect("checked above");
        let (txn_id, head) = (spill.txn_id, spill.first_lsn);
        let logged = self.take_writes();
        let started = std::time::Instant::now();
        let future = self
            .db
            .queue_commit(run, txn_id, logged, earlier, Some(head))?;
        // Queued: from here on the log decides the outcome; nothing to abort on drop.
        self.spill = None;
        self.db.finish_commit(future, started).await
    }

    /// Every spilled write, read back from the log in LSN order.
    fn read_spilled(&self) -> Result<Vec<Change>> {
        let Some(spill) = &self.spill else {
            return Ok(Vec::new());
        };
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
        Ok(earlier)
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
            lock(&self.db.inner.spills).abandon(spill.txn_id);
        }
    }
}
