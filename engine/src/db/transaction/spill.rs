//! Spills: a large transaction's writes go to the log ahead of its commit (a `BeginTxn` the
//! first time, then the entries), and are read back from there.
//!
//! A spill is acknowledged once written, not synced: the commit's own fdatasync covers it.
//! The log tells each spill's LSNs ([`keel_wal::Appended`]); a spill the log refused (a
//! poisoned or closing log, which refuses everything after) has none, and its future holds
//! the error that the first read back or the commit reports, before any LSN is used.

use std::collections::BTreeMap;
use std::sync::Mutex;

use keel_wal::{Appended, CommitFuture, Durability, Lsn, TxnId, WalEntry};

use super::Transaction;
use crate::db::Database;
use crate::db::sync::lock;
use crate::state::Change;
use crate::{Error, Result};

/// Writes of a transaction already in the log.
#[derive(Debug)]
pub(super) struct Spill {
    pub(super) txn_id: TxnId,
    /// LSN of its `BeginTxn` (`None`: refused by the log).
    pub(super) head: Option<Lsn>,
    /// Each spilled key's latest entry: its LSN (`None`: refused), and whether it is a delete.
    entries: BTreeMap<Vec<u8>, (Option<Lsn>, bool)>,
    /// The latest spill's append: waited for (written) before reading spilled entries back.
    /// (Behind a lock, as `failed` is, so reads back take `&self`.)
    last: Mutex<Option<CommitFuture>>,
    /// Why a spill failed, once one did: every later read back and the commit fail with it.
    failed: Mutex<Option<String>>,
}

impl Spill {
    /// The latest spill's append, if not waited for yet.
    pub(super) fn take_last(&self) -> Option<CommitFuture> {
        lock(&self.last).take()
    }

    /// Where `key`'s latest spilled entry is, and whether it is a delete.
    pub(super) fn entry(&self, key: &[u8]) -> Option<(Option<Lsn>, bool)> {
        self.entries.get(key).copied()
    }
}

/// The LSN of a spilled entry, once its spill is known written: a refused spill fails the
/// wait for it first (refusals are for good, so the latest spill's future fails too).
pub(super) fn written(lsn: Option<Lsn>) -> Lsn {
    lsn.expect("a refused spill is reported before its entries are read back")
}

impl Transaction {
    pub(super) fn spill_if_large(&mut self) -> Result<()> {
        if self.buffered_bytes < self.db.inner.spill_txn_bytes {
            return Ok(());
        }
        let bytes = self.buffered_bytes;
        let buffered = self.take_writes();
        let begin = self.spill.is_none();
        let txn_id = match &self.spill {
            Some(spill) => spill.txn_id,
            None => self.db.new_txn_id(),
        };
        let entries = self.spill_entries(txn_id, begin, &buffered);
        let appended = match self
            .db
            .append_uncommitted(&entries, begin.then_some(txn_id))
        {
            Ok(appended) if appended.lsns.is_some() => appended,
            Ok(refused) => {
                // The log took nothing (poisoned or closing): the put fails with its error,
                // and the writes go back into the buffer, as before the call.
                self.restore_writes(buffered, bytes);
                return Err(match refused.future.wait() {
                    Err(error) => error.into(),
                    Ok(_) => keel_wal::Error::Closed.into(),
                });
            }
            Err(error) => {
                // Nothing was queued: the writes go back into the buffer.
                self.restore_writes(buffered, bytes);
                return Err(error);
            }
        };
        self.note_spilled(txn_id, begin, buffered, appended);
        Ok(())
    }

    /// The log entries of one spill: a `BeginTxn` when it `begin`s the transaction, then
    /// `buffered`.
    fn spill_entries(&self, txn_id: TxnId, begin: bool, buffered: &[Change]) -> Vec<WalEntry> {
        let mut entries = Vec::with_capacity(buffered.len() + 1);
        if begin {
            entries.push(WalEntry::BeginTxn {
                run_id: self.run,
                txn_id,
            });
        }
        // Copied: the buffer is kept for the spill's key index, or restored on failure.
        entries.extend(Database::entries(
            self.run.as_u128(),
            txn_id,
            buffered.to_vec(),
        ));
        entries
    }

