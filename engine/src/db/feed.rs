//! The change feed: the database's committed transactions from an LSN on, in commit order,
//! each delivered once it is durable ([`Database::subscribe`]).
//!
//! A [`Subscription`] follows the log ([`keel_wal::Tail`]: durable records only, through
//! rotations) and groups its records into transactions by the rules recovery replays them
//! with ([`keel_recovery::TxnAssembler`]): a transaction is delivered at its commit, whole,
//! or not at all; aborted and unfinished ones never are. Where a transaction began before
//! the subscription's first record (a spilled one, or `from` inside a commit's records), the
//! subscription reads again from the first LSN its commit names, delivering nothing twice.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use keel_recovery::{CommittedTxn, Finding, Replay, ReplayError, TxnAssembler};
use keel_wal::{ArchivedWalEntry, EntryKind, Lsn, RunId, Tail, TxnId};

use super::Database;
use super::install::InstallOutcomes;
use super::sync::lock;
use crate::state::{Change, RunRecord, RunState, SYSTEM_RUN, abandoned_install, run_of_key};
use crate::{Error, Result};

/// One change of a delivered transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedChange {
    /// `key` was set to `value`.
    Put {
        /// The key written.
        key: Bytes,
        /// Its new value.
        value: Bytes,
    },
    /// `key` was deleted.
    Delete {
        /// The key deleted.
        key: Bytes,
    },
}

/// A committed transaction, as the feed delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedCommit {
    /// The run it wrote to (the system run, id 0, for run changes: [`FeedCommit::is_system`]).
    pub run: RunId,
    /// Its transaction id in the log.
    pub txn_id: TxnId,
    /// The LSN of its first record.
    pub first_lsn: Lsn,
    /// The LSN of its commit record: the version its writes have, and the position to
    /// resume after (`subscribe(commit_lsn + 1)`).
    pub commit_lsn: Lsn,
    /// Its writes and deletes, in the order they were logged: one per key, in key order,
    /// for a transaction written at its commit; chunk after chunk for one that spilled (a
    /// key written again after a spill comes again). Applied in order, they are its effect.
    pub changes: Vec<FeedChange>,
}

impl FeedCommit {
    /// Whether this is one of the engine's own commits (runs begun and ended, in the
    /// system run), not a user run's.
    pub fn is_system(&self) -> bool {
        self.run.as_u128() == crate::state::SYSTEM_RUN
    }
}

/// What a subscription delivers, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// A committed transaction.
    Commit(FeedCommit),
    /// A snapshot was installed at `lsn` ([`Database::install_snapshot`]): the state after
    /// it is the snapshot's, not the sum of the commits before. A consumer re-bootstraps
    /// (reads the snapshot at `lsn`, then follows from `lsn + 1`).
    Installed {
        /// The LSN of the install's marker in the log.
        lsn: Lsn,
    },
}

impl FeedEvent {
    /// The LSN to resume after: a commit's, or the install marker's.
    pub fn lsn(&self) -> Lsn {
        match self {
            FeedEvent::Commit(commit) => commit.commit_lsn,
            FeedEvent::Installed { lsn } => *lsn,
        }
    }
}

/// The database's committed transactions from an LSN on: see [`Database::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    /// `None` once the subscription ended: its hold on the log is gone with it.
    tail: Option<Tail>,
    /// What became of the database's installs (see `Inner::installs`).
    installs: Arc<Mutex<InstallOutcomes>>,
    /// An install marker read whose outcome this process does not know (logged before a
    /// reopen): delivered at the next commit or checkpoint entry, or at the end of the
    /// log, unless its abandoned-install record comes first ([`Sink::checkpoint`]).
    deferred_install: Option<Lsn>,
    assembler: TxnAssembler,
    /// Events assembled and not yet taken, in order.
    ready: VecDeque<FeedEvent>,
    /// Nothing at or below this is delivered: below `from`, or delivered already.
    delivered_through: Lsn,
    /// The most the assembler may hold of open transactions ([`Error::FeedHeldTooMuch`]).
    max_held: u64,
    /// The tail keeps the log from where the unit holding its first record may have begun
    /// ([`Database::unit_start_bound`]), until a record that ends a unit is read.
    keeping: bool,
}

