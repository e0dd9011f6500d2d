//! One seed of the random driver: its state ([`Run`]), its lives, each ended by a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_sim::{Broken, Sim, SimFaults, SimRng, Unsynced};
use keel_wal::{CommitFuture, Lsn, TxnId};

use crate::harness::{scratch, settle, wal_options};
use crate::model::{Checked, Tally, Txn, Violation, violation};

/// A life crashed inside an operation crashes at one of its first this many storage events
/// (half the lives have fewer than 20, one in ten more than 44).
const CRASH_EVENTS: u64 = 48;

pub(crate) struct Run {
    pub(crate) seed: u64,
    pub(crate) rng: SimRng,
    pub(crate) base: tempfile::TempDir,
    pub(crate) generation: u32,
    pub(crate) txns: Vec<Txn>,
    pub(crate) next_txn: TxnId,
    pub(crate) log: Vec<String>,
    pub(crate) traces: Vec<Vec<String>>,
    pub(crate) tally: Tally,
    /// Highest LSN a Strict commit or a sync acknowledged in this life.
    pub(crate) durable_acked: Lsn,
    pub(crate) poisoned: bool,
    /// Faults that can make acknowledged data silently bad in this life.
    pub(crate) silent_fault: bool,
    pub(crate) broken: Broken,
    pub(crate) segment_bytes: u64,
    /// Freed segments kept and written over (odd seeds: 2; even ones delete them).
    pub(crate) recycle: usize,
    pub(crate) depth: usize,
    /// Crash some recoveries part-way (off in the exhaustive sweep, which crashes elsewhere).
    pub(crate) crash_recoveries: bool,
    /// Chance in 4 that a unit is Strict (the others are Batched).
    pub(crate) strict_in_4: u64,
    /// Unsynced bytes of Batched units before a sync (random when `None`).
    pub(crate) batched_bytes: Option<u64>,
    /// The simulated storage of the newest generation: a process crash leaves it to the
    /// next process as it is, a power loss replaces it with its crash image.
    pub(crate) sim: Option<Arc<Sim>>,
    /// A process started on this storage while something was not durable (since the last
    /// power loss).
    pub(crate) inherited: bool,
    /// Damage or a silent fault of an earlier life may still come back: no power loss since
    /// (e.g. a damaged segment whose removal a later power loss undoes).
    pub(crate) damage_may_return: bool,
}

impl Run {
    pub(crate) fn new(seed: u64, broken: Broken) -> Run {
        let mut rng = SimRng::new(seed);
        let segment_bytes = [8192u64, 12288, 16384, 65536][rng.index(4)];
        let depth = 1 + rng.index(4);
        Run {
            seed,
            rng,
            base: scratch(),
            generation: 0,
            txns: Vec::new(),
            next_txn: 1,
            log: Vec::new(),
            traces: Vec::new(),
            tally: Tally::default(),
            durable_acked: 0,
            poisoned: false,
            silent_fault: false,
            broken,
            segment_bytes,
            recycle: if seed % 2 == 1 { 2 } else { 0 },
            depth,
            crash_recoveries: true,
            strict_in_4: 3,
            batched_bytes: None,
            sim: None,
            inherited: false,
            damage_may_return: false,
        }
    }

    pub(crate) fn dir(&self, generation: u32) -> PathBuf {
        self.base.path().join(format!("g{generation}"))
    }

    /// Logs a line, with the scratch directory's path left out so that runs compare.
    pub(crate) fn note(&mut self, line: String) {
        let line = self.without_base(&line);
        self.log.push(line);
    }

    /// `text` with the scratch directory's path left out.
    pub(crate) fn without_base(&self, text: &str) -> String {
        text.replace(&self.base.path().display().to_string(), "<dir>")
    }

