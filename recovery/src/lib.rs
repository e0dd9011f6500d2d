//! keel-recovery: turns whatever a crash or damage left in a log directory into exactly the
//! committed transactions, or into a clear error when acknowledged data is damaged.
//!
//! [`recover`] walks the segments in LSN order (header, database, format version, LSN
//! continuity), then every record (header checksum, length bound, body checksum, archive
//! validation, expected LSN), streaming: memory is bounded by the transactions still open,
//! never by the log. What each anomaly means is [`policy::decide`]'s table, a pure function of
//! the [`Finding`] and the [`RecoveryPolicy`] (also in `docs/RECOVERY.md`). Durable marks, and
//! each segment's durable witness for its newest records, tell a torn tail (nothing
//! acknowledged affected: truncate) from damage to acknowledged data.
//!
//! Committed transactions reach the caller's [`Replay`] sink in commit-LSN order, as
//! zero-copy archived entries; aborted and incomplete ones are dropped and counted, and a
//! transaction that was not read whole is never applied (`txns.rs`).
//!
//! [`recover_with`] also takes the LSN a caller's snapshot covers: damage that lost only LSNs
//! at or below it is reported and passed over instead of cutting or refusing what lies above.
//!
//! Nothing on disk changes until the walk has judged every finding (`walk/`); then the
//! repair (`repair.rs`) applies the outcome. Truncation never lets a byte beyond the cut be
//! read back: the rest of the cut segment is zeroed and synced, later segments are renamed
//! `*.discarded`, and the directory is synced. Later segments go first, so a crash in the
//! middle of a truncation leaves a directory that recovers to the same result, and a second
//! recovery truncates nothing.
//!
//! Recover a log (written here by the first lines, in a new temporary directory) into a map,
//! and look at what recovery found:
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError, recover};
//! use keel_wal::{ArchivedWalEntry, RunId, WalEntry, WalOptions};
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("wal");
//! # let wal = keel_recovery::open_wal(&path, WalOptions::default())?;
//! # let run_id = RunId::from_u128(1);
//! # let put = |txn_id, key: &[u8], value: &[u8]| {
//! #     WalEntry::Write { run_id, txn_id, key: key.to_vec(), value: value.to_vec() }
//! # };
//! // Transaction 1 commits; transaction 2 never does (its process died, say).
//! let commit = WalEntry::CommitTxn { run_id, txn_id: 1 };
//! wal.append(&[put(1, b"a", b"1"), put(1, b"b", b"2"), commit]).wait()?;
//! wal.append(&[put(2, b"c", b"3")]).wait()?;
//! wal.close()?;
//!
//! /// The caller's state: recovery hands it each committed transaction, whole, in commit order.
//! #[derive(Default)]
//! struct Map(BTreeMap<Vec<u8>, Vec<u8>>);
//!
//! impl Replay for Map {
//!     fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
//!         for (_lsn, entry) in txn.entries() {
//!             match entry {
//!                 ArchivedWalEntry::Write { key, value, .. } => {
//!                     self.0.insert(key.to_vec(), value.to_vec());
//!                 }
//!                 ArchivedWalEntry::Delete { key, .. } => {
//!                     self.0.remove(key.as_slice());
//!                 }
//!                 _ => {}
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut map = Map::default();
//! let report = recover(&path, RecoveryPolicy::TolerateTornTail, &mut map)?;
//! println!("{report}"); // for people: segments, records, transactions, anomalies
//! assert_eq!(map.0.len(), 2); // a and b; c was never committed
//! assert_eq!((report.txns_applied, report.txns_incomplete), (1, 1));
//! assert_eq!(report.next_lsn, 5); // the next append gets LSN 5
//! assert!(report.is_clean()); // no anomaly: nothing damaged, nothing cut
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod policy;
mod repair;
mod report;
mod txns;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use keel_wal::{EntryKind, Lsn, RecoveredLog, Storage, Wal, WalOptions, fsutil};

