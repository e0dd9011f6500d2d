//! Opening a database: what is at its path (`layout`), its lock, the newest readable snapshot,
//! recovery of the log above it, and the log opened for appends, in that order; nothing is
//! acknowledged before the directories holding them are durable.

mod layout;

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use keel_recovery::{CommittedTxn, RecoveryReport, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, Lsn, RecordPosition, Storage, TxnId, Wal, WalOptions, fsutil};

use super::checkpointer::{Checkpointer, Signal};
use super::commit::{NONE_PENDING, apply_on_acknowledgement};
use super::install::{InstallOutcomes, log_abandoned_install};
use super::{Database, Inner, Options};
use crate::retention::Spills;
use crate::snapshot;
use crate::state::{State, StateReplay};
use crate::{Error, Result};

/// Snapshots that could not be read at open, with the reason.
type Skipped = Vec<(PathBuf, String)>;

/// What open rebuilt from the newest readable snapshot and the log above it.
struct Recovered {
    state: State,
    snapshot_lsn: Option<Lsn>,
    /// The size of the snapshot at `snapshot_lsn` (0: none).
    snapshot_bytes: u64,
    /// The log above it, record by record (commits, spills aborted or left open, checkpoint
    /// entries): what earlier processes wrote since that snapshot.
    replayed_bytes: u64,
    /// [`State::data_bytes`] as the snapshot left it, before the replay.
    loaded_state_bytes: u64,
    snapshots_skipped: Skipped,
    report: RecoveryReport,
    spills: Spills,
    last_install_marker: Lsn,
    failed_installs: Vec<Lsn>,
    /// The markers named by abandoned-install records replayed.
    abandoned_installs: Vec<Lsn>,
    next_txn_id: TxnId,
}

impl Database {
    /// Opens (or creates) the database in `path`: takes its lock, recovers the log into the
    /// state under `options.recovery_policy`, and starts the writer.
    ///
    /// A path that is not a Keel database and not an empty or missing directory (a file, a
    /// keel-wal log, a directory holding other files) is refused with
    /// [`Error::NotADatabase`] before anything is created there; so is one holding no
    /// database when `options.create_if_missing` is off.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Database> {
        let path = path.as_ref().to_path_buf();
        let _span = tracing::info_span!("database_open", path = %path.display()).entered();
        let storage = options.storage.as_ref();
        // Before anything is created: options that hold together, and what is there must be
        // a database or room for one.
        wal_options(&options).validate()?;
        options.validate()?;
        layout::check(&path, options.create_if_missing)?;
        if options.create_if_missing {
            fsutil::create_dir_all_durably(storage, &path)?;
        }
        let lock = fsutil::lock_dir(storage, &path)?;
        let wal_dir = path.join(layout::LOG_DIR);
        let (mut recovered, wal) = recover(&path, &wal_dir, &options)?;
        recovered.state.applied_through = wal.next_lsn() - 1;
        sync_database_dirs(storage, &path)?;
        tracing::info!(
            runs = recovered.state.runs.len(),
            keys = recovered.state.data.len(),
            next_lsn = wal.next_lsn(),
            "opened database"
        );
        assemble(path, lock, wal, recovered, &options)
    }
}

/// Loads the newest readable snapshot, replays the log above it and resumes the log for
/// appends.
fn recover(path: &Path, wal_dir: &Path, options: &Options) -> Result<(Recovered, Wal)> {
    let (loaded, snapshots_skipped) = snapshot::load_newest(&path.join("snapshots"))?;
    let snapshot_lsn = loaded.as_ref().map(|l| l.lsn);
    let snapshot_bytes = loaded.as_ref().map_or(0, |l| l.bytes);
    let (mut state, snapshot_txn) = match loaded {
        Some(loaded) => (loaded.state, loaded.max_txn_id),
        None => (State::default(), 0),
    };
    let loaded_state_bytes = state.data_bytes;
    let unreadable: Vec<Lsn> = snapshots_skipped
        .iter()
        .filter_map(|(path, _)| snapshot::lsn_of(path))
        .collect();
    let mut replay = StateReplay {
        state: &mut state,
        after: snapshot_lsn.unwrap_or(0),
        unreadable: &unreadable,
        spills: Vec::new(),
        last_install_marker: 0,
        failed_installs: Vec::new(),
        abandoned: Vec::new(),
    };
    let mut sink = OpenSink {
        wal_dir,
        replay: &mut replay,
        snapshot_lsn,
        skipped: &snapshots_skipped,
        replayed_bytes: 0,
    };
    let (wal, report) = open_log(wal_dir, options, snapshot_lsn, &mut sink)?;
    let replayed_bytes = sink.replayed_bytes;
    let last_install_marker = replay.last_install_marker;
    let failed_installs = std::mem::take(&mut replay.failed_installs);
    let abandoned_installs = std::mem::take(&mut replay.abandoned);
    let mut spills = Spills::default();
    for (txn_id, head, commit) in std::mem::take(&mut replay.spills) {
        spills.committed(txn_id, head, commit);
    }
    let next_txn_id = report.max_txn_id.unwrap_or(0).max(snapshot_txn) + 1;
    let recovered = Recovered {
        state,
        snapshot_lsn,
        snapshot_bytes,
        replayed_bytes,
        loaded_state_bytes,
        snapshots_skipped,
        report,
        spills,
        last_install_marker,
        failed_installs,
        abandoned_installs,
        next_txn_id,
    };
    Ok((recovered, wal))
}

