//! Which part of the log a checkpoint or a snapshot install may remove.
//!
//! A spilled transaction's entries lie in the log from its `BeginTxn` (its *head*) to its
//! commit, possibly across many segments. Recovery rebuilds the state from a snapshot at `S`
//! plus every transaction committed above `S`, so it needs the whole span of each of those,
//! head included, even when the head lies below `S`. The log is therefore kept from
//!
//! ```text
//! keep_from(base) = min(base + 1, head of every spill that is open, or committed above base)
//! ```
//!
//! where `base` is the oldest snapshot the database may still start from (the previous
//! readable one for a checkpoint, which keeps it as the fallback of a damaged newest one; the
//! installed one for an install, which removes all others). Every spill is registered under
//! the engine's `pending` lock, with the append that begins it (at the LSN the log reports for
//! it), and its commit LSN is noted with the append that commits it, so a checkpoint that races a commit always sees either
//! the open spill or the committed one: there is no moment where it is neither.
//!
//! A committed spill is forgotten once `base` reaches its commit (every snapshot the database
//! may fall back to holds it); an aborted or abandoned one when its `AbortTxn` is queued.

use std::collections::BTreeMap;

use keel_wal::{Lsn, TxnId};

/// Where one spilled transaction's entries lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpillSpan {
    /// LSN of its `BeginTxn`.
    pub head: Lsn,
    /// LSN of its commit, once the commit is queued.
    pub commit: Option<Lsn>,
}

/// The spilled transactions whose heads may still be needed.
#[derive(Debug, Default)]
pub(crate) struct Spills {
    spans: BTreeMap<TxnId, SpillSpan>,
}

impl Spills {
    /// A spill that begins at `head` (its `BeginTxn` was just queued).
    pub fn begin(&mut self, txn_id: TxnId, head: Lsn) {
        let previous = self.spans.insert(txn_id, SpillSpan { head, commit: None });
        assert!(previous.is_none(), "transaction {txn_id} began twice");
    }

    /// The spill's commit was queued at `commit`.
    pub fn commit(&mut self, txn_id: TxnId, commit: Lsn) {
        let span = self
            .spans
            .get_mut(&txn_id)
            .expect("a spilled transaction commits once, after it began");
        assert!(span.head < commit, "a commit follows its head");
        span.commit = Some(commit);
    }

    /// A spill found committed at open (recovery replayed it above the loaded snapshot).
    pub fn committed(&mut self, txn_id: TxnId, head: Lsn, commit: Lsn) {
        self.spans.insert(
            txn_id,
            SpillSpan {
                head,
                commit: Some(commit),
            },
        );
    }

    /// The spill ended without a commit (its `AbortTxn` was queued, or could not be).
    pub fn abandon(&mut self, txn_id: TxnId) {
        self.spans.remove(&txn_id);
    }

    /// The first LSN the log must keep when `base` is the oldest snapshot a restart may
    /// load (see the module doc), and forgets the spills that `base` holds.
    pub fn keep_from(&mut self, base: Lsn) -> Lsn {
        self.spans
            .retain(|_, span| span.commit.is_none_or(|commit| commit > base));
        let heads = self.spans.values().map(|span| span.head).min();
        heads.map_or(base + 1, |head| head.min(base + 1))
    }

    /// The oldest head of the spills that began below `from` and are open or committed at
    /// or above it: a change feed from `from` delivers them, so it reads (and holds the log)
    /// from there. `None` when there is none.
    pub fn oldest_head_for(&self, from: Lsn) -> Option<Lsn> {
        self.spans
            .values()
            .filter(|span| span.head < from && span.commit.is_none_or(|commit| commit >= from))
            .map(|span| span.head)
            .min()
    }

    /// Spills tracked (open, or committed above the last base).
    pub fn len(&self) -> usize {
        self.spans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_spilled_keeps_from_above_the_base() {
        assert_eq!(Spills::default().keep_from(10), 11);
    }

    #[test]
    fn an_open_spill_keeps_its_head() {
        let mut spills = Spills::default();
        spills.begin(1, 4);
        assert_eq!(spills.keep_from(10), 4);
        assert_eq!(spills.len(), 1);
    }

    #[test]
    fn a_spill_committed_above_the_base_keeps_its_head() {
        let mut spills = Spills::default();
        spills.begin(1, 4);
        spills.commit(1, 12);
        assert_eq!(spills.keep_from(10), 4);
        // Once the base holds the commit, the head is no longer needed.
        assert_eq!(spills.keep_from(12), 13);
        assert_eq!(spills.len(), 0);
    }

    #[test]
    fn a_feed_reads_from_the_heads_of_the_spills_it_will_deliver() {
        let mut spills = Spills::default();
        spills.begin(1, 4);
        spills.commit(1, 12);
        spills.begin(2, 6);
        spills.begin(3, 30);
        assert_eq!(spills.oldest_head_for(10), Some(4));
        // Committed below `from`: not delivered, not read.
        assert_eq!(spills.oldest_head_for(13), Some(6));
        assert_eq!(spills.oldest_head_for(4), None);
    }

    #[test]
    fn a_head_above_the_base_does_not_lower_it() {
        let mut spills = Spills::default();
        spills.begin(1, 20);
        assert_eq!(spills.keep_from(10), 11);
    }

    #[test]
    fn an_abandoned_spill_keeps_nothing() {
        let mut spills = Spills::default();
        spills.begin(1, 4);
        spills.abandon(1);
        assert_eq!(spills.keep_from(10), 11);
    }
}
