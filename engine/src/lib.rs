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
//! ```no_run
//! # async fn demo() -> Result<(), keel::Error> {
//! let db = keel::Database::open("/tmp/keel-demo", keel::Options::default())?;
//! let run = db.begin_run("ingest").await?;
//! let mut txn = db.transaction(run)?;
//! txn.put(b"k", b"v")?;
//! let version = txn.commit().await?;
//! assert_eq!(db.get(run, b"k")?.unwrap().version, version);
//! # Ok(()) }
//! ```

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
pub use keel_recovery::{RecoveryPolicy, RecoveryReport};
pub use keel_wal::{BackendChoice, Durability, Lsn, RunId};
pub use state::{RunInfo, RunState, Versioned};
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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Wal(#[from] keel_wal::Error),
    #[error(transparent)]
    Recovery(#[from] keel_recovery::Error),
    #[error("run {0} does not exist")]
    UnknownRun(RunId),
    #[error("run {0} has ended and accepts no more writes")]
    RunEnded(RunId),
    /// [`Database::begin_run`] was given the name of a run still active: names are unique
    /// among active runs ([`Database::find_run`] finds one by name). End that run first, or
    /// choose another name.
    #[error(
        "a run named {name:?} is active already (run {run}); run names are unique among active runs"
    )]
    RunNameTaken { name: String, run: RunId },
    #[error("the database's metadata is damaged: {0}")]
    Metadata(String),
    /// A write whose key and value cannot fit one log record: refused before anything was
    /// buffered or logged. Raise [`Options::max_record_bytes`] or split the value.
    #[error(
        "a write of a {key_bytes}-byte key and a {value_bytes}-byte value needs a log record of up to {record_bytes} bytes, over Options::max_record_bytes ({max_record_bytes}); raise that option or split the value"
    )]
    ValueTooLarge {
        key_bytes: usize,
        value_bytes: usize,
        record_bytes: u64,
        max_record_bytes: u32,
    },
    /// A write this transaction spilled to the log ahead of its commit failed (the first
    /// error reported why): the transaction cannot commit, and dropping it is all that is left.
    #[error("a spilled write of this transaction failed, so it cannot commit: {0}")]
    SpillFailed(String),
    /// The bytes given as a snapshot image are not one: nothing was changed.
    #[error("not a valid snapshot image: {0}")]
    InvalidSnapshotImage(String),
    /// A transaction's commit was refused, nothing of it logged: a commit made after its
    /// first read changed `key` (in `run`), which it read or scanned (under
    /// [`Isolation::Serializable`]) or writes (under [`Isolation::Snapshot`]). Run it again
    /// on fresh reads; [`Database::transact`] does, a bounded number of times.
    #[error(
        "transaction conflict: key \"{}\" of run {run} was changed by another commit after this transaction's first read; run the transaction again (Database::transact retries)",
        key.escape_ascii()
    )]
    Conflict { run: RunId, key: Vec<u8> },
    /// [`Database::open`] was given a path that is not a Keel database and where it will not
    /// make one: a file, a keel-wal log, a directory holding other files, or (with
    /// [`Options::create_if_missing`] off) no database at all. `what` says which, in a
    /// sentence. Refused before anything was created or changed there.
    #[error("{} is not a Keel database: {what}", path.display())]
    NotADatabase {
        path: std::path::PathBuf,
        what: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