/// The engine's sink at open: the state replay, after the log was checked to reach back to
/// the snapshot in use, on recovery's own listing and before anything on disk changes.
struct OpenSink<'a, 'b> {
    wal_dir: &'b Path,
    replay: &'b mut StateReplay<'a>,
    snapshot_lsn: Option<Lsn>,
    skipped: &'b Skipped,
    /// See [`Recovered::replayed_bytes`].
    replayed_bytes: u64,
}

impl Replay for OpenSink<'_, '_> {
    fn begin(&mut self, first_lsn: Option<Lsn>) -> std::result::Result<(), ReplayError> {
        check_log_behind(self.wal_dir, first_lsn, self.snapshot_lsn, self.skipped)
            .map_err(|e| -> ReplayError { Box::new(e) })
    }

    fn read(&mut self, lsn: Lsn, record_bytes: u64) {
        if Some(lsn) > self.snapshot_lsn {
            self.replayed_bytes = self.replayed_bytes.saturating_add(record_bytes);
        }
    }

    fn apply(&mut self, txn: &CommittedTxn<'_>) -> std::result::Result<(), ReplayError> {
        self.replay.apply(txn)
    }

    fn checkpoint(
        &mut self,
        lsn: Lsn,
        entry: &ArchivedWalEntry,
    ) -> std::result::Result<(), ReplayError> {
        self.replay.checkpoint(lsn, entry)
    }

    fn payload(
        &mut self,
        position: RecordPosition,
        entry: &ArchivedWalEntry,
    ) -> std::result::Result<(), ReplayError> {
        self.replay.payload(position, entry)
    }
}

/// Refuses a log (starting at `log_start`; `None`: no segment) that does not reach back to
/// the snapshot in use, or is missing.
fn check_log_behind(
    wal_dir: &Path,
    log_start: Option<Lsn>,
    snapshot_lsn: Option<Lsn>,
    skipped: &Skipped,
) -> Result<()> {
    if log_start.is_none()
        && let Some(covered) = snapshot_lsn
    {
        // Every checkpoint and install logs above its snapshot before writing it, and no
        // segment holding the newest records is ever deleted: a snapshot with no log behind
        // it is a database missing its log, and what was committed after the snapshot cannot
        // be known.
        return Err(Error::Metadata(format!(
            "the snapshot covers LSN {covered}, but the log ({}) has no segment: the commits after LSN {covered} cannot be known; restore the log directory, or install the snapshot into a new database (SnapshotImage, Database::install_snapshot)",
            wal_dir.display()
        )));
    }
    if log_start.is_none() && !skipped.is_empty() {
        // Snapshots exist but none reads back, and no log: opening would start an empty
        // database over them.
        return Err(Error::Metadata(format!(
            "the log ({}) has no segment and no snapshot reads back: nothing can be recovered{}",
            wal_dir.display(),
            describe_unreadable(skipped)
        )));
    }
    let after = snapshot_lsn.unwrap_or(0);
    match log_start {
        Some(first) if first > after + 1 => Err(Error::Metadata(format!(
            "the log starts at LSN {first}, but the newest readable snapshot covers only up to LSN {after}: commits {} to {} cannot be recovered{}",
            after + 1,
            first - 1,
            describe_unreadable(skipped)
        ))),
        _ => Ok(()),
    }
}

/// " (unreadable snapshots: ...)" naming each with why, or nothing.
fn describe_unreadable(skipped: &Skipped) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let each: Vec<String> = skipped
        .iter()
        .map(|(path, why)| format!("{}: {why}", path.display()))
        .collect();
    format!(" (unreadable snapshots: {})", each.join("; "))
}

/// Recovers the log in `wal_dir` into `replay` and resumes it for appends (creating it for a
/// new database); it must reach past the snapshot's LSN. Recovery knows the snapshot: damage
/// it covers cuts nothing above it, and a transaction committed above it must be read whole.
fn open_log(
    wal_dir: &Path,
    options: &Options,
    snapshot_lsn: Option<Lsn>,
    replay: &mut impl Replay,
) -> Result<(Wal, RecoveryReport)> {
    let (wal, report) = keel_recovery::open_log(
        wal_dir,
        wal_options(options),
        options.recovery_policy,
        snapshot_lsn,
        replay,
    )
    .map_err(|e| match e {
        // The log does not reach back to the snapshot: the engine's own refusal.
        keel_recovery::Error::Declined(declined) => match declined.downcast::<Error>() {
            Ok(engine) => *engine,
            Err(other) => Error::Metadata(other.to_string()),
        },
        other => other.into(),
    })?;
    let after = snapshot_lsn.unwrap_or(0);
    if wal.next_lsn() <= after {
        return Err(Error::Metadata(format!(
            "the snapshot covers LSN {after} but the log ends at LSN {}",
            wal.next_lsn() - 1
        )));
    }
    Ok((wal, report))
}