pub use policy::{Decision, Finding, RecoveryPolicy, decide};
pub use report::{Anomaly, RecoveryReport};
pub use txns::{CommittedTxn, Replay, ReplayError, TxnAssembler};

/// Suffix of segments set aside by truncation (or skipped whole): never read as log again.
pub const DISCARDED_SUFFIX: &str = ".discarded";

/// What can stop a recovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy refuses what was found; nothing on disk was changed.
    #[error("recovery refused ({policy}): {} at offset {offset}: {finding}", path.display())]
    Refused {
        /// The policy that refuses it.
        policy: RecoveryPolicy,
        /// The segment (or other file) the finding is in.
        path: PathBuf,
        /// Byte offset of the finding in that file (0 for whole-file findings).
        offset: u64,
        /// What was found.
        finding: Finding,
    },
    /// Reading or repairing the directory failed.
    #[error(transparent)]
    Wal(#[from] keel_wal::Error),
    /// The sink failed on the record at `lsn`: a transaction's commit, a checkpoint or a
    /// payload (`kind`).
    #[error("replaying the {} at LSN {lsn} failed: {source}", replayed(*kind))]
    Replay {
        /// The LSN of the record handed to the sink.
        lsn: Lsn,
        /// What the record was.
        kind: EntryKind,
        /// The sink's error.
        source: ReplayError,
    },
    /// The sink refused the log before anything was read or changed ([`Replay::begin`]).
    #[error("{0}")]
    Declined(ReplayError),
    /// A broken internal expectation (a bug), reported instead of a panic.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a recovery returns: [`Error`] unless told otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the sink was handed, for [`Error::Replay`]'s message.
fn replayed(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::CommitTxn | EntryKind::CommitSpan => "transaction committed",
        EntryKind::Checkpoint => "checkpoint",
        EntryKind::Payload => "payload",
        other => other.name(),
    }
}

/// What recovery is told besides the directory.
#[derive(Clone, Debug)]
pub struct RecoveryOptions {
    /// How much damage to accept, and what to do about it.
    pub policy: RecoveryPolicy,
    /// The caller holds a snapshot of everything up to and including this LSN (`None`: no
    /// snapshot, everything comes from the log). Then:
    /// - damage that lost only LSNs at or below it is reported
    ///   ([`Finding::DamageCoveredBySnapshot`]) and passed over under every policy but
    ///   `Absolute`; damage that loses a later LSN is judged by the policy as without it;
    /// - nothing at or below it reaches the sink: transactions committed at or below it are
    ///   counted as covered (`txns_covered`), whole or not; checkpoints and payloads at or
    ///   below it are counted only;
    /// - a transaction committed above it that was not read whole is a
    ///   [`Finding::PartialTransaction`].
    pub covered_through: Option<Lsn>,
    /// Judge, plan and report, but change nothing on disk: the report says what a recovery
    /// under this policy *would* do (`RecoveryReport::dry_run`), for `keel recover --dry-run`.
    pub dry_run: bool,
    /// The log must belong to this database (its `IDENTITY`): refused with
    /// `keel_wal::Error::ForeignDatabase` before anything is read otherwise.
    pub database_id: Option<keel_wal::DatabaseId>,
    /// The storage the log lives on (its syncs, renames, lock): the real file system unless
    /// a test hands in another (see [`keel_wal::Storage`]).
    pub storage: Arc<dyn Storage>,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            policy: RecoveryPolicy::default(),
            covered_through: None,
            dry_run: false,
            database_id: None,
            storage: keel_wal::storage::file_system(),
        }
    }
}

impl From<RecoveryPolicy> for RecoveryOptions {
    fn from(policy: RecoveryPolicy) -> Self {
        RecoveryOptions {
            policy,
            ..RecoveryOptions::default()
        }
    }
}

