//! Commits: how a transaction's unit enters the log, and when it becomes visible.
//!
//! A commit is appended under the `pending` lock and queued, with the LSNs the log gave it, in
//! [`Pending`]: the queue is in LSN order. It is applied to the state once the log has
//! acknowledged it at its visibility point (the database's durability, or the commit's own
//! when that is weaker), always in LSN order, by whichever operation reads or commits next.
//!
//! A commit asking for weaker durability than the database's (an `Async` commit in a
//! `Strict` database) becomes visible at its own acknowledgement point, but never before the
//! commits ahead of it in the log: when some of them wait for a stronger point, the commit's
//! future also waits for a log barrier through the last of them at that point (queued under
//! the `pending` lock), so it resolves once visible, and waits for nothing more: not for the
//! weak commits between them and it, which it needs no sync of. So a weak commit never
//! overtakes a strong one, and reading a weak commit's value never shows a state the log
//! could not recover without the strong commits before it.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_wal::{CommitFuture, Durability, Lsn, RunId, TxnId, WalEntry, WriterWake};

mod runs;

use super::Database;
use super::sync::{lock, read, write};
use super::transaction::{Isolation, Reads};
use crate::state::{Change, SYSTEM_RUN, State};
use crate::{Error, Result};

/// A commit queued in the log and not yet applied to the state.
#[derive(Debug)]
pub(super) struct Pending {
    first_lsn: Lsn,
    last_lsn: Lsn,
    /// Where it becomes visible: the weaker of its durability and the database's.
    visible: Visibility,
    run: u128,
    changes: Vec<Change>,
}

/// The point at which a queued commit may be applied, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum Visibility {
    /// Once in the log's queue (`Async`).
    Queued = 0,
    /// Once written (`Batched`).
    Written = 1,
    /// Once durable (`Strict`).
    Durable = 2,
}

impl Visibility {
    pub(super) fn of(durability: Durability) -> Self {
        match durability {
            Durability::Async { .. } => Visibility::Queued,
            Durability::Batched { .. } => Visibility::Written,
            Durability::Strict => Visibility::Durable,
        }
    }

    fn from_bits(bits: u64) -> Self {
        match bits {
            0 => Visibility::Queued,
            1 => Visibility::Written,
            _ => Visibility::Durable,
        }
    }

    /// A durability whose appends resolve at this point (for [`keel_wal::Wal::barrier`],
    /// which reads nothing else of it).
    fn durability(self) -> Durability {
        match self {
            Visibility::Queued => Durability::Async {
                max_delay: std::time::Duration::ZERO,
            },
            Visibility::Written => Durability::Batched {
                max_delay: std::time::Duration::ZERO,
                max_bytes: 0,
            },
            Visibility::Durable => Durability::Strict,
        }
    }
}

/// A commit the log took: its acknowledgement, and the barriers it waits for after it when
/// commits ahead of it become visible later than it would ([`Database::queue_commit`]): at
/// most one per stronger point.
#[derive(Debug)]
#[must_use = "the commit resolves through it"]
pub(super) struct Queued {
    ack: CommitFuture,
    barriers: Vec<CommitFuture>,
}

impl Queued {
    fn ready(ack: CommitFuture) -> Self {
        Queued {
            ack,
            barriers: Vec::new(),
        }
    }

    /// Writes the commit on this thread when its append found the log's writer idle (the
    /// append was made `blocking`), until it is acknowledged; else only wakes the writer.
    /// Blocks: for a committer waiting on its own thread.
    pub(super) fn drive(&self, wake: Option<WriterWake<'_>>) {
        if let Some(wake) = wake {
            wake.drive(&self.ack);
        }
    }

    /// Resolves once the commit is acknowledged and every commit ahead of it is
    /// acknowledged at its own visibility point: the commit is then applicable. Cancel-safe:
    /// dropped, the commit goes ahead as if awaited.
    pub(super) async fn acknowledged(self) -> keel_wal::Result<Lsn> {
        let lsn = self.ack.await?;
        for barrier in self.barriers {
            barrier.await?;
        }
        Ok(lsn)
    }

    /// [`Queued::acknowledged`], blocking the calling thread ([`CommitFuture::wait`], as the
    /// log's own `append_wait` waits): for a committer on its own thread. Waiting through an
    /// executor's `block_on` instead (a waker, a park, a poll again) measured 0.73-0.76 of
    /// the log at 64 committers × 128 B against 0.79-0.80 this way (docs/BENCHMARKS.md).
    pub(super) fn acknowledged_blocking(self) -> keel_wal::Result<Lsn> {
        let lsn = self.ack.wait()?;
        for barrier in self.barriers {
            barrier.wait()?;
        }
        Ok(lsn)
    }
}

