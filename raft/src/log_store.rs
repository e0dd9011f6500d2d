//! [`KeelLogStore`]: openraft's log storage on one keel-wal log.
//!
//! - **Appends** are `Entry` records, one per Raft entry, appended as one unit per call (the
//!   log's group commit shares one write and one fdatasync among the appends in flight). The
//!   entries stay in memory until their commit is durable, so they are readable at once; then
//!   the writer reports the flush to openraft and the memory copy is dropped.
//! - **The index** maps each entry index to its log id and record position (reported by
//!   [`Wal::append_placed`]); a read is one positioned read per entry
//!   ([`Wal::read_record`]), never a scan.
//! - **Vote, committed, truncation and purge** are marker records, appended with
//!   [`Durability::Strict`] and awaited before the call returns. The log recovers as a prefix
//!   of its records, so a marker that survives a crash covers everything it voids, and a
//!   truncated entry is never read back after the marker was acknowledged.
//! - **Purging** deletes whole segments below the first live entry, after a `State` record
//!   (vote, committed and purge marks together) makes the marks in them redundant. With a
//!   purge guard ([`KeelLogStore::with_purge_guard`]) a purge first waits until the state
//!   machine has applied what it purges.
//! - **Opening** is the log's one open path (`keel_recovery::open_log`): the recovery validates
//!   every segment and repairs a torn tail, handing each record to the index as it reads it
//!   (only the log ids are kept), then the log resumes.
//!
//! openraft's trait implementations are in [`raft_traits`].

mod raft_traits;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_wal::{ArchivedWalEntry, Durability, Lsn, RecordPosition, Wal, WalEntry, WalOptions};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, RaftLogId, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};

use crate::record::{self, Decoded, Marks};
use crate::state_machine::AppliedIndex;

/// One entry of the index.
#[derive(Debug)]
struct Slot<C: RaftTypeConfig> {
    log_id: LogId<C::NodeId>,
    /// Where the record is; `None` until the writer placed it.
    position: Option<RecordPosition>,
    /// The entry, until its record is durable (then it is read from the log).
    cached: Option<C::Entry>,
    /// The append call that made it, so that a late report of an earlier append never
    /// touches an entry that replaced it.
    append: u64,
}

/// The log's state in memory.
#[derive(Debug)]
struct Index<C: RaftTypeConfig> {
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    purged: Option<LogId<C::NodeId>>,
    entries: BTreeMap<u64, Slot<C>>,
    appends: u64,
}

impl<C: RaftTypeConfig> Default for Index<C> {
    fn default() -> Self {
        Index {
            vote: None,
            committed: None,
            purged: None,
            entries: BTreeMap::new(),
            appends: 0,
        }
    }
}

impl<C: RaftTypeConfig> Index<C> {
    fn last_log_id(&self) -> Option<LogId<C::NodeId>> {
        self.entries
            .last_key_value()
            .map(|(_, slot)| slot.log_id.clone())
            .or_else(|| self.purged.clone())
    }

    fn truncate(&mut self, since: u64) {
        self.entries.split_off(&since);
    }

    fn purge(&mut self, upto: LogId<C::NodeId>) {
        self.entries = self.entries.split_off(&(upto.index + 1));
        if self.purged.as_ref().is_none_or(|p| *p < upto) {
            self.purged = Some(upto);
        }
    }

    /// Replays one record found at open.
    fn replay(&mut self, decoded: Decoded<C>, position: RecordPosition) -> Result<(), String> {
        match decoded {
            Decoded::Entry(log_id) => {
                let index = log_id.index;
                if self.purged.as_ref().is_some_and(|p| index <= p.index) {
                    return Ok(());
                }
                // Only between entries: after a purge deleted segments, replay may start in
                // the middle, where a `Purge` older than a later `State` is followed by an
                // entry past it (`raft_crash` seed 2 found this), so a purge mark is no
                // reference for continuity.
                if let Some((&last, _)) = self.entries.last_key_value()
                    && index > last + 1
                {
                    return Err(format!(
                        "entry {index} follows entry {last}: the log has a hole (LSN {})",
                        position.lsn
                    ));
                }
                self.truncate(index);
                let slot = Slot {
                    log_id,
                    position: Some(position),
                    cached: None,
                    append: 0,
                };
                self.entries.insert(index, slot);
            }
            Decoded::Vote(vote) => self.vote = Some(vote),
            Decoded::Committed(committed) => self.committed = committed,
            Decoded::Truncate(since) => self.truncate(since),
            Decoded::Purge(upto) => self.purge(upto),
            Decoded::State(marks) => {
                self.vote = marks.vote;
                self.committed = marks.committed;
                if let Some(upto) = marks.purged {
                    self.purge(upto);
                }
            }
        }
        Ok(())
    }
}