/// Recovers the log in `dir` under `policy`, handing every committed transaction to
/// `replay`: [`recover_with`] without a snapshot.
pub fn recover(
    dir: impl AsRef<Path>,
    policy: RecoveryPolicy,
    replay: &mut impl Replay,
) -> Result<RecoveryReport> {
    recover_with(dir, policy.into(), replay)
}

/// Recovers the log in `dir` under `options`, handing every committed transaction above the
/// covered LSN to `replay`. Takes the directory's lock while it runs. On an error, nothing on
/// disk was changed, unless the error is an I/O failure of the repair itself.
pub fn recover_with(
    dir: impl AsRef<Path>,
    options: RecoveryOptions,
    replay: &mut impl Replay,
) -> Result<RecoveryReport> {
    recover_locked(dir.as_ref(), options, Opening::Report, replay).map(|(report, _)| report)
}

/// Recovers the log in `dir` and resumes it for appends: the one way an existing log is
/// opened. The recovery takes the directory's lock, lists it, reads its identity, validates
/// every segment under `policy` (handing each committed transaction above `covered_through`,
/// and every checkpoint and payload, to `replay`) and repairs the tail; the log then resumes
/// from what it established ([`Wal::resume`]), holding the same lock and reading nothing
/// again. The log's storage (`wal.storage`) is the recovery's. Creates the directory and a new
/// log when there is none and `wal.create_if_missing` is set.
pub fn open_log(
    dir: impl AsRef<Path>,
    wal: WalOptions,
    policy: RecoveryPolicy,
    covered_through: Option<Lsn>,
    replay: &mut impl Replay,
) -> Result<(Wal, RecoveryReport)> {
    let dir = dir.as_ref();
    // What can refuse the options comes before the recovery changes anything.
    wal.validate()?;
    let backend = wal.storage.backend(wal.backend, wal.io_depth)?;
    let create = wal.create_if_missing;
    let options = RecoveryOptions {
        policy,
        covered_through,
        dry_run: false,
        database_id: wal.database_id,
        storage: Arc::clone(&wal.storage),
    };
    let opening = Opening::Append { create };
    let (report, recovered) = recover_locked(dir, options, opening, replay)?;
    let recovered = recovered.ok_or_else(|| Error::Internal("a repair left no log".into()))?;
    Ok((Wal::resume_on(recovered, wal, backend)?, report))
}

/// Opens the log in `dir` for a component that keeps nothing of its records (or reads them
/// back itself): [`open_log`] under the default policy, with nothing replayed.
pub fn open_wal(dir: impl AsRef<Path>, wal: WalOptions) -> Result<Wal> {
    struct Nothing;
    impl Replay for Nothing {
        fn apply(&mut self, _: &CommittedTxn<'_>) -> std::result::Result<(), ReplayError> {
            Ok(())
        }
    }
    open_log(dir, wal, RecoveryPolicy::default(), None, &mut Nothing).map(|(wal, _)| wal)
}

/// What a recovery is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    /// A report (and the repair): [`recover_with`].
    Report,
    /// The log resumes afterwards ([`open_log`]): segments without an identity (which it
    /// could not append to) are refused before anything changes, and with `create` a missing
    /// directory is created once the sink accepted a log with no segment.
    Append { create: bool },
}

