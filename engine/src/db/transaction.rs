//! Transactions: buffered writes to one run, committed as one unit. Large ones spill to the
//! log ahead of their commit (`spill`).

mod reads;
mod spill;

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::sync::Mutex;
use std::time::Instant;

use keel_wal::{Durability, Lsn, RunId, WalEntry};

use super::Database;
use super::commit::{CommitAs, Queued};
use super::options::LOGGED_WRITE_OVERHEAD;
use super::sync::lock;
use crate::iter::Iter;
use crate::range::{self, KeyRange};
use crate::state::{Change, State};
use crate::{Error, Result, Versioned};

pub use reads::Isolation;
pub(super) use reads::Reads;
use spill::Spill;

/// Buffered writes to one run, committed as one atomic unit. Past
/// [`Options::spill_txn_bytes`] the buffered writes go to the log ahead of the commit; a
/// transaction dropped without `commit` is then closed with an `AbortTxn`.
///
/// Reads ([`Transaction::get`], [`Transaction::range`], [`Transaction::scan`]) see the
/// transaction's own writes over one consistent view of the committed state, taken at its
/// first read. (Under [`Isolation::Serializable`] a first point read is made on the state as
/// it is and the view taken at the second read, with the first read's key checked unchanged
/// in it: a read-modify-write of one key holds no view. If that key changed in between, the
/// second read fails with [`Error::Conflict`], as the commit would.) Its commit is checked
/// against the commits made since under its [`Isolation`] (serializable by default) and
/// refused with [`Error::Conflict`] when one of them changed what it read;
/// [`Database::transact`] runs a transaction again on a conflict.
/// The view holds the state as it was: a long-lived transaction keeps the values that later
/// commits replaced in memory until it ends.
///
/// A transaction holds a handle to the database: [`Database::close`] waits for none, but
/// refuses while one is alive.
///
/// [`Options::spill_txn_bytes`]: super::Options::spill_txn_bytes
#[derive(Debug)]
pub struct Transaction {
    db: Database,
    run: RunId,
    isolation: Isolation,
    /// Behind a lock so reads take `&self` (a transaction stays `Sync`).
    reads: Mutex<Reads>,
    /// `None` marks a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    buffered_bytes: usize,
    spill: Option<Spill>,
}

impl Transaction {
    /// A transaction of `run` (checked writable by the caller) with nothing buffered.
    pub(super) fn new(db: Database, run: RunId, isolation: Isolation) -> Transaction {
        Transaction {
            db,
            run,
            isolation,
            reads: Mutex::new(Reads::default()),
            writes: BTreeMap::new(),
            buffered_bytes: 0,
            spill: None,
        }
    }