/// openraft's log storage (and log reader: clones share one log) on a keel-wal log. Entries
/// must be `Clone` (openraft's `Entry` is when its data is), to be served from memory until
/// they are durable.
#[derive(Debug)]
pub struct KeelLogStore<C: RaftTypeConfig> {
    wal: Arc<Wal>,
    counters: Arc<Counters>,
    purge_guard: Option<(AppliedIndex, Duration)>,
    /// Shared with the writer thread's placement reports and the flush tasks, which must
    /// never hold the log itself: the last holder of the log would join the writer thread.
    index: Arc<Mutex<Index<C>>>,
}

impl<C: RaftTypeConfig> Clone for KeelLogStore<C> {
    fn clone(&self) -> Self {
        KeelLogStore {
            wal: Arc::clone(&self.wal),
            counters: Arc::clone(&self.counters),
            purge_guard: self.purge_guard.clone(),
            index: Arc::clone(&self.index),
        }
    }
}

/// What a log store did since it was opened (clones share them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStoreStats {
    /// `append` calls.
    pub appends: u64,
    /// Entries those `append` calls carried.
    pub entries_appended: u64,
    /// Entries read while still in memory (not yet durable).
    pub entries_read_from_memory: u64,
    /// Entries read by position from the log.
    pub entries_read_from_log: u64,
    /// Segments deleted after purges.
    pub segments_deleted: u64,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    entries_appended: AtomicU64,
    entries_read_from_memory: AtomicU64,
    entries_read_from_log: AtomicU64,
    segments_deleted: AtomicU64,
}

/// What opening found, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary<NID: openraft::NodeId> {
    /// The last vote saved, if any.
    pub vote: Option<Vote<NID>>,
    /// The last committed log id saved, if any.
    pub committed: Option<LogId<NID>>,
    /// The id of the last purged entry, if any.
    pub last_purged_log_id: Option<LogId<NID>>,
    /// The id of the last entry in the log (or the last purged one when none is left), if any.
    pub last_log_id: Option<LogId<NID>>,
    /// Entries in the log.
    pub entries: u64,
}

fn io_error<C: RaftTypeConfig>(
    subject: ErrorSubject<C::NodeId>,
    verb: ErrorVerb,
    error: impl std::error::Error + 'static,
) -> StorageError<C::NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&error)).into()
}

fn corrupt<C: RaftTypeConfig>(message: String) -> StorageError<C::NodeId> {
    let error = std::io::Error::new(std::io::ErrorKind::InvalidData, message);
    io_error::<C>(ErrorSubject::Logs, ErrorVerb::Read, error)
}

/// Builds the index from the records recovery reads at open.
struct IndexReplay<C: RaftTypeConfig> {
    index: Index<C>,
}

impl<C: RaftTypeConfig> Replay for IndexReplay<C> {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        Err(format!(
            "a committed transaction (LSN {}) is not a Raft log record",
            txn.commit_lsn
        )
        .into())
    }

    fn checkpoint(&mut self, _: Lsn, _: &ArchivedWalEntry) -> Result<(), ReplayError> {
        Err("a checkpoint is not a Raft log record".into())
    }

    fn payload(
        &mut self,
        position: RecordPosition,
        entry: &ArchivedWalEntry,
    ) -> Result<(), ReplayError> {
        let decoded = record::decode::<C>(entry)?;
        self.index.replay(decoded, position)?;
        Ok(())
    }
}

