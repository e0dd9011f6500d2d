//! The seed is the whole story: each seed run twice gives identical logs and traces.

use std::time::{Duration, Instant};

use keel_sim::Broken;

use crate::harness::env_u64;
use crate::random::run_seed;

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
