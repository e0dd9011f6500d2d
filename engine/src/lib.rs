//! keel: an embedded storage engine on Keel's write-ahead log.
//!
//! [`Database::open`] locks the directory, recovers the log ([`keel_recovery`]) into the
//! in-memory state and starts the writer. Every key belongs to a *run*
//! ([`Database::begin_run`]); a [`Transaction`] buffers its writes, reads its own writes, and
//! commits as one atomic unit in the log (`Write`/`Delete` entries and a `CommitSpan`), whose
//! last LSN is the commit version.
//!
//! Commit order is LSN order, and the state applies commits in LSN order once they reach the
//! database's acknowledgement point (durable under `Strict`), so the state a reopen recovers
//! equals the state the live database had for every acknowledged commit.
//!
//! A database's whole state can move to another as a snapshot image: the bytes of a snapshot
//! file ([`Database::read_snapshot`] after [`Database::checkpoint`], or
//! [`Database::newest_snapshot`]), checked and read with [`SnapshotImage::decode`], and put in
//! place of the receiver's state with [`Database::install_snapshot`] (a Raft state machine's
//! snapshot transfer, say).
//!
//! A tour, in a new temporary directory: a run, a transaction, reads and iterators, a
//! read-modify-write that conflicts and one that [`Database::transact`] retries, and a reopen.
//! Commits are futures that need no runtime: `futures::executor::block_on` drives them here
//! (from a non-async caller, [`Transaction::commit_blocking`] does the same).
//!
//! ```
//! use futures::executor::block_on;
//! use keel::{Database, Error, Options, Transaction};
//!
//! /// The counter under "count" as `txn` sees it (0 before its first write).
//! fn count(txn: &Transaction) -> keel::Result<u64> {
//!     let value = txn.get("count")?;
//!     Ok(value.map_or(0, |v| u64::from_le_bytes(v.value.try_into().expect("8 bytes"))))
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("db");
//! let db = Database::open(&path, Options::default())?; // creates it: there is none yet
//! block_on(async {
//!     // Every key belongs to a run; names are unique among active runs.
//!     let run = db.begin_run("ingest").await?;
//!
//!     // Writes are buffered in the transaction, which reads its own writes, and commit as one
//!     // unit; the commit version is its LSN, returned once durable (`Durability::Strict`).
//!     let mut txn = db.transaction(run)?;
//!     txn.put("user/1", "ada")?;
//!     txn.put("user/2", "grace")?;
//!     txn.put("user/3", "edsger")?;
//!     assert_eq!(txn.prefix("user/")?.count(), 3);
//!     let version = txn.commit().await?;
//!
//!     // Reads see every commit acknowledged so far, each value with the version that wrote it.
//!     let ada = db.get(run, "user/1")?.expect("committed");
//!     assert_eq!((ada.value, ada.version), (b"ada".to_vec(), version));
//!
//!     // Iterators over a range (or a prefix) of one run's keys, from either end.
//!     let keys: Vec<Vec<u8>> = db.range(run, "user/2"..)?.rev().map(|(key, _)| key).collect();
//!     assert_eq!(keys, [b"user/3".to_vec(), b"user/2".to_vec()]);
//!
//!     // Two read-modify-writes of the counter, interleaved: both read 0, and the second to
//!     // commit is refused (transactions are serializable), or the counter would lose one.
//!     let (mut a, mut b) = (db.transaction(run)?, db.transaction(run)?);
//!     let (seen_a, seen_b) = (count(&a)?, count(&b)?);
//!     a.put("count", (seen_a + 1).to_le_bytes())?;
//!     b.put("count", (seen_b + 1).to_le_bytes())?;
//!     a.commit().await?;
//!     let refused = b.commit().await;
//!     assert!(matches!(refused, Err(Error::Conflict { ref key, .. }) if key == b"count"));
//!
//!     // `transact` runs the closure in a new transaction and commits it, and on a conflict
//!     // runs it again on fresh reads (here up to 3 times in all).
//!     let (now, _version) = db
//!         .transact(run, 3, |txn| {
//!             let next = count(txn)? + 1;
//!             txn.put("count", next.to_le_bytes())?;
//!             Ok(next)
//!         })
//!         .await?;
//!     assert_eq!(now, 2);
//!     Ok::<_, Error>(())
//! })?;
//! // Closing needs the last handle (no clone, no open transaction): it syncs and unlocks.
//! db.close()?;
//!
//! // Reopened, the database recovers every acknowledged commit; the run is found by its name.
//! let db = Database::open(&path, Options::default())?;
//! let run = db.find_run("ingest").expect("still active");
//! assert_eq!(db.get(run, "count")?.expect("committed").value, 2u64.to_le_bytes());
//! db.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod db;
mod image;
mod iter;
mod range;
mod retention;
mod snapshot;
mod state;
mod view;

