//! Grouping entries into transactions, and handing committed ones to the [`Replay`] sink.
//!
//! Entries are grouped by `(run_id, txn_id)`. Only transactions that are open hold memory:
//! each keeps a copy of its records' archive bytes (in one 16-byte aligned buffer, so the
//! archives can be accessed in place again) until its commit hands them to the sink, in
//! commit-LSN order, or its `AbortTxn` drops them. What is still open at the end of the log is
//! incomplete and dropped.
//!
//! **Salvage never splits a transaction.** After a gap (LSNs the walk could not read: skipped
//! damage, a skipped or missing segment, leading segments included), only a transaction whose
//! start is known to lie after the gap is applied; any other commit is a
//! [`Finding::PartialTransaction`] (or, committed at or below the caller's snapshot, simply
//! not needed). What a commit can prove:
//!
//! | commit                  | entries seen                                   | applied when                            |
//! |-------------------------|------------------------------------------------|-----------------------------------------|
//! | `CommitSpan{first_lsn}` | some, none open across a gap                   | the first seen is at `first_lsn`        |
//! | `CommitSpan{first_lsn}` | none                                           | `first_lsn` is the commit's own LSN     |
//! | `CommitTxn`             | some, none open across a gap                   | the first seen is a `BeginTxn`, or not the first record read after a gap |
//! | `CommitTxn`             | none                                           | no gap was met before it                |
//! | either                  | open across a gap (its data dropped then)      | never                                   |
//!
//! `CommitSpan` is exact: the transaction is applied iff every entry from the one it names on
//! was read (a head segment removed, or a gap, shows as a different first seen LSN).
//! `CommitTxn` names nothing, so the rule can only be conservative. It catches every
//! transaction written as one unit (its entries are consecutive: if the gap took its head, its
//! first surviving entry is the first record after the gap). It cannot catch a transaction
//! whose entries are interleaved with others' (a spilled one: `BeginTxn` and chunks logged
//! over time) when its `BeginTxn` fell in the gap and its next surviving entry follows another
//! transaction's record: that log reads exactly like a transaction begun after the gap. Nor
//! can it tell a legacy transaction whose head was in a segment removed before the log's first
//! record. Closing both is what `CommitSpan` is for.
//!
//! With a snapshot covering LSN `S` ([`crate::RecoveryOptions::covered_through`]), nothing at
//! or below `S` reaches the sink: a transaction committed at or below `S` is counted as
//! covered (whole or not: the snapshot holds it), checkpoints and payloads at or below `S` are
//! counted and not handed over.

use std::collections::HashMap;

use keel_wal::{ArchivedWalEntry, EntryKind, Lsn, RecordPosition, RunId, TxnId};
use rkyv::util::AlignedVec;

use crate::policy::Finding;
use crate::{Error, Result};

/// The error a [`Replay`] sink returns; recovery stops with it.
pub type ReplayError = Box<dyn std::error::Error + Send + Sync>;

/// The only thing recovery knows of its caller.
pub trait Replay {
    /// Called once, with the first LSN the log will hold once the repair is applied (`None`:
    /// no segment, or no directory yet, which is created only after this accepts), after the
    /// records were handed over and before anything on disk changes. A sink that knows what
    /// the log must reach back to (a snapshot's successor) refuses here, and the recovery
    /// ends with [`crate::Error::Declined`].
    fn begin(&mut self, first_lsn: Option<Lsn>) -> std::result::Result<(), ReplayError> {
        let _ = first_lsn;
        Ok(())
    }

    /// Every valid record recovery reads, in LSN order, with its size on disk, before it is
    /// dealt with (covered by the snapshot or not, whatever its transaction becomes): for a
    /// sink that counts the log it recovered (the engine's automatic checkpoints).
    fn read(&mut self, lsn: Lsn, record_bytes: u64) {
        let _ = (lsn, record_bytes);
    }

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

    /// A `Payload` entry (a record of a component built on the log), in log order, with
    /// where it sits: enough for the component to read it back alone later
    /// (`Wal::read_record`) instead of keeping it.
    fn payload(
        &mut self,
        position: RecordPosition,
        entry: &ArchivedWalEntry,
    ) -> std::result::Result<(), ReplayError> {
        let _ = (position, entry);
        Ok(())
    }
}

/// A committed transaction's data entries (`Write` and `Delete`), zero-copy, in LSN order.
#[derive(Debug)]
pub struct CommittedTxn<'a> {
    /// The run the transaction wrote to.
    pub run_id: RunId,
    /// The transaction, unique within its run.
    pub txn_id: TxnId,
    /// LSN of its first entry (`BeginTxn` or its first data entry).
    pub first_lsn: Lsn,
    /// LSN of its commit (`CommitSpan` or `CommitTxn`): the commit version.
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
    /// LSN of the first entry read.
    first_lsn: Lsn,
    head: Head,
    bytes: AlignedVec<16>,
    /// `(lsn, start, len)` of each data entry's archive in `bytes`.
    spans: Vec<(Lsn, usize, usize)>,
}