/// The recovery itself: returns the report and, unless it was a dry run, the log as the
/// repair left it, still locked.
fn recover_locked(
    dir: &Path,
    options: RecoveryOptions,
    opening: Opening,
    replay: &mut impl Replay,
) -> Result<(RecoveryReport, Option<RecoveredLog>)> {
    let started = Instant::now();
    let policy = options.policy;
    let _span = tracing::info_span!("recovery", dir = %dir.display(), %policy).entered();
    let storage = Arc::clone(&options.storage);
    let missing = !dir.exists();
    if missing {
        // No log at all: the sink may refuse that before the directory is created.
        replay.begin(None).map_err(Error::Declined)?;
        if opening == (Opening::Append { create: true }) {
            fsutil::create_dir_all_durably(storage.as_ref(), dir)?;
        }
    }
    let lock = fsutil::lock_dir(storage.as_ref(), dir)?;
    let listing = keel_wal::dir::list_directory(dir)?;
    let identity = fsutil::read_identity(dir)?;
    check_identity(dir, &listing, identity, options.database_id, opening)?;
    let mut report = empty_report(policy);
    report.covered_through = options.covered_through;
    report.dry_run = options.dry_run;
    let mut walk = walk::Walk::new(dir, options, identity, replay, report);
    // A missing directory: the sink was told before it was created.
    walk.begun = missing;
    for path in &listing.unknown {
        // Left by an earlier recovery: set aside, or an empty segment it did not finish.
        let name = path.to_string_lossy();
        if name.ends_with(DISCARDED_SUFFIX) || name.ends_with(".wal.creating") {
            continue;
        }
        walk.judge(path, 0, Finding::UnknownFile)?;
    }
    let cut = walk.segments(&listing.segments)?;
    let (mut report, repaired) = repair::finish(storage.as_ref(), walk, &listing.segments, cut)?;
    report.duration = started.elapsed();
    tracing::info!(
        records = report.records,
        applied = report.txns_applied,
        anomalies = report.anomalies.len(),
        next_lsn = report.next_lsn,
        "recovered"
    );
    let Some(repaired) = repaired else {
        return Ok((report, None));
    };
    let mut unknown = listing.unknown;
    unknown.extend(repaired.set_aside);
    let listing = keel_wal::dir::DirectoryListing {
        segments: repaired.segments,
        spares: listing.spares,
        unknown,
    };
    let recovered = RecoveredLog::new(
        dir,
        lock,
        identity,
        listing,
        repaired.end,
        report.next_lsn,
        report.bytes_truncated,
    )?;
    Ok((report, Some(recovered)))
}

/// Refuses, before anything is read or changed, a log of another database than `expected`,
/// and (to be appended to) segments without an identity.
fn check_identity(
    dir: &Path,
    listing: &keel_wal::dir::DirectoryListing,
    identity: Option<keel_wal::DatabaseId>,
    expected: Option<keel_wal::DatabaseId>,
    opening: Opening,
) -> Result<()> {
    let for_append = matches!(opening, Opening::Append { .. });
    if for_append && identity.is_none() && !listing.segments.is_empty() {
        return Err(keel_wal::Error::corruption(
            dir.join(fsutil::IDENTITY_FILE),
            0,
            keel_wal::CorruptionReason::Identity("missing while segments exist"),
        )
        .into());
    }
    if let (Some(expected), Some(found)) = (expected, identity)
        && expected != found
    {
        return Err(keel_wal::Error::ForeignDatabase {
            path: dir.to_path_buf(),
            expected,
            found,
        }
        .into());
    }
    Ok(())
}

/// The report of a recovery that found no log at all (a new database).
pub fn recover_empty(policy: RecoveryPolicy) -> RecoveryReport {
    empty_report(policy)
}

fn empty_report(policy: RecoveryPolicy) -> RecoveryReport {
    RecoveryReport {
        policy,
        covered_through: None,
        dry_run: false,
        cut_at: None,
        lsns_lost: Vec::new(),
        segments: 0,
        records: 0,
        bytes: 0,
        txns_applied: 0,
        txns_aborted: 0,
        txns_incomplete: 0,
        txns_partial: 0,
        txns_covered: 0,
        checkpoints: 0,
        payloads: 0,
        bytes_truncated: 0,
        segments_discarded: Vec::new(),
        lsns_skipped: 0,
        anomalies: Vec::new(),
        first_lsn: None,
        last_lsn: None,
        next_lsn: 1,
        peak_txn_bytes: 0,
        max_txn_id: None,
        duration: std::time::Duration::ZERO,
    }
}
