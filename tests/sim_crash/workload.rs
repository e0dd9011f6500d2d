//! The workload a life runs: transactions in groups (some split in two units, some aborted),
//! Strict or Batched, syncs, checkpoints removing segments; and the acknowledgements it
//! collects (I6 checked there).

use std::time::Duration;

use keel_sim::Sim;
use keel_wal::{CommitFuture, Durability, RunId, TxnId, Wal, WalEntry};

use crate::harness::{poll_now, settle};
use crate::model::{Checked, Outcome, Txn, Unit, violation};
use crate::run::Run;

impl Run {
    fn new_data(&mut self, run: u128, id: TxnId, count: usize) -> Vec<WalEntry> {
        let run_id = RunId::from_u128(run);
        (0..count)
            .map(|i| {
                let key = format!("k{}", self.rng.below(8)).into_bytes();
                if self.rng.chance(1, 6) {
                    WalEntry::Delete {
                        run_id,
                        txn_id: id,
                        key,
                    }
                } else {
                    let len = if self.rng.chance(1, 8) {
                        600 + self.rng.index(1400)
                    } else {
                        self.rng.index(120)
                    };
                    let fill = (id + i as u64).to_le_bytes()[0];
                    WalEntry::Write {
                        run_id,
                        txn_id: id,
                        key,
                        value: vec![fill; len],
                    }
                }
            })
            .collect()
    }

    /// Queues 1..=6 units while the writer is held, so it takes them at once.
    pub(crate) fn enqueue_group(&mut self, wal: &Wal, sim: &Sim) {
        let count = 1 + self.rng.below(6);
        wal.hold_writer(true);
        for _ in 0..count {
            let open: Vec<usize> = (0..self.txns.len())
                .filter(|&i| !self.txns[i].finished && !self.txns[i].checkpointed)
                .collect();
            if !open.is_empty() && self.rng.chance(1, 3) {
                let index = open[self.rng.index(open.len())];
                self.finish_split(wal, index);
            } else {
                self.start_txn(wal);
            }
        }
        wal.hold_writer(false);
        settle(wal, sim);
    }

    pub(crate) fn start_txn(&mut self, wal: &Wal) {
        let run = 1 + u128::from(self.rng.below(3));
        let id = self.next_txn;
        self.next_txn += 1;
        let run_id = RunId::from_u128(run);
        let count = 1 + self.rng.index(3);
        let data = self.new_data(run, id, count);
        let split = self.rng.chance(1, 5);
        let outcome = if self.rng.chance(1, 8) {
            Outcome::Abort
        } else {
            Outcome::Commit
        };
        let mut entries = Vec::new();
        if split {
            entries.push(WalEntry::BeginTxn { run_id, txn_id: id });
            entries.extend(data.iter().cloned());
        } else {
            entries.extend(data.iter().cloned());
            entries.push(end_entry(outcome, run_id, id));
        }
        let strict = !split && self.rng.chance(self.strict_in_4, 4);
        let unit = self.submit(wal, &entries, strict);
        self.note(format!(
            "txn {id} run {run}: {} data, {outcome:?}, split {split}, strict {strict}",
            data.len()
        ));
        self.txns.push(Txn {
            run,
            id,
            data,
            outcome,
            units: vec![unit],
            finished: !split,
            checkpointed: false,
            seen_present: false,
            seen_absent: false,
            returned: false,
            settled: false,
            recovered_at: None,
        });
    }

    pub(crate) fn finish_split(&mut self, wal: &Wal, index: usize) {
        let (run, id, outcome) = {
            let txn = &self.txns[index];
            (txn.run, txn.id, txn.outcome)
        };
        let count = self.rng.index(3);
        let more = self.new_data(run, id, count);
        let mut entries = more.clone();
        entries.push(end_entry(outcome, RunId::from_u128(run), id));
        let strict = self.rng.chance(self.strict_in_4, 4);
        let unit = self.submit(wal, &entries, strict);
        self.note(format!(
            "txn {id}: second unit, {} more data, strict {strict}",
            more.len()
        ));
        let txn = &mut self.txns[index];
        txn.data.extend(more);
        txn.units.push(unit);
        txn.finished = true;
    }

    fn submit(&mut self, wal: &Wal, entries: &[WalEntry], strict: bool) -> Unit {
        let durability = if strict {
            Durability::Strict
        } else {
            Durability::Batched {
                max_delay: Duration::from_secs(3600),
                max_bytes: match self.batched_bytes {
                    Some(bytes) => bytes,
                    None => 512 + self.rng.below(self.segment_bytes),
                },
            }
        };
        self.tally.units += 1;
        Unit {
            entries: entries.len(),
            strict,
            future: Some(wal.append_with(entries, durability)),
            result: None,
        }
    }

