//! Recovery after a crash, maybe itself crashed part-way (I5), then checked again.

use std::path::Path;
use std::sync::Arc;

use keel_recovery::{
    CommittedTxn, RecoveryOptions, RecoveryReport, Replay, ReplayError, recover_with,
};
use keel_sim::{CrashPlan, Sim};
use keel_wal::{Lsn, TxnId, WalEntry};

use crate::checker::check_contiguous;
use crate::crash::describe;
use crate::harness::copy_tree;
use crate::model::{Checked, violation};
use crate::run::Run;

/// A recovery sink keeping every committed transaction, owned.
#[derive(Default)]
pub(crate) struct Collect {
    pub(crate) txns: Vec<((u128, TxnId), Lsn, Vec<WalEntry>)>,
    pub(crate) first_lsns: Vec<Lsn>,
}

impl Replay for Collect {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        let entries = txn.entries().map(|(_, e)| e.to_owned_entry()).collect();
        self.txns
            .push(((txn.run_id.as_u128(), txn.txn_id), txn.commit_lsn, entries));
        self.first_lsns.push(txn.first_lsn);
        Ok(())
    }
}

fn recovered(dir: &Path, sim: &Arc<Sim>) -> Result<(RecoveryReport, Collect), String> {
    let mut collect = Collect::default();
    let options = RecoveryOptions {
        storage: Arc::clone(sim) as _,
        ..RecoveryOptions::default()
    };
    recover_with(dir, options, &mut collect)
        .map(|report| (report, collect))
        .map_err(|e| e.to_string())
}

/// The highest LSN a valid durable witness in `dir` claims (0: none). Read before recovery:
/// damage cut below it is no torn tail but a loss the witness exists to refuse.
fn witnessed(dir: &Path) -> Lsn {
    let Ok(listing) = keel_wal::dir::list_directory(dir) else {
        return 0;
    };
    listing
        .segments
        .iter()
        .filter_map(|segment| {
            let file = std::fs::File::open(&segment.path).ok()?;
            let header = keel_wal::segment::read_header(&file, segment).ok()?;
            keel_wal::witness::read(&file, &segment.path, &header).ok()?
        })
        .map(|witness| witness.durable_lsn)
        .max()
        .unwrap_or(0)
}

impl Run {
    /// Recovers the current storage (maybe crashing that recovery first) and checks every
    /// invariant; `power_loss` when one happened since the last recovery, `damage` when this
    /// crash damaged the storage or a silent fault hit this life. Damage of an earlier life
    /// that a power loss may bring back (a damaged segment whose removal was not durable)
    /// may make recovery refuse the log, but excuses no lost commit: without the bug this
    /// test looks for, what comes back is a sealed segment, never the tail.
    /// `quiet`: nothing was in flight or unsynced at the crash, so the image is the log as
    /// written and its recovery must cut and zero nothing (a recycled segment's earlier
    /// contents after its records are not a torn tail, say).
    pub(crate) fn check_image(
        &mut self,
        mut power_loss: bool,
        damage: bool,
        quiet: bool,
    ) -> Checked<bool> {
        let refusable = damage || self.damage_may_return;
        let witnessed = witnessed(&self.dir(self.generation));
        let mut reference = None;
        if self.crash_recoveries && self.rng.chance(1, 4) {
            let lost = self.crash_a_recovery(&mut reference);
            power_loss |= lost;
        }
        let dir = self.dir(self.generation);
        let sim = Arc::clone(self.sim.as_ref().expect("the storage"));
        let first = recovered(&dir, &sim);
        let (report, collect) = match (first, &reference) {
            (Err(e), _) if refusable => {
                self.note(format!("recovery refused the damaged log: {e}"));
                self.tally.refused += 1;
                return Ok(false);
            }
            (Err(e), _) => return violation(format!("recovery failed without damage: {e}")),
            (Ok(ok), _) => ok,
        };
        if let Some(Ok((_, reference))) = &reference
            && reference.txns != collect.txns
        {
            return violation(format!(
                "I5: a recovery crashed part-way then redone returned {} transactions, an \
                 uninterrupted one {}",
                collect.txns.len(),
                reference.txns.len()
            ));
        }
        self.note(format!(
            "recovered: {} txns, next LSN {}, truncated {} bytes",
            collect.txns.len(),
            report.next_lsn,
            report.bytes_truncated
        ));
        if quiet && (report.cut_at.is_some() || report.bytes_truncated != 0) {
            return violation(format!(
                "a crash with nothing in flight or unsynced left a log its recovery cut: {report}"
            ));
        }
        check_contiguous(&dir, &report)?;
        self.check_txns(&collect, &report, power_loss, damage, witnessed)?;
        // I5: again, nothing to do and the same result.
        match recovered(&dir, &sim) {
            Ok((again, collect_again)) => {
                if again.bytes_truncated != 0 || !again.segments_discarded.is_empty() {
                    return violation(format!("I5: a second recovery changed the log: {again}"));
                }
                if collect_again.txns != collect.txns {
                    return violation("I5: a second recovery returned other transactions");
                }
            }
            Err(e) => return violation(format!("I5: a second recovery failed: {e}")),
        }
        // After a power loss the recovery saw all there is: what it accepted stays.
        self.damage_may_return = refusable && !power_loss;
        // Old generations are not needed any more.
        for generation in 0..=self.generation {
            if generation < self.generation {
                let _ = std::fs::remove_dir_all(self.dir(generation));
            }
            let _ = std::fs::remove_dir_all(self.base.path().join(format!("g{generation}-ref")));
        }
        Ok(true)
    }

    /// I5 under a crash: recovers a copy of the storage without interruption for reference
    /// (into `reference`), and the storage itself with its recovery crashed at one of the
    /// events the uninterrupted one had (its file and directory syncs), or later; then a
    /// process crash or a power loss. Returns whether it was a power loss.
    fn crash_a_recovery(
        &mut self,
        reference: &mut Option<Result<(RecoveryReport, Collect), String>>,
    ) -> bool {
        let dir = self.dir(self.generation);
        let copy = self.base.path().join(format!("g{}-ref", self.generation));
        copy_tree(&dir, &copy);
        let reference_sim = Sim::new(&copy, self.seed).unwrap();
        *reference = Some(recovered(&copy, &reference_sim));
        let events = reference_sim.events();
        drop(reference_sim);
        let sim = Arc::clone(self.sim.as_ref().expect("the storage"));
        let unsynced = self.restart(&sim, self.seed ^ 0x5eed);
        let after = self.rng.below(events + 1);
        sim.crash_after_events(after);
        let _ = recovered(&dir, &sim);
        let Some(state) = sim.crashed() else {
            // Not crashed: what it did stays, and the armed crash goes with the process.
            self.restart(&sim, self.seed ^ 0xabcd);
            return false;
        };
        self.tally.recovery_crashes += 1;
        let plan = CrashPlan::random(&state, &mut self.rng);
        self.note(format!(
            "recovery crashed at event {after}: plan {}",
            describe(&plan)
        ));
        self.traces.push(sim.trace());
        if plan.process {
            self.restart(&sim, self.seed ^ 0xabcd);
            return false;
        }
        if unsynced.any() {
            // The power loss may take what an earlier process left unsynced, which the
            // reference kept: only the invariants after it apply.
            self.note("no reference: the power loss may drop what was unsynced before".into());
            *reference = None;
        }
        drop(sim);
        self.power_loss(&state, &plan);
        true
    }
}