impl Pending {
    /// The keys this commit writes or deletes in `run`.
    pub(super) fn writes_of(&self, run: u128) -> impl Iterator<Item = &[u8]> {
        let changes = if self.run == run {
            &self.changes[..]
        } else {
            &[]
        };
        changes.iter().map(|change| match change {
            Change::Put(key, _) | Change::Delete(key) => key.as_slice(),
        })
    }
}

/// How a commit is checked and acknowledged.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CommitAs<'a> {
    /// What the transaction read, under which isolation (none: nothing to check).
    pub reads: Option<(&'a Reads, Isolation)>,
    /// The durability it asks for, stronger or weaker than the database's (none: the
    /// database's). It resolves under this; it becomes visible at the weaker of the two.
    pub durability: Option<Durability>,
    /// The committer waits on its own thread ([`super::Transaction::commit_blocking`]): its
    /// append may be written by it when the log's writer is idle ([`Queued::drive`]).
    pub blocking: bool,
}

/// The commits queued in the log and not yet applied, in LSN order. Its front's last LSN is
/// mirrored in `Inner::first_pending` ([`NONE_PENDING`] when empty), stored under the
/// `pending` lock after every change, so a reader tells without the lock whether anything
/// acknowledged still waits to be applied.
pub(super) type PendingQueue = VecDeque<Pending>;

/// `Inner::first_pending` when nothing is queued.
pub(super) const NONE_PENDING: u64 = u64::MAX;

/// Bits of `Inner::first_pending` below the front's [`Visibility`]: its last LSN.
const VISIBILITY_SHIFT: u32 = 62;

/// `Inner::first_pending` for a front commit: its visibility and last LSN in one word, so a
/// reader without the lock never pairs one commit's LSN with another's visibility.
fn pack_front(front: &Pending) -> u64 {
    assert!(
        front.last_lsn < 1 << VISIBILITY_SHIFT,
        "LSNs stay below 2^62"
    );
    (front.visible as u64) << VISIBILITY_SHIFT | front.last_lsn
}

/// The front's visibility and last LSN from `Inner::first_pending` (not [`NONE_PENDING`]).
fn unpack_front(packed: u64) -> (Visibility, Lsn) {
    let visible = Visibility::from_bits(packed >> VISIBILITY_SHIFT);
    (visible, packed & ((1 << VISIBILITY_SHIFT) - 1))
}

impl Database {
    /// Logs `changes` of `run` as one transaction and waits for its acknowledgement.
    pub(super) async fn commit_changes(&self, run: u128, changes: Vec<Change>) -> Result<Lsn> {
        let txn_id = self.new_txn_id();
        let started = std::time::Instant::now();
        let how = CommitAs::default();
        let queued = self.queue_commit(run, txn_id, changes, Vec::new(), None, how)?;
        self.finish_commit(queued, started).await
    }

    /// Queues `logged` and the commit as one unit of transaction `txn_id`, whose `earlier`
    /// changes were spilled before (from `spilled_head` on), once `how.reads` shows no
    /// conflict ([`Error::Conflict`]; checked under the `pending` lock, so no commit comes
    /// between the check and the append). Once this returns `Ok` the commit is in the log's
    /// queue: its outcome is the returned future's, whatever happens to the caller. An `Err`
    /// means nothing was queued.
    ///
    /// A commit of weaker durability than the database's gets a barrier when a commit ahead
    /// of it in the queue becomes visible at a stronger point ([`Database::barriers_locked`]),
    /// so it resolves once applicable.
    pub(super) fn queue_commit(
        &self,
        run: u128,
        txn_id: TxnId,
        logged: Vec<Change>,
        earlier: Vec<Change>,
        spilled_head: Option<Lsn>,
        how: CommitAs<'_>,
    ) -> Result<Queued> {
        let (queued, wake) =
            self.queue_commit_waking(run, txn_id, logged, earlier, spilled_head, how)?;
        drop(wake);
        Ok(queued)
    }

