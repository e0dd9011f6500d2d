//! Transactions: buffered writes to one run, committed as one unit. Large ones spill to the
//! log ahead of their commit (`spill`).

mod spill;

use std::collections::BTreeMap;

use keel_wal::{Lsn, RunId, WalEntry};

use super::Database;
use super::sync::lock;
use crate::state::Change;
use crate::{Result, Versioned};

use spill::Spill;

/// Buffered writes to one run, committed as one atomic unit. Past
/// [`Options::spill_txn_bytes`] the buffered writes go to the log ahead of the commit; a
/// transaction dropped without `commit` is then closed with an `AbortTxn`.
///
/// [`Options::spill_txn_bytes`]: super::Options::spill_txn_bytes
#[derive(Debug)]
pub struct Transaction {
    db: Database,
    run: RunId,
    /// `None` marks a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    buffered_bytes: usize,
    spill: Option<Spill>,
}

impl Transaction {
    /// A transaction of `run` (checked writable by the caller) with nothing buffered.
    pub(super) fn new(db: Database, run: RunId) -> Transaction {
        Transaction {
            db,
            run,
            writes: BTreeMap::new(),
            buffered_bytes: 0,
            spill: None,
        }
    }

    /// The run this transaction writes to.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// Writes `value` under `key` (in this transaction). A key and value too large for one
    /// log record ([`Error::ValueTooLarge`]) are refused before anything is buffered. A
    /// failed spill to the log leaves the transaction as it was before this call.
    ///
    /// [`Error::ValueTooLarge`]: crate::Error::ValueTooLarge
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.check_write_size(key.len(), value.len())?;
        let previous = self.writes.insert(key.to_vec(), Some(value.to_vec()));
        self.buffered_bytes += key.len() + value.len();
        self.spill_or_undo(key, previous, key.len() + value.len())
    }

    /// Deletes `key` (in this transaction); refused and undone as [`Transaction::put`] is.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.db.check_write_size(key.len(), 0)?;
        let previous = self.writes.insert(key.to_vec(), None);
        self.buffered_bytes += key.len();
        self.spill_or_undo(key, previous, key.len())
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
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>> {
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
            None => self.db.get(self.run, key),
        }
    }

    /// Commits: one unit in the log; resolves with the commit version (its LSN) once
    /// acknowledged, and the effects are then visible to every reader.
    ///
    /// Cancel-safe: dropped before the commit is queued in the log, the transaction is
    /// abandoned as if dropped (a spilled one is closed with an `AbortTxn`); dropped after,
    /// the commit goes ahead and becomes visible once acknowledged.
    pub async fn commit(mut self) -> Result<Lsn> {
        self.db.check_writable(self.run)?;
        let run = self.run.as_u128();
        if self.spill.is_none() {
            let logged = self.take_writes();
            return self.db.commit_changes(run, logged).await;
        }
        // The spilled writes, read back in LSN order, for the state. The spill stays in
        // `self` until the commit is queued, so a drop before then aborts it.
        self.spill_failure()?;
        if let Some(future) = self.spill.as_mut().and_then(|s| s.last.take()) {
            let outcome = future.await;
            self.note_spill(outcome)?;
        }
        let earlier = self.read_spilled()?;
        let spill = self.spill.as_ref().expect("checked above");
        let (txn_id, head) = (spill.txn_id, spill::written(spill.head));
        let logged = self.take_writes();
        let started = std::time::Instant::now();
        // Forgotten before the append, and put back only if nothing was queued: once the log
        // took the commit, its outcome is the log's, and a drop must not abort it, also when
        // `queue_commit` panics after the append (the writer's wake, made once `pending` is
        // released: an `AbortTxn` and an abandoned registration then let a checkpoint remove
        // the head the commit needs; `tests/adversarial_deferred_wake_spill.rs`).
        let spill = self.spill.take();
        let future = match self
            .db
            .queue_commit(run, txn_id, logged, earlier, Some(head))
        {
            Ok(future) => future,
            Err(error) => {
                self.spill = spill;
                return Err(error);
            }
        };
        self.db.finish_commit(future, started).await
    }

    /// Drops the transaction's writes. Nothing reaches the log, unless it spilled: then an
    /// `AbortTxn` tells recovery to drop the spilled entries.
    pub fn abort(self) {}
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
        }
    }
}
