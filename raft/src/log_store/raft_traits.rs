//! openraft's traits on [`KeelLogStore`]: [`RaftLogReader`] (reads by range) and
//! [`RaftLogStorage`] (vote, committed, appends with their flush report, truncation, purge).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use keel_wal::{Durability, RecordPosition, WalEntry};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, Vote,
};

use super::{KeelLogStore, Slot, io_error, lock};
use crate::record;

impl<C: RaftTypeConfig> RaftLogReader<C> for KeelLogStore<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.read_range(range)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for KeelLogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let index = self.index();
        Ok(LogState {
            last_purged_log_id: index.purged.clone(),
            last_log_id: index.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let saved = vote.clone();
        self.mark_durably(
            &[record::vote::<C>(vote)],
            ErrorSubject::Vote,
            move |index| {
                index.vote = Some(saved);
            },
        )
        .await?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.index().vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        let record = record::committed::<C>(&committed);
        self.mark_durably(&[record], ErrorSubject::Store, move |index| {
            index.committed = committed;
        })
        .await?;
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.index().committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let Some(first) = entries.first().map(|e| e.get_log_id().index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.counters.appends.fetch_add(1, Relaxed);
        self.counters
            .entries_appended
            .fetch_add(entries.len() as u64, Relaxed);
        let records: Vec<WalEntry> = entries
            .iter()
            .map(|e| record::entry::<C>(e.get_log_id(), e))
            .collect();
        // Framed first: an entry too large for the log is refused before the index changes.
        let batch = self
            .wal
            .encode(&records)
            .map_err(|e| io_error::<C>(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let append = {
            let mut index = self.index();
            index.appends += 1;
            let append = index.appends;
            // As replay does: an entry replaces anything at its index and above.
            index.truncate(first);
            for entry in entries {
                let log_id = entry.get_log_id().clone();
                let slot = Slot {
                    log_id,
                    position: None,
                    cached: Some(entry),
                    append,
                };
                index.entries.insert(slot.log_id.index, slot);
            }
            append
        };
        let shared = Arc::clone(&self.index);
        let placed = move |positions: &[RecordPosition]| {
            let mut index = lock(&shared);
            for (at, position) in (first..).zip(positions) {
                if let Some(slot) = index.entries.get_mut(&at)
                    && slot.append == append
                {
                    slot.position = Some(*position);
                }
            }
        };
        let commit = self.wal.append_placed(batch, Durability::Strict, placed);
        let shared = Arc::clone(&self.index);
        // Reported by the thread that resolves the commit (the log's writer), with no hop
        // through a task: drop the memory copies, then tell openraft.
        commit.on_resolved(move |outcome| {
            if outcome.is_ok() {
                let mut index = lock(&shared);
                for (_, slot) in index.entries.range_mut(first..) {
                    if slot.append == append && slot.position.is_some() {
                        slot.cached = None;
                    }
                }
            }
            callback.log_io_completed(outcome.map(drop).map_err(std::io::Error::other));
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.index().truncate(log_id.index);
        self.append_durably(&[record::truncate(log_id.index)], ErrorSubject::Logs)
            .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.wait_for_applied(log_id.index).await?;
        let record = record::purge::<C>(&log_id);
        self.mark_durably(&[record], ErrorSubject::Logs, move |index| {
            index.purge(log_id)
        })
        .await?;
        self.compact().await
    }
}
