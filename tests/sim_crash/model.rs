//! The workload model: what the driver knows of each transaction it wrote (its units, their
//! acknowledgements, what recoveries found of it), and the tally of a run.

use keel_wal::{CommitFuture, Lsn, TxnId, WalEntry};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    Commit,
    Abort,
}

#[derive(Debug)]
pub(crate) struct Unit {
    pub(crate) entries: usize,
    pub(crate) strict: bool,
    pub(crate) future: Option<CommitFuture>,
    /// `Some(Ok(last lsn))` once acknowledged, `Some(Err)` once failed.
    pub(crate) result: Option<Result<Lsn, String>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Txn {
    pub(crate) run: u128,
    pub(crate) id: TxnId,
    pub(crate) data: Vec<WalEntry>,
    pub(crate) outcome: Outcome,
    pub(crate) units: Vec<Unit>,
    /// The unit carrying the outcome was submitted.
    pub(crate) finished: bool,
    /// Entirely below a checkpoint's removal: may or may not be recovered.
    pub(crate) checkpointed: bool,
    /// A successful recovery returned it, and the log was reopened after that recovery
    /// (the opening syncs what recovery found in the page cache): from then on it must
    /// always come back.
    pub(crate) seen_present: bool,
    /// A successful recovery did not return it: it must never come back.
    pub(crate) seen_absent: bool,
    /// The newest successful recovery returned it; binding across a process crash at once,
    /// across a power loss once the log reopened (`seen_present`).
    pub(crate) returned: bool,
    /// A recovery after its life decided its fate: from then on only `seen_present` counts.
    pub(crate) settled: bool,
    /// First and commit LSN, as a recovery found them.
    pub(crate) recovered_at: Option<(Lsn, Lsn)>,
}

impl Txn {
    pub(crate) fn commit_unit(&self) -> Option<&Unit> {
        self.finished.then(|| self.units.last()).flatten()
    }

    pub(crate) fn commit_lsn(&self) -> Option<Lsn> {
        if let Some((_, commit)) = self.recovered_at {
            return Some(commit);
        }
        match self.commit_unit()?.result {
            Some(Ok(lsn)) => Some(lsn),
            _ => None,
        }
    }

    pub(crate) fn first_lsn(&self) -> Option<Lsn> {
        if let Some((first, _)) = self.recovered_at {
            return Some(first);
        }
        let unit = self.units.first()?;
        match unit.result {
            Some(Ok(lsn)) => Some(lsn + 1 - unit.entries as u64),
            _ => None,
        }
    }
}

impl Clone for Unit {
    /// A copy of what is known; the future (if any) stays with the original.
    fn clone(&self) -> Self {
        Unit {
            entries: self.entries,
            strict: self.strict,
            future: None,
            result: self.result.clone(),
        }
    }
}

/// A violated invariant.
#[derive(Debug)]
pub(crate) struct Violation(pub(crate) String);

pub(crate) type Checked<T> = Result<T, Violation>;

pub(crate) fn violation<T>(message: impl Into<String>) -> Checked<T> {
    Err(Violation(message.into()))
}

/// What a run did, for the summary line.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) cycles: u64,
    pub(crate) units: u64,
    pub(crate) acked: u64,
    pub(crate) checked_commits: u64,
    pub(crate) refused: u64,
    pub(crate) tail_losses: u64,
    /// Of those, commits acknowledged as written (`Batched`) that no sync was known to cover:
    /// never known durable, so no durable mark or witness could claim them.
    pub(crate) tail_losses_unsynced: u64,
    pub(crate) recovery_crashes: u64,
    pub(crate) faults: u64,
    /// Crashes that left the storage as it was for the next process (no power loss).
    pub(crate) process_crashes: u64,
    pub(crate) power_losses: u64,
    /// Crashes at a storage event inside an operation (not between two steps).
    pub(crate) crashes_inside: u64,
    /// Lives whose process started on storage with writes or entries not yet durable.
    pub(crate) nondurable_starts: u64,
    /// Power losses that could drop what an earlier life left not durable.
    pub(crate) inherited_losses: u64,
    /// Segments started in recycled files (`WalOptions::recycle_segments`).
    pub(crate) recycled_segments: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, other: Tally) {
        self.cycles += other.cycles;
        self.units += other.units;
        self.acked += other.acked;
        self.checked_commits += other.checked_commits;
        self.refused += other.refused;
        self.tail_losses += other.tail_losses;
        self.tail_losses_unsynced += other.tail_losses_unsynced;
        self.recovery_crashes += other.recovery_crashes;
        self.faults += other.faults;
        self.process_crashes += other.process_crashes;
        self.power_losses += other.power_losses;
        self.crashes_inside += other.crashes_inside;
        self.nondurable_starts += other.nondurable_starts;
        self.inherited_losses += other.inherited_losses;
        self.recycled_segments += other.recycled_segments;
    }
}
