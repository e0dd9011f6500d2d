//! keel-wal: Keel's write-ahead log.
//!
//! - **Entries** ([`WalEntry`]): `BeginTxn`, `Write`, `Delete`, `CommitTxn`, `AbortTxn`,
//!   `Checkpoint`, each carrying its run and (when transactional) its transaction, stored as
//!   rkyv archives and read back zero-copy ([`ArchivedWalEntry`]).
//! - **Records** (`record`): 8-byte aligned frames with a salted header checksum that covers
//!   the length, a salted body checksum, the LSN and the durable mark. See `docs/FORMAT.md`.
//! - **Segments** (`segment`): preallocated, zero-filled files named by their first LSN.
//! - **The durable witness** (`witness`): a checksummed claim in a segment's header block that
//!   its records through an LSN were durable, written when the writer idles and at close.
//! - **The writer** (`writer`): one thread, group commit, [`Durability`] modes, sticky failure;
//!   a blocking committer that finds it idle writes its own commit ([`Wal::append_wait`]).
//! - **Backends** (`backend`): the narrow interface the writer drives; `std` everywhere.
//! - **Storage** ([`Storage`]): syncs, renames, removals, the lock and the backend factory,
//!   passed in through the options; the real file system unless a test hands in another.
//! - **Reading** ([`SegmentReader`], [`LogReader`]).
//! - **Opening** is recovery's: keel-recovery validates every segment and repairs the tail,
//!   then the log resumes where it left it ([`Wal::resume`], [`RecoveredLog`]); one lock, one
//!   listing and one scan per open. `keel_recovery::open_wal` does both for a log used alone.
//!
//! Open a log (in a new temporary directory here), append a transaction as one unit, close
//! it, and read it back:
//!
//! ```
//! use keel_wal::{LogReader, RunId, WalEntry, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("wal");
//! // Recovery opens the log, creating it since there is none yet.
//! let wal = keel_recovery::open_wal(&path, WalOptions::default())?;
//! let run_id = RunId::from_u128(1);
//! // One unit: consecutive LSNs, one write, one fdatasync (the default, `Durability::Strict`).
//! // `.wait()` blocks; from async code, `.await` the same future instead. (Blocking code
//! // may call `wal.append_wait(..)`, which writes the commit itself when the writer idles.)
//! let lsn = wal
//!     .append(&[
//!         WalEntry::Write { run_id, txn_id: 1, key: b"k".to_vec(), value: b"v".to_vec() },
//!         WalEntry::CommitTxn { run_id, txn_id: 1 },
//!     ])
//!     .wait()?;
//! assert_eq!(lsn, 2); // LSNs start at 1: the `Write` got 1, the commit 2
//! wal.close()?;
//!
//! // Every record, in LSN order, its entry read zero-copy from the reader's buffer.
//! let mut reader = LogReader::open(&path)?;
//! let mut kinds = Vec::new();
//! while let Some(record) = reader.next_record()? {
//!     kinds.push((record.lsn, record.entry.kind().name()));
//! }
//! assert_eq!(kinds, [(1, "Write"), (2, "CommitTxn")]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod dir;
mod error;
mod format;
mod ids;
mod options;
mod tail;
mod wal;
mod writer;

// The paths the other crates use: `keel_wal::segment::SegmentHeader` and so on.
pub use dir::{fsutil, storage};
pub use format::{reader, record, scan, segment, witness, zeros};

#[doc(hidden)]
pub use backend::uring_faults::UringFaults;
pub use backend::{BackendChoice, BackendKind};
pub use dir::LogReader;
pub use error::{CorruptionReason, DurableProof, Error, PoisonCause, Result};
// The checksum newtype: for tests and fuzz targets that frame records by hand.
#[doc(hidden)]
pub use format::checksum::{ChecksumMismatch, Crc};
pub use format::entry::{ArchivedWalEntry, EntryKind, WalEntry};
pub use format::reader::{OwnedRecord, RecordPosition, RecordRef, SegmentEvent, SegmentReader};
pub use format::record::EncodedBatch;
pub use format::witness::Witness;
pub use ids::{ArchivedRunId, DatabaseId, Lsn, RunId, TxnId};
pub use options::{
    DEFAULT_IO_DEPTH, DEFAULT_TAIL_MAX_LAG_BYTES, DEFAULT_WITNESS_IDLE, Durability, MAX_IO_DEPTH,
    WalOptions,
};
pub use storage::{Defects, FileSystem, Storage};
pub use tail::Tail;
pub use wal::{LogEnd, OpenSummary, RecoveredLog, Wal};
pub use writer::completion::{Appended, CommitFuture};
pub use writer::queue::{MAX_QUEUED_BYTES, WriterWake};
pub use writer::stats::{BATCH_BUCKETS, WalStats};

/// Commit futures and the log handle cross threads and runtimes.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    const fn assert_send<T: Send>() {}
    assert_send::<CommitFuture>();
    assert_send_sync::<Wal>();
    assert_send_sync::<Error>();
};