    /// The run this transaction writes to.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// How this transaction's commit is checked.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// Writes `value` under `key` (in this transaction). A key and value too large for one
    /// log record ([`Error::TooLarge`]) are refused before anything is buffered. A
    /// failed spill to the log leaves the transaction as it was before this call.
    ///
    /// [`Error::TooLarge`]: crate::Error::TooLarge
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.db.check_write_size(key.len(), value.len())?;
        let previous = self.writes.insert(key.to_vec(), Some(value.to_vec()));
        let added = key.len() + value.len() + LOGGED_WRITE_OVERHEAD;
        self.buffered_bytes += added;
        self.spill_or_undo(key, previous, added)
    }

    /// Deletes `key` (in this transaction); refused and undone as [`Transaction::put`] is.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.db.check_write_size(key.len(), 0)?;
        let previous = self.writes.insert(key.to_vec(), None);
        let added = key.len() + LOGGED_WRITE_OVERHEAD;
        self.buffered_bytes += added;
        self.spill_or_undo(key, previous, added)
    }

    /// Spills when the buffer is large; when that fails, takes back the write of `key` that
    /// was just buffered (restoring `previous`), so the error leaves the transaction as it was.
    fn spill_or_undo(
        &mut self,
        key: &[u8],
        previous: Option<Option<Vec<u8>>>,
        added: usize,
    ) -> Result<()> {
        let outcome = self.spill_if_large();
        if outcome.is_err() {
            match previous {
                Some(previous) => self.writes.insert(key.to_vec(), previous),
                None => self.writes.remove(key),
            };
            self.buffered_bytes -= added;
        }
        outcome
    }

    /// Whether some of this transaction's writes are already in the log.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Puts changes taken by [`Transaction::take_writes`] back into the (empty) buffer.
    fn restore_writes(&mut self, changes: Vec<Change>, bytes: usize) {
        for change in changes {
            match change {
                Change::Put(key, value) => self.writes.insert(key, Some(value)),
                Change::Delete(key) => self.writes.insert(key, None),
            };
        }
        self.buffered_bytes = bytes;
    }

    /// Empties the buffer into changes, in key order.
    fn take_writes(&mut self) -> Vec<Change> {
        self.buffered_bytes = 0;
        std::mem::take(&mut self.writes)
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => Change::Put(key, value),
                None => Change::Delete(key),
            })
            .collect()
    }

    /// The value this transaction would commit for `key`: its own write (buffered, or read
    /// back from the log when spilled), else the committed value. (`version` of an
    /// uncommitted value is 0.)
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>> {
        let key = key.as_ref();
        match self.writes.get(key) {
            Some(Some(value)) => {
                return Ok(Some(Versioned {
                    value: value.clone(),
                    version: 0,
                }));
            }
            Some(None) => return Ok(None),
            None => {}
        }
        match self.spill.as_ref().and_then(|s| s.entry(key)) {
            Some((_, true)) => Ok(None),
            Some((lsn, false)) => {
                self.spilled_written()?;
                let value = self.db.read_spilled_value(spill::written(lsn))?;
                Ok(value.map(|value| Versioned { value, version: 0 }))
            }
            None => self.read_view(key),
        }
    }

    /// `key`'s committed value in the transaction's view, recorded as read.
    fn read_view(&self, key: &[u8]) -> Result<Option<Versioned>> {
        let mut reads = lock(&self.reads);
        let run = self.run.as_u128();
        if reads.may_read_alone(self.isolation) {
            let state = self.db.read();
            let found = state.get(run, key);
            reads.note_lone(key, found.as_ref().map(|v| v.version));
            return Ok(found);
        }
        reads.note_key(self.isolation, key);
        let view = reads.view(run, || self.db.view());
        let view = view.map_err(|key| Error::Conflict { run: self.run, key })?;
        Ok(view.get(run, key))
    }

    /// The `(key, value)` pairs in `range` that this transaction would commit, in key order
    /// from either end: its own writes (`version` 0) over its view. The whole range is
    /// recorded as read when the iterator is made, so under [`Isolation::Serializable`] a
    /// key another commit creates, changes or deletes anywhere in it is a conflict, however
    /// far the iterator is taken. Its own writes are taken at the call (later ones do not
    /// show); a spilled one is read back from the log here.
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Result<Iter> {
        self.read_range(range::owned(&range))
    }

    /// [`Transaction::range`] over every key of the run.
    pub fn iter(&self) -> Result<Iter> {
        self.read_range((std::ops::Bound::Unbounded, std::ops::Bound::Unbounded))
    }

    /// [`Transaction::range`] over every key that starts with `prefix`.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.read_range(range::prefix_range(prefix.as_ref()))
    }

    /// [`Transaction::prefix`], collected.
    pub fn scan(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<(Vec<u8>, Versioned)>> {
        Ok(self.prefix(prefix)?.collect())
    }

    fn read_range(&self, range: KeyRange) -> Result<Iter> {
        let mut own = self.spilled_in(&range)?;
        let buffered = self.writes.iter();
        let buffered = buffered.filter(|(key, _)| range::contains(&range, key));
        own.extend(buffered.map(|(key, value)| (key.clone(), value.clone())));
        let mut reads = lock(&self.reads);
        reads.note_range(self.isolation, range.clone());
        let run = self.run.as_u128();
        let view = reads.view(run, || self.db.view());
        let view = view.map_err(|key| Error::Conflict { run: self.run, key })?;
        Ok(Iter::new(view.clone(), run, range, own))
    }

    /// Commits: one unit in the log; resolves with the commit version (its LSN) once
    /// acknowledged under the database's durability ([`Options::durability`]), and the
    /// effects are then visible to every reader.
    ///
    /// Cancel-safe: dropped before the commit is queued in the log, the transaction is
    /// abandoned as if dropped (a spilled one is closed with an `AbortTxn`); dropped after,
    /// the commit goes ahead and becomes visible once acknowledged.
    ///
    /// The future needs no runtime (any executor, or [`Transaction::commit_blocking`]).
    ///
    /// [`Options::durability`]: super::Options::durability
    pub async fn commit(self) -> Result<Lsn> {
        self.commit_as(None, false).await
    }

    /// [`Transaction::commit`], acknowledged under `durability` instead of the database's
    /// (RocksDB's `WriteOptions::sync`, redb's `set_durability`).
    ///
    /// - **Stronger**: a `Strict` commit in a `Batched` or `Async` database resolves once
    ///   durable. Its effects become visible at the database's point, as any commit's.
    /// - **Weaker**: an `Async` (or `Batched`) commit in a `Strict` database resolves once
    ///   queued in the log (or written), without waiting for a sync, and is visible when it
    ///   resolves. A crash or power loss may lose it, as it may lose any commit of that mode,
    ///   but never without the commits after it: one that resolved `Strict` later (or a
    ///   checkpoint taken later) makes it durable too, since the log keeps their order.
    ///   Its effects are visible to every reader from then on, before they are durable. As
    ///   in an `Async` database, a failed write (which poisons the log) can fail an `Async`
    ///   commit whose effects were visible: one queued while the log's queue is over its
    ///   bound resolves once written, not at once.
    ///
    /// A commit is never visible before the commits ahead of it in the log: a weak commit
    /// queued behind a commit that waits for its sync also waits for that sync (as a
    /// RocksDB write does behind its write group). A stream of weak commits, or weak commits
    /// behind commits that are already acknowledged, never waits for a sync.
    pub async fn commit_with(self, durability: Durability) -> Result<Lsn> {
        self.commit_as(Some(durability), false).await
    }

    /// [`Transaction::commit`] for callers that are not async: blocks the calling thread
    /// until the commit is acknowledged. Needs no runtime; on an async runtime's thread, use
    /// `commit().await` instead (this would block that thread). When the log's writer is
    /// idle, the calling thread writes (and syncs) the commit itself instead of waking the
    /// writer thread and sleeping until it answers (`keel_wal::Wal::append_wait`).
    pub fn commit_blocking(self) -> Result<Lsn> {
        futures::executor::block_on(self.commit_as(None, true))
    }

    /// The run is checked writable where the commit is ordered (`queue_commit`), not before.
    /// `blocking`: run by [`Transaction::commit_blocking`], on the committer's own thread.
    async fn commit_as(mut self, durability: Option<Durability>, blocking: bool) -> Result<Lsn> {
        let run = self.run.as_u128();
        if self.spill.is_none() {
            let logged = self.take_writes();
            let txn_id = self.db.new_txn_id();
            let started = Instant::now();
            let (queued, wake) = {
                let reads = lock(&self.reads);
                let how = CommitAs {
                    reads: Some((&*reads, self.isolation)),
                    durability,
                    blocking,
                };
                let db = &self.db;
                db.queue_commit_waking(run, txn_id, logged, Vec::new(), None, how)?
            };
            // A commit that does not drive wakes the writer here, before the view is dropped
            // (dropping a large view takes a while); one that drives does so after.
            let wake = wake.filter(|_| blocking);
            self.release_view();
            queued.drive(wake);
            return self.finish(queued, started, blocking).await;
        }
        // The spilled writes, read back in LSN order, for the state. The spill stays in
        // `self` until the commit is queued, so a drop before then aborts it.
        self.spill_failure()?;
        if let Some(future) = self.spill.as_ref().and_then(Spill::take_last) {
            let outcome = future.await;
            self.note_spill(outcome)?;
        }
        let earlier = self.read_spilled()?;
        let spill = self.spill.as_ref().expect("checked above");
        let (txn_id, head) = (spill.txn_id, spill::written(spill.head));
        let logged = self.take_writes();
        let started = Instant::now();
        // Forgotten before the append, and put back only if nothing was queued: once the log
        // took the commit, its outcome is the log's, and a drop must not abort it, also when
        // `queue_commit` panics after the append (the writer's wake, made once `pending` is
        // released: an `AbortTxn` and an abandoned registration then let a checkpoint remove
        // the head the commit needs; `tests/adversarial_deferred_wake_spill.rs`).
        let spill = self.spill.take();
        let queued = {
            let reads = lock(&self.reads);
            let how = CommitAs {
                reads: Some((&*reads, self.isolation)),
                durability,
                blocking,
            };
            let db = &self.db;
            db.queue_commit_waking(run, txn_id, logged, earlier, Some(head), how)
        };
        let (queued, wake) = match queued {
            Ok(queued) => queued,
            Err(error) => {
                self.spill = spill;
                return Err(error);
            }
        };
        let wake = wake.filter(|_| blocking);
        self.release_view();
        queued.drive(wake);
        self.finish(queued, started, blocking).await
    }

    /// Waits for a queued commit's acknowledgement: blocking the thread when `blocking`
    /// ([`Transaction::commit_blocking`]), else as the future's awaiter.
    async fn finish(&self, queued: Queued, started: Instant, blocking: bool) -> Result<Lsn> {
        if blocking {
            self.db.finish_commit_blocking(queued, started)
        } else {
            self.db.finish_commit(queued, started).await
        }
    }

    /// Drops the view once the commit is checked and queued, not after its acknowledgement:
    /// while a view lives, every commit applied to the state copies the nodes it shares with
    /// the view (a persistent map), so a view kept through the commit's sync made each commit
    /// of the group pay for the others' (measured: `keel bench --engine --read-write`).
    fn release_view(&self) {
        *lock(&self.reads) = Reads::default();
    }

    /// Drops the transaction's writes. Nothing reaches the log, unless it spilled: then an
    /// `AbortTxn` tells recovery to drop the spilled entries.
    pub fn abort(self) {}
}

