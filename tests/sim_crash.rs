//! Crash-and-recover cycles on simulated storage (`keel_sim`), checked against the
//! invariants of DESIGN section 6 after every crash:
//!
//! - I1 every acknowledged commit is recovered byte-exact (Strict ones after any crash;
//!   Batched ones after a process crash, or when a later Strict commit or sync covered them);
//!   and what one recovery returned, every later one returns too (across a power loss once
//!   the log was reopened after it: the opening syncs what recovery found in the page cache);
//! - I2 the recovered log is a contiguous LSN prefix (read back record by record);
//! - I3 transactions are all-or-nothing, aborted and unfinished ones never appear;
//! - I4 nothing recovered was never committed, and nothing a recovery dropped comes back;
//! - I5 a second recovery changes nothing, and one crashed part-way ends where an
//!   uninterrupted one does;
//! - I6 after a failed sync nothing more is acknowledged (and what the failed sync dropped
//!   was never acknowledged: I1 after the crash catches it);
//! - I7 damage (bit flips, zeroed sectors, lost and misdirected writes) is refused or cut
//!   off as a torn tail, never served and never a panic;
//! - I8 appends work after recovery.
//!
//! `KEEL_SIM_CYCLES` (default 300) and `KEEL_SIM_SECONDS` (default 120) bound the random
//! run; `KEEL_SIM_SEED` runs one seed (printed by every failure, with the operation trace).
//! `KEEL_SIM_EXHAUSTIVE=full` runs the whole small-case sweep (the default runs part of it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use keel_recovery::{
    CommittedTxn, RecoveryOptions, RecoveryReport, Replay, ReplayError, recover_with,
};
use keel_sim::{
    Broken, CrashPlan, CrashState, Damage, SECTOR, SectorFate, Sim, SimFaults, SimRng, Unsynced,
    WriteFate,
};
use keel_wal::{CommitFuture, Durability, LogReader, Lsn, RunId, TxnId, Wal, WalEntry, WalOptions};

// ---------------------------------------------------------------------------------------
// The workload model

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Commit,
    Abort,
}

#[derive(Debug)]
struct Unit {
    entries: usize,
    strict: bool,
    future: Option<CommitFuture>,
    /// `Some(Ok(last lsn))` once acknowledged, `Some(Err)` once failed.
    result: Option<Result<Lsn, String>>,
}

#[derive(Debug, Clone)]
struct Txn {
    run: u128,
    id: TxnId,
    data: Vec<WalEntry>,
    outcome: Outcome,
    units: Vec<Unit>,
    /// The unit carrying the outcome was submitted.
    finished: bool,
    /// Entirely below a checkpoint's removal: may or may not be recovered.
    checkpointed: bool,
    /// A successful recovery returned it, and the log was reopened after that recovery
    /// (the opening syncs what recovery found in the page cache): from then on it must
    /// always come back.
    seen_present: bool,
    /// A successful recovery did not return it: it must never come back.
    seen_absent: bool,
    /// The newest successful recovery returned it; binding across a process crash at once,
    /// across a power loss once the log reopened (`seen_present`).
    returned: bool,
    /// A recovery after its life decided its fate: from then on only `seen_present` counts.
    settled: bool,
    /// First and commit LSN, as a recovery found them.
    recovered_at: Option<(Lsn, Lsn)>,
}

impl Txn {
    fn commit_unit(&self) -> Option<&Unit> {
        self.finished.then(|| self.units.last()).flatten()
    }

    fn commit_lsn(&self) -> Option<Lsn> {
        if let Some((_, commit)) = self.recovered_at {
            return Some(commit);
        }
        match self.commit_unit()?.result {
            Some(Ok(lsn)) => Some(lsn),
            _ => None,
        }
    }

