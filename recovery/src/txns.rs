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
}

#[derive(Debug, Default)]
pub(crate) struct TxnTable {
    open: HashMap<(u128, TxnId), OpenTxn>,
    pub counts: TxnCounts,
    /// Bytes held by open transactions, and the most ever held.
    held: usize,
    pub peak_held: usize,
    /// Set once a gap was skipped: a later `CommitTxn` for a transaction not open may have
    /// lost its entries in the gap, so it is dropped as incomplete, never applied empty.
    gap: bool,
    /// Commits dropped that way.
    pub orphaned_commits: u64,
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
            self.counts.checkpoints += 1;
            return replay
                .checkpoint(lsn, entry)
                .map_err(|source| Error::Replay { lsn, source });
        };
        let key = (entry.run_id(), txn_id);
        match entry.kind() {
            EntryKind::BeginTxn => {
                self.open.entry(key).or_insert_with(|| OpenTxn {
                    first_lsn: lsn,
                    bytes: AlignedVec::new(),
                    spans: Vec::new(),
                });
            }
            EntryKind::Write | EntryKind::Delete => {
                let txn = self.open.entry(key).or_insert_with(|| OpenTxn {
                    first_lsn: lsn,
                    bytes: AlignedVec::new(),
                    spans: Vec::new(),
                });
                let before = txn.bytes.len();
                let start = before.next_multiple_of(16);
                txn.bytes.resize(start, 0);
                txn.bytes.extend_from_slice(payload);
                txn.spans.push((lsn, start, payload.len()));
                self.held += txn.bytes.len() - before;
                self.peak_held = self.peak_held.max(self.held);
            }
            EntryKind::CommitTxn => {
                let txn = self.open.remove(&key);
                if txn.is_none() && self.gap {
                    self.orphaned_commits += 1;
                    return Ok(());
                }
                self.release(txn.as_ref());
                self.commit(key, lsn, txn, replay)?;
            }
            EntryKind::AbortTxn => {
                let txn = self.open.remove(&key);
                self.release(txn.as_ref());
                self.counts.aborted += 1;
            }
            EntryKind::Checkpoint => unreachable!("checkpoints carry no transaction"),
        }
        Ok(())
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
    ) -> Result<()> {
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
        Ok(())
    }

    /// Transactions still open (incomplete), and commits orphaned by a gap.
    pub fn open_count(&self) -> u64 {
        self.open.len() as u64 + self.orphaned_commits
    }

    /// Drops every open transaction (a skipped gap may have swallowed any of their entries).
    pub fn drop_open(&mut self) -> u64 {
        let dropped = self.open.len() as u64;
        self.open.clear();
        self.held = 0;
        self.gap = true;
        dropped
    }
}
