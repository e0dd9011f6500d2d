//! What the durable witness costs: durable (`Strict`) commits/s with the witness on (the
//! default idle delay) and off (`witness_idle: None`), at 1 and 64 committers, one 128-byte
//! write per commit. The cells of a round alternate on and off, so drift of a noisy machine
//! falls on both alike; the summary gives each cell's median and the ratio on/off.
//!
//! ```sh
//! cargo run --release -p keel-wal --example witness_cost -- [seconds] [rounds] [backend] [dir]
//! ```
//! (defaults: 3 seconds a cell, 5 rounds, `auto`, a temporary directory under the current one:
//! put it on the device to measure, not on tmpfs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_wal::{BackendChoice, DEFAULT_WITNESS_IDLE, Durability, RunId, WalEntry, WalOptions};

const COMMITTERS: [usize; 2] = [1, 64];

struct Cell {
    commits_per_second: f64,
    witnesses: u64,
}

fn run_cell(
    dir: &Path,
    backend: BackendChoice,
    committers: usize,
    witness: bool,
    seconds: u64,
) -> Cell {
    let options = WalOptions {
        durability: Durability::Strict,
        backend,
        witness_idle: witness.then_some(DEFAULT_WITNESS_IDLE),
        ..WalOptions::default()
    };
    let wal = Arc::new(keel_recovery::open_wal(dir, options).expect("open the log"));
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..committers)
        .map(|t| {
            let (wal, stop, commits) = (Arc::clone(&wal), Arc::clone(&stop), Arc::clone(&commits));
            std::thread::spawn(move || {
                let run_id = RunId::from_u128(1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let entry = WalEntry::Write {
                        run_id,
                        txn_id: t as u64,
                        key: n.to_le_bytes().to_vec(),
                        value: vec![0x5a; 128],
                    };
                    wal.append(&[entry]).wait().expect("commit");
                    n += 1;
                }
                commits.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("committer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let witnesses = wal.stats().witnesses;
    Arc::try_unwrap(wal)
        .expect("committers are done")
        .close()
        .expect("close");
    Cell {
        commits_per_second: commits.load(Ordering::Relaxed) as f64 / elapsed,
        witnesses,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(3, |s| s.parse().expect("seconds"));
    let rounds: usize = args.get(1).map_or(5, |s| s.parse().expect("rounds"));
    let backend = match args.get(2).map_or("auto", String::as_str) {
        "std" => BackendChoice::Std,
        "uring" => BackendChoice::Uring,
        _ => BackendChoice::Auto,
    };
    let base: PathBuf = args
        .get(3)
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let scratch = tempfile::Builder::new()
        .prefix("keel-witness-cost-")
        .tempdir_in(&base)
        .expect("a scratch directory");
    println!(
        "durable commits/s, {seconds} s a cell, {rounds} rounds, backend {}, in {}",
        backend.name(),
        scratch.path().display()
    );
    let mut results: Vec<[Vec<f64>; 2]> = COMMITTERS.iter().map(|_| [vec![], vec![]]).collect();
    let mut cell = 0;
    for round in 0..rounds {
        for (c, &committers) in COMMITTERS.iter().enumerate() {
            // Alternate which goes first, round by round.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for witness in order {
                cell += 1;
                let dir = scratch.path().join(format!("cell-{cell}"));
                let measured = run_cell(&dir, backend, committers, witness, seconds);
                std::fs::remove_dir_all(&dir).expect("clean up");
                println!(
                    "round {round}: {committers:>2} committers, witness {:>3}: {:>9.0} commits/s ({} witnesses written)",
                    if witness { "on" } else { "off" },
                    measured.commits_per_second,
                    measured.witnesses
                );
                results[c][usize::from(!witness)].push(measured.commits_per_second);
            }
        }
    }
    println!("median of {rounds} rounds:");
    for (c, &committers) in COMMITTERS.iter().enumerate() {
        let on = median(&mut results[c][0]);
        let off = median(&mut results[c][1]);
        println!(
            "{committers:>2} committers: witness on {on:>9.0}, off {off:>9.0} commits/s: on/off = {:.3}",
            on / off
        );
    }
}