pub use db::{
    Database, FeedChange, FeedCommit, FeedEvent, Isolation, Options, Stats, Subscription,
    Transaction,
};
pub use image::SnapshotImage;
pub use iter::Iter;
// What recovery found ([`RecoveryReport::anomalies`], [`RecoveryError::Refused`]) is part of
// what a user of keel reads and matches: its types are here, so no one needs keel-recovery
// or keel-wal as a dependency to name them.
pub use keel_recovery::{
    Anomaly, Decision, Error as RecoveryError, Finding, RecoveryPolicy, RecoveryReport,
};
pub use keel_wal::{
    BackendChoice, CorruptionReason, Durability, DurableProof, Error as WalError, Lsn, PoisonCause,
    RunId,
};
pub use state::{ABANDONED_INSTALL_RUN, RunInfo, RunState, Versioned};
pub use view::Snapshot;

/// Reads every snapshot in the database at `path` (newest first) and says whether it reads
/// back whole: `Ok(lsn)` or why not. Changes nothing.
pub fn check_snapshots(
    path: impl AsRef<std::path::Path>,
) -> Result<Vec<(std::path::PathBuf, std::result::Result<Lsn, String>)>> {
    let dir = path.as_ref().join("snapshots");
    Ok(snapshot::list(&dir)?
        .into_iter()
        .map(|(_, file)| {
            let outcome = match snapshot::verify(&file) {
                Ok(outcome) => outcome.map_err(|why| format!("snapshot {}: {why}", file.display())),
                Err(error) => Err(error.to_string()),
            };
            (file, outcome)
        })
        .collect())
}