/// The log's options, from the database's.
fn wal_options(options: &Options) -> WalOptions {
    WalOptions {
        durability: options.durability,
        segment_bytes: options.segment_bytes,
        max_record_bytes: options.max_record_bytes,
        backend: options.backend,
        create_if_missing: options.create_if_missing,
        tail_max_lag_bytes: options.feed_max_lag_bytes,
        recycle_segments: options.recycle_segments,
        storage: Arc::clone(&options.storage),
        ..WalOptions::default()
    }
}

/// The previous process may have died before syncing the entries it created here (a
/// snapshot's rename, the snapshots directory itself) or the database directory's own name;
/// the log directory and this one, its parent, are synced by `Wal::resume`. Nothing is
/// acknowledged before these are durable.
fn sync_database_dirs(storage: &dyn Storage, path: &Path) -> Result<()> {
    fsutil::sync_parent(storage, path)?;
    if path.join("snapshots").is_dir() {
        fsutil::sync_dir(storage, &path.join("snapshots"))?;
    }
    Ok(())
}

/// The open database, from what open recovered.
fn assemble(
    path: PathBuf,
    lock: File,
    wal: Wal,
    recovered: Recovered,
    options: &Options,
) -> Result<Database> {
    let latency = super::stats::Latencies::new()
        .map_err(|e| Error::Metadata(format!("latency histogram: {e}")))?;
    let snapshot_lsn = recovered.snapshot_lsn;
    // The limit the log resolved (0 in the options: derived from the segment size).
    let max_record_bytes = wal.max_record_bytes();
    let signal = Arc::new(Signal::default());
    let inner = Inner {
        path,
        storage: Arc::clone(&options.storage),
        wal,
        durability: options.durability,
        isolation: options.isolation,
        max_record_bytes,
        state_bytes: Arc::new(AtomicU64::new(recovered.state.data_bytes)),
        state: Arc::new(RwLock::new(recovered.state)),
        pending: Arc::new(Mutex::new(VecDeque::new())),
        first_pending: Arc::new(AtomicU64::new(NONE_PENDING)),
        next_txn_id: AtomicU64::new(recovered.next_txn_id),
        report: recovered.report,
        snapshot_lsn,
        snapshots_skipped: recovered.snapshots_skipped,
        checkpoint_log_bytes: options.checkpoint_log_bytes,
        checkpoint_log_percent: options.checkpoint_log_percent,
        log_bytes_at_open: recovered.replayed_bytes,
        checkpointed_at_bytes: AtomicU64::new(0),
        checkpointed_state_bytes: AtomicU64::new(recovered.loaded_state_bytes),
        snapshot_bytes: AtomicU64::new(recovered.snapshot_bytes),
        checkpointing: AtomicBool::new(false),
        checkpoint_missed: AtomicBool::new(false),
        checkpoint_signal: Arc::clone(&signal),
        checkpoints: AtomicU64::new(0),
        snapshot_turn: tokio::sync::Mutex::new(()),
        spill_txn_bytes: options.spill_txn_bytes.max(1),
        feed_max_lag_bytes: options.feed_max_lag_bytes,
        spills: Mutex::new(recovered.spills),
        last_install_marker: AtomicU64::new(recovered.last_install_marker),
        installs: Arc::new(Mutex::new(InstallOutcomes {
            failed: recovered.failed_installs.iter().copied().collect(),
            took_effect: BTreeSet::new(),
        })),
        verified_snapshots: Mutex::new(snapshot_lsn.into_iter().collect::<BTreeSet<Lsn>>()),
        auto_checkpoint_failures: AtomicU64::new(0),
        last_auto_checkpoint_error: Mutex::new(None),
        latency,
        _lock: lock,
    };
    let inner = Arc::new(inner);
    let registered = inner.wal.on_acknowledged(apply_on_acknowledgement(&inner));
    debug_assert!(registered, "a log opened here has no hook yet");
    // A failed install a crash cut before its abandoned-install record was durable: that
    // record now, before anything else is appended (the feed reads it as the outcome).
    let unrecorded = recovered.failed_installs.iter();
    for &marker in unrecorded.filter(|m| !recovered.abandoned_installs.contains(m)) {
        log_abandoned_install(&inner.wal, marker);
    }
    if options.checkpoint_log_bytes == 0 {
        return Ok(Database { inner, owner: None });
    }
    let internal = Database {
        inner: Arc::clone(&inner),
        owner: None,
    };
    let checkpointer = Checkpointer::start(internal, signal)
        .map_err(|e| keel_wal::Error::io("starting the checkpoint thread for", &inner.path, e))?;
    Ok(Database {
        inner,
        owner: Some(Arc::new(checkpointer)),
    })
}