    pub(crate) fn report(&self, violation: &Violation) -> String {
        let mut out = format!(
            "seed {} (replay: KEEL_SIM_SEED={}): {}\n-- driver log --\n",
            self.seed, self.seed, violation.0
        );
        for line in &self.log {
            out.push_str(line);
            out.push('\n');
        }
        for (i, trace) in self.traces.iter().enumerate() {
            out.push_str(&format!("-- sim trace of life {i} --\n"));
            for line in trace {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Runs `lives` lives of the log, each ended by a crash; returns what it did.
    pub(crate) fn run(&mut self, lives: u32) -> Checked<()> {
        std::fs::create_dir_all(self.dir(0)).unwrap();
        self.sim = Some(Sim::new(&self.dir(0), self.seed).unwrap());
        for life in 0..lives {
            let dir = self.dir(self.generation);
            let sim = Arc::clone(self.sim.as_ref().expect("the storage of this generation"));
            if life > 0 {
                // The database process starts where recovery left the storage.
                let unsynced = self.restart(&sim, self.seed ^ (u64::from(life) << 48));
                if unsynced.any() {
                    self.tally.nondurable_starts += 1;
                }
            }
            sim.set_broken(self.broken);
            sim.set_manual(true);
            let done = self.life(&dir, &sim, life)?;
            if !done {
                return Ok(());
            }
        }
        Ok(())
    }

    /// A new process on the current storage (see `Sim::restart`).
    pub(crate) fn restart(&mut self, sim: &Sim, seed: u64) -> Unsynced {
        let unsynced = sim
            .restart(seed)
            .unwrap_or_else(|e| panic!("seed {}: restart: {e}", self.seed));
        if unsynced.any() {
            self.inherited = true;
            self.note(format!(
                "restart: {} writes, {} directory changes not durable",
                unsynced.writes, unsynced.dir_changes
            ));
        }
        unsynced
    }

    /// One life: open, work, crash, recover, check. Returns false when the log was refused
    /// (damage) and the run cannot go on.
    fn life(&mut self, dir: &Path, sim: &Arc<Sim>, life: u32) -> Checked<bool> {
        self.durable_acked = 0;
        self.poisoned = false;
        self.silent_fault = false;
        if self.rng.chance(1, 3) {
            // A crash at a storage event: inside the opening (the log's creation included),
            // a rotation, a spare's making, a checkpoint's removals, or at a submission or
            // sync of the writer.
            let at = self.rng.below(CRASH_EVENTS);
            self.note(format!("life {life}: crash armed at event {at} from now"));
            sim.crash_after_events(at);
        }
        let wal = match keel_recovery::open_wal(
            dir,
            wal_options(self.segment_bytes, self.depth, self.recycle, sim),
        ) {
            Ok(wal) => wal,
            Err(e) if sim.is_crashed() => {
                self.note(format!("life {life}: crashed while opening: {e}"));
                self.tally.crashes_inside += 1;
                let state = sim.crash();
                self.traces.push(sim.trace());
                return self.crash_and_check(&state);
            }
            Err(e) => return violation(format!("I8: reopening after recovery failed: {e}")),
        };
        // The opening made durable what the last recovery returned.
        for txn in &mut self.txns {
            txn.seen_present |= txn.returned;
        }
        let first_lsn = wal.next_lsn();
        self.note(format!(
            "life {life}: opened {} at LSN {first_lsn}",
            dir.display()
        ));
        settle(&wal, sim);
        let first_txn = self.txns.len();
        let faulty = self.rng.chance(1, 3);
        if faulty {
            self.arm_fault(sim);
        }
        let steps = 4 + self.rng.below(28);
        let mut syncs: Vec<CommitFuture> = Vec::new();
        for _ in 0..steps {
            if sim.is_crashed() {
                break;
            }
            match self.rng.below(10) {
                0..=4 => self.enqueue_group(&wal, sim),
                5..=7 => {
                    for _ in 0..1 + self.rng.below(4) {
                        sim.advance();
                        settle(&wal, sim);
                    }
                }
                8 => {
                    wal.hold_writer(true);
                    syncs.push(wal.sync());
                    wal.hold_writer(false);
                    settle(&wal, sim);
                }
                _ => self.checkpoint(&wal, sim),
            }
            self.collect(&mut syncs)?;
        }
        let drained = self.rng.chance(1, 2);
        if drained {
            // Let everything in flight finish before the crash.
            while sim.advance() {
                settle(&wal, sim);
            }
        }
        self.collect(&mut syncs)?;
        let crashed_inside = sim.is_crashed();
        if crashed_inside {
            self.tally.crashes_inside += 1;
            self.note("crashed inside an operation".into());
        }
        if drained && !faulty && !crashed_inside {
            // I8: with nothing in flight and no fault, every commit of this life (the first
            // one after a recovery included) has been acknowledged.
            let unresolved = self.txns[first_txn..]
                .iter()
                .flat_map(|t| &t.units)
                .filter(|u| !matches!(u.result, Some(Ok(_))))
                .count();
            if unresolved > 0 {
                return violation(format!(
                    "I8: {unresolved} commits of life {life} were not acknowledged"
                ));
            }
        }
        self.tally.recycled_segments += wal.stats().segments_recycled;
        let state = sim.crash();
        drop(wal);
        self.abandon_pending();
        self.traces.push(sim.trace());
        self.crash_and_check(&state)
    }

    fn arm_fault(&mut self, sim: &Sim) {
        let mut faults = SimFaults::default();
        let at = self.rng.below(6);
        match self.rng.below(4) {
            0 => faults.fail_sync = Some(at),
            1 => faults.enospc_after_bytes = Some(self.rng.below(self.segment_bytes)),
            2 => {
                faults.lose_write = Some(at);
                self.silent_fault = true;
            }
            _ => {
                faults.misdirect_write = Some(at);
                self.silent_fault = true;
            }
        }
        self.tally.faults += 1;
        self.note(format!("armed {faults:?}"));
        sim.arm(&faults);
    }
}