    fn first_lsn(&self) -> Option<Lsn> {
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
struct Violation(String);

type Checked<T> = Result<T, Violation>;

fn violation<T>(message: impl Into<String>) -> Checked<T> {
    Err(Violation(message.into()))
}

/// What a run did, for the summary line.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    cycles: u64,
    units: u64,
    acked: u64,
    checked_commits: u64,
    refused: u64,
    tail_losses: u64,
    /// Of those, commits acknowledged as written (`Batched`) that no sync was known to cover:
    /// never known durable, so no durable mark or witness could claim them.
    tail_losses_unsynced: u64,
    recovery_crashes: u64,
    faults: u64,
    /// Crashes that left the storage as it was for the next process (no power loss).
    process_crashes: u64,
    power_losses: u64,
    /// Crashes at a storage event inside an operation (not between two steps).
    crashes_inside: u64,
    /// Lives whose process started on storage with writes or entries not yet durable.
    nondurable_starts: u64,
    /// Power losses that could drop what an earlier life left not durable.
    inherited_losses: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
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
    }
}

fn poll_now(future: &mut CommitFuture) -> Option<Result<Lsn, String>> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match std::pin::Pin::new(future).poll(&mut cx) {
        Poll::Ready(result) => Some(result.map_err(|e| match e {
            keel_wal::Error::Poisoned { .. } => format!("poisoned: {e}"),
            other => other.to_string(),
        })),
        Poll::Pending => None,
    }
}

use std::future::Future;

