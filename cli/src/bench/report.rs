//! What `keel bench` reports: one [`Outcome`] per target and cell, the ratios between the
//! targets of a round, the median of the rounds, and the table (or JSON) it prints.

use std::path::PathBuf;

use serde::Serialize;

use super::Cell;
use super::args::{BenchArgs, Committers, Mode};
use super::drive::Measured;
use super::targets::{
    DB, DB_FEED, DB_RECYCLE, DB_RW, KEEL, KEEL_RECYCLE, KEEL_TRIM, RAW, RAW_GROUP, RAW_RING,
};

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Outcome {
    pub(super) target: String,
    pub(super) backend: String,
    pub(super) mode: Mode,
    pub(super) committers: Committers,
    pub(super) writers: u32,
    pub(super) value_bytes: usize,
    pub(super) seconds: f64,
    pub(super) commits: u64,
    pub(super) commits_per_sec: f64,
    pub(super) mb_per_sec: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) p999_us: f64,
    pub(super) fsyncs: u64,
    pub(super) fsyncs_per_commit: f64,
    /// commits/s over the raw baseline's (one record per sync), when one ran.
    pub(super) ratio_to_raw: Option<f64>,
    /// commits/s over the best raw baseline's of the round (group commit by hand, and on the
    /// ring where it ran, included).
    pub(super) ratio_to_best_raw: Option<f64>,
    /// commits/s over Keel's std backend in the same cell, when it ran.
    pub(super) ratio_to_std: Option<f64>,
    /// An engine run's commits/s over the log's on the same backend (`keel-db` rows).
    pub(super) ratio_to_log: Option<f64>,
    /// Segments started, how many of those waited for the preallocator, and how many were
    /// written over recycled files (Keel only).
    pub(super) rotations: Option<(u64, u64, u64)>,
    /// What the change-feed subscriber of a `keel-db+feed` run saw.
    pub(super) feed: Option<FeedFigures>,
    /// A `keel-db+feed` or `keel-db+rw` run's commits/s over keel-db's on the same backend.
    pub(super) ratio_to_db: Option<f64>,
    /// Rounds this figure is the median of.
    pub(super) rounds: usize,
    /// Lowest and highest of the ranking ratio across rounds (vs std, else vs raw).
    pub(super) spread: Option<(f64, f64)>,
}

impl Outcome {
    /// The figures of `run`, a run of `target` on `backend` that wrote `bytes_per_commit`
    /// bytes per commit and synced `fsyncs` times; no ratios yet.
    pub(super) fn new(
        args: &BenchArgs,
        cell: Cell,
        target: &str,
        backend: &str,
        run: Measured,
        fsyncs: u64,
        bytes_per_commit: usize,
    ) -> Outcome {
        let Measured {
            latencies,
            commits,
            elapsed,
        } = run;
        let seconds = elapsed.as_secs_f64();
        let micros = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
        Outcome {
            target: target.to_owned(),
            backend: backend.to_owned(),
            mode: args.mode,
            committers: if [KEEL, KEEL_TRIM, KEEL_RECYCLE].contains(&target) {
                args.committers
            } else {
                Committers::Threads
            },
            writers: cell.writers,
            value_bytes: cell.value_size,
            seconds,
            commits,
            commits_per_sec: commits as f64 / seconds,
            mb_per_sec: (commits as f64 * bytes_per_commit as f64) / seconds / 1e6,
            p50_us: micros(0.50),
            p99_us: micros(0.99),
            p999_us: micros(0.999),
            fsyncs,
            fsyncs_per_commit: if commits == 0 {
                0.0
            } else {
                fsyncs as f64 / commits as f64
            },
            ratio_to_raw: None,
            ratio_to_best_raw: None,
            ratio_to_std: None,
            ratio_to_log: None,
            rotations: None,
            feed: None,
            ratio_to_db: None,
            rounds: 1,
            spread: None,
        }
    }

    /// What ranks the rounds of a target: the ratio it is compared by (a feed run's to the
    /// engine's, an engine run's to the log's, a log's to std unless it is std), else to
    /// raw, else commits/s.
    fn rank(&self) -> f64 {
        self.ratio_to_db
            .or(self.ratio_to_log)
            .or(self.ratio_to_std.filter(|_| self.backend != "std"))
            .or(self.ratio_to_raw)
            .unwrap_or(self.commits_per_sec)
    }
}

