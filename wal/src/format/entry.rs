//! The entries a log holds. Each is one record; payloads are rkyv archives, read back with
//! validated, zero-copy access (`ArchivedWalEntry` borrowed from the reader's buffer).

use crate::ids::{Lsn, RunId, TxnId};

/// One log entry. Every entry names its run; the transactional ones also name their
/// transaction, so entries of interleaved transactions of one run are never confused.
#[derive(Clone, PartialEq, Eq, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum WalEntry {
    /// A transaction spilled entries to the log before committing.
    BeginTxn {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The transaction the entry belongs to, unique within its run.
        txn_id: TxnId,
    },
    /// `key` is set to `value` when the transaction commits.
    Write {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The transaction the entry belongs to, unique within its run.
        txn_id: TxnId,
        /// The key written.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// `key` is removed when the transaction commits.
    Delete {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The transaction the entry belongs to, unique within its run.
        txn_id: TxnId,
        /// The key removed.
        key: Vec<u8>,
    },
    /// The transaction's entries take effect, in the order of this entry's LSN.
    CommitTxn {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The transaction the entry belongs to, unique within its run.
        txn_id: TxnId,
    },
    /// The transaction's entries are void.
    AbortTxn {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The transaction the entry belongs to, unique within its run.
        txn_id: TxnId,
    },
    /// A snapshot covering every LSN up to `snapshot_lsn` is durable; usually by
    /// [`RunId::SYSTEM`].
    Checkpoint {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The snapshot holds the effect of every LSN up to and including this one.
        snapshot_lsn: Lsn,
    },
    /// An opaque record of a component built on the log (the Raft log store, say): the log
    /// frames, checksums and orders it, recovery counts it and passes it to
    /// `Replay::payload`, and transactions never see it. `tag` tells the owner's record
    /// kinds apart without decoding `payload`.
    Payload {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The owner's kind of record.
        tag: u32,
        /// The record, in the owner's encoding.
        payload: Vec<u8>,
    },
    /// Like `CommitTxn`, and it names the LSN of the transaction's first entry (its
    /// `BeginTxn`, or its first `Write`/`Delete`): recovery applies the transaction only when
    /// it read every entry from `first_lsn` on, so a transaction whose head was lost (a
    /// removed segment, a skipped gap) is a finding, never a partial apply. Format version 2.
    CommitSpan {
        /// The run the entry belongs to.
        run_id: RunId,
        /// The transaction the entry belongs to, unique within its run.
        txn_id: TxnId,
        /// The LSN of the transaction's first entry.
        first_lsn: Lsn,
    },
}

// Adding a variant must not grow the archived enum: version-1 records (the same root size)
// must read back unchanged.
const _: () = assert!(size_of::<ArchivedWalEntry>() == 48);

/// The kind of an entry, without its fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EntryKind {
    /// [`WalEntry::BeginTxn`].
    BeginTxn,
    /// [`WalEntry::Write`].
    Write,
    /// [`WalEntry::Delete`].
    Delete,
    /// [`WalEntry::CommitTxn`].
    CommitTxn,
    /// [`WalEntry::AbortTxn`].
    AbortTxn,
    /// [`WalEntry::Checkpoint`].
    Checkpoint,
    /// [`WalEntry::Payload`].
    Payload,
    /// [`WalEntry::CommitSpan`].
    CommitSpan,
}

impl EntryKind {
    /// The name used in logs and in `keel dump`.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::BeginTxn => "BeginTxn",
            EntryKind::Write => "Write",
            EntryKind::Delete => "Delete",
            EntryKind::CommitTxn => "CommitTxn",
            EntryKind::AbortTxn => "AbortTxn",
            EntryKind::Checkpoint => "Checkpoint",
            EntryKind::Payload => "Payload",
            EntryKind::CommitSpan => "CommitSpan",
        }
    }
}

impl WalEntry {
    /// The run this entry belongs to.
    pub fn run_id(&self) -> RunId {
        match self {
            WalEntry::BeginTxn { run_id, .. }
            | WalEntry::Write { run_id, .. }
            | WalEntry::Delete { run_id, .. }
            | WalEntry::CommitTxn { run_id, .. }
            | WalEntry::AbortTxn { run_id, .. }
            | WalEntry::Checkpoint { run_id, .. }
            | WalEntry::Payload { run_id, .. }
            | WalEntry::CommitSpan { run_id, .. } => *run_id,
        }
    }
}

impl ArchivedWalEntry {
    /// The kind of this entry.
    pub fn kind(&self) -> EntryKind {
        match self {
            ArchivedWalEntry::BeginTxn { .. } => EntryKind::BeginTxn,
            ArchivedWalEntry::Write { .. } => EntryKind::Write,
            ArchivedWalEntry::Delete { .. } => EntryKind::Delete,
            ArchivedWalEntry::CommitTxn { .. } => EntryKind::CommitTxn,
            ArchivedWalEntry::AbortTxn { .. } => EntryKind::AbortTxn,
            ArchivedWalEntry::Checkpoint { .. } => EntryKind::Checkpoint,
            ArchivedWalEntry::Payload { .. } => EntryKind::Payload,
            ArchivedWalEntry::CommitSpan { .. } => EntryKind::CommitSpan,
        }
    }

    /// The run this entry belongs to.
    pub fn run_id(&self) -> u128 {
        match self {
            ArchivedWalEntry::BeginTxn { run_id, .. }
            | ArchivedWalEntry::Write { run_id, .. }
            | ArchivedWalEntry::Delete { run_id, .. }
            | ArchivedWalEntry::CommitTxn { run_id, .. }
            | ArchivedWalEntry::AbortTxn { run_id, .. }
            | ArchivedWalEntry::Checkpoint { run_id, .. }
            | ArchivedWalEntry::Payload { run_id, .. }
            | ArchivedWalEntry::CommitSpan { run_id, .. } => run_id.as_u128(),
        }
    }

    /// The transaction of a transactional entry; `None` for `Checkpoint` and `Payload`.
    pub fn txn_id(&self) -> Option<TxnId> {
        match self {
            ArchivedWalEntry::BeginTxn { txn_id, .. }
            | ArchivedWalEntry::Write { txn_id, .. }
            | ArchivedWalEntry::Delete { txn_id, .. }
            | ArchivedWalEntry::CommitTxn { txn_id, .. }
            | ArchivedWalEntry::AbortTxn { txn_id, .. }
            | ArchivedWalEntry::CommitSpan { txn_id, .. } => Some(txn_id.to_native()),
            ArchivedWalEntry::Checkpoint { .. } | ArchivedWalEntry::Payload { .. } => None,
        }
    }

    /// An owned copy (a deserialization: not for the replay path).
    pub fn to_owned_entry(&self) -> WalEntry {
        rkyv::deserialize::<WalEntry, rkyv::rancor::Error>(self)
            .expect("deserializing a validated archive cannot fail")
    }
}