    /// Records where a spill's entries went: the LSNs the log gave them, in order (none when
    /// it refused them).
    fn note_spilled(
        &mut self,
        txn_id: TxnId,
        begin: bool,
        buffered: Vec<Change>,
        appended: Appended,
    ) {
        let data_first = appended.first_lsn().map(|first| first + u64::from(begin));
        if let (Some(lsns), Some(data_first)) = (&appended.lsns, data_first) {
            assert_eq!(
                lsns.end() + 1 - data_first,
                buffered.len() as u64,
                "one LSN per spilled entry"
            );
        }
        let spill = self.spill.get_or_insert_with(|| Spill {
            txn_id,
            head: appended.first_lsn(),
            entries: BTreeMap::new(),
            last: Mutex::new(None),
            failed: Mutex::new(None),
        });
        for (i, change) in buffered.into_iter().enumerate() {
            let (key, delete) = match change {
                Change::Put(key, _) => (key, false),
                Change::Delete(key) => (key, true),
            };
            let lsn = data_first.map(|first| first + i as u64);
            spill.entries.insert(key, (lsn, delete));
        }
        *lock(&spill.last) = Some(appended.future);
        tracing::debug!(txn_id, head = ?spill.head, "spilled a large transaction");
    }

    /// Waits until every spilled entry has been written, so it can be read back.
    pub(super) fn spilled_written(&self) -> Result<()> {
        self.spill_failure()?;
        if let Some(future) = self.spill.as_ref().and_then(Spill::take_last) {
            let outcome = future.wait();
            self.note_spill(outcome)?;
        }
        Ok(())
    }

    /// An error once a spill failed, every time it is asked (the failure is reported by the
    /// first wait only; without this, a later commit went on to read back entries that were
    /// never written, and failed with a misleading error).
    pub(super) fn spill_failure(&self) -> Result<()> {
        match self.spill.as_ref().and_then(|s| lock(&s.failed).clone()) {
            Some(why) => Err(Error::SpillFailed(why)),
            None => Ok(()),
        }
    }

    /// Records the outcome of a spill's append.
    pub(super) fn note_spill(&self, outcome: keel_wal::Result<Lsn>) -> Result<()> {
        if let (Err(error), Some(spill)) = (&outcome, self.spill.as_ref()) {
            *lock(&spill.failed) = Some(error.to_string());
        }
        outcome.map(|_| ()).map_err(Error::from)
    }

    /// This transaction's latest spilled change of each key in `range`, in key order, read
    /// back from the log (`None`: a delete).
    pub(super) fn spilled_in(&self, range: &super::KeyRange) -> Result<crate::iter::OwnWrites> {
        let Some(spill) = &self.spill else {
            return Ok(Default::default());
        };
        let spilled: Vec<(Vec<u8>, Option<Lsn>, bool)> = spill
            .entries
            .iter()
            .filter(|(key, _)| crate::range::contains(range, key))
            .map(|(key, &(lsn, delete))| (key.clone(), lsn, delete))
            .collect();
        if spilled.is_empty() {
            return Ok(Default::default());
        }
        self.spilled_written()?;
        let mut lsns: Vec<Lsn> = spilled
            .iter()
            .filter(|(_, _, delete)| !delete)
            .map(|(_, lsn, _)| written(*lsn))
            .collect();
        lsns.sort_unstable();
        let mut values = BTreeMap::new();
        self.db.read_logged(&lsns, |lsn, entry| {
            if let keel_wal::ArchivedWalEntry::Write { value, .. } = entry {
                values.insert(lsn, value.as_slice().to_vec());
            }
        })?;
        let mut value_of = |lsn: Option<Lsn>, delete: bool| match delete {
            true => Ok(None),
            false => values.remove(&written(lsn)).map(Some).ok_or_else(|| {
                Error::Metadata(format!("spilled entry at LSN {lsn:?} is not a write"))
            }),
        };
        spilled
            .into_iter()
            .map(|(key, lsn, delete)| Ok((key, value_of(lsn, delete)?)))
            .collect()
    }