    /// [`Database::queue_commit`], with the log writer's wake left to the caller (made
    /// when it is dropped, or a drive: [`Queued::drive`]), once the caller's own locks are
    /// released too.
    pub(super) fn queue_commit_waking(
        &self,
        run: u128,
        txn_id: TxnId,
        logged: Vec<Change>,
        earlier: Vec<Change>,
        spilled_head: Option<Lsn>,
        how: CommitAs<'_>,
    ) -> Result<(Queued, Option<WriterWake<'_>>)> {
        let durability = how.durability.unwrap_or(self.inner.durability);
        let visible = Visibility::of(durability).min(Visibility::of(self.inner.durability));
        let run_id = RunId::from_u128(run);
        // The buffers move into the entries and back out after encoding: never copied.
        let entries = Self::entries(run, txn_id, logged);
        let batch = self.inner.wal.encode(&entries);
        let mut changes = earlier;
        changes.extend(entries.into_iter().map(change_of));
        let batch = batch?;
        let mut pending = lock(&self.inner.pending);
        if run == SYSTEM_RUN {
            self.check_run_names_locked(&changes, &pending)?;
            self.check_run_ends_locked(&changes, &pending)?;
        } else {
            self.check_writable_locked(run_id, &pending)?;
        }
        if let Some((reads, isolation)) = how.reads.filter(|(reads, _)| reads.has_view()) {
            let state = read(&self.inner.state);
            if let Some(key) = reads.conflict(isolation, run, &changes, &state, &pending) {
                return Err(Error::Conflict { run: run_id, key });
            }
        }
        let barriers = self.barriers_locked(visible, &pending);
        // The commit record names the unit's first LSN: the spilled head, else the first LSN
        // the log gives this append (the log frames it under its queue lock).
        // The writer's wake (a syscall when it waits for work) is made after `pending` is
        // released, not while the next committers wait for it.
        let closing = |first_lsn| WalEntry::CommitSpan {
            run_id,
            txn_id,
            first_lsn: spilled_head.unwrap_or(first_lsn),
        };
        let wal = &self.inner.wal;
        let (appended, wake) = if how.blocking {
            wal.append_closed_by_driving(batch, durability, closing)
        } else {
            wal.append_closed_by_deferring_wake(batch, durability, closing)
        };
        let Some(lsns) = appended.lsns else {
            // Refused (a poisoned or closing log): the future holds the error. A spilled
            // transaction is over: its registration would otherwise pin the log for good.
            if spilled_head.is_some() {
                lock(&self.inner.spills).abandon(txn_id);
            }
            return Ok((Queued::ready(appended.future), wake));
        };
        let queued = (lsns, visible);
        self.note_queued(&mut pending, queued, run, changes, spilled_head, txn_id);
        drop(pending);
        let queued = Queued {
            ack: appended.future,
            barriers,
        };
        Ok((queued, wake))
    }

    /// The barriers a commit visible at `visible` waits for, under the `pending` lock of its
    /// append: for each stronger point, the log at that point through the last commit ahead
    /// of it that becomes visible there (none when that is reached already, or implied by a
    /// stronger barrier). Through that commit only, not through everything queued before
    /// this one: the weak commits between are applicable once it is, and waiting for them
    /// too would wait for a sync nobody needs, while the commit is visible, and fail it when
    /// that sync fails (`tests/adversarial_weak_commit.rs`).
    fn barriers_locked(&self, visible: Visibility, pending: &PendingQueue) -> Vec<CommitFuture> {
        let mut barriers = Vec::new();
        // Through what a stronger point's barrier (or its being reached) covers already.
        let mut covered = 0;
        for at in [Visibility::Durable, Visibility::Written] {
            if at <= visible {
                break;
            }
            let last = pending.iter().rev().find(|ahead| ahead.visible == at);
            let Some(through) = last.map(|ahead| ahead.last_lsn) else {
                continue;
            };
            if through > covered && through > self.visible_lsn(at) {
                barriers.push(self.inner.wal.barrier(through, at.durability()));
            }
            covered = covered.max(through);
        }
        barriers
    }

    /// Records a commit the log took at `lsns`: queued for the state, and a spilled
    /// transaction's commit noted for retention. Under the `pending` lock of its append.
    fn note_queued(
        &self,
        pending: &mut PendingQueue,
        (lsns, visible): (RangeInclusive<Lsn>, Visibility),
        run: u128,
        changes: Vec<Change>,
        spilled_head: Option<Lsn>,
        txn_id: TxnId,
    ) {
        let (first_lsn, last_lsn) = (*lsns.start(), *lsns.end());
        assert!(
            pending.back().is_none_or(|last| last.last_lsn < first_lsn),
            "commits are appended under the pending lock, so they queue in LSN order"
        );
        if let Some(head) = spilled_head {
            assert!(head < first_lsn, "a spill's head precedes its commit");
            lock(&self.inner.spills).commit(txn_id, last_lsn);
        }
        pending.push_back(Pending {
            first_lsn,
            last_lsn,
            visible,
            run,
            changes,
        });
        if pending.len() == 1 {
            let packed = pack_front(pending.front().expect("pushed"));
            self.inner.first_pending.store(packed, Ordering::Release);
        }
    }