impl<C: RaftTypeConfig> KeelLogStore<C>
where
    C::Entry: Clone,
{
    /// Opens (or creates) the Raft log in `dir`: recovers the keel-wal log there (taking its
    /// lock, validating every segment and repairing a torn tail) with its records replayed
    /// into the index as they are read, then resumes it for appends: one read of the log.
    /// A committed transaction or a checkpoint (not a Raft log record), a Raft record that does
    /// not decode, and any damage before the tail are errors.
    pub fn open(
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<Self, StorageError<C::NodeId>> {
        let dir = dir.as_ref();
        let mut replay = IndexReplay {
            index: Index::default(),
        };
        let (wal, report) = keel_recovery::open_log(
            dir,
            options,
            RecoveryPolicy::TolerateTornTail,
            None,
            &mut replay,
        )
        .map_err(|e| match e {
            keel_recovery::Error::Replay { lsn, source, .. } => {
                corrupt::<C>(format!("LSN {lsn}: {source}"))
            }
            other => io_error::<C>(ErrorSubject::Logs, ErrorVerb::Read, other),
        })?;
        // Recovery hands the index payloads, checkpoints and committed transactions only; an
        // open or aborted transaction's records would pass unseen. Every record of a Raft log
        // is a payload.
        if report.records != report.payloads {
            return Err(corrupt::<C>(format!(
                "{} of the log's {} records are not Raft log records",
                report.records - report.payloads,
                report.records
            )));
        }
        let index = replay.index;
        tracing::info!(
            dir = %dir.display(),
            entries = index.entries.len(),
            last_log_id = ?index.last_log_id(),
            purged = ?index.purged,
            "opened Raft log"
        );
        Ok(KeelLogStore {
            wal: Arc::new(wal),
            counters: Arc::default(),
            purge_guard: None,
            index: Arc::new(Mutex::new(index)),
        })
    }

    fn index(&self) -> MutexGuard<'_, Index<C>> {
        lock(&self.index)
    }

    /// The log's state as openraft reads it after a reopen.
    pub fn summary(&self) -> LogSummary<C::NodeId> {
        let index = self.index();
        LogSummary {
            vote: index.vote.clone(),
            committed: index.committed.clone(),
            last_purged_log_id: index.purged.clone(),
            last_log_id: index.last_log_id(),
            entries: index.entries.len() as u64,
        }
    }

    /// Makes every purge wait (up to `max_wait`, then fail) until the state machine has
    /// applied the purged entries durably. openraft 0.9 purges a follower's log up to an
    /// installed snapshot without waiting for the state machine to finish installing it; a
    /// crash in between would leave a log purged past what the state machine holds, with
    /// nothing to fill the gap. With the guard the purge waits for the install. Give it the
    /// state machine's [`KeelStateMachine::applied_index`](crate::KeelStateMachine) before
    /// handing the store to openraft.
    pub fn with_purge_guard(mut self, applied: AppliedIndex, max_wait: Duration) -> Self {
        self.purge_guard = Some((applied, max_wait));
        self
    }

    /// Waits until the state machine applied `upto` (when a purge guard is set).
    async fn wait_for_applied(&self, upto: u64) -> Result<(), StorageError<C::NodeId>> {
        let Some((applied, max_wait)) = &self.purge_guard else {
            return Ok(());
        };
        let mut applied = applied.0.clone();
        if applied.borrow().is_some_and(|a| a >= upto) {
            return Ok(());
        }
        tracing::info!(upto, applied = ?*applied.borrow(), "purge waits for the state machine");
        let reached = {
            let wait = applied.wait_for(|a| a.is_some_and(|a| a >= upto));
            matches!(tokio::time::timeout(*max_wait, wait).await, Ok(Ok(_)))
        };
        match reached {
            true => Ok(()),
            false => {
                let message = format!(
                    "not purging through index {upto}: the state machine has applied only {:?} \
                     (after {max_wait:?})",
                    *applied.borrow()
                );
                let error = std::io::Error::new(std::io::ErrorKind::TimedOut, message);
                Err(io_error::<C>(ErrorSubject::Logs, ErrorVerb::Delete, error))
            }
        }
    }

    /// What this store did since it was opened.
    pub fn stats(&self) -> LogStoreStats {
        let c = &self.counters;
        LogStoreStats {
            appends: c.appends.load(Relaxed),
            entries_appended: c.entries_appended.load(Relaxed),
            entries_read_from_memory: c.entries_read_from_memory.load(Relaxed),
            entries_read_from_log: c.entries_read_from_log.load(Relaxed),
            segments_deleted: c.segments_deleted.load(Relaxed),
        }
    }

    /// The underlying log (for its statistics).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Appends marker records and waits until they are durable; returns the last LSN.
    async fn append_durably(
        &self,
        entries: &[WalEntry],
        subject: ErrorSubject<C::NodeId>,
    ) -> Result<Lsn, StorageError<C::NodeId>> {
        self.wal
            .append_with(entries, Durability::Strict)
            .await
            .map_err(|e| io_error::<C>(subject, ErrorVerb::Write, e))
    }

    /// Appends marker records durably and then applies `apply` to the index. The index is
    /// changed by the thread that resolves the append (the log's writer), not by this future,
    /// so a caller that drops the call at its await cannot leave memory behind the disk: the
    /// change is made exactly when the marker is durable, and not at all when it fails.
    async fn mark_durably(
        &self,
        entries: &[WalEntry],
        subject: ErrorSubject<C::NodeId>,
        apply: impl FnOnce(&mut Index<C>) + Send + 'static,
    ) -> Result<Lsn, StorageError<C::NodeId>> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(&self.index);
        self.wal
            .append_with(entries, Durability::Strict)
            .on_resolved(move |outcome| {
                if outcome.is_ok() {
                    apply(&mut lock(&shared));
                }
                // The caller may have gone: the change above stands either way.
                let _ = sender.send(outcome);
            });
        let outcome = match receiver.await {
            Ok(outcome) => outcome,
            Err(_) => Err(keel_wal::Error::Closed),
        };
        outcome.map_err(|e| io_error::<C>(subject, ErrorVerb::Write, e))
    }

    /// Reads the entries in `range`: cached ones from memory, the others by position.
    fn read_range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        enum Source<E> {
            Memory(E),
            Log(RecordPosition),
        }
        let sources: Vec<(u64, Source<C::Entry>)> = {
            let index = self.index();
            let Some(range) = half_open(&range) else {
                return Ok(Vec::new());
            };
            let mut sources = Vec::new();
            for (&at, slot) in index.entries.range(range) {
                let source = match (&slot.cached, slot.position) {
                    (Some(entry), _) => Source::Memory(entry.clone()),
                    (None, Some(position)) => Source::Log(position),
                    (None, None) => unreachable!("an entry is cached until it is placed"),
                };
                sources.push((at, source));
            }
            sources
        };
        let from_memory = sources
            .iter()
            .filter(|(_, s)| matches!(s, Source::Memory(_)))
            .count() as u64;
        let c = &self.counters;
        c.entries_read_from_memory.fetch_add(from_memory, Relaxed);
        c.entries_read_from_log
            .fetch_add(sources.len() as u64 - from_memory, Relaxed);
        sources
            .into_iter()
            .map(|(at, source)| match source {
                Source::Memory(entry) => Ok(entry),
                Source::Log(position) => self.read_entry(at, position),
            })
            .collect()
    }

    fn read_entry(
        &self,
        at: u64,
        position: RecordPosition,
    ) -> Result<C::Entry, StorageError<C::NodeId>> {
        let found = self
            .wal
            .read_record(position)
            .map_err(|e| io_error::<C>(ErrorSubject::LogIndex(at), ErrorVerb::Read, e))?;
        let entry = record::decode_entry::<C>(found.entry())
            .map_err(|e| corrupt::<C>(format!("entry {at} at LSN {}: {e}", position.lsn)))?;
        if entry.get_log_id().index != at {
            return Err(corrupt::<C>(format!(
                "the record at LSN {} holds entry {}, not {at}",
                position.lsn,
                entry.get_log_id().index
            )));
        }
        Ok(entry)
    }

    /// Deletes the segments that hold only purged entries and superseded marks.
    async fn compact(&self) -> Result<(), StorageError<C::NodeId>> {
        let first_live = {
            let index = self.index();
            index
                .entries
                .first_key_value()
                .and_then(|(_, s)| s.position)
        };
        let keep_from = match first_live {
            Some(position) => position.lsn,
            None if self.index().entries.is_empty() => self.wal.next_lsn(),
            // Not placed yet (cannot happen after the purge marker was awaited): keep all.
            None => return Ok(()),
        };
        let dir = self.wal.dir();
        let segments = keel_wal::dir::list_directory(dir)
            .map_err(|e| io_error::<C>(ErrorSubject::Logs, ErrorVerb::Delete, e))?
            .segments;
        if segments
            .get(1)
            .is_none_or(|second| second.first_lsn > keep_from)
        {
            return Ok(());
        }
        // The marks in the segments to delete must survive them: write them again, whole.
        let marks = {
            let index = self.index();
            Marks::<C> {
                vote: index.vote.clone(),
                committed: index.committed.clone(),
                purged: index.purged.clone(),
            }
        };
        self.append_durably(&[record::state::<C>(&marks)], ErrorSubject::Logs)
            .await?;
        let removed = self
            .wal
            .remove_segments_before(keep_from)
            .map_err(|e| io_error::<C>(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.counters
            .segments_deleted
            .fetch_add(removed as u64, Relaxed);
        tracing::debug!(removed, keep_from, "purged Raft log segments");
        Ok(())
    }
}

/// `range` as `start..end` (`end` `None` for unbounded), or `None` when it is empty; never
/// a range `BTreeMap::range` would panic on.
fn half_open(range: &impl RangeBounds<u64>) -> Option<std::ops::Range<u64>> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start < end).then_some(start..end)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::half_open;

    #[test]
    fn ranges_become_half_open_or_empty_never_a_panic() {
        assert_eq!(half_open(&(3..7)), Some(3..7));
        assert_eq!(half_open(&(3..=7)), Some(3..8));
        assert_eq!(half_open(&(..4)), Some(0..4));
        assert_eq!(half_open(&(5..)), Some(5..u64::MAX));
        assert_eq!(half_open(&(7..7)), None);
        #[expect(
            clippy::reversed_empty_ranges,
            reason = "inverted ranges must be empty"
        )]
        let inverted = (9..2, 7..=6);
        assert_eq!(half_open(&inverted.0), None);
        assert_eq!(half_open(&inverted.1), None);
        let excluded = (
            std::ops::Bound::Excluded(4u64),
            std::ops::Bound::Excluded(5u64),
        );
        assert_eq!(half_open(&excluded), None);
        assert_eq!(half_open(&(u64::MAX..=u64::MAX)), None);
    }
}