impl Database {
    /// Starts a transaction in `run` under `isolation` (see [`Isolation`]).
    pub fn transaction_with(&self, run: RunId, isolation: Isolation) -> Result<Transaction> {
        self.check_writable(run)?;
        Ok(Transaction::new(self.clone(), run, isolation))
    }

    /// Runs `body` in a new transaction of `run` and commits it; on [`Error::Conflict`] (from
    /// the commit, or from a read in `body` that `?` passed on) runs it again in a new
    /// transaction (fresh reads), up to `attempts` runs in all. Returns what
    /// `body` returned and the commit version, or the last conflict once every attempt had
    /// one. Any other error, from `body` or the commit, is returned at once (a transaction
    /// `body` failed in is dropped, so nothing of it commits).
    ///
    /// Cancel-safe as [`Transaction::commit`] is: dropped while an attempt commits, that
    /// attempt may still commit.
    pub async fn transact<T>(
        &self,
        run: RunId,
        attempts: u32,
        mut body: impl FnMut(&mut Transaction) -> Result<T>,
    ) -> Result<(T, Lsn)> {
        let mut attempt = 1;
        loop {
            let mut txn = self.transaction(run)?;
            let outcome = match body(&mut txn) {
                Ok(out) => txn.commit().await.map(|lsn| (out, lsn)),
                // Dropped before the wait below, as a commit's conflict drops it: not held
                // (its view, its handle, a spill's registration) until the queued commits
                // are acknowledged (`tests/adversarial_lone_read.rs`).
                Err(error) => {
                    drop(txn);
                    Err(error)
                }
            };
            match outcome {
                Ok(done) => return Ok(done),
                Err(Error::Conflict { .. }) if attempt < attempts => attempt += 1,
                Err(error) => return Err(error),
            }
            self.wait_for_queued_commits().await?;
        }
    }