impl Database {
    /// Follows the database's commits from `from` on: every transaction committed at or
    /// above `from`, in commit order, once, as soon as its commit is durable (under every
    /// durability mode: a delivered commit survives any crash). Snapshot installs come as
    /// [`FeedEvent::Installed`]. The stream ends when the database closes.
    ///
    /// To resume, subscribe from the last delivered event's [`FeedEvent::lsn`] plus one. A
    /// position the log no longer holds (a checkpoint removed it) ends the stream with
    /// [`keel_wal::Error::LsnRemoved`], naming the oldest LSN still there: bootstrap from
    /// the newest snapshot ([`Database::newest_snapshot`]) and subscribe from its LSN plus
    /// one.
    ///
    /// A subscription reads the log's files as it is polled (from the page cache, usually):
    /// short reads on the polling thread, as a file read would be. It keeps the log it has
    /// still to read from being removed, within [`crate::Options::feed_max_lag_bytes`]:
    /// from `from`, or from the head of a spilled transaction begun below `from` that it
    /// will deliver (its records are read, not delivered, from there). Its memory is the
    /// transactions it has read that are still open in the log (a spilled one is delivered
    /// whole at its commit), within the same bound: past it the stream ends with
    /// [`Error::FeedHeldTooMuch`].
    pub fn subscribe(&self, from: Lsn) -> Subscription {
        let from = from.max(1);
        // A spill that began below `from` and commits at or above it is delivered whole:
        // its head must still be there when the commit is read. The spill's registration
        // keeps it only until a checkpoint's fallback holds the commit, so the tail holds it.
        let start = lock(&self.inner.spills)
            .oldest_head_for(from)
            .map_or(from, |head| head.min(from));
        let kept = self.unit_start_bound(start);
        Subscription {
            tail: Some(self.inner.wal.tail_keeping(start, kept)),
            installs: Arc::clone(&self.inner.installs),
            deferred_install: None,
            assembler: TxnAssembler::new(start, from - 1),
            ready: VecDeque::new(),
            delivered_through: from - 1,
            max_held: self.inner.feed_max_lag_bytes,
            keeping: kept.is_some(),
        }
    }

    /// The lowest LSN the unit of records holding `start` may have begun at, when below it.
    ///
    /// A transaction written at its commit is one append, and the log may split an append
    /// across segments (a record that does not fit starts the next one). A subscription that
    /// starts inside one reads its commit, finds it began earlier, and reads again from
    /// there (`Subscription::take`): that log must still be there, though its position never
    /// held it (`tests/adversarial_feed_review.rs`). Such a unit holds at most
    /// `spill_txn_bytes` of writes, one more write and its commit record (a larger one
    /// spills, and a spill's head is held from `subscribe`): the segments before the one
    /// holding `start` are counted back until they hold that many bytes.
    fn unit_start_bound(&self, start: Lsn) -> Option<Lsn> {
        let segments = keel_wal::dir::list_directory(self.inner.wal.dir())
            .ok()?
            .segments;
        let at = segments.iter().rposition(|s| s.first_lsn <= start)?;
        let most = self.inner.spill_txn_bytes as u64 + 2 * u64::from(self.inner.max_record_bytes);
        let mut bytes = 0;
        let mut bound = None;
        for segment in segments[..at].iter().rev() {
            if bytes >= most {
                break;
            }
            // Unknown, it counts for nothing: the bound goes back further.
            bytes += std::fs::metadata(&segment.path).map_or(0, |m| m.len());
            bound = Some(segment.first_lsn);
        }
        bound
    }
}

