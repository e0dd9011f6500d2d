//! Side by side: Keel against the raw limit and against the logs people use instead.
//!
//! ```sh
//! bash benches/run-peers.sh --duration 3 --out docs/bench
//! ```
//!
//! Every system runs the same workload, one after another, in fresh directories under the
//! same parent (`--dir`, default the system temporary directory): `C` committer threads, each
//! appending one record of `S` bytes and waiting until it is durable, for `--duration`
//! seconds. Per commit latency goes to a histogram. Systems:
//!
//! - `keel-uring`, `keel-uring-direct`, `keel-std`: `keel_wal::Wal`, Strict (fdatasync, or an
//!   `O_DSYNC` direct write, before the ack; group commit);
//! - `keel-db`: the engine (`keel::Database`), Strict, one transaction of one put per commit,
//!   automatic checkpoints at their default;
//! - `raw`: `pwrite` + `fdatasync` of each record on a preallocated file, one at a time: the
//!   cost of one durable write, with no batching (the "physical limit" of a log that syncs every
//!   record; `keel_bench::RawLog`, the baseline `keel bench` runs too);
//! - `raw-group`: leader/follower group commit by hand on the same file, one `pwrite` +
//!   `fdatasync` of everything pending per group (`keel_bench::RawGroupLog`, run by `keel
//!   bench` too);
//! - `raw-uring`: one write→fdatasync chain per record through io_uring, one chain in flight
//!   per committer (at most 64);
//! - `raw-uring-batched`: one ring thread keeps up to 8 chains in flight (as Keel's ring does
//!   by default; fewer with fewer committers), each carrying everything queued when it was
//!   submitted;
//! - `okaywal` (feature `peer-okaywal`): entry, chunk, commit (fdatasync, shared by waiters);
//! - `sqlite` (feature `peer-sqlite`, bundled SQLite): WAL mode, `synchronous=FULL`, one insert
//!   per transaction, one connection per committer;
//! - `raft-engine` (feature `peer-raft-engine`): a `LogBatch` with one put, `write(sync=true)`
//!   (leader-based group commit);
//! - `rocksdb` (feature `peer-rocksdb`, Debian's librocksdb 7.8.3 through the `rocksdb` crate):
//!   one `put` per commit with `WriteOptions::set_sync(true)`, default options otherwise (WAL
//!   on; leader-based group commit; memtables flushed to SST files in the background).
//!
//! Ratios: `vs raw` and `vs raw-uring` against the per-record loops, `vs best raw` against
//! the best of every raw baseline in the same row (committers and size).
//!
//! `--rounds N` runs each cell N times, the systems' order rotated each round (the device
//! drifts within a run, and the systems run late in a round would otherwise always pay for
//! it), and reports each system's median round.
//!
//! Output: a Markdown table (stdout and `<out>/peers.md`), JSON (`<out>/peers.json`), and SVG
//! plots drawn here (`<out>/commits-<size>.svg`: commits/s against committers;
//! `<out>/latency-<size>.svg`: p50/p99/p999 at each committer count).
//!
//! One module per system (`keel.rs`, `keel_db.rs`, `raw.rs` with the library's raw baselines,
//! `okaywal.rs`, `sqlite.rs`, `raft_engine.rs`, `rocksdb.rs`), opened by name in `systems.rs`;
//! `harness.rs` runs the committers; `recovery.rs` the recovery table; `report.rs` and
//! `plots.rs` the output.

mod args;
mod harness;
mod keel;
mod keel_db;
#[cfg(feature = "peer-okaywal")]
mod okaywal;
mod plots;
#[cfg(feature = "peer-raft-engine")]
mod raft_engine;
mod raw;
mod recovery;
mod report;
#[cfg(feature = "peer-rocksdb")]
mod rocksdb;
#[cfg(feature = "peer-sqlite")]
mod sqlite;
mod systems;

use std::path::Path;

use args::{Args, parse_args};
use harness::{Row, run_one};
use recovery::RecoveryRow;