/// Everything that can go wrong in the engine.
///
/// The cases a caller handles have variants of their own here ([`Error::Locked`],
/// [`Error::TooLarge`], [`Error::Closed`], [`Error::Conflict`], [`Error::NotADatabase`],
/// [`Error::InUse`], ...): the log's and recovery's errors that stand for them are lifted into
/// them (`From<WalError>`, `From<RecoveryError>`), so none needs keel-wal to match. The rest
/// arrive as [`Error::Wal`] and [`Error::Recovery`], whose types are re-exported here
/// ([`WalError`], [`RecoveryError`], [`CorruptionReason`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The log failed otherwise: IO (naming the operation and the file), damage found while
    /// reading, a log poisoned by a failed write or sync (every commit is refused after it:
    /// close and reopen), options out of range (naming the option), a feed position removed.
    /// Each [`WalError`] variant says when it happens and what to do.
    #[error(transparent)]
    Wal(WalError),
    /// Recovery at [`Database::open`] refused what it found (under
    /// [`Options::recovery_policy`]) or could not replay it: nothing on disk was changed. See
    /// [`RecoveryError`]; `keel-cli recover` shows and repairs what was found. (The log's own
    /// errors during recovery arrive as [`Error::Wal`], never as `RecoveryError::Wal`.)
    #[error(transparent)]
    Recovery(RecoveryError),
    /// No run has this id (never begun, or begun in another database): check the id, or find
    /// the run by name in [`Database::list_runs`].
    #[error("run {0} does not exist")]
    UnknownRun(RunId),
    /// The run has ended ([`Database::end_run`]): it stays readable but takes no more writes.
    /// Begin a new run to write.
    #[error("run {0} has ended and accepts no more writes")]
    RunEnded(RunId),
    /// [`Database::begin_run`] was given the name of a run still active: names are unique
    /// among active runs ([`Database::find_run`] finds one by name). End that run first, or
    /// choose another name.
    #[error(
        "a run named {name:?} is active already (run {run}); run names are unique among active runs"
    )]
    RunNameTaken {
        /// The name asked for.
        name: String,
        /// The active run that has it.
        run: RunId,
    },
    /// The database's own records (runs, snapshots, the log against the snapshots) are
    /// damaged or do not agree; the message says what and where, and the same open refuses
    /// the same way every time. Restore the files it names.
    #[error("the database's metadata is damaged: {0}")]
    Metadata(String),
    /// Another process (or another open [`Database`] in this one) holds the database at
    /// `path`: close that one first. A lock is released when its holder closes or exits.
    #[error(
        "the database at {} is locked: another process (or another open handle in this process) has it open; close that one first",
        path.display()
    )]
    Locked {
        /// The database's directory.
        path: std::path::PathBuf,
    },
    /// A write too large for one log record: a key of `key_bytes` and a value of
    /// `value_bytes`, together over `limit_bytes`, the most one write may hold (the record
    /// limit, [`Options::max_record_bytes`] — named by `option` — less a write's framing).
    /// Refused before anything was buffered or logged; raise that option (up to what a
    /// segment holds, [`Options::segment_bytes`]) or split the value.
    ///
    /// When the log refused an entry the engine does not check first (a run's record, with
    /// its name), `key_bytes` is 0, and `value_bytes` and `limit_bytes` count the encoded
    /// entry and the record limit.
    #[error(
        "a write of {} is too large: one write holds at most {limit_bytes} bytes of key and value, under {option}; raise {option} (up to what one Options::segment_bytes segment holds) or split the value",
        too_large_what(*key_bytes, *value_bytes)
    )]
    TooLarge {
        /// The key's length, in bytes (0 for an entry the log refused).
        key_bytes: usize,
        /// The value's length, in bytes (the encoded entry's, for an entry the log refused).
        value_bytes: usize,
        /// The most key and value of one write may hold together, in bytes (the record
        /// limit, for an entry the log refused).
        limit_bytes: u64,
        /// The option that sets the limit: `"Options::max_record_bytes"`.
        option: &'static str,
    },
    /// The database's log is closed or its writer stopped: an operation that raced with
    /// [`Database::close`] or the last handle's drop. Open the database again to go on.
    #[error("the database is closed (its log stopped); open it again")]
    Closed,
    /// [`Database::close`] was called while `handles` other handles of the database at `path`
    /// were alive: clones of the [`Database`], and every open [`Transaction`] (each holds
    /// one). Nothing was closed. [`CloseError::InUse`] hands the handle back: drop the others
    /// and close it again.
    #[error(
        "the database at {} is still in use: close() needs the last handle, and {handles} other handle(s) are alive (clones of the Database, open Transactions); drop them and close again",
        path.display()
    )]
    InUse {
        /// The database's directory.
        path: std::path::PathBuf,
        /// How many other handles are alive (not counting the one `close` was called on).
        handles: usize,
    },
    /// A write this transaction spilled to the log ahead of its commit failed (the first
    /// error reported why): the transaction cannot commit, and dropping it is all that is left.
    #[error("a spilled write of this transaction failed, so it cannot commit: {0}")]
    SpillFailed(String),
    /// The bytes given as a snapshot image are not one: nothing was changed.
    #[error("not a valid snapshot image: {0}")]
    InvalidSnapshotImage(String),
    /// A [`Subscription`] ended at `position`: the transactions it had read that are still
    /// open in the log (spilled ones, which it delivers whole at their commit) held
    /// `held_bytes` in its memory, over [`Options::feed_max_lag_bytes`] (`max_bytes`).
    /// Nothing of them was delivered. Bootstrap from a snapshot taken after they commit or
    /// abort ([`Database::newest_snapshot`]) and subscribe from its LSN plus one, or raise
    /// the option.
    #[error(
        "the change feed ended at LSN {position}: transactions still open in the log held {held_bytes} bytes of it, over Options::feed_max_lag_bytes ({max_bytes}); bootstrap from a snapshot taken after they end, or raise the option"
    )]
    FeedHeldTooMuch {
        /// The LSN the subscription would have read next.
        position: Lsn,
        /// The bytes of open transactions it held.
        held_bytes: u64,
        /// [`Options::feed_max_lag_bytes`].
        max_bytes: u64,
    },
    /// A transaction's commit was refused, nothing of it logged: a commit made after its
    /// first read changed `key` (in `run`), which it read or scanned (under
    /// [`Isolation::Serializable`]) or writes (under [`Isolation::Snapshot`]). Run it again
    /// on fresh reads; [`Database::transact`] does, a bounded number of times.
    #[error(
        "transaction conflict: key \"{}\" of run {run} was changed by another commit after this transaction's first read; run the transaction again (Database::transact retries)",
        key.escape_ascii()
    )]
    Conflict {
        /// The run of the key.
        run: RunId,
        /// The key another commit changed (the first one found).
        key: Vec<u8>,
    },
    /// [`Database::open`] was given a path that is not a Keel database and where it will not
    /// make one: a file, a keel-wal log, a directory holding other files, or (with
    /// [`Options::create_if_missing`] off) no database at all. `what` says which, in a
    /// sentence. Refused before anything was created or changed there.
    ///
    /// This is also the "not found" case: with `create_if_missing` off, a missing directory
    /// (`what`: "it does not exist, ...") or one holding no database is refused here, so one
    /// variant answers "there is no Keel database at `path`".
    #[error("{} is not a Keel database: {what}", path.display())]
    NotADatabase {
        /// The path given to [`Database::open`].
        path: std::path::PathBuf,
        /// What is there instead, in a sentence.
        what: String,
    },
}

