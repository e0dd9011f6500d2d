//! The end of a life: a process crash or a power loss (a crash image), maybe media damage.

use std::path::Path;
use std::sync::Arc;

use keel_sim::{CrashPlan, CrashState, Damage, SECTOR, Sim, WriteFate};

use crate::harness::copy_tree;
use crate::model::Checked;
use crate::run::Run;

impl Run {
    /// Ends a life's crash as the seed chooses: a process crash (the next process goes on
    /// with the storage as it is, unsynced writes and entries still pending) or a power loss
    /// (a crash image); then recovers, maybe crashing that recovery too, and checks.
    pub(crate) fn crash_and_check(&mut self, state: &CrashState) -> Checked<bool> {
        let process = self.rng.chance(1, 2);
        let mut plan = if process {
            CrashPlan::process()
        } else {
            CrashPlan::random_power_loss(state, &mut self.rng)
        };
        let damage = self
            .rng
            .chance(1, 8)
            .then(|| self.random_damage(state))
            .flatten();
        plan.damage.extend(damage.clone());
        self.note(format!(
            "crash: {} pending writes, {} directory changes; plan {}",
            state.pending.len(),
            state.dir_changes.len(),
            describe(&plan)
        ));
        self.tally.cycles += 1;
        if process {
            self.tally.process_crashes += 1;
            let sim = Arc::clone(self.sim.as_ref().expect("the storage"));
            self.restart(&sim, self.seed ^ 0xabcd);
            if let Some(damage) = &damage {
                sim.damage(damage).unwrap();
            }
        } else {
            self.power_loss(state, &plan);
        }
        if let Ok(keep) = std::env::var("KEEL_SIM_KEEP") {
            // For a closer look: every crash image, before its recovery.
            copy_tree(
                &self.dir(self.generation),
                &Path::new(&keep).join(format!("g{}-{}", self.generation, self.tally.cycles)),
            );
        }
        self.check_image(!process, damage.is_some() || self.silent_fault, false)
    }

    /// Media damage somewhere in a segment the crash left.
    fn random_damage(&mut self, state: &CrashState) -> Option<Damage> {
        let files: Vec<_> = state
            .files()
            .into_iter()
            .filter(|(p, len)| p.extension().is_some_and(|e| e == "wal") && *len > 0)
            .collect();
        if files.is_empty() {
            return None;
        }
        let (path, len) = files[self.rng.index(files.len())].clone();
        Some(if self.rng.chance(1, 2) {
            Damage::BitFlip {
                path,
                offset: self.rng.below(len),
                bit: u8::try_from(self.rng.below(8)).unwrap(),
            }
        } else {
            Damage::ZeroSector {
                path,
                sector: self.rng.below(len / SECTOR as u64),
            }
        })
    }

    /// The crash image `plan` keeps becomes the storage of a new generation, all of it
    /// durable.
    pub(crate) fn power_loss(&mut self, state: &CrashState, plan: &CrashPlan) {
        self.tally.power_losses += 1;
        if std::mem::take(&mut self.inherited) {
            self.tally.inherited_losses += 1;
        }
        self.generation += 1;
        let image = self.dir(self.generation);
        state.materialize(plan, &image).unwrap();
        self.sim = Some(Sim::new(&image, self.seed ^ 0xabcd).unwrap());
    }
}

pub(crate) fn describe(plan: &CrashPlan) -> String {
    if plan.process && plan.damage.is_empty() {
        return "process crash".into();
    }
    if plan.process {
        return format!("process crash, damage {:?}", plan.damage);
    }
    let fates: String = plan
        .writes
        .iter()
        .map(|f| match f {
            WriteFate::Kept => 'K',
            WriteFate::Lost => '-',
            WriteFate::Torn(_) => 'T',
        })
        .collect();
    let dirs: String = plan
        .dir_live
        .iter()
        .map(|&l| if l { 'L' } else { 'D' })
        .collect();
    format!(
        "power loss, writes [{fates}], dirs [{dirs}], damage {:?}",
        plan.damage
    )
}
