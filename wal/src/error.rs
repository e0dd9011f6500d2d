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
    /// The segment's header block is all zeros: a segment created but never initialised (a crash
    /// while creating it), or one zeroed by the storage. Recovery judges it by its policy.
    #[error("segment header is all zeros")]
    ZeroedSegmentHeader,
    /// The segment's header does not start with keel-wal's magic number: not a segment, or one
    /// overwritten at its start.
    #[error("segment header has a bad magic number")]
    BadMagic,
    /// The segment header's checksum does not match its bytes: the header was damaged after it
    /// was written.
    #[error("segment header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    SegmentHeaderChecksum {
        /// The checksum stored in the header.
        expected: u32,
        /// The checksum computed over the header's bytes as read.
        actual: u32,
    },
    /// The first LSN in the segment's file name differs from the one in its header: a file
    /// renamed or copied under another name. Restore its name, or remove it if it is a stray copy.
    #[error("segment file name says first LSN {named} but its header says {stored}")]
    SegmentNameMismatch {
        /// The first LSN the file's name gives.
        named: Lsn,
        /// The first LSN its header records.
        stored: Lsn,
    },
    /// A field of an otherwise intact segment header is out of range (named in the message):
    /// written by a newer or a broken build.
    #[error("segment header is damaged: {0}")]
    SegmentHeaderField(&'static str),
    /// The segment file is shorter than its header block: truncated (a crash while creating it,
    /// or a copy cut short).
    #[error("segment file is {actual} bytes, shorter than its header block")]
    SegmentTooShort {
        /// The file's length, in bytes.
        actual: u64,
    },
    /// A record header's checksum does not match: a torn or damaged write. At the log's end this
    /// is an interrupted append; below the durable mark it is damage (see
    /// [`CorruptionReason::DamageBelowDurableMark`]).
    #[error("record header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    RecordHeaderChecksum {
        /// The checksum stored in the record header.
        expected: u32,
        /// The checksum computed over the header's bytes as read.
        actual: u32,
    },
    /// A record header claims a payload longer than what is left in the segment or than the
    /// format allows: a damaged header.
    #[error("record length {length} exceeds the {limit} bytes left in the segment or format")]
    RecordLength {
        /// The payload length the header claims, in bytes.
        length: u64,
        /// The most it could be, in bytes: what is left in the segment after this header, or the
        /// format's maximum payload if smaller.
        limit: u64,
    },
    /// A record's payload does not match its checksum: a torn or damaged write (as for
    /// [`CorruptionReason::RecordHeaderChecksum`]).
    #[error("record body checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    RecordBodyChecksum {
        /// The body checksum stored in the record header.
        expected: u32,
        /// The checksum computed over the payload as read.
        actual: u32,
    },
    /// A record of a kind this build does not know: written by a newer build, or damaged.
    #[error("record of unknown kind {0}")]
    RecordKind(u16),
    /// A record's checksums match but its payload is not a valid entry: written by a broken or
    /// incompatible build.
    #[error("record payload is not a valid entry archive: {0}")]
    InvalidArchive(String),
    /// A record carries another LSN than the one expected at its place: records out of order,
    /// or a stale record from the segment's earlier use.
    #[error("expected LSN {expected}, found {found}")]
    LsnMismatch {
        /// The LSN due at this place (one past the previous record's).
        expected: Lsn,
        /// The LSN the record carries.
        found: Lsn,
    },
    /// The file ends inside a record: the last append was cut short (a crash, or a copy cut
    /// short).
    #[error("the file ends inside a record")]
    TruncatedRecord,
    /// Where the log ends (a zeroed header), non-zero bytes follow: records lost in the middle of
    /// a segment, or garbage after the end. Recovery reports it; its policy decides.
    #[error("the log ends here, but non-zero bytes follow")]
    DebrisAfterEnd,
    /// An all-zero record header where a record was expected (below the durable mark, or with
    /// records after it): a hole punched in the log.
    #[error("an all-zero record header where a record was expected")]
    ZeroedRecord,
    /// A record is damaged or missing though a later record or the segment's durable
    /// witness proves it had been synced: acknowledged data was lost by the storage, not torn
    /// by a crash. Recovery refuses it unless its policy accepts the loss.
    #[error("record at LSN {lsn} is damaged or missing, but {proof}")]
    DamageBelowDurableMark {
        /// The LSN expected at the damaged or missing record.
        lsn: Lsn,
        /// What shows it had been durable.
        proof: DurableProof,
    },
    /// The segments' LSNs leave a gap: a segment file was removed or never copied. Restore it.
    #[error("segments are not contiguous: expected first LSN {expected}, found {found}")]
    MissingSegment {
        /// The first LSN the next segment should have (one past the previous one's last).
        expected: Lsn,
        /// The first LSN of the next segment present.
        found: Lsn,
    },
    /// The log directory's `IDENTITY` file is damaged (the reason is named). Restore it from a
    /// copy of the same database.
    #[error("identity file is damaged: {0}")]
    Identity(&'static str),
}