impl Database {
    /// Applies here a commit another database's feed delivered: for a replica that follows
    /// a primary ([`Database::subscribe`] there), bootstrapped from its snapshot and applying
    /// its feed in order from the snapshot's LSN plus one. A user run's writes and deletes
    /// commit as one transaction in the same run (it came with the snapshot, or with an
    /// earlier system commit); a system commit's run records (runs begun, ended, deleted on
    /// the primary) take effect here under the same run ids. Returns the LSN of the commit
    /// made here, `None` when it was in effect already.
    ///
    /// Applying again what a replica applied before (it resumes from a position it stored
    /// before its last applied commit) leaves the same state once it has caught up: puts and
    /// deletes in commit order do; a commit to a run that has ended here, or that is not here
    /// (deleted), came before that end or delete on the primary and is skipped; a run record
    /// already in effect here (a begun run that exists, ended or not; an ended or deleted
    /// one that has ended or is gone) is skipped. So a replica must start from the primary's
    /// snapshot: one that did not would skip the commits of the runs it lacks.
    ///
    /// A run begun on the primary under the name of a run active here (the replica's own) is
    /// refused with [`Error::RunNameTaken`]; so is the beginning of a run applied again after
    /// the primary deleted it and began another under its name, which cannot be told from
    /// that clash. A replica that stores the position it applied through after every system
    /// commit applies at most the last one again, and never meets it. A system commit holding
    /// anything but run records is refused ([`Error::Metadata`]): it did not come from a Keel
    /// feed.
    pub async fn apply_feed_commit(&self, commit: &FeedCommit) -> Result<Option<Lsn>> {
        if !commit.is_system() {
            // A run ended or deleted here took that record after every commit to it (the
            // primary refuses commits behind a run's end): this one is in effect already.
            let here = self.run_info(commit.run).map(|info| info.state);
            if here != Some(RunState::Active) {
                return Ok(None);
            }
            let mut txn = self.transaction(commit.run)?;
            for change in &commit.changes {
                match change {
                    FeedChange::Put { key, value } => txn.put(key, value)?,
                    FeedChange::Delete { key } => txn.delete(key)?,
                }
            }
            return txn.commit().await.map(Some);
        }
        let mut changes = Vec::new();
        for change in &commit.changes {
            let not_a_run_record = || {
                Error::Metadata(format!(
                    "the system commit at LSN {} of another database holds something other \
                     than run records: {change:?}",
                    commit.commit_lsn
                ))
            };
            let FeedChange::Put { key, value } = change else {
                return Err(not_a_run_record());
            };
            let run = run_of_key(key)
                .filter(|run| run.as_u128() != SYSTEM_RUN)
                .ok_or_else(not_a_run_record)?;
            let record = RunRecord::decode(value).map_err(|_| not_a_run_record())?;
            let here = self.run_info(run).map(|info| info.state);
            let in_effect = match here {
                // Ended or deleted since: a record that ends it came before that.
                None => record.ended,
                Some(RunState::Active) => !record.ended,
                // Begun again only where it is applied again: never re-opened here.
                Some(RunState::Ended(_)) => !record.deleted,
            };
            if !in_effect {
                changes.push(Change::Put(key.to_vec(), value.to_vec()));
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        self.commit_changes(SYSTEM_RUN, changes).await.map(Some)
    }
}

impl Subscription {
    /// The LSN the subscription reads next.
    pub fn next_lsn(&self) -> Lsn {
        self.tail
            .as_ref()
            .map_or(self.delivered_through + 1, Tail::next_lsn)
    }

    /// Feeds one record to the assembler; on a transaction begun before the first record
    /// read, reads again from its first LSN.
    fn take(&mut self, record: &keel_wal::OwnedRecord) -> Result<()> {
        let mut sink = Sink {
            installs: &self.installs,
            ready: &mut self.ready,
            delivered_through: &mut self.delivered_through,
            deferred_install: &mut self.deferred_install,
        };
        let finding = self.assembler.record(
            record.position(),
            record.entry(),
            record.payload(),
            &mut sink,
        )?;
        // What it holds is the transactions read and still open: bounded as the log it
        // keeps is, or a transaction spilled without end would grow it without end.
        let held = self.assembler.held_bytes() as u64;
        if held > self.max_held {
            return Err(Error::FeedHeldTooMuch {
                position: record.lsn() + 1,
                held_bytes: held,
                max_bytes: self.max_held,
            });
        }
        // The unit holding the first record read has ended by the first record that ends
        // one (a commit, an abort, or a record that is a unit of its own): gone back for by
        // now if it began earlier (below), it needs no more keeping.
        let ends_unit = matches!(
            record.entry().kind(),
            EntryKind::CommitTxn
                | EntryKind::CommitSpan
                | EntryKind::AbortTxn
                | EntryKind::Checkpoint
                | EntryKind::Payload
        );
        if self.keeping && ends_unit {
            self.keeping = false;
            let seek_back = matches!(
                &finding,
                Some(Finding::PartialTransaction { first_lsn: Some(first), .. })
                    if *first < record.lsn()
            );
            if let Some(tail) = self.tail.as_mut().filter(|_| !seek_back) {
                tail.keep_from(None);
            }
        }
        match finding {
            None => Ok(()),
            Some(Finding::PartialTransaction {
                first_lsn: Some(first),
                ..
            }) if first < record.lsn() => {
                // Everything at or below `delivered_through` was delivered (or is below
                // `from`): reading again from `first` delivers only what follows.
                self.assembler = TxnAssembler::new(first, self.delivered_through);
                // Read again, a marker not delivered yet is met again.
                self.deferred_install = None;
                if let Some(tail) = &mut self.tail {
                    tail.seek(first);
                    tail.keep_from(None);
                }
                Ok(())
            }
            Some(finding) => Err(Error::Metadata(format!(
                "the change feed cannot deliver a transaction whole: {finding:?}"
            ))),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<FeedEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let subscription = self.get_mut();
        loop {
            if let Some(event) = subscription.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            let Some(tail) = &mut subscription.tail else {
                return Poll::Ready(None);
            };
            // Ended (the log closed, an error): the tail goes, and its hold on the log.
            let record = match Pin::new(tail).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // The log is closed and all of it durable: an install whose abandoned
                    // record did not follow its marker took effect.
                    if let Some(lsn) = subscription.deferred_install.take() {
                        subscription.ready.push_back(FeedEvent::Installed { lsn });
                        subscription.delivered_through = lsn;
                    }
                    subscription.tail = None;
                    continue;
                }
                Poll::Ready(Some(Err(error))) => {
                    subscription.tail = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(record))) => record,
            };
            if let Err(error) = subscription.take(&record) {
                subscription.tail = None;
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}

/// Where the assembler hands committed transactions and checkpoints.
struct Sink<'a> {
    installs: &'a Mutex<InstallOutcomes>,
    ready: &'a mut VecDeque<FeedEvent>,
    delivered_through: &'a mut Lsn,
    deferred_install: &'a mut Option<Lsn>,
}

impl Sink<'_> {
    /// Delivers the install whose outcome was deferred: a record that follows its install's
    /// end was read, and its abandoned-install record was not.
    fn deliver_deferred_install(&mut self) {
        if let Some(lsn) = self.deferred_install.take() {
            self.ready.push_back(FeedEvent::Installed { lsn });
            *self.delivered_through = lsn;
        }
    }
}

impl Replay for Sink<'_> {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> std::result::Result<(), ReplayError> {
        // Commits are appended under the lock an install holds until its outcome is logged.
        self.deliver_deferred_install();
        let changes = txn
            .entries()
            .map(|(_, entry)| match entry {
                ArchivedWalEntry::Write { key, value, .. } => FeedChange::Put {
                    key: Bytes::copy_from_slice(key.as_slice()),
                    value: Bytes::copy_from_slice(value.as_slice()),
                },
                ArchivedWalEntry::Delete { key, .. } => FeedChange::Delete {
                    key: Bytes::copy_from_slice(key.as_slice()),
                },
                other => unreachable!("a transaction's entries are writes and deletes: {other:?}"),
            })
            .collect();
        self.ready.push_back(FeedEvent::Commit(FeedCommit {
            run: txn.run_id,
            txn_id: txn.txn_id,
            first_lsn: txn.first_lsn,
            commit_lsn: txn.commit_lsn,
            changes,
        }));
        *self.delivered_through = txn.commit_lsn;
        Ok(())
    }

    fn checkpoint(
        &mut self,
        lsn: Lsn,
        entry: &ArchivedWalEntry,
    ) -> std::result::Result<(), ReplayError> {
        // An install's marker names its own LSN; a checkpoint's entry names the snapshot
        // below it, and changes nothing a consumer sees; an abandoned-install record names
        // the marker of an install that failed. A marker is durable before its install's
        // snapshot is: the outcome is known once the install lets go of the lock (a short
        // wait on the polling thread, as a commit's during an install), and an install that
        // failed never happened. The outcome of a marker logged before a reopen is in the
        // log: its abandoned record follows it before any commit or checkpoint entry does.
        let ArchivedWalEntry::Checkpoint { snapshot_lsn, .. } = entry else {
            return Ok(());
        };
        if let Some(marker) = abandoned_install(entry) {
            if *self.deferred_install == Some(marker) {
                *self.deferred_install = None;
            }
            return Ok(());
        }
        // Checkpoints and installs wait for an install's end.
        self.deliver_deferred_install();
        if snapshot_lsn.to_native() != lsn {
            return Ok(());
        }
        let outcomes = lock(self.installs);
        if outcomes.failed.contains(&lsn) {
            return Ok(());
        }
        if outcomes.took_effect.contains(&lsn) {
            self.ready.push_back(FeedEvent::Installed { lsn });
            *self.delivered_through = lsn;
        } else {
            *self.deferred_install = Some(lsn);
        }
        Ok(())
    }
}