    /// Waits for a queued commit's acknowledgement (and its barrier); then its effects are
    /// visible, and an automatic checkpoint may be asked for (on its own thread: nothing here
    /// can turn the commit into an error).
    pub(super) async fn finish_commit(
        &self,
        queued: Queued,
        started: std::time::Instant,
    ) -> Result<Lsn> {
        let lsn = queued.acknowledged().await?;
        self.acknowledged(started);
        Ok(lsn)
    }

    /// [`Database::finish_commit`], blocking the calling thread until the acknowledgement
    /// ([`Queued::acknowledged_blocking`]).
    pub(super) fn finish_commit_blocking(
        &self,
        queued: Queued,
        started: std::time::Instant,
    ) -> Result<Lsn> {
        let lsn = queued.acknowledged_blocking()?;
        self.acknowledged(started);
        Ok(lsn)
    }

    /// After a commit's acknowledgement: its latency recorded, its effects visible, an
    /// automatic checkpoint asked for if due. Nothing here can fail.
    fn acknowledged(&self, started: std::time::Instant) {
        self.inner.latency.record(started.elapsed());
        self.apply_visible();
        self.maybe_checkpoint();
    }

    /// Applies, in LSN order, every queued commit the log has acknowledged.
    ///
    /// Without the lock when none is: a commit is queued before its append returns and its
    /// committer applies it (here) before returning, so whoever learned of an acknowledged
    /// commit either finds it still queued in `first_pending`, or applied (that store
    /// follows the apply, and is read with `Acquire`). The first committer of a group commit
    /// to wake applies the whole group; the others find nothing left and take no lock.
    ///
    /// Not past a poisoned `pending` lock: a panic under it may have left a commit in the log
    /// and not queued (a panic in the append, after the log took it) or a snapshot installed
    /// on disk and not in memory, with `first_pending` saying nothing waits. The lock then
    /// stops the reader, as it did every reader before the shortcut (`sync.rs`;
    /// `tests/adversarial_commit_path_poisoned_pending.rs`).
    pub(super) fn apply_visible(&self) {
        let front = self.inner.first_pending.load(Ordering::Acquire);
        let waits = front == NONE_PENDING || {
            let (visible, last_lsn) = unpack_front(front);
            last_lsn > self.visible_lsn(visible)
        };
        if waits && !self.inner.pending.is_poisoned() {
            return;
        }
        let mut pending = lock(&self.inner.pending);
        self.apply_visible_locked(&mut pending);
    }

    /// [`Database::apply_visible`], under the `pending` lock the caller holds.
    pub(super) fn apply_visible_locked(&self, pending: &mut PendingQueue) {
        let visible_lsn = |visible| self.visible_lsn(visible);
        if front_applicable(pending, &visible_lsn) {
            let mut state = write(&self.inner.state);
            let inner = &self.inner;
            apply_front(
                pending,
                &mut state,
                &visible_lsn,
                &inner.state_bytes,
                &inner.first_pending,
            );
        }
    }

    /// Applies what is visible, then returns the last LSN before the first commit still
    /// queued: every commit at or below it is in the state, so it is the LSN a snapshot of
    /// the state taken now gets. Under the `pending` lock the caller holds.
    pub(super) fn applied_through_locked(&self, pending: &mut PendingQueue) -> Lsn {
        self.apply_visible_locked(pending);
        match pending.front() {
            Some(first) => first.first_lsn - 1,
            // Everything the log took: commits are appended under this lock, so every one of
            // them is applied; other appends (spills, aborts) change no state.
            None => self.inner.wal.next_lsn() - 1,
        }
    }

    /// The highest LSN the log acknowledged at `visible`.
    fn visible_lsn(&self, visible: Visibility) -> Lsn {
        let wal = &self.inner.wal;
        match visible {
            Visibility::Durable => wal.durable_lsn(),
            Visibility::Written => wal.written_lsn(),
            Visibility::Queued => wal.next_lsn() - 1,
        }
    }

