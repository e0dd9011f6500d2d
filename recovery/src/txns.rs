//! Grouping entries into transactions, and handing committed ones to the [`Replay`] sink.
//!
//! Entries are grouped by `(run_id, txn_id)`. Only transactions that are open hold memory:
//! each keeps a copy of its records' archive bytes (in one 16-byte aligned buffer, so the
//! archives can be accessed in place again) until its `CommitTxn` hands them to the sink, in
//! commit-LSN order, or its `AbortTxn` drops them. What is still open at the end of the log is
//! incomplete and dropped.

use std::collections::HashMap;

use keel_wal::{ArchivedWalEntry, EntryKind, Lsn, RunId, TxnId};
use rkyv::util::AlignedVec;

use crate::{Error, Result};

/// The error a [`Replay`] sink returns; recovery stops with it.
pub type ReplayError = Box<dyn std::error::Error + Send + Sync>;

/// The only thing recovery knows of its caller.
pub trait Replay {
    /// One committed transaction: called in commit-LSN order, the order the live engine
    /// applied them.
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> std::result::Result<(), ReplayError>;

    /// A `Checkpoint` entry at `lsn`, in log order between transactions.
    fn checkpoint(
        &mut self,
        lsn: Lsn,
        entry: &ArchivedWalEntry,
    ) -> std::result::Result<(), ReplayError> {
        let _ = (lsn, entry);
        Ok(())
    }

    /// A `Payload` entry at `lsn` (a record of a component built on the log), in log order.
    fn payload(
        &mut self,
        lsn: Lsn,
        entry: &ArchivedWalEntry,
    ) -> std::result::Result<(), ReplayError> {
        let _ = (lsn, entry);
        Ok(())
    }
}

/// A committed transaction's data entries (`Write` and `Delete`), zero-copy, in LSN order.
#[derive(Debug)]
pub struct CommittedTxn<'a> {
    pub run_id: RunId,
    pub txn_id: TxnId,
    /// LSN of its first entry (`BeginTxn` or its first data entry).
    pub first_lsn: Lsn,
    /// LSN of its `CommitTxn`: the commit version.
    pub commit_lsn: Lsn,
    entries: Vec<(Lsn, &'a ArchivedWalEntry)>,
}

impl<'a> CommittedTxn<'a> {
    /// `(lsn, entry)` for every `Write` and `Delete`, in LSN order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (Lsn, &'a ArchivedWalEntry)> + '_ {
        self.entries.iter().copied()
    }
}

#[derive(Debug)]
struct OpenTxn {
    first_lsn: Lsn,
    bytes: AlignedVec<16>,
    /// `(lsn, start, len)` of each data entry's archive in `bytes`.
    spans: Vec<(Lsn, usize, usize)>,
}

/// Counts of what happened to transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxnCounts {
    pub applied: u64,
    pub aborted: u64,
    pub checkpoints: u64,
    /// `Payload` entries seen.
    pub payloads: u64,
}

/// Transactions kept in the pool for reuse, and the largest buffer kept.
const POOL: usize = 64;
const POOL_MAX_BYTES: usize = 1 << 20;

type Key = (u128, TxnId);

#[derive(Debug, Default)]
pub(crate) struct TxnTable {
    /// The transaction the last record belonged to: most logs write one transaction's
    /// entries together, so this skips the map (and its hashing) for nearly every record.
    current: Option<(Key, OpenTxn)>,
    open: HashMap<Key, OpenTxn>,
    /// Emptied transactions whose buffers are reused.
    pool: Vec<OpenTxn>,
    pub counts: TxnCounts,
    /// Bytes held by open transactions, and the most ever held.
    held: usize,
    pub peak_held: usize,
    /// Set once a gap was skipped: a later `CommitTxn` for a transaction not open may have
    /// lost its entries in the gap, so it is dropped as incomplete, never applied empty.
    gap: bool,
    /// Commits dropped that way.
    pub orphaned_commits: u64,
    /// The highest transaction id seen in any record (committed, aborted or incomplete).
    pub max_txn_id: Option<TxnId>,
}

