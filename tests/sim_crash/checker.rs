//! The checker: what a recovery returned against what the driver knows (I1-I4, I7), and
//! the recovered log read back record by record (I2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use keel_recovery::RecoveryReport;
use keel_wal::{LogReader, Lsn, TxnId};

use crate::model::{Checked, Outcome, violation};
use crate::recovery::Collect;
use crate::run::Run;

/// I2: the log reads back as one contiguous run of LSNs ending where recovery said.
pub(crate) fn check_contiguous(dir: &Path, report: &RecoveryReport) -> Checked<()> {
    let mut reader = match LogReader::open(dir) {
        Ok(reader) => reader,
        Err(e) => return violation(format!("I2: the recovered log does not open: {e}")),
    };
    let mut last: Option<Lsn> = None;
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                if let Some(prev) = last
                    && record.lsn != prev + 1
                {
                    return violation(format!("I2: LSN {} follows {prev}", record.lsn));
                }
                last = Some(record.lsn);
            }
            Ok(None) => break,
            Err(e) => return violation(format!("I2: reading the recovered log: {e}")),
        }
    }
    let next = last.map_or(report.next_lsn, |l| l + 1);
    if next != report.next_lsn {
        return violation(format!(
            "I2: the log ends before LSN {next}, recovery said {}",
            report.next_lsn
        ));
    }
    Ok(())
}

impl Run {
    pub(crate) fn check_txns(
        &mut self,
        collect: &Collect,
        report: &RecoveryReport,
        power_loss: bool,
        damage: bool,
        witnessed: Lsn,
    ) -> Checked<()> {
        let by_key: BTreeMap<(u128, TxnId), usize> = self
            .txns
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.run, t.id), i))
            .collect();
        let mut present = BTreeSet::new();
        for ((key, commit_lsn, entries), &first_lsn) in collect.txns.iter().zip(&collect.first_lsns)
        {
            let Some(&index) = by_key.get(key) else {
                return violation(format!(
                    "I4: recovered transaction {key:?} was never written"
                ));
            };
            let txn = &self.txns[index];
            if !present.insert(index) {
                return violation(format!("I4: transaction {key:?} recovered twice"));
            }
            if txn.checkpointed {
                continue;
            }
            if txn.outcome == Outcome::Abort {
                return violation(format!("I3: aborted transaction {key:?} was recovered"));
            }
            if !txn.finished {
                return violation(format!(
                    "I3: transaction {key:?} was recovered before its commit was written"
                ));
            }
            if entries != &txn.data {
                return violation(format!(
                    "I3/I7: transaction {key:?} at LSN {commit_lsn} came back different: {} \
                     entries, {} written",
                    entries.len(),
                    txn.data.len()
                ));
            }
            if txn.seen_absent && !txn.checkpointed {
                return violation(format!(
                    "I4: transaction {key:?} came back after a recovery had dropped it"
                ));
            }
            if let Some(lsn) = txn.commit_lsn()
                && lsn != *commit_lsn
            {
                return violation(format!(
                    "I1: transaction {key:?} acknowledged at LSN {lsn}, recovered at {commit_lsn}"
                ));
            }
            self.txns[index].recovered_at = Some((first_lsn, *commit_lsn));
        }
        let durable = self.durable_acked;
        let mut checked = 0;
        for (index, txn) in self.txns.iter_mut().enumerate() {
            if txn.checkpointed || txn.outcome == Outcome::Abort {
                continue;
            }
            let is_present = present.contains(&index);
            let acked = txn.commit_unit().and_then(|unit| match unit.result {
                Some(Ok(lsn)) => Some((lsn, unit.strict)),
                _ => None,
            });
            let known_durable = match acked {
                Some((lsn, strict)) if !txn.settled => strict || lsn <= durable,
                _ => false,
            } || txn.seen_present;
            let required = match acked {
                Some((lsn, strict)) if !txn.settled => !power_loss || strict || lsn <= durable,
                _ => false,
            } || txn.seen_present
                || (txn.returned && !power_loss);
            if required {
                checked += 1;
            }
            if required && !is_present {
                let lsn = txn.commit_lsn().unwrap_or(0);
                if damage && lsn >= report.next_lsn && lsn > witnessed {
                    // Damage to the newest acknowledged records with nothing after them
                    // and no durable witness claiming them (written within the writer's idle
                    // delay before the crash, or never synced) looks like a torn tail: a
                    // known limit (docs/RECOVERY.md). One the witness in the image claimed
                    // is no such case: recovery must refuse it, never cut it.
                    self.tally.tail_losses += 1;
                    self.tally.tail_losses_unsynced += u64::from(!known_durable);
                    let line =
                        format!("damage cut acknowledged LSN {lsn} off the tail (known limit)");
                    self.log.push(line);
                } else {
                    let what = if acked.is_some() {
                        "acknowledged"
                    } else {
                        "recovered"
                    };
                    return violation(format!(
                        "I1: {what} transaction ({}, {}) at LSN {lsn} was lost (recovered log \
                         ends before LSN {}; a durable witness claimed through LSN {witnessed})",
                        txn.run, txn.id, report.next_lsn
                    ));
                }
            }
            if is_present {
                txn.returned = true;
            } else if txn.finished {
                txn.returned = false;
                txn.seen_present = false;
                txn.seen_absent = true;
            }
        }
        self.tally.checked_commits += checked;
        // Transactions that did not make it are over: never finished later.
        for txn in &mut self.txns {
            txn.settled = true;
            if !txn.finished {
                txn.finished = true;
                txn.outcome = Outcome::Abort;
            }
        }
        Ok(())
    }
}
