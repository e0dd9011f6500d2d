//! `keel bench`: a WAL workload generator for storage performance testing.
//!
//! `writers` threads each commit one `Write` entry of `value_size` bytes at a time and wait
//! for it, for `duration` seconds. In `strict` mode (unless `--no-baseline`) the same workload
//! first runs through the raw loops on a preallocated file, which `benches/peers/` runs too:
//! `pwrite + fdatasync` of each record, one durable write at a time (`keel_bench::RawLog`,
//! the `vs raw` ratios); group commit by hand, one `pwrite + fdatasync` per group of the
//! committers that arrived during the previous one (`keel_bench::RawGroupLog`); and group
//! commit on the ring, up to `--io-depth` write→fdatasync chains in flight, each carrying
//! everything queued (`keel_bench::RawUringBatched`, the `raw batched ring` row; where
//! io_uring does not run, a note says so and the row is left out). Keel's figures read as
//! ratios of them (`vs best raw`: of the fastest in the round), measured in one run, on one
//! device.
//!
//! `--writers`, `--value-size` and `--backend` take lists (`--writers 1,8,64 --backend
//! uring,std`): every combination runs, side by side in one table.
//!
//! Modules: [`args`] (the command line and the log options it makes), [`drive`] (committers
//! against the clock), [`targets`] (Keel and the raw baselines), [`report`] (ratios, medians,
//! the table).

mod args;
mod drive;
mod report;
mod targets;

use std::path::Path;

pub use args::BenchArgs;
use args::{Backend, Mode};
use report::{Outcome, Report};
use targets::{DbRows, Trim};

/// One combination of the lists on the command line.
#[derive(Debug, Clone, Copy)]
struct Cell {
    writers: u32,
    value_size: usize,
    backend: Backend,
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    args.check()?;
    let temp = scratch_dir(args)?;
    let baselines = args.mode == Mode::Strict && !args.no_baseline;
    let ring = baselines && ring_baseline_runs();
    let mut runs = Vec::new();
    for &value_size in &args.value_size {
        for &writers in &args.writers {
            runs.extend(compare(args, temp.path(), writers, value_size, ring)?);
        }
    }
    let report = Report {
        directory: temp.path().to_path_buf(),
        runs,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        report::print_table(&report);
    }
    Ok(())
}

/// Whether the batched-ring baseline runs: where io_uring does not, a note on stderr says why
/// its rows are missing (not an error: the other rows run).
fn ring_baseline_runs() -> bool {
    match targets::raw_ring_available() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("note: no {} rows: {reason}", targets::RAW_RING);
            false
        }
    }
}

/// A new directory, removed when dropped: under `--dir` when given, else the system's
/// temporary directory.
fn scratch_dir(args: &BenchArgs) -> Result<tempfile::TempDir, String> {
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            tempfile::tempdir_in(dir).map_err(|e| format!("cannot use {}: {e}", dir.display()))
        }
        None => {
            tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))
        }
    }
}

/// Every target of one writers × value size pair, each the median of the rounds; the
/// batched-ring baseline among them when `ring` (strict mode, baselines on, io_uring here).
///
/// Every round runs each target once, interleaved, so a noisy machine's drift hits all of
/// them alike (the log and the engine swap places every other round); the reported run is
/// the round with the median ratio.
fn compare(
    args: &BenchArgs,
    temp: &Path,
    writers: u32,
    value_size: usize,
    ring: bool,
) -> Result<Vec<Outcome>, String> {
    let cell = |backend| Cell {
        writers,
        value_size,
        backend,
    };
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut targets = Vec::new();
        if args.mode == Mode::Strict && !args.no_baseline {
            let dir = temp.join(format!("raw-{writers}-{value_size}-{round}"));
            targets.push(targets::raw(args, cell(Backend::Std), &dir)?);
            let dir = temp.join(format!("raw-group-{writers}-{value_size}-{round}"));
            targets.push(targets::raw_group(args, cell(Backend::Std), &dir)?);
        }
        if ring {
            let dir = temp.join(format!("raw-ring-{writers}-{value_size}-{round}"));
            targets.push(targets::raw_ring(args, cell(Backend::Uring), &dir)?);
        }
        let run_logs = || -> Result<Vec<Outcome>, String> {
            let mut runs = Vec::new();
            let mut trims = vec![Trim::Keep];
            if let Some(kept) = args.recycle {
                trims.extend([Trim::Delete, Trim::Recycle(kept)]);
            }
            for trim in trims {
                for &backend in &args.backend {
                    let name = format!("wal-{writers}-{value_size}-{backend:?}-{trim:?}-{round}")
                        .to_lowercase();
                    runs.push(targets::keel(args, cell(backend), &temp.join(name), trim)?);
                }
            }
            Ok(runs)
        };
        let run_dbs = || -> Result<Vec<Outcome>, String> {
            let mut runs = Vec::new();
            for &backend in args.backend.iter().filter(|_| args.engine) {
                let name = format!("db-{writers}-{value_size}-{backend:?}-{round}").to_lowercase();
                runs.push(targets::db(
                    args,
                    cell(backend),
                    &temp.join(&name),
                    DbRows::Plain,
                )?);
                if args.feed {
                    let name = format!("feed-{name}");
                    runs.push(targets::db(
                        args,
                        cell(backend),
                        &temp.join(name),
                        DbRows::Feed,
                    )?);
                }
                if args.read_write {
                    let name = format!("rw-{name}");
                    let rows = DbRows::ReadWrite;
                    runs.push(targets::db(args, cell(backend), &temp.join(name), rows)?);
                }
                if let Some(kept) = args.recycle {
                    let name = format!("recycle-{name}");
                    let rows = DbRows::Recycle(kept);
                    runs.push(targets::db(args, cell(backend), &temp.join(name), rows)?);
                }
            }
            Ok(runs)
        };
        // The engine runs after the log in even rounds and before it in odd ones: a run
        // leaves work behind (preallocated segments the kernel is still writing back) that
        // slows whichever comes next. Rows keep one order for `median_round`.
        let (logs, dbs) = if round % 2 == 0 {
            let logs = run_logs()?;
            (logs, run_dbs()?)
        } else {
            let dbs = run_dbs()?;
            (run_logs()?, dbs)
        };
        targets.extend(logs);
        targets.extend(dbs);
        report::set_ratios(&mut targets);
        rounds.push(targets);
    }
    Ok(report::median_round(rounds))
}