    /// Every spilled write, read back from the log in LSN order (once written).
    pub(super) fn read_spilled(&self) -> Result<Vec<Change>> {
        let Some(spill) = &self.spill else {
            return Ok(Default::default());
        };
        let mut lsns: Vec<Lsn> = spill
            .entries
            .values()
            .map(|(lsn, _)| written(*lsn))
            .collect();
        lsns.sort_unstable();
        let mut earlier = Vec::with_capacity(lsns.len());
        self.db.read_logged(&lsns, |_, entry| match entry {
            keel_wal::ArchivedWalEntry::Write { key, value, .. } => {
                earlier.push(Change::Put(
                    key.as_slice().to_vec(),
                    value.as_slice().to_vec(),
                ));
            }
            keel_wal::ArchivedWalEntry::Delete { key, .. } => {
                earlier.push(Change::Delete(key.as_slice().to_vec()));
            }
            _ => {}
        })?;
        Ok(earlier)
    }
}

impl Database {
    /// Appends `entries` outside any commit (a spill or an abort), acknowledged once written:
    /// the commit's own fdatasync covers them. `opens` names the spilled transaction they
    /// begin: it is registered as open under the `pending` lock, with the append, so a
    /// checkpoint or install that follows the append sees it. Other such appends change no
    /// engine state and take no engine lock.
    pub(super) fn append_uncommitted(
        &self,
        entries: &[WalEntry],
        opens: Option<TxnId>,
    ) -> Result<Appended> {
        let batch = self.inner.wal.encode(entries)?;
        let written = Durability::Batched {
            max_delay: std::time::Duration::from_secs(1),
            max_bytes: u64::MAX,
        };
        let Some(txn_id) = opens else {
            return Ok(self.inner.wal.append_encoded_at(batch, written));
        };
        let _order = lock(&self.inner.pending);
        let appended = self.inner.wal.append_encoded_at(batch, written);
        if let Some(head) = appended.first_lsn() {
            lock(&self.inner.spills).begin(txn_id, head);
        }
        Ok(appended)
    }

    /// The value of the spilled `Write` at `lsn` (written), read back from the log.
    pub(super) fn read_spilled_value(&self, lsn: Lsn) -> Result<Option<Vec<u8>>> {
        let mut value = None;
        self.read_logged(&[lsn], |_, entry| {
            if let keel_wal::ArchivedWalEntry::Write { value: v, .. } = entry {
                value = Some(v.as_slice().to_vec());
            }
        })?;
        Ok(value)
    }

    /// Reads back the entries at `lsns` (ascending) from the log.
    fn read_logged(
        &self,
        lsns: &[Lsn],
        mut f: impl FnMut(Lsn, &keel_wal::ArchivedWalEntry),
    ) -> Result<()> {
        let Some(&first) = lsns.first() else {
            return Ok(());
        };
        let last = *lsns.last().expect("not empty");
        let mut reader = keel_wal::LogReader::open_from(&self.inner.path.join("wal"), first)?;
        let mut wanted = lsns.iter().peekable();
        // Never reads past the last entry wanted: the record after it may be mid-write.
        while wanted.peek().is_some() {
            let Some(record) = reader.next_record()? else {
                break;
            };
            if record.lsn > last {
                break;
            }
            if wanted.peek() == Some(&&record.lsn) {
                wanted.next();
                f(record.lsn, record.entry);
            }
        }
        match wanted.next() {
            None => Ok(()),
            Some(missing) => Err(Error::Metadata(format!(
                "spilled entry at LSN {missing} is not in the log"
            ))),
        }
    }
}