/// Waits until the writer is blocked: in the simulated backend or on an empty queue.
fn settle(wal: &Wal, sim: &Sim) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut spins = 0u32;
    while !(sim.writer_blocked() || wal.writer_idle()) {
        assert!(Instant::now() < deadline, "the writer did not settle");
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn wal_options(segment_bytes: u64, depth: usize, sim: &Arc<Sim>) -> WalOptions {
    WalOptions {
        segment_bytes,
        max_record_bytes: 3072,
        io_depth: depth,
        storage: Arc::clone(sim) as _,
        ..WalOptions::default()
    }
}

/// A recovery sink keeping every committed transaction, owned.
#[derive(Default)]
struct Collect {
    txns: Vec<((u128, TxnId), Lsn, Vec<WalEntry>)>,
    first_lsns: Vec<Lsn>,
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

/// I2: the log reads back as one contiguous run of LSNs ending where recovery said.
fn check_contiguous(dir: &Path, report: &RecoveryReport) -> Checked<()> {
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

// ---------------------------------------------------------------------------------------
// One seed

/// A life crashed inside an operation crashes at one of its first this many storage events
/// (half the lives have fewer than 20, one in ten more than 44).
const CRASH_EVENTS: u64 = 48;

struct Run {
    seed: u64,
    rng: SimRng,
    base: tempfile::TempDir,
    generation: u32,
    txns: Vec<Txn>,
    next_txn: TxnId,
    log: Vec<String>,
    traces: Vec<Vec<String>>,
    tally: Tally,
    /// Highest LSN a Strict commit or a sync acknowledged in this life.
    durable_acked: Lsn,
    poisoned: bool,
    /// Faults that can make acknowledged data silently bad in this life.
    silent_fault: bool,
    broken: Broken,
    segment_bytes: u64,
    depth: usize,
    /// Crash some recoveries part-way (off in the exhaustive sweep, which crashes elsewhere).
    crash_recoveries: bool,
    /// Chance in 4 that a unit is Strict (the others are Batched).
    strict_in_4: u64,
    /// Unsynced bytes of Batched units before a sync (random when `None`).
    batched_bytes: Option<u64>,
    /// The simulated storage of the newest generation: a process crash leaves it to the
    /// next process as it is, a power loss replaces it with its crash image.
    sim: Option<Arc<Sim>>,
    /// A process started on this storage while something was not durable (since the last
    /// power loss).
    inherited: bool,
    /// Damage or a silent fault of an earlier life may still come back: no power loss since
    /// (e.g. a damaged segment whose removal a later power loss undoes).
    damage_may_return: bool,
}

/// Where simulated directories go: tmpfs when there is one.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new().prefix("keel-sim-").tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("keel-sim-")
        .tempdir()
        .unwrap()
}

impl Run {
    fn new(seed: u64, broken: Broken) -> Run {
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
            depth,
            crash_recoveries: true,
            strict_in_4: 3,
            batched_bytes: None,
            sim: None,
            inherited: false,
            damage_may_return: false,
        }
    }

    fn dir(&self, generation: u32) -> PathBuf {
        self.base.path().join(format!("g{generation}"))
    }

    /// Logs a line, with the scratch directory's path left out so that runs compare.
    fn note(&mut self, line: String) {
        let line = self.without_base(&line);
        self.log.push(line);
    }

    /// `text` with the scratch directory's path left out.
    fn without_base(&self, text: &str) -> String {
        text.replace(&self.base.path().display().to_string(), "<dir>")
    }

    fn report(&self, violation: &Violation) -> String {
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
    fn run(&mut self, lives: u32) -> Checked<()> {
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
    fn restart(&mut self, sim: &Sim, seed: u64) -> Unsynced {
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
        let wal =
            match keel_recovery::open_wal(dir, wal_options(self.segment_bytes, self.depth, sim)) {
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
    fn enqueue_group(&mut self, wal: &Wal, sim: &Sim) {
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

    fn start_txn(&mut self, wal: &Wal) {
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

    fn finish_split(&mut self, wal: &Wal, index: usize) {
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
    fn collect(&mut self, syncs: &mut Vec<CommitFuture>) -> Checked<()> {
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
    fn checkpoint(&mut self, wal: &Wal, sim: &Sim) {
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
    fn abandon_pending(&mut self) {
        for txn in &mut self.txns {
            for unit in &mut txn.units {
                unit.future = None;
            }
        }
    }

    /// Ends a life's crash as the seed chooses: a process crash (the next process goes on
    /// with the storage as it is, unsynced writes and entries still pending) or a power loss
    /// (a crash image); then recovers, maybe crashing that recovery too, and checks.
    fn crash_and_check(&mut self, state: &CrashState) -> Checked<bool> {
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
        self.check_image(!process, damage.is_some() || self.silent_fault)
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
    fn power_loss(&mut self, state: &CrashState, plan: &CrashPlan) {
        self.tally.power_losses += 1;
        if std::mem::take(&mut self.inherited) {
            self.tally.inherited_losses += 1;
        }
        self.generation += 1;
        let image = self.dir(self.generation);
        state.materialize(plan, &image).unwrap();
        self.sim = Some(Sim::new(&image, self.seed ^ 0xabcd).unwrap());
    }

    /// Recovers the current storage (maybe crashing that recovery first) and checks every
    /// invariant; `power_loss` when one happened since the last recovery, `damage` when this
    /// crash damaged the storage or a silent fault hit this life. Damage of an earlier life
    /// that a power loss may bring back (a damaged segment whose removal was not durable)
    /// may make recovery refuse the log, but excuses no lost commit: without the bug this
    /// test looks for, what comes back is a sealed segment, never the tail.
    fn check_image(&mut self, mut power_loss: bool, damage: bool) -> Checked<bool> {
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

    fn check_txns(
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

fn end_entry(outcome: Outcome, run_id: RunId, txn_id: TxnId) -> WalEntry {
    match outcome {
        Outcome::Commit => WalEntry::CommitTxn { run_id, txn_id },
        Outcome::Abort => WalEntry::AbortTxn { run_id, txn_id },
    }
}

fn describe(plan: &CrashPlan) -> String {
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

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// The exhaustive sweep of small cases

/// Steps of an exhaustive scenario: a group of units every third step, otherwise one
/// completion, and a sync request at step 7.
const SCRIPT_STEPS: usize = 26;

fn script_step(run: &mut Run, step: usize, wal: &Wal, sim: &Sim, syncs: &mut Vec<CommitFuture>) {
    if step == 7 {
        wal.hold_writer(true);
        syncs.push(wal.sync());
        wal.hold_writer(false);
        settle(wal, sim);
    } else if step.is_multiple_of(3) {
        let count = 1 + run.rng.below(4);
        wal.hold_writer(true);
        for _ in 0..count {
            let open: Vec<usize> = (0..run.txns.len())
                .filter(|&i| !run.txns[i].finished)
                .collect();
            match open.first() {
                Some(&index) if run.rng.chance(1, 2) => run.finish_split(wal, index),
                _ => run.start_txn(wal),
            }
        }
        wal.hold_writer(false);
        settle(wal, sim);
    } else {
        sim.advance();
        settle(wal, sim);
    }
}

/// Scenarios from this seed on commit `Strict` (the others `Batched`): the writer goes idle
/// after each group and writes its durable witness, so crash points fall inside witness
/// chains too (a witness write torn, lost or in flight must never make recovery refuse).
const FIRST_STRICT_SCENARIO: u64 = 9;

/// Runs scenario `seed` for `steps` steps from an empty log and crashes there.
fn scenario_prefix(seed: u64, steps: usize) -> (Run, CrashState) {
    let mut run = Run::new(seed, Broken::default());
    // Two sizes: one rotates every few groups, one lets pending writes pile up.
    run.segment_bytes = if seed.is_multiple_of(2) { 8192 } else { 32768 };
    run.depth = 3;
    run.crash_recoveries = false;
    run.strict_in_4 = if seed >= FIRST_STRICT_SCENARIO { 4 } else { 0 };
    run.batched_bytes = Some(1 << 20);
    let dir = run.dir(0);
    let sim = Sim::new(&dir, seed).unwrap();
    sim.set_manual(true);
    let wal =
        keel_recovery::open_wal(&dir, wal_options(run.segment_bytes, run.depth, &sim)).unwrap();
    settle(&wal, &sim);
    let mut syncs = Vec::new();
    for step in 0..steps {
        script_step(&mut run, step, &wal, &sim, &mut syncs);
        run.collect(&mut syncs)
            .unwrap_or_else(|v| panic!("{}", run.report(&v)));
    }
    let state = sim.crash();
    drop(wal);
    run.abandon_pending();
    run.traces.push(sim.trace());
    (run, state)
}

/// Every plan the sweep tries at one crash point: a process crash; each subset of the
/// pending writes (all of them when there are up to 8) under each choice of directory
/// changes (all combinations of up to 3); and, for every kept write of each subset, each
/// tear point with the rest of the write old, zeroed or garbage, and the reverse (the
/// first sectors missing, the rest new).
fn exhaustive_plans(state: &CrashState) -> Vec<CrashPlan> {
    let n = state.pending.len().min(8);
    let d = state.dir_changes.len();
    let dir_choices: Vec<Vec<bool>> = if d <= 3 {
        (0..1u32 << d)
            .map(|bits| (0..d).map(|i| bits & (1 << i) != 0).collect())
            .collect()
    } else {
        vec![vec![false; d], vec![true; d]]
    };
    let mut plans = vec![CrashPlan::process()];
    for mask in 0..1u64 << n {
        for dirs in &dir_choices {
            // Writes past the 8th are kept when the 8th is (a prefix), else lost.
            let mut writes: Vec<WriteFate> = (0..state.pending.len())
                .map(|i| {
                    let bit = i.min(n.saturating_sub(1));
                    if n > 0 && mask & (1 << bit) != 0 {
                        WriteFate::Kept
                    } else {
                        WriteFate::Lost
                    }
                })
                .collect();
            let base = CrashPlan {
                writes: writes.clone(),
                dir_live: dirs.clone(),
                ..CrashPlan::default()
            };
            plans.push(base);
            for i in 0..n {
                if mask & (1 << i) == 0 {
                    continue;
                }
                let sectors = state.pending[i].data.len().div_ceil(SECTOR);
                for t in 1..sectors {
                    let fills = [
                        SectorFate::Old,
                        SectorFate::Zeroed,
                        SectorFate::Garbage(u8::try_from(t % 256).unwrap()),
                    ];
                    for fill in fills {
                        let mut fates = vec![SectorFate::New; t];
                        fates.resize(sectors, fill);
                        writes[i] = WriteFate::Torn(fates);
                        plans.push(CrashPlan {
                            writes: writes.clone(),
                            dir_live: dirs.clone(),
                            ..CrashPlan::default()
                        });
                    }
                    for fill in [SectorFate::Old, SectorFate::Zeroed] {
                        let mut fates = vec![fill; t];
                        fates.resize(sectors, SectorFate::New);
                        writes[i] = WriteFate::Torn(fates);
                        plans.push(CrashPlan {
                            writes: writes.clone(),
                            dir_live: dirs.clone(),
                            ..CrashPlan::default()
                        });
                    }
                }
                writes[i] = WriteFate::Kept;
            }
        }
    }
    plans
}

/// Sweeps scenarios `seeds`: every crash point, every plan. Returns (scenarios, crash
/// points, cases), or the first failure's report.
fn exhaustive(
    seeds: std::ops::Range<u64>,
    max_steps: usize,
    seconds: u64,
) -> Result<(u64, u64, u64), String> {
    let started = Instant::now();
    let (mut scenarios, mut points, mut cases) = (0, 0, 0);
    let mut max_pending = 0;
    for seed in seeds {
        for steps in 0..=max_steps {
            if started.elapsed() > Duration::from_secs(seconds) {
                println!("sim exhaustive: time box reached; at most {max_pending} pending writes");
                return Ok((scenarios, points, cases));
            }
            let (mut run, state) = scenario_prefix(seed, steps);
            points += 1;
            max_pending = max_pending.max(state.pending.len());
            let model = run.txns.clone();
            let durable = run.durable_acked;
            for plan in exhaustive_plans(&state) {
                cases += 1;
                run.txns = model.clone();
                run.durable_acked = durable;
                run.generation += 1;
                let image = run.dir(run.generation);
                state.materialize(&plan, &image).unwrap();
                run.sim = Some(Sim::new(&image, seed ^ 0xabcd).unwrap());
                let checked = run.check_image(!plan.process, false);
                if let Err(violation) = checked {
                    run.note(format!(
                        "exhaustive: scenario {seed}, crash after step {steps}, plan {}",
                        describe(&plan)
                    ));
                    return Err(run.report(&violation));
                }
            }
        }
        scenarios += 1;
    }
    println!("sim exhaustive: at most {max_pending} pending writes at a crash point");
    Ok((scenarios, points, cases))
}

#[test]
fn sim_exhaustive_small_cases() {
    let full = std::env::var("KEEL_SIM_EXHAUSTIVE").is_ok_and(|v| v == "full");
    // The default run (plain `cargo test`) takes the first crash points of one Batched and
    // one Strict scenario.
    let runs = if full {
        let scenarios = env_u64("KEEL_SIM_SCENARIOS", 10);
        vec![(1..1 + scenarios, SCRIPT_STEPS)]
    } else {
        let strict = FIRST_STRICT_SCENARIO;
        vec![(1..2, 9), (strict..strict + 1, 9)]
    };
    let seconds = env_u64("KEEL_SIM_EXHAUSTIVE_SECONDS", 600);
    for (seeds, steps) in runs {
        match exhaustive(seeds.clone(), steps, seconds) {
            Ok((scenarios, points, cases)) => println!(
                "sim exhaustive: {scenarios} scenarios (seeds {seeds:?}) crashed after each of \
                 their first {steps} steps: {points} crash points, {cases} crash images checked"
            ),
            Err(report) => panic!("{report}"),
        }
    }
}

/// Runs one seed of the random driver: 1 to 5 lives.
fn run_seed(seed: u64, broken: Broken) -> (Run, Checked<()>) {
    let mut run = Run::new(seed, broken);
    let lives = 1 + u32::try_from(run.rng.below(5)).unwrap();
    let result = run.run(lives);
    (run, result)
}

/// Runs seeds from `first` until `cycles` crash cycles or `seconds` have passed; returns
/// the tally, or the first failure's report.
fn run_seeds(
    first: u64,
    cycles: u64,
    seconds: u64,
    broken: Broken,
) -> Result<(Tally, u64), String> {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut seeds = 0;
    let mut seed = first;
    while tally.cycles < cycles && started.elapsed() < Duration::from_secs(seconds) {
        let (run, result) = run_seed(seed, broken);
        tally.add(run.tally);
        seeds += 1;
        if let Err(violation) = result {
            return Err(format!(
                "{}-- found after {} crash-and-recover cycles over {seeds} seeds --",
                run.report(&violation),
                tally.cycles
            ));
        }
        seed += 1;
    }
    Ok((tally, seeds))
}

/// A sync taken while a Batched write is in flight is held back until the write completes
/// (a sync covers only completed writes); then it must go out at once. It used to wait for
/// the next request or the Batched timer (here an hour), which also made seed 4136 of the
/// random driver depend on thread timing. The writer takes the sync while a write is in
/// flight when the sync was queued during a rotation's drain, as here.
#[test]
fn sim_a_held_sync_goes_out_when_the_writes_before_it_complete() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("wal");
    let sim = Sim::new(&dir, 7).unwrap();
    sim.set_manual(true);
    let options = WalOptions {
        durability: Durability::Batched {
            max_delay: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        },
        ..wal_options(8192, 4, &sim)
    };
    let wal = keel_recovery::open_wal(&dir, options).unwrap();
    // Dropped first, also when a check fails: lets the log close without manual steps.
    struct Auto<'a>(&'a Sim);
    impl Drop for Auto<'_> {
        fn drop(&mut self) {
            self.0.set_manual(false);
        }
    }
    let _auto = Auto(&sim);
    settle(&wal, &sim);
    let entry = |txn_id, len| WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id,
        key: b"k".to_vec(),
        value: vec![7; len],
    };
    // The second record does not fit in the first segment: the writer rotates, and blocks
    // until the first segment's write and sync complete.
    wal.hold_writer(true);
    let mut first = wal.append(&[entry(1, 2500)]);
    let mut second = wal.append(&[entry(2, 1500)]);
    wal.hold_writer(false);
    settle(&wal, &sim);
    let mut synced = wal.sync();
    settle(&wal, &sim);
    // The first segment's write and sync; then the writer installs the second segment,
    // writes the second record (no sync: Batched) and takes the sync request.
    sim.advance();
    settle(&wal, &sim);
    sim.advance();
    settle(&wal, &sim);
    assert!(matches!(poll_now(&mut first), Some(Ok(_))));
    assert_eq!(sim.operations_in_flight(), 1, "the second record's write");
    assert!(
        poll_now(&mut synced).is_none(),
        "no sync before that write completes"
    );
    sim.advance();
    settle(&wal, &sim);
    assert!(matches!(poll_now(&mut second), Some(Ok(_))));
    assert_eq!(
        sim.operations_in_flight(),
        1,
        "the held sync was submitted once the write completed"
    );
    sim.advance();
    settle(&wal, &sim);
    assert!(
        matches!(poll_now(&mut synced), Some(Ok(_))),
        "the sync resolved"
    );
}

/// Issue 15, blind spot 1; a regression test of the directory sync at reopening. The random
/// driver found these seeds: each crashes a process between a segment's rename and its
/// directory fsync (seed 724 while the log creates its first segment, seed 928 inside a
/// rotation), the next process recovers and acknowledges Strict commits in that segment, and
/// a power loss keeping the directory's durable entries then lost them ("I1: acknowledged
/// transaction (1, 1) at LSN 8 was lost (recovered log ends before LSN 1)", and "(3, 60) at
/// LSN 186 ... before LSN 174"). With the open's directory sync taken out again, all four
/// fail; with it, all pass. The sync adds storage events, so a seed's path moves with the
/// fix: at least one of them must still crash between a rename and its directory sync and
/// then lose power over what the crashed process left unsynced, or the test says so.
#[test]
fn sim_seeds_724_and_928_process_crash_before_a_segment_name_is_durable() {
    let mut reached = Vec::new();
    for seed in [724, 928, 2445, 6737] {
        let (run, result) = run_seed(seed, Broken::default());
        if let Err(violation) = result {
            panic!("{}", run.report(&violation));
        }
        let crashed_after_rename = run.traces.iter().any(|trace| {
            trace.windows(2).any(|pair| {
                pair[0].contains("] sync file spare-")
                    && pair[1].contains("CRASH at sync directory")
            })
        });
        if crashed_after_rename && run.tally.nondurable_starts > 0 && run.tally.inherited_losses > 0
        {
            reached.push(seed);
        }
    }
    assert!(
        !reached.is_empty(),
        "no seed still crashes between a segment's rename and its directory sync and then \
         loses power over what the crashed process left unsynced"
    );
}

/// The first difference between two runs of one seed, for the failure message.
fn first_difference(a: &[String], b: &[String]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "line {i}:\n  first:  {}\n  second: {}\n  the lines before, the same in both:\n    {}",
            a[i],
            b[i],
            a[i.saturating_sub(40)..i].join("\n    ")
        ),
        None => format!(
            "one is a prefix of the other ({} and {} lines)",
            a.len(),
            b.len()
        ),
    }
}

/// The seed is the whole story: the same seed gives the same driver log and the same
/// storage traces, operation for operation. By default 42 seeds; `KEEL_SIM_REPLAY_FIRST` and
/// `KEEL_SIM_REPLAY_COUNT` check a range instead (at most `KEEL_SIM_REPLAY_SECONDS`).
#[test]
fn sim_a_seed_replays_exactly() {
    let seeds: Vec<u64> = match std::env::var("KEEL_SIM_REPLAY_COUNT") {
        Ok(count) => {
            let first = env_u64("KEEL_SIM_REPLAY_FIRST", 1);
            let count: u64 = count.parse().expect("KEEL_SIM_REPLAY_COUNT is a number");
            (first..first + count).collect()
        }
        Err(_) => (1..=40).chain([51, 4593]).collect(),
    };
    let limit = Duration::from_secs(env_u64("KEEL_SIM_REPLAY_SECONDS", u64::MAX / 4));
    let started = Instant::now();
    let (mut events, mut checked) = (0, 0);
    for &seed in &seeds {
        if started.elapsed() > limit {
            break;
        }
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (run, outcome) = run_seed(seed, Broken::default());
                let outcome = outcome.map_err(|v| run.without_base(&v.0));
                (outcome, run.log, run.traces)
            })
            .collect();
        assert_eq!(runs[0].0, runs[1].0, "seed {seed}: outcomes differ");
        assert!(
            runs[0].1 == runs[1].1,
            "seed {seed}: driver logs differ at {}",
            first_difference(&runs[0].1, &runs[1].1)
        );
        assert_eq!(
            runs[0].2.len(),
            runs[1].2.len(),
            "seed {seed}: trace counts differ"
        );
        for (i, (a, b)) in runs[0].2.iter().zip(&runs[1].2).enumerate() {
            assert!(
                a == b,
                "seed {seed}: storage trace {i} differs at {}\n-- driver log (first run) --\n{}",
                first_difference(a, b),
                runs[0].1.join("\n")
            );
        }
        events += runs[0].2.iter().map(Vec::len).sum::<usize>();
        checked += 1;
    }
    assert!(
        events > 1000,
        "only {events} storage events in all: a trivial comparison"
    );
    println!("{checked} seeds replayed twice: {events} storage events each time, identical");
}

#[test]
fn sim_random_crash_cycles() {
    if let Ok(seed) = std::env::var("KEEL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("KEEL_SIM_SEED is a number");
        match run_seeds(seed, 1, u64::MAX, Broken::default()) {
            Ok((tally, _)) => println!("seed {seed}: passed, {tally:?}"),
            Err(report) => panic!("{report}"),
        }
        return;
    }
    let cycles = env_u64("KEEL_SIM_CYCLES", 300);
    let seconds = env_u64("KEEL_SIM_SECONDS", 120);
    let first = env_u64("KEEL_SIM_FIRST_SEED", 1);
    match run_seeds(first, cycles, seconds, Broken::default()) {
        Ok((tally, seeds)) => println!(
            "sim: {} crash-and-recover cycles over {seeds} seeds from {first} ({} process \
             crashes, {} power losses, {} of them able to drop what an earlier process left \
             unsynced; {} crashes inside an operation; {} lives started from non-durable \
             state): {} units, {} acknowledged, {} acknowledged commits checked, {} recoveries \
             crashed, {} faults armed, {} damaged logs refused, {} damaged tails cut (known \
             limit; {} of them acknowledged as written and never known durable)",
            tally.cycles,
            tally.process_crashes,
            tally.power_losses,
            tally.inherited_losses,
            tally.crashes_inside,
            tally.nondurable_starts,
            tally.units,
            tally.acked,
            tally.checked_commits,
            tally.recovery_crashes,
            tally.faults,
            tally.refused,
            tally.tail_losses,
            tally.tail_losses_unsynced
        ),
        Err(report) => panic!("{report}"),
    }
}

/// The checker checked: a writer that acknowledges before its fdatasync is caught.
#[test]
fn sim_catches_a_writer_that_acknowledges_before_fdatasync() {
    let broken = Broken {
        ack_before_sync: true,
        ..Broken::default()
    };
    match run_seeds(1, 2000, 60, broken) {
        Ok((tally, seeds)) => panic!(
            "the broken writer went unnoticed for {seeds} seeds ({} cycles)",
            tally.cycles
        ),
        Err(report) => {
            let first = report.lines().next().unwrap_or_default().to_owned();
            println!("caught: {first}");
        }
    }
}

/// The checker checked: a rotation that does not sync the directory is caught.
#[test]
fn sim_catches_a_rotation_without_directory_sync() {
    let broken = Broken {
        skip_rotation_dir_sync: true,
        ..Broken::default()
    };
    match run_seeds(1, 4000, 60, broken) {
        Ok((tally, seeds)) => panic!(
            "the broken rotation went unnoticed for {seeds} seeds ({} cycles)",
            tally.cycles
        ),
        Err(report) => {
            let first = report.lines().next().unwrap_or_default().to_owned();
            println!("caught: {first}");
        }
    }
}

/// The checker checked: a durable witness that claims records before their fdatasync (a
/// crash may lose them) is caught: recovery refuses a log no damage touched. The witness's own
/// fdatasync makes those records durable too, so only a crash between its write and its sync
/// that keeps the witness and loses a record shows it: seed 2058 is the first to. The search
/// starts at seed 2000 to keep the test short.
#[test]
fn sim_catches_a_witness_that_claims_unsynced_records() {
    let broken = Broken {
        witness_before_sync: true,
        ..Broken::default()
    };
    match run_seeds(2000, 4000, 60, broken) {
        Ok((tally, seeds)) => panic!(
            "the broken witness went unnoticed for {seeds} seeds ({} cycles)",
            tally.cycles
        ),
        Err(report) => {
            let first = report.lines().next().unwrap_or_default().to_owned();
            println!("caught: {first}");
        }
    }
}