impl TxnTable {
    /// Takes one verified record.
    pub fn record(
        &mut self,
        lsn: Lsn,
        entry: &ArchivedWalEntry,
        payload: &[u8],
        replay: &mut impl Replay,
    ) -> Result<()> {
        let Some(txn_id) = entry.txn_id() else {
            let outcome = if entry.kind() == EntryKind::Payload {
                self.counts.payloads += 1;
                replay.payload(lsn, entry)
            } else {
                self.counts.checkpoints += 1;
                replay.checkpoint(lsn, entry)
            };
            return outcome.map_err(|source| Error::Replay { lsn, source });
        };
        let key = (entry.run_id(), txn_id);
        self.max_txn_id = self.max_txn_id.max(Some(txn_id));
        match entry.kind() {
            EntryKind::BeginTxn => {
                self.slot(key, lsn);
            }
            EntryKind::Write | EntryKind::Delete => {
                let txn = self.slot(key, lsn);
                let before = txn.bytes.len();
                let start = before.next_multiple_of(16);
                txn.bytes.resize(start, 0);
                txn.bytes.extend_from_slice(payload);
                txn.spans.push((lsn, start, payload.len()));
                let grown = txn.bytes.len() - before;
                self.held += grown;
                self.peak_held = self.peak_held.max(self.held);
            }
            EntryKind::CommitTxn | EntryKind::CommitSpan => {
                let txn = self.take(key);
                if txn.is_none() && self.gap {
                    self.orphaned_commits += 1;
                    return Ok(());
                }
                self.release(txn.as_ref());
                let txn = self.commit(key, lsn, txn, replay)?;
                self.recycle(txn);
            }
            EntryKind::AbortTxn => {
                let txn = self.take(key);
                self.release(txn.as_ref());
                self.counts.aborted += 1;
                self.recycle(txn);
            }
            EntryKind::Checkpoint | EntryKind::Payload => {
                unreachable!("checkpoints and payloads carry no transaction")
            }
        }
        Ok(())
    }

    /// The open transaction `key`, begun at `lsn` if it is new.
    fn slot(&mut self, key: Key, lsn: Lsn) -> &mut OpenTxn {
        if self.current.as_ref().is_none_or(|(k, _)| *k != key) {
            if let Some((k, txn)) = self.current.take() {
                self.open.insert(k, txn);
            }
            let txn = match self.open.remove(&key) {
                Some(txn) => txn,
                None => {
                    let mut txn = self.pool.pop().unwrap_or_else(|| OpenTxn {
                        first_lsn: lsn,
                        bytes: AlignedVec::new(),
                        spans: Vec::new(),
                    });
                    txn.first_lsn = lsn;
                    txn
                }
            };
            self.current = Some((key, txn));
        }
        match &mut self.current {
            Some((_, txn)) => txn,
            None => unreachable!("set above"),
        }
    }

    /// Removes the open transaction `key`, if there is one.
    fn take(&mut self, key: Key) -> Option<OpenTxn> {
        if self.current.as_ref().is_some_and(|(k, _)| *k == key) {
            return self.current.take().map(|(_, txn)| txn);
        }
        self.open.remove(&key)
    }

    /// Keeps an emptied transaction's buffers for the next one, within bounds.
    fn recycle(&mut self, txn: Option<OpenTxn>) {
        if let Some(mut txn) = txn
            && self.pool.len() < POOL
            && txn.bytes.capacity() <= POOL_MAX_BYTES
        {
            txn.bytes.clear();
            txn.spans.clear();
            self.pool.push(txn);
        }
    }

    fn release(&mut self, txn: Option<&OpenTxn>) {
        self.held -= txn.map_or(0, |t| t.bytes.len());
    }

    fn commit(
        &mut self,
        (run, txn_id): (u128, TxnId),
        commit_lsn: Lsn,
        txn: Option<OpenTxn>,
        replay: &mut impl Replay,
    ) -> Result<Option<OpenTxn>> {
        let (first_lsn, entries) = match &txn {
            None => (commit_lsn, Vec::new()),
            Some(open) => {
                let entries = open
                    .spans
                    .iter()
                    .map(|&(lsn, start, len)| {
                        let archive = &open.bytes[start..start + len];
                        // Verified when read; validating again is what keeps this free of
                        // `unsafe` (the crate has none).
                        let entry = rkyv::access::<ArchivedWalEntry, rkyv::rancor::Error>(archive)
                            .map_err(|e| Error::Internal(format!("re-reading LSN {lsn}: {e}")))?;
                        Ok((lsn, entry))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (open.first_lsn, entries)
            }
        };
        let committed = CommittedTxn {
            run_id: RunId::from_u128(run),
            txn_id,
            first_lsn,
            commit_lsn,
            entries,
        };
        replay.apply(&committed).map_err(|source| Error::Replay {
            lsn: commit_lsn,
            source,
        })?;
        self.counts.applied += 1;
        drop(committed);
        Ok(txn)
    }

    /// Transactions still open (incomplete), and commits orphaned by a gap.
    pub fn open_count(&self) -> u64 {
        self.open.len() as u64 + u64::from(self.current.is_some()) + self.orphaned_commits
    }

    /// Drops every open transaction (a skipped gap may have swallowed any of their entries).
    pub fn drop_open(&mut self) -> u64 {
        let dropped = self.open.len() as u64 + u64::from(self.current.is_some());
        self.open.clear();
        self.current = None;
        self.held = 0;
        self.gap = true;
        dropped
    }
}