    /// Waits until every commit queued in the log now is acknowledged, so a new view shows
    /// them: a transaction that conflicted with one still queued (its key in a commit that
    /// was not yet durable, under `Strict`) would otherwise conflict again on every retry
    /// until it is, spinning through its attempts.
    async fn wait_for_queued_commits(&self) -> Result<()> {
        let queued = self
            .inner
            .first_pending
            .load(std::sync::atomic::Ordering::Acquire);
        if queued == super::commit::NONE_PENDING {
            return Ok(());
        }
        match self.inner.durability {
            keel_wal::Durability::Async { .. } => Ok(()),
            _ => Ok(self.inner.wal.sync().await.map(|_| ())?),
        }
    }

    /// The state with every acknowledged commit applied, as an immutable view: O(1).
    pub(super) fn view(&self) -> State {
        self.read().clone()
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(spill) = self.spill.take() {
            let abort = WalEntry::AbortTxn {
                run_id: self.run,
                txn_id: spill.txn_id,
            };
            if let Err(error) = self.db.append_uncommitted(&[abort], None) {
                tracing::warn!(%error, txn_id = spill.txn_id, "could not log the abort of a spilled transaction; recovery will drop it as incomplete");
            }
            lock(&self.db.inner.spills).abandon(spill.txn_id);
            // Its log is what a checkpoint drops: a workload of aborts alone would otherwise
            // never ask for one (`tests/adversarial_checkpoint_drop.rs`).
            self.db.maybe_checkpoint();
        }
    }
}
