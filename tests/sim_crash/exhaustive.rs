//! The exhaustive sweep of small cases: scripted scenarios crashed after every step, under
//! every crash plan of the pending writes and directory changes.

use std::time::{Duration, Instant};

use keel_sim::{Broken, CrashPlan, CrashState, SECTOR, SectorFate, Sim, WriteFate};
use keel_wal::{CommitFuture, Wal};

use crate::crash::describe;
use crate::harness::{env_u64, settle, wal_options};
use crate::run::Run;

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

/// Scenarios from this seed on start in a recycled segment (`WalOptions::recycle_segments`):
/// a warm-up fills segments, frees them as a checkpoint does, and appends until a freed file
/// is written over; the crash points then fall in a segment whose bytes past the records are
/// its earlier contents, not zeros (torn writes over earlier records, earlier records lined
/// up where the next one is due). Odd ones commit `Batched`, even ones `Strict`.
const FIRST_RECYCLED_SCENARIO: u64 = 11;

/// Completes every operation the writer submits until it has nothing in flight.
fn complete_all(wal: &Wal, sim: &Sim) {
    loop {
        settle(wal, sim);
        if !sim.advance() {
            break;
        }
    }
}

/// The warm-up of a recycled scenario (see [`FIRST_RECYCLED_SCENARIO`]): every unit synced
/// and checked; the crash points come after it.
fn warm_up_recycled(run: &mut Run, wal: &Wal, sim: &Sim) {
    let mut syncs = Vec::new();
    let mut group = |run: &mut Run| {
        run.enqueue_group(wal, sim);
        syncs.push(wal.sync());
        complete_all(wal, sim);
        run.collect(&mut syncs)
            .unwrap_or_else(|v| panic!("{}", run.report(&v)));
    };
    while wal.stats().rotations < 4 {
        group(run);
    }
    run.checkpoint(wal, sim);
    complete_all(wal, sim);
    while wal.stats().segments_recycled == 0 {
        group(run);
    }
}

/// Runs scenario `seed` for `steps` steps from an empty log and crashes there; also says
/// whether nothing was in flight or unsynced then (the log must then recover clean).
fn scenario_prefix(seed: u64, steps: usize) -> (Run, CrashState, bool) {
    let mut run = Run::new(seed, Broken::default());
    // Two sizes: one rotates every few groups, one lets pending writes pile up.
    run.segment_bytes = if seed.is_multiple_of(2) { 8192 } else { 32768 };
    run.depth = 3;
    run.crash_recoveries = false;
    let recycled = seed >= FIRST_RECYCLED_SCENARIO;
    let strict = seed >= FIRST_STRICT_SCENARIO && !(recycled && seed % 2 == 1);
    run.strict_in_4 = if strict { 4 } else { 0 };
    run.recycle = if recycled { 2 } else { 0 };
    run.batched_bytes = Some(1 << 20);
    let dir = run.dir(0);
    let sim = Sim::new(&dir, seed).unwrap();
    sim.set_manual(true);
    let wal = keel_recovery::open_wal(
        &dir,
        wal_options(run.segment_bytes, run.depth, run.recycle, &sim),
    )
    .unwrap();
    settle(&wal, &sim);
    if recycled {
        warm_up_recycled(&mut run, &wal, &sim);
    }
    let mut syncs = Vec::new();
    for step in 0..steps {
        script_step(&mut run, step, &wal, &sim, &mut syncs);
        run.collect(&mut syncs)
            .unwrap_or_else(|v| panic!("{}", run.report(&v)));
    }
    // Nothing in flight and nothing unsynced: every crash image is the log as written.
    let quiet = sim.operations_in_flight() == 0;
    let state = sim.crash();
    let quiet = quiet && state.pending.is_empty();
    drop(wal);
    run.abandon_pending();
    run.traces.push(sim.trace());
    (run, state, quiet)
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
    let mut quiet_points = 0;
    for seed in seeds {
        for steps in 0..=max_steps {
            if started.elapsed() > Duration::from_secs(seconds) {
                println!("sim exhaustive: time box reached; at most {max_pending} pending writes");
                return Ok((scenarios, points, cases));
            }
            let (mut run, state, quiet) = scenario_prefix(seed, steps);
            points += 1;
            quiet_points += u64::from(quiet);
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
                let checked = run.check_image(!plan.process, false, quiet);
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
    println!(
        "sim exhaustive: at most {max_pending} pending writes at a crash point; {quiet_points} \
         crash points with nothing in flight or unsynced (their recoveries must cut nothing)"
    );
    Ok((scenarios, points, cases))
}

#[test]
fn sim_exhaustive_small_cases() {
    let full = std::env::var("KEEL_SIM_EXHAUSTIVE").is_ok_and(|v| v == "full");
    // The default run (plain `cargo test`) takes the first crash points of one Batched, one
    // Strict and one recycled scenario.
    let runs = if full {
        let scenarios = env_u64("KEEL_SIM_SCENARIOS", 12);
        vec![(1..1 + scenarios, SCRIPT_STEPS)]
    } else {
        let strict = FIRST_STRICT_SCENARIO;
        let recycled = FIRST_RECYCLED_SCENARIO;
        vec![
            (1..2, 9),
            (strict..strict + 1, 9),
            (recycled..recycled + 1, 9),
        ]
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