    /// Polls every pending future: acknowledgements and failures so far (I6 checked here).
    pub(crate) fn collect(&mut self, syncs: &mut Vec<CommitFuture>) -> Checked<()> {
        let mut acked_strict = Vec::new();
        let mut failures = 0;
        let mut acks_after_poison = Vec::new();
        let was_poisoned = self.poisoned;
        for txn in &mut self.txns {
            for unit in &mut txn.units {
                if let Some(future) = &mut unit.future
                    && let Some(result) = poll_now(future)
                {
                    unit.future = None;
                    match &result {
                        Ok(lsn) => {
                            self.tally.acked += 1;
                            if unit.strict {
                                acked_strict.push(*lsn);
                            }
                            if was_poisoned {
                                acks_after_poison.push(*lsn);
                            }
                        }
                        Err(e) if e.starts_with("poisoned") => failures += 1,
                        Err(e) => {
                            let base = self.base.path().display().to_string();
                            self.log
                                .push(format!("a commit failed: {e}").replace(&base, "<dir>"));
                        }
                    }
                    unit.result = Some(result);
                }
            }
        }
        let mut still = Vec::new();
        for mut sync in syncs.drain(..) {
            match poll_now(&mut sync) {
                Some(Ok(lsn)) => acked_strict.push(lsn),
                Some(Err(_)) => failures += 1,
                None => still.push(sync),
            }
        }
        *syncs = still;
        if let Some(max) = acked_strict.into_iter().max() {
            self.durable_acked = self.durable_acked.max(max);
        }
        if failures > 0 && !self.poisoned {
            self.poisoned = true;
            self.note(format!("{failures} commits failed: the log is poisoned"));
        }
        if let Some(lsn) = acks_after_poison.first() {
            return violation(format!(
                "I6: LSN {lsn} was acknowledged after the log failed"
            ));
        }
        Ok(())
    }

    /// Removes the segments below the durable acknowledged point, as a checkpoint would,
    /// never cutting through a transaction.
    pub(crate) fn checkpoint(&mut self, wal: &Wal, sim: &Sim) {
        let mut below = self.durable_acked + 1;
        // Lower `below` until no transaction straddles it (each lowering can make another
        // one straddle).
        loop {
            let before = below;
            for txn in self.txns.iter().filter(|t| !t.checkpointed) {
                match (txn.first_lsn(), txn.commit_lsn()) {
                    (Some(first), Some(last)) if first < below && last >= below => below = first,
                    (Some(first), None) if first < below => below = first,
                    // Units not acknowledged yet sit above every acknowledged LSN.
                    _ => {}
                }
            }
            if below == before {
                break;
            }
        }
        if below <= 1 {
            return;
        }
        // What the checkpoint covers (everything ended below `below`) may come back whole,
        // in part (its first entries removed) or not at all; also when it failed part-way
        // (a crash inside it), having removed some segments.
        for txn in &mut self.txns {
            let ended_below = txn.recovered_at.map(|(_, c)| c).or_else(|| {
                txn.units.last().and_then(|u| match u.result {
                    Some(Ok(lsn)) => Some(lsn),
                    _ => None,
                })
            });
            let ended_below = ended_below.is_some_and(|lsn| lsn < below);
            if txn.finished && ended_below {
                txn.checkpointed = true;
            }
        }
        match wal.remove_segments_before(below) {
            Ok(removed) => {
                let first = keel_wal::dir::list_directory(wal.dir())
                    .ok()
                    .and_then(|l| l.segments.first().map(|s| s.first_lsn))
                    .unwrap_or(1);
                self.note(format!(
                    "checkpoint below {below}: {removed} segments removed, log starts at {first}"
                ));
            }
            Err(e) => self.note(format!("checkpoint below {below} failed: {e}")),
        }
        settle(wal, sim);
    }

    /// Futures still pending at the crash are neither acknowledged nor failed.
    pub(crate) fn abandon_pending(&mut self) {
        for txn in &mut self.txns {
            for unit in &mut txn.units {
                unit.future = None;
            }
        }
    }
}

fn end_entry(outcome: Outcome, run_id: RunId, txn_id: TxnId) -> WalEntry {
    match outcome {
        Outcome::Commit => WalEntry::CommitTxn { run_id, txn_id },
        Outcome::Abort => WalEntry::AbortTxn { run_id, txn_id },
    }
}