fn main() {
    let raw: Vec<String> = std::env::args().collect();
    if let Some(i) = raw.iter().position(|a| a == "--child-fill") {
        let mib = raw[i + 3].parse().expect("MiB");
        if let Err(e) = recovery::child_fill(&raw[i + 1], Path::new(&raw[i + 2]), mib) {
            eprintln!("fill: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(i) = raw.iter().position(|a| a == "--child-reopen") {
        if let Err(e) = recovery::child_reopen(&raw[i + 1], Path::new(&raw[i + 2])) {
            eprintln!("reopen: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = parse_args();
    eprintln!(
        "peers: {} systems × {:?} committers × {:?} bytes, {:?} each, under {}",
        args.systems.len(),
        args.committers,
        args.sizes,
        args.duration,
        args.dir.display()
    );
    let rows = strict_rows(&args);
    let mut table = report::markdown(
        &rows,
        "Strict (durable before the ack)",
        &args.systems,
        &args.sizes,
        &args.committers,
    );
    let relaxed_rows = relaxed_rows(&args, &mut table);
    let recovery_rows = recovery_rows(&args, &mut table);
    println!("{table}");
    if let Some(out) = &args.out {
        write_out(out, &args, &table, &rows, &relaxed_rows, &recovery_rows);
    }
}

/// Every system at every record size and committer count, durable before the ack.
fn strict_rows(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for &size in &args.sizes {
        for &committers in &args.committers {
            rows.extend(cell_rows(args, &args.systems, committers, size));
        }
    }
    rows
}

/// Each of `systems` at one committer count and size, `--rounds` times: round `r` starts
/// `r / rounds` of the way down the list and wraps, so a device that drifts during a round
/// does not always favour the same systems. A system's row is its median round.
fn cell_rows(args: &Args, systems: &[String], committers: usize, size: usize) -> Vec<Row> {
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); systems.len()];
    for round in 0..args.rounds {
        let start = round * systems.len() / args.rounds;
        for i in (start..systems.len()).chain(0..start) {
            let system = &systems[i];
            match run_one(system, &args.dir, committers, size, args.duration) {
                Ok(row) => {
                    eprintln!(
                        "{system:>18} C={committers:<3} S={size:<5} {:>9.0} commits/s  p50 {:.0} µs  p99 {:.0} µs{}",
                        row.rate(),
                        row.p50_us,
                        row.p99_us,
                        if args.rounds > 1 {
                            format!("  (round {} of {})", round + 1, args.rounds)
                        } else {
                            String::new()
                        }
                    );
                    runs[i].push(row);
                }
                Err(e) => eprintln!("{system} C={committers} S={size}: failed: {e}"),
            }
        }
    }
    runs.into_iter().filter_map(median_round).collect()
}

/// The round with the median commits/s (the lower of the two middle ones when even).
fn median_round(mut rounds: Vec<Row>) -> Option<Row> {
    rounds.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let middle = rounds.len().checked_sub(1)? / 2;
    Some(rounds.swap_remove(middle))
}

/// The systems that acknowledge before fdatasync, and `raw`, at the record sizes up to 4 KiB;
/// their table is appended to `table` when any ran.
fn relaxed_rows(args: &Args, table: &mut String) -> Vec<Row> {
    let relaxed: Vec<String> = systems::relaxed_systems()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let relaxed_sizes: Vec<usize> = args.sizes.iter().copied().filter(|&s| s <= 4096).collect();
    let mut systems = relaxed;
    systems.push("raw".into());
    let mut relaxed_rows = Vec::new();
    for &size in &relaxed_sizes {
        for &committers in &args.relaxed_committers {
            relaxed_rows.extend(cell_rows(args, &systems, committers, size));
        }
    }
    if !relaxed_rows.is_empty() {
        table.push_str(&report::markdown(
            &relaxed_rows,
            "acknowledged before fdatasync (Keel Batched and Async, SQLite synchronous=NORMAL, raft-engine and RocksDB sync=false)",
            &systems,
            &relaxed_sizes,
            &args.relaxed_committers,
        ));
    }
    relaxed_rows
}

/// The recovery of each system's log of `--recovery-mib` MiB (none when 0); its table is
/// appended to `table`.
fn recovery_rows(args: &Args, table: &mut String) -> Vec<RecoveryRow> {
    let mut recovery_rows = Vec::new();
    if args.recovery_mib > 0 {
        for (system, filler) in systems::recovery_systems() {
            match recovery::measure_recovery(system, filler, &args.dir, args.recovery_mib) {
                Ok(row) => {
                    eprintln!(
                        "{system:>12} reopen {:.3} s, peak RSS {:.1} MiB",
                        row.seconds,
                        row.peak_rss_kb as f64 / 1024.0
                    );
                    recovery_rows.push(row);
                }
                Err(e) => eprintln!("recovery {system}: failed: {e}"),
            }
        }
        table.push_str(&recovery::recovery_markdown(
            &recovery_rows,
            args.recovery_mib,
        ));
    }
    recovery_rows
}

/// Writes `peers.md`, `peers.json` and the plots into `out`.
fn write_out(
    out: &Path,
    args: &Args,
    table: &str,
    rows: &[Row],
    relaxed_rows: &[Row],
    recovery_rows: &[RecoveryRow],
) {
    std::fs::create_dir_all(out).expect("creating the output directory");
    std::fs::write(out.join("peers.md"), table).expect("writing peers.md");
    let mut all = rows.to_vec();
    all.extend(relaxed_rows.iter().cloned());
    let json_text = format!(
        "{{\"commits\": {},\n\"recovery\": [{}]}}\n",
        report::json(&all),
        recovery::recovery_json(recovery_rows).join(", ")
    );
    std::fs::write(out.join("peers.json"), json_text).expect("writing peers.json");
    for &size in &args.sizes {
        let rates = out.join(format!("commits-{size}.svg"));
        let latency = out.join(format!("latency-{size}.svg"));
        if let Err(e) = plots::plot_rates(rows, args, size, &rates) {
            eprintln!("plot {}: {e}", rates.display());
        }
        if let Err(e) = plots::plot_latency(rows, args, size, &latency) {
            eprintln!("plot {}: {e}", latency.display());
        }
    }
    eprintln!("wrote {}", out.display());
}
