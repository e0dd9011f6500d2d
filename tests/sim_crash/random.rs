//! The random driver over a run of seeds, and its test.

use std::time::{Duration, Instant};

use keel_sim::Broken;

use crate::harness::env_u64;
use crate::model::{Checked, Tally};
use crate::run::Run;

/// Runs one seed of the random driver: 1 to 5 lives.
pub(crate) fn run_seed(seed: u64, broken: Broken) -> (Run, Checked<()>) {
    let mut run = Run::new(seed, broken);
    let lives = 1 + u32::try_from(run.rng.below(5)).unwrap();
    let result = run.run(lives);
    (run, result)
}

/// Runs seeds from `first` until `cycles` crash cycles or `seconds` have passed; returns
/// the tally, or the first failure's report.
pub(crate) fn run_seeds(
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
             limit; {} of them acknowledged as written and never known durable); {} segments \
             started in recycled files",
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
            tally.tail_losses_unsynced,
            tally.recycled_segments
        ),
        Err(report) => panic!("{report}"),
    }
}