/// What is known of an open transaction's entries before and since its first seen one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// Every entry since the first seen one was read, and that one was not the first record
    /// read after a gap.
    Whole,
    /// Its first seen entry is the first record read after a gap: entries before it may have
    /// been in the gap (a `CommitSpan` tells; a `CommitTxn` cannot).
    AfterGap,
    /// It was open when a gap was met: entries may be missing. Its data is dropped and later
    /// entries are ignored; its commit is never applied.
    Broken,
}

/// Counts of what happened to transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxnCounts {
    pub applied: u64,
    pub aborted: u64,
    /// Committed above the covered LSN but not read whole: dropped, a finding each.
    pub partial: u64,
    /// Committed at or below the covered LSN: not handed over (the caller's snapshot has it).
    pub covered: u64,
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
    /// Nothing at or below this LSN is handed to the sink (0: no snapshot).
    covered_through: Lsn,
    /// Set once a gap was met: a later `CommitTxn` with no entry read may have lost them all
    /// in the gap, so it is never applied empty.
    gap_seen: bool,
    /// The LSN reading resumed at after the latest gap (`None` when nothing followed it).
    resumed_at: Option<Lsn>,
    /// The highest transaction id seen in any record (committed, aborted or incomplete).
    pub max_txn_id: Option<TxnId>,
}

impl TxnTable {
    /// A table that hands nothing at or below `covered_through` to the sink.
    pub fn new(covered_through: Option<Lsn>) -> Self {
        TxnTable {
            covered_through: covered_through.unwrap_or(0),
            ..TxnTable::default()
        }
    }