/// A change-feed subscriber's figures over one run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FeedFigures {
    /// Commits delivered by the end of the run's measured time.
    pub(super) delivered: u64,
    /// Delivered over committed, in the measured time (1.0: it kept up).
    pub(super) delivered_per_commit: f64,
    /// From a commit's acknowledgement to its delivery.
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) directory: PathBuf,
    pub(super) runs: Vec<Outcome>,
}

/// Ratios of one round's Keel runs to its raw baselines (the per-record loop, and the best of
/// them all) and to its std backend run.
pub(super) fn set_ratios(targets: &mut [Outcome]) {
    let per_sec = |target: &str, backend: &str| {
        targets
            .iter()
            .find(|r| r.target == target && (target != KEEL || r.backend == backend))
            .map(|r| r.commits_per_sec)
    };
    let raw = per_sec(RAW, "");
    let best_raw = [RAW, RAW_GROUP, RAW_RING]
        .into_iter()
        .filter_map(|target| per_sec(target, ""))
        .reduce(f64::max);
    let std = per_sec(KEEL, "std");
    let logs: Vec<(String, f64)> = targets
        .iter()
        .filter(|r| r.target == KEEL)
        .map(|r| (r.backend.clone(), r.commits_per_sec))
        .collect();
    let dbs: Vec<(String, f64)> = targets
        .iter()
        .filter(|r| r.target == DB)
        .map(|r| (r.backend.clone(), r.commits_per_sec))
        .collect();
    for run in targets.iter_mut() {
        if run.target == DB_FEED || run.target == DB_RW || run.target == DB_RECYCLE {
            run.ratio_to_db = dbs
                .iter()
                .find(|(backend, _)| *backend == run.backend)
                .map(|(_, db)| run.commits_per_sec / db);
        }
        if [
            KEEL,
            KEEL_TRIM,
            KEEL_RECYCLE,
            DB,
            DB_FEED,
            DB_RW,
            DB_RECYCLE,
        ]
        .contains(&run.target.as_str())
        {
            run.ratio_to_raw = raw.map(|raw| run.commits_per_sec / raw);
            run.ratio_to_best_raw = best_raw.map(|best| run.commits_per_sec / best);
        }
        if run.target == KEEL {
            run.ratio_to_std = std.map(|std| run.commits_per_sec / std);
        } else if [KEEL_TRIM, KEEL_RECYCLE, DB, DB_FEED, DB_RW, DB_RECYCLE]
            .contains(&run.target.as_str())
        {
            run.ratio_to_log = logs
                .iter()
                .find(|(backend, _)| *backend == run.backend)
                .map(|(_, log)| run.commits_per_sec / log);
        }
    }
}

/// Per target, the run of the round whose ratio (to std, else to raw, else commits/s) is the
/// median across rounds; with `rounds` recorded so readers see the spread.
pub(super) fn median_round(rounds: Vec<Vec<Outcome>>) -> Vec<Outcome> {
    let count = rounds.len();
    let mut out = Vec::new();
    let Some(first) = rounds.first() else {
        return out;
    };
    for index in 0..first.len() {
        let mut runs: Vec<Outcome> = rounds.iter().map(|r| r[index].clone()).collect();
        runs.sort_by(|a, b| a.rank().total_cmp(&b.rank()));
        let spread = (runs[0].rank(), runs[count - 1].rank());
        let mut median = runs.swap_remove(count / 2);
        median.rounds = count;
        median.spread = (count > 1).then_some(spread);
        out.push(median);
    }
    out
}