/// The cause that poisoned a log: the first failed write or sync, or a writer that stopped
/// without finishing (a panic).
#[derive(Debug)]
pub struct PoisonCause {
    /// The operation that failed (`"write"`, `"fdatasync"`, `"rotate"`, `"writer thread"`,
    /// ...).
    pub operation: &'static str,
    /// The file it failed on (the log's directory for the writer; empty when not known).
    pub path: PathBuf,
    /// The error the operating system returned, or what stopped the writer.
    pub error: io::Error,
}

impl PoisonCause {
    /// The writer of the log in `dir` stopped without finishing what it was given: its
    /// thread panicked, or a committer did while driving it.
    pub(crate) fn writer_panicked(dir: PathBuf) -> PoisonCause {
        PoisonCause {
            operation: "writer thread",
            path: dir,
            error: io::Error::other(
                "the writer thread panicked, or a committer panicked while writing: \
                 what was queued and not yet written is lost",
            ),
        }
    }
}

impl std::fmt::Display for PoisonCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.as_os_str().is_empty() {
            return write!(f, "{} failed: {}", self.operation, self.error);
        }
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
    /// An operation on the file system failed: `operation` says what was being done, `path` on
    /// what, `source` what the operating system answered (permissions, a full disk, a missing
    /// file). Nothing was acknowledged that the failure could lose; fix the cause and retry.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What was being done (`"opening"`, `"syncing"`, `"locking"`, ...).
        operation: &'static str,
        /// The file or directory it was done on.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },

    /// The log directory's `LOCK` is held: another process (or another open handle in this
    /// one) has the log open. Close that one first; a lock is released when its process exits.
    #[error("the log at {} is locked by another process or handle", path.display())]
    Locked {
        /// The log directory.
        path: PathBuf,
    },

    /// A segment or the identity file was written in a format version this build does not
    /// read (by a newer build): open it with that build or a newer one.
    #[error(
        "{} has format version {found}; this build reads versions up to {supported}",
        path.display()
    )]
    UnknownFormatVersion {
        /// The segment or identity file.
        path: PathBuf,
        /// The format version it was written in.
        found: u32,
        /// The newest version this build reads (segments: also every older one down to
        /// `segment::OLDEST_READABLE_VERSION`).
        supported: u32,
    },

    /// A file of the directory belongs to another database (its identity differs): files of two
    /// logs were mixed by a copy, or [`crate::WalOptions::database_id`] names another database.
    /// Remove or restore the stranger; nothing was read from it.
    #[error("{} belongs to database {found}, not to this database ({expected})", path.display())]
    ForeignDatabase {
        /// The file that belongs to another database.
        path: PathBuf,
        /// This log's database id (from its `IDENTITY`, or the options).
        expected: DatabaseId,
        /// The database id the file carries.
        found: DatabaseId,
    },

    /// Bytes on disk are not what was written: `reason` says what is wrong, `segment` and
    /// `offset` where. Recovery (keel-recovery) turns damage into findings its policy judges;
    /// a reader that meets it reports this.
    #[error("corruption in {} at offset {offset}: {reason}", segment.display())]
    Corruption {
        /// The segment file (or the identity file) the damage is in.
        segment: PathBuf,
        /// Where in that file, in bytes from its start.
        offset: u64,
        /// What is wrong.
        reason: CorruptionReason,
    },

    /// An entry encodes to a record payload of `size` bytes, over the log's limit `max`
    /// ([`crate::WalOptions::max_record_bytes`]): refused before anything was queued. Raise that
    /// option (it must fit a segment, [`crate::WalOptions::segment_bytes`]) or write less.
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge {
        /// The encoded record payload, in bytes.
        size: u64,
        /// The log's record limit, in bytes ([`crate::WalOptions::max_record_bytes`] as
        /// resolved).
        max: u64,
    },

    /// A write or sync of the log failed (`cause` says which, on which file): the log accepts no
    /// more appends, since what reached the disk is unknown. Close it and open it again:
    /// recovery establishes what is there.
    #[error("the log is poisoned and accepts no more commits: {cause}")]
    Poisoned {
        /// The first failed write or sync (shared by every error the poisoned log returns).
        cause: Arc<PoisonCause>,
    },

    /// The log is closed or its writer stopped: an append or a wait made after (or
    /// interrupted by) its close. Open it again to write.
    #[error("the log is closed")]
    Closed,

    /// A read or tail asked for LSN `requested`, which a checkpoint already removed (the log now
    /// starts at `oldest`): read the newest snapshot, then follow the log from the LSN it
    /// covers.
    #[error(
        "LSN {requested} is no longer in the log: its oldest record is LSN {oldest} (read the newest snapshot, then follow the log from the LSN it covers)"
    )]
    LsnRemoved {
        /// The LSN asked for.
        requested: Lsn,
        /// The oldest LSN the log still holds.
        oldest: Lsn,
    },

    /// A [`crate::Tail`] fell more than `max_bytes` of log behind the log's removal point and was
    /// ended (a slow reader never stalls the writer): resume from `position` if the log still
    /// holds it, else from a snapshot. Raise [`crate::WalOptions::tail_max_lag_bytes`] to allow
    /// more lag.
    #[error(
        "the tail at LSN {position} fell {lag_bytes} bytes of log behind, more than the {max_bytes} it may hold back (WalOptions::tail_max_lag_bytes): it ended and the log was released; resume from LSN {position} if it is still there, else from a snapshot"
    )]
    TailFellBehind {
        /// The LSN the tail would have read next.
        position: Lsn,
        /// How far behind it was, in bytes of log it held back from removal.
        lag_bytes: u64,
        /// The most it may hold back, in bytes ([`crate::WalOptions::tail_max_lag_bytes`]).
        max_bytes: u64,
    },

    /// The options contradict themselves or are out of range: the message names the option to
    /// change and the range it must be in. Nothing was opened or created.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// The backend chosen explicitly ([`crate::BackendChoice`]) cannot run here (io_uring on an
    /// old kernel, or refused by a seccomp policy): choose `Auto` or `Std`.
    #[error("the {backend} backend was required but cannot run here: {reason}")]
    BackendUnavailable {
        /// The backend asked for (`"uring"`).
        backend: &'static str,
        /// Why it cannot run, as the probe found (the error from setting up a ring, say).
        reason: String,
    },

    /// An entry could not be encoded into a record (or an append carried no entry): a caller's
    /// bug; nothing was queued.
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
    LaterRecord {
        /// The LSN of the later record.
        lsn: Lsn,
        /// The durable mark it carries: every LSN through it had been synced.
        durable_lsn: Lsn,
    },
    /// The segment's witness says every record through `durable_lsn`, ending at `end_offset`,
    /// was durable.
    Witness {
        /// The last LSN the witness says was durable.
        durable_lsn: Lsn,
        /// Where that record ends in the segment, in bytes from the file's start.
        end_offset: u64,
    },
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