    /// Takes one verified record. Returns the finding a commit makes when its transaction was
    /// not read whole (it is dropped and counted, never applied).
    pub fn record(
        &mut self,
        position: RecordPosition,
        entry: &ArchivedWalEntry,
        payload: &[u8],
        replay: &mut impl Replay,
    ) -> Result<Option<Finding>> {
        let lsn = position.lsn;
        let Some(txn_id) = entry.txn_id() else {
            self.untransacted(position, entry, replay)?;
            return Ok(None);
        };
        let key = (entry.run_id(), txn_id);
        self.max_txn_id = self.max_txn_id.max(Some(txn_id));
        match entry.kind() {
            EntryKind::BeginTxn => {
                self.slot(key, lsn, true);
            }
            EntryKind::Write | EntryKind::Delete => self.data(key, lsn, payload),
            EntryKind::CommitTxn | EntryKind::CommitSpan => {
                let named = match entry {
                    ArchivedWalEntry::CommitSpan { first_lsn, .. } => Some(first_lsn.to_native()),
                    _ => None,
                };
                return self.commit_entry(key, lsn, named, replay);
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
        Ok(None)
    }

    /// A `Checkpoint` or `Payload`: counted, handed over unless the snapshot covers it.
    fn untransacted(
        &mut self,
        position: RecordPosition,
        entry: &ArchivedWalEntry,
        replay: &mut impl Replay,
    ) -> Result<()> {
        let lsn = position.lsn;
        let payload = entry.kind() == EntryKind::Payload;
        if payload {
            self.counts.payloads += 1;
        } else {
            self.counts.checkpoints += 1;
        }
        if lsn <= self.covered_through {
            return Ok(());
        }
        let outcome = if payload {
            replay.payload(position, entry)
        } else {
            replay.checkpoint(lsn, entry)
        };
        outcome.map_err(|source| Error::Replay {
            lsn,
            kind: entry.kind(),
            source,
        })
    }

    /// A `Write` or `Delete`: its archive is kept until the commit, unless the transaction
    /// was broken by a gap.
    fn data(&mut self, key: Key, lsn: Lsn, payload: &[u8]) {
        let txn = self.slot(key, lsn, false);
        if txn.head == Head::Broken {
            return;
        }
        let before = txn.bytes.len();
        let start = before.next_multiple_of(16);
        txn.bytes.resize(start, 0);
        txn.bytes.extend_from_slice(payload);
        txn.spans.push((lsn, start, payload.len()));
        let grown = txn.bytes.len() - before;
        self.held += grown;
        self.peak_held = self.peak_held.max(self.held);
    }

    /// A commit at `lsn` (`named`: the first LSN a `CommitSpan` names): applied, counted as
    /// covered, or dropped with a finding.
    fn commit_entry(
        &mut self,
        key: Key,
        lsn: Lsn,
        named: Option<Lsn>,
        replay: &mut impl Replay,
    ) -> Result<Option<Finding>> {
        let txn = self.take(key);
        self.release(txn.as_ref());
        let whole = read_whole(txn.as_ref(), lsn, named, self.gap_seen);
        if lsn <= self.covered_through {
            self.counts.covered += 1;
            self.recycle(txn);
            return Ok(None);
        }
        if !whole {
            self.counts.partial += 1;
            self.recycle(txn);
            return Ok(Some(Finding::PartialTransaction {
                txn_id: key.1,
                first_lsn: named,
                commit_lsn: lsn,
            }));
        }
        let kind = match named {
            Some(_) => EntryKind::CommitSpan,
            None => EntryKind::CommitTxn,
        };
        let txn = self.commit(key, (lsn, kind), txn, replay)?;
        self.recycle(txn);
        Ok(None)
    }

    /// The open transaction `key`, begun at `lsn` if it is new (`begins`: by a `BeginTxn`,
    /// which proves its head).
    fn slot(&mut self, key: Key, lsn: Lsn, begins: bool) -> &mut OpenTxn {
        if self.current.as_ref().is_none_or(|(k, _)| *k != key) {
            if let Some((k, txn)) = self.current.take() {
                self.open.insert(k, txn);
            }
            let txn = match self.open.remove(&key) {
                Some(txn) => txn,
                None => {
                    let mut txn = self.pool.pop().unwrap_or_else(|| OpenTxn {
                        first_lsn: lsn,
                        head: Head::Whole,
                        bytes: AlignedVec::new(),
                        spans: Vec::new(),
                    });
                    txn.first_lsn = lsn;
                    txn.head = if !begins && self.resumed_at == Some(lsn) {
                        Head::AfterGap
                    } else {
                        Head::Whole
                    };
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
        (commit_lsn, kind): (Lsn, EntryKind),
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
            kind,
            source,
        })?;
        self.counts.applied += 1;
        drop(committed);
        Ok(txn)
    }

    /// Transactions still open: incomplete.
    pub fn open_count(&self) -> u64 {
        self.open.len() as u64 + u64::from(self.current.is_some())
    }

    /// A gap was met; reading resumes at `resumed_at` (`None`: nothing follows). Every open
    /// transaction may have lost entries in it: its data is dropped, it stays known (so its
    /// commit is judged and it is counted once), and it is never applied.
    pub fn gap(&mut self, resumed_at: Option<Lsn>) {
        if let Some((k, txn)) = self.current.take() {
            self.open.insert(k, txn);
        }
        for txn in self.open.values_mut() {
            txn.head = Head::Broken;
            txn.bytes.clear();
            txn.spans.clear();
        }
        self.held = 0;
        self.gap_seen = true;
        self.resumed_at = resumed_at;
    }
}

/// Groups records read in LSN order into committed transactions by the rules recovery uses
/// (the module documentation): for a reader that follows a live log from some LSN on (a
/// change feed) rather than opening it.
#[derive(Debug)]
pub struct TxnAssembler {
    table: TxnTable,
}

impl TxnAssembler {
    /// An assembler of records read from `start` on: what began before it was not read
    /// (a gap, for the rules), and nothing committed at or below `covered_through` is handed
    /// to the sink.
    pub fn new(start: Lsn, covered_through: Lsn) -> Self {
        let mut table = TxnTable::new(Some(covered_through));
        if start > 1 {
            table.gap(Some(start));
        }
        TxnAssembler { table }
    }

    /// Takes the next record (in LSN order). A commit whose transaction was not read whole
    /// returns its [`Finding::PartialTransaction`] and is not handed over: read again from
    /// the first LSN it names.
    pub fn record(
        &mut self,
        position: RecordPosition,
        entry: &ArchivedWalEntry,
        payload: &[u8],
        replay: &mut impl Replay,
    ) -> Result<Option<Finding>> {
        self.table.record(position, entry, payload, replay)
    }

    /// Bytes the open transactions hold (their data, until commit or abort).
    pub fn held_bytes(&self) -> usize {
        self.table.held
    }
}

/// Whether a commit at `commit_lsn` may be applied: the table of the module documentation.
fn read_whole(txn: Option<&OpenTxn>, commit_lsn: Lsn, named: Option<Lsn>, gap_seen: bool) -> bool {
    match (txn, named) {
        (Some(txn), _) if txn.head == Head::Broken => false,
        (Some(txn), Some(first)) => txn.first_lsn == first,
        (Some(txn), None) => txn.head == Head::Whole,
        (None, Some(first)) => first == commit_lsn,
        (None, None) => !gap_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(first_lsn: Lsn, head: Head) -> OpenTxn {
        OpenTxn {
            first_lsn,
            head,
            bytes: AlignedVec::new(),
            spans: Vec::new(),
        }
    }

    #[test]
    fn commit_span_applies_only_from_the_named_first_lsn() {
        for head in [Head::Whole, Head::AfterGap] {
            assert!(read_whole(Some(&open(5, head)), 9, Some(5), true));
            assert!(!read_whole(Some(&open(6, head)), 9, Some(5), false));
        }
        assert!(!read_whole(Some(&open(5, Head::Broken)), 9, Some(5), true));
    }

    #[test]
    fn commit_span_without_entries_is_whole_only_when_it_names_itself() {
        assert!(read_whole(None, 9, Some(9), true));
        assert!(!read_whole(None, 9, Some(5), false));
    }

    #[test]
    fn commit_txn_is_conservative_after_a_gap() {
        assert!(read_whole(Some(&open(5, Head::Whole)), 9, None, true));
        assert!(!read_whole(Some(&open(5, Head::AfterGap)), 9, None, true));
        assert!(!read_whole(Some(&open(5, Head::Broken)), 9, None, true));
        assert!(read_whole(None, 9, None, false));
        assert!(!read_whole(None, 9, None, true));
    }
}
