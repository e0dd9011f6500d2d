//! The one error type of keel-wal.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ids::{DatabaseId, Lsn};

/// Why bytes on disk were not accepted. Carried by [`Error::Corruption`] and by the reader's
/// findings, with the segment and offset where they were found.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionReason {
    #[error("segment header is all zeros")]
    ZeroedSegmentHeader,
    #[error("segment header has a bad magic number")]
    BadMagic,
    #[error("segment header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    SegmentHeaderChecksum { expected: u32, actual: u32 },
    #[error("segment file name says first LSN {named} but its header says {stored}")]
    SegmentNameMismatch { named: Lsn, stored: Lsn },
    #[error("segment header is damaged: {0}")]
    SegmentHeaderField(&'static str),
    #[error("segment file is {actual} bytes, shorter than its header block")]
    SegmentTooShort { actual: u64 },
    #[error("record header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    RecordHeaderChecksum { expected: u32, actual: u32 },
    #[error("record length {length} exceeds the {limit} bytes left in the segment or format")]
    RecordLength { length: u64, limit: u64 },
    #[error("record body checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    RecordBodyChecksum { expected: u32, actual: u32 },
    #[error("record of unknown kind {0}")]
    RecordKind(u16),
    #[error("record payload is not a valid entry archive: {0}")]
    InvalidArchive(String),
    #[error("expected LSN {expected}, found {found}")]
    LsnMismatch { expected: Lsn, found: Lsn },
    #[error("the file ends inside a record")]
    TruncatedRecord,
    #[error("the log ends here, but non-zero bytes follow")]
    DebrisAfterEnd,
    #[error("an all-zero record header where a record was expected")]
    ZeroedRecord,
    #[error("record at LSN {lsn} is damaged or missing, but {proof}")]
    DamageBelowDurableMark { lsn: Lsn, proof: DurableProof },
    #[error("segments are not contiguous: expected first LSN {expected}, found {found}")]
    MissingSegment { expected: Lsn, found: Lsn },
    #[error("identity file is damaged: {0}")]
    Identity(&'static str),
}

/// The cause that poisoned a log: the first failed write or sync.
#[derive(Debug)]
pub struct PoisonCause {
    /// The operation that failed (`"write"`, `"fdatasync"`, `"rotate"`, ...).
    pub operation: &'static str,
    /// The file it failed on.
    pub path: PathBuf,
    /// The error the operating system returned.
    pub error: io::Error,
}

impl std::fmt::Display for PoisonCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} failed: {}",
            self.operation,
            self.path.display(),
            self.error
        )
    }
}

/// Everything that can go wrong in keel-wal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("the log at {} is locked by another process or handle", path.display())]
    Locked { path: PathBuf },

    #[error(
        "{} has format version {found}; this build reads versions up to {supported}",
        path.display()
    )]
    UnknownFormatVersion {
        path: PathBuf,
        found: u32,
        /// The newest version this build reads (segments: also every older one down to
        /// `segment::OLDEST_READABLE_VERSION`).
        supported: u32,
    },

    #[error("{} belongs to database {found}, not to this database ({expected})", path.display())]
    ForeignDatabase {
        path: PathBuf,
        expected: DatabaseId,
        found: DatabaseId,
    },

    #[error("corruption in {} at offset {offset}: {reason}", segment.display())]
    Corruption {
        segment: PathBuf,
        offset: u64,
        reason: CorruptionReason,
    },

    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { size: u64, max: u64 },

    #[error("the log is poisoned and accepts no more commits: {cause}")]
    Poisoned { cause: Arc<PoisonCause> },

    #[error("the log is closed")]
    Closed,

    #[error(
        "LSN {requested} is no longer in the log: its oldest record is LSN {oldest} (read the newest snapshot, then follow the log from the LSN it covers)"
    )]
    LsnRemoved { requested: Lsn, oldest: Lsn },

    #[error(
        "the tail at LSN {position} fell {lag_bytes} bytes of log behind, more than the {max_bytes} it may hold back (WalOptions::tail_max_lag_bytes): it ended and the log was released; resume from LSN {position} if it is still there, else from a snapshot"
    )]
    TailFellBehind {
        position: Lsn,
        lag_bytes: u64,
        max_bytes: u64,
    },

    #[error("invalid options: {0}")]
    InvalidOptions(String),

    #[error("the {backend} backend was required but cannot run here: {reason}")]
    BackendUnavailable {
        backend: &'static str,
        reason: String,
    },

    #[error("cannot encode entry: {0}")]
    Encode(String),
}

impl Error {
    /// An IO error on `path` during `operation`.
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    /// Damage found in `segment` at `offset`.
    pub fn corruption(segment: impl Into<PathBuf>, offset: u64, reason: CorruptionReason) -> Self {
        Error::Corruption {
            segment: segment.into(),
            offset,
            reason,
        }
    }
}

/// The result type of keel-wal.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What proves that a damaged or missing record had been durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DurableProof {
    /// A later record of the segment (LSN `lsn`) carries a durable mark reaching it.
    LaterRecord { lsn: Lsn, durable_lsn: Lsn },
    /// The segment's witness says every record through `durable_lsn`, ending at `end_offset`,
    /// was durable.
    Witness { durable_lsn: Lsn, end_offset: u64 },
}

impl std::fmt::Display for DurableProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurableProof::LaterRecord { lsn, durable_lsn } => write!(
                f,
                "a later record (LSN {lsn}) says LSN {durable_lsn} was already durable"
            ),
            DurableProof::Witness {
                durable_lsn,
                end_offset,
            } => write!(
                f,
                "the segment's durable witness says LSNs through {durable_lsn} (ending at \
                 offset {end_offset}) were durable"
            ),
        }
    }
}