/// "a 3-byte key and a 9000-byte value", or "9000 bytes" when there is no key.
fn too_large_what(key_bytes: usize, value_bytes: usize) -> String {
    match key_bytes {
        0 => format!("{value_bytes} bytes"),
        _ => format!("a {key_bytes}-byte key and a {value_bytes}-byte value"),
    }
}

/// The option that bounds one write, as [`Error::TooLarge`] names it.
pub(crate) const RECORD_LIMIT_OPTION: &str = "Options::max_record_bytes";

impl From<WalError> for Error {
    /// The log's errors that have an engine variant become it; the rest stay [`Error::Wal`].
    fn from(error: WalError) -> Self {
        lift(error).unwrap_or_else(Error::Wal)
    }
}

impl From<RecoveryError> for Error {
    /// The log's errors recovery passes on are the log's ([`Error::Wal`], or the engine
    /// variant they stand for, as `From<WalError>`); the rest stay [`Error::Recovery`].
    fn from(error: RecoveryError) -> Self {
        match error {
            RecoveryError::Wal(wal) => wal.into(),
            other => Error::Recovery(other),
        }
    }
}

/// The engine variant of a log error, or the error back.
fn lift(error: WalError) -> std::result::Result<Error, WalError> {
    match error {
        WalError::Locked { path } => Ok(Error::Locked { path }),
        WalError::Closed => Ok(Error::Closed),
        WalError::RecordTooLarge { size, max } => Ok(Error::TooLarge {
            key_bytes: 0,
            value_bytes: usize::try_from(size).unwrap_or(usize::MAX),
            limit_bytes: max,
            option: RECORD_LIMIT_OPTION,
        }),
        other => Err(other),
    }
}

/// Why [`Database::close`] did not close.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// Other handles of the database are alive (clones, open [`Transaction`]s, `handles` of
    /// them): nothing was closed, and `db` is the handle given back. Drop the others and call
    /// [`Database::close`] on it again. Into [`Error`], it is [`Error::InUse`].
    #[error("{}", Error::InUse { path: db.path().to_path_buf(), handles: *handles })]
    InUse {
        /// The handle `close` was called on, given back.
        db: Database,
        /// How many other handles are alive.
        handles: usize,
    },
    /// Closing the log failed (its last write or sync): the database is closed all the same,
    /// and the next open recovers what reached the disk.
    #[error(transparent)]
    Failed(Error),
}

impl std::fmt::Debug for CloseError {
    /// Names the database and the handles, not the handle's whole state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseError::InUse { db, handles } => f
                .debug_struct("InUse")
                .field("path", &db.path())
                .field("handles", handles)
                .finish_non_exhaustive(),
            CloseError::Failed(error) => f.debug_tuple("Failed").field(error).finish(),
        }
    }
}

impl From<CloseError> for Error {
    /// [`CloseError::InUse`] becomes [`Error::InUse`] (the handle given back is dropped).
    fn from(error: CloseError) -> Self {
        match error {
            CloseError::InUse { db, handles } => Error::InUse {
                path: db.path().to_path_buf(),
                handles,
            },
            CloseError::Failed(error) => error,
        }
    }
}

/// The result type of keel.
pub type Result<T, E = Error> = std::result::Result<T, E>;