    /// The log entries of `changes`, which move into them.
    pub(super) fn entries(run: u128, txn_id: TxnId, changes: Vec<Change>) -> Vec<WalEntry> {
        let run_id = RunId::from_u128(run);
        changes
            .into_iter()
            .map(|change| match change {
                Change::Put(key, value) => WalEntry::Write {
                    run_id,
                    txn_id,
                    key,
                    value,
                },
                Change::Delete(key) => WalEntry::Delete {
                    run_id,
                    txn_id,
                    key,
                },
            })
            .collect()
    }
}

/// The change an entry of [`Database::entries`] holds, moved back out.
fn change_of(entry: WalEntry) -> Change {
    match entry {
        WalEntry::Write { key, value, .. } => Change::Put(key, value),
        WalEntry::Delete { key, .. } => Change::Delete(key),
        other => unreachable!("entries() makes writes and deletes only, not {other:?}"),
    }
}

/// Whether the front of `pending` is acknowledged at its visibility point, as `visible_lsn`
/// tells where each point is.
fn front_applicable(pending: &PendingQueue, visible_lsn: &dyn Fn(Visibility) -> Lsn) -> bool {
    pending
        .front()
        .is_some_and(|p| p.last_lsn <= visible_lsn(p.visible))
}

/// Applies the front of `pending`, in LSN order, while it is applicable; then stores the
/// state's size in `state_bytes` and the new front in `first_pending` (after the apply, so
/// a reader that finds the front moved finds the state changed). Under the `pending` lock and
/// the state's write lock.
fn apply_front(
    pending: &mut PendingQueue,
    state: &mut State,
    visible_lsn: &dyn Fn(Visibility) -> Lsn,
    state_bytes: &AtomicU64,
    first_pending: &AtomicU64,
) {
    while front_applicable(pending, visible_lsn) {
        let commit = pending.pop_front().expect("checked");
        if let Err(error) = state.apply(commit.run, commit.last_lsn, commit.changes) {
            tracing::error!(%error, lsn = commit.last_lsn, "could not apply a commit");
        }
    }
    state_bytes.store(state.data_bytes, Ordering::Relaxed);
    let first = pending.front().map_or(NONE_PENDING, pack_front);
    first_pending.store(first, Ordering::Release);
}

/// The log's acknowledgement hook ([`keel_wal::Wal::on_acknowledged`]): applies the
/// commits the new written and durable positions make applicable, before their committers
/// are woken. Each of them then finds its commit applied in `first_pending` and returns
/// without the `pending` lock. Before this, the first committer of a group to wake applied
/// it while the others woke into its lock and queued behind it, each with one more sleep;
/// meanwhile they could not append, so the next group was smaller.
///
/// It never waits: it runs on the log's writer thread (or a committer's driving it), which
/// must not wait for a committer that holds `pending` while appending. It tries the locks,
/// and when either is taken (or poisoned) it leaves the commits to their committers
/// ([`Database::apply_visible`]), as before. It holds the state and the queue, not the
/// database: the log it is registered on belongs to the database. It holds them weakly: a
/// live tail (a [`super::Subscription`], which outlives the database) keeps the log's
/// shared parts, hook included, and must not keep every key and value once the database is
/// gone (`tests/adversarial_ack_hook.rs`).
pub(super) fn apply_on_acknowledgement(inner: &super::Inner) -> impl Fn(Lsn, Lsn) + use<> {
    let pending = Arc::downgrade(&inner.pending);
    let state = Arc::downgrade(&inner.state);
    let state_bytes = Arc::clone(&inner.state_bytes);
    let first_pending = Arc::clone(&inner.first_pending);
    move |written, durable| {
        // A commit queued is in the log's queue: visible at `Queued` (its append returned).
        let visible_lsn = |visible| match visible {
            Visibility::Queued => Lsn::MAX,
            Visibility::Written => written,
            Visibility::Durable => durable,
        };
        let front = first_pending.load(Ordering::Acquire);
        if front == NONE_PENDING || {
            let (visible, last_lsn) = unpack_front(front);
            last_lsn > visible_lsn(visible)
        } {
            return;
        }
        let (Some(pending), Some(state)) = (pending.upgrade(), state.upgrade()) else {
            return;
        };
        let Ok(mut queue) = pending.try_lock() else {
            return;
        };
        if !front_applicable(&queue, &visible_lsn) {
            return;
        }
        let Ok(mut state) = state.try_write() else {
            return;
        };
        apply_front(
            &mut queue,
            &mut state,
            &visible_lsn,
            &state_bytes,
            &first_pending,
        );
    }
}