/// The report as a table, a row per run, then each Keel run's segment rotations.
pub(super) fn print_table(report: &Report) {
    println!("directory: {}", report.directory.display());
    print_reading_notes(report);
    println!(
        "{:<22} {:<7} {:<8} {:>7} {:>7} {:>10} {:>12} {:>8} {:>9} {:>9} {:>9} {:>13} {:>8} {:>11} {:>8} {:>11}",
        "target",
        "backend",
        "mode",
        "writers",
        "value",
        "commits",
        "commits/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "fsyncs/commit",
        "vs raw",
        "vs best raw",
        "vs std",
        "range"
    );
    for run in &report.runs {
        println!("{}", table_row(run));
    }
    for run in &report.runs {
        if let Some(ratio) = run.ratio_to_log {
            println!(
                "{} {} w{} {}B: {ratio:.2}x the log's commits/s on the same backend",
                run.target, run.backend, run.writers, run.value_bytes
            );
        }
    }
    for run in report.runs.iter().filter(|run| run.target == DB_RECYCLE) {
        if let Some(ratio) = run.ratio_to_db {
            println!(
                "keel-db+recycle {} w{} {}B: {ratio:.2}x keel-db's commits/s (checkpoints \
                 recycle the segments they free)",
                run.backend, run.writers, run.value_bytes
            );
        }
    }
    for run in report.runs.iter().filter(|run| run.target == DB_RW) {
        if let Some(ratio) = run.ratio_to_db {
            println!(
                "keel-db+rw {} w{} {}B: {ratio:.2}x keel-db's commits/s (a read and its \
                 validation in every commit)",
                run.backend, run.writers, run.value_bytes
            );
        }
    }
    for run in &report.runs {
        if let Some(feed) = &run.feed {
            let ratio = run
                .ratio_to_db
                .map_or(String::new(), |r| format!("{r:.2}x keel-db's commits/s; "));
            println!(
                "keel-db+feed {} w{} {}B: {ratio}the feed delivered {} commits ({:.2}x those \
                 committed in the time), acknowledgement to delivery p50 {:.0} us, p99 {:.0} us",
                run.backend,
                run.writers,
                run.value_bytes,
                feed.delivered,
                feed.delivered_per_commit,
                feed.p50_us,
                feed.p99_us
            );
        }
    }
    for run in &report.runs {
        if let Some((rotations, waits, recycled)) = run.rotations {
            println!(
                "{} {} w{} {}B: {rotations} segment rotations, {waits} waited for \
                 preallocation, {recycled} into recycled files",
                run.target, run.backend, run.writers, run.value_bytes
            );
        }
    }
}

/// What the rows are (the median of rounds) and what the ratios are against, above the table.
fn print_reading_notes(report: &Report) {
    if let Some(rounds) = report.runs.first().map(|r| r.rounds).filter(|&r| r > 1) {
        println!(
            "each row: the median of {rounds} interleaved rounds by the ratio it is compared by \
             (keel-db+feed and keel-db+rw to keel-db, keel-db to the log, the log to std, else to raw); range: \
             its lowest-highest across them"
        );
    }
    if report.runs.iter().any(|r| r.ratio_to_best_raw.is_some()) {
        let ring = if report.runs.iter().any(|r| r.target == RAW_RING) {
            format!(
                ", {RAW_RING} (write→fdatasync chains in flight on io_uring, each carrying all queued)"
            )
        } else {
            String::new()
        };
        println!(
            "vs raw: commits/s over the {RAW} loop's (one record per sync); vs best raw: over \
             the fastest of it, {RAW_GROUP} (one pwrite + fdatasync per group){ring} in the round"
        );
    }
}

/// One run's line of the table.
fn table_row(run: &Outcome) -> String {
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}x"));
    let range = run.spread.map_or("-".to_string(), |(low, high)| {
        if low > 100.0 {
            format!("{low:.0}-{high:.0}")
        } else {
            format!("{low:.2}-{high:.2}")
        }
    });
    format!(
        "{:<22} {:<7} {:<8} {:>7} {:>7} {:>10} {:>12.0} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>13.3} {:>8} {:>11} {:>8} {:>11}",
        run.target,
        run.backend,
        format!("{:?}", run.mode).to_lowercase(),
        run.writers,
        run.value_bytes,
        run.commits,
        run.commits_per_sec,
        run.mb_per_sec,
        run.p50_us,
        run.p99_us,
        run.p999_us,
        run.fsyncs_per_commit,
        ratio(run.ratio_to_raw),
        ratio(run.ratio_to_best_raw),
        ratio(run.ratio_to_std),
        range
    )
}
