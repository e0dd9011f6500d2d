//! `keel bench`: a WAL workload generator for storage performance testing.
//!
//! `writers` threads each commit one `Write` entry of `value_size` bytes at a time and wait
//! for it, for `duration` seconds. In `strict` mode the same workload first runs as a raw
//! `pwrite + fdatasync` loop on a preallocated file (the physical limit of this machine), so
//! Keel's figures read as a ratio of it: measured in one run, on one device.
//!
//! `--writers`, `--value-size` and `--backend` take lists (`--writers 1,8,64 --backend
//! uring,std`): every combination runs, side by side in one table.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use keel_wal::{BackendChoice, Durability, RunId, Wal, WalEntry, WalOptions};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each commit waits for an fdatasync that covers it.
    Strict,
    /// Each commit waits for its write; fdatasync on a timer (`--max-delay-ms`).
    Batched,
    /// Each commit resolves at enqueue; writes and syncs in the background.
    Async,
}

/// What a committer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Committers {
    /// One OS thread per committer, blocking on `CommitFuture::wait`.
    Threads,
    /// One tokio task per committer on a multi-threaded runtime (one worker per core),
    /// awaiting its `CommitFuture`: an async service's shape.
    Tasks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// io_uring where it runs, else std.
    Auto,
    /// pwrite + fdatasync on the writer thread.
    Std,
    /// io_uring (an error where it cannot run).
    Uring,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent committers (a list runs each).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    writers: Vec<u32>,
    /// Bytes of each value (a list runs each).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    value_size: Vec<usize>,
    /// Durability mode.
    #[arg(long, value_enum, default_value_t = Mode::Strict)]
    mode: Mode,
    /// Committers as OS threads or as tokio tasks (the raw baseline always uses threads).
    #[arg(long, value_enum, default_value_t = Committers::Threads)]
    committers: Committers,
    /// Sync timer of the batched and async modes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    max_delay_ms: u64,
    /// IO backend (a list runs each, side by side).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "auto")]
    backend: Vec<Backend>,
    /// Chains the io_uring backend keeps in flight.
    #[arg(long, default_value_t = keel_wal::DEFAULT_IO_DEPTH)]
    io_depth: usize,
    /// Rounds of the whole comparison; each cell reports its median round (noisy machines).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Directory to run in (on the device to measure); default: a new temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Skip the raw pwrite + fdatasync baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub target: String,
    pub backend: String,
    pub mode: Mode,
    pub committers: Committers,
    pub writers: u32,
    pub value_bytes: usize,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub fsyncs: u64,
    pub fsyncs_per_commit: f64,
    /// commits/s over the raw baseline's, when one ran.
    pub ratio_to_raw: Option<f64>,
    /// commits/s over Keel's std backend in the same cell, when it ran.
    pub ratio_to_std: Option<f64>,
    /// Segments started, and how many of those waited for the preallocator (Keel only).
    pub rotations: Option<(u64, u64)>,
    /// Rounds this figure is the median of.
    pub rounds: usize,
    /// Lowest and highest of the ranking ratio across rounds (vs std, else vs raw).
    pub spread: Option<(f64, f64)>,
}

#[derive(Debug, Serialize)]
struct Report {
    directory: PathBuf,
    runs: Vec<Outcome>,
}

/// One combination of the lists on the command line.
#[derive(Debug, Clone, Copy)]
struct Cell {
    writers: u32,
    value_size: usize,
    backend: Backend,
}

pub fn run(args: &BenchArgs) -> Result<(), String> {
    if args.writers.contains(&0) || args.duration <= 0.0 || args.rounds == 0 {
        return Err("--writers, --rounds and --duration must be above 0".into());
    }
    let temp = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            tempfile::tempdir_in(dir).map_err(|e| format!("cannot use {}: {e}", dir.display()))?
        }
        None => {
            tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?
        }
    };
    let mut runs = Vec::new();
    for &value_size in &args.value_size {
        for &writers in &args.writers {
            let cell = |backend| Cell {
                writers,
                value_size,
                backend,
            };
            // Every round runs each target once, interleaved, so a noisy machine's drift
            // hits all of them alike; the reported run is the round with the median ratio.
            let mut rounds = Vec::new();
            for round in 0..args.rounds {
                let mut targets = Vec::new();
                if args.mode == Mode::Strict && !args.no_baseline {
                    let dir = temp
                        .path()
                        .join(format!("raw-{writers}-{value_size}-{round}"));
                    targets.push(raw_baseline(args, cell(Backend::Std), &dir)?);
                }
                for &backend in &args.backend {
                    let name =
                        format!("wal-{writers}-{value_size}-{backend:?}-{round}").to_lowercase();
                    targets.push(keel_run(args, cell(backend), &temp.path().join(name))?);
                }
                set_ratios(&mut targets);
                rounds.push(targets);
            }
            runs.extend(median_round(rounds));
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
        print_table(&report);
    }
    Ok(())
}

/// Ratios of one round's Keel runs to its raw baseline and to its std backend run.
fn set_ratios(targets: &mut [Outcome]) {
    let per_sec = |target: &str, backend: &str| {
        targets
            .iter()
            .find(|r| r.target == target && (target != "keel" || r.backend == backend))
            .map(|r| r.commits_per_sec)
    };
    let raw = per_sec("raw pwrite+fdatasync", "");
    let std = per_sec("keel", "std");
    for run in targets.iter_mut().filter(|r| r.target == "keel") {
        run.ratio_to_raw = raw.map(|raw| run.commits_per_sec / raw);
        run.ratio_to_std = std.map(|std| run.commits_per_sec / std);
    }
}

/// Per target, the run of the round whose ratio (to std, else to raw, else commits/s) is the
/// median across rounds; with `rounds` recorded so readers see the spread.
fn median_round(rounds: Vec<Vec<Outcome>>) -> Vec<Outcome> {
    let count = rounds.len();
    let mut out = Vec::new();
    let Some(first) = rounds.first() else {
        return out;
    };
    for index in 0..first.len() {
        let mut runs: Vec<Outcome> = rounds.iter().map(|r| r[index].clone()).collect();
        let key = |r: &Outcome| {
            r.ratio_to_std
                .filter(|_| r.backend != "std")
                .or(r.ratio_to_raw)
                .unwrap_or(r.commits_per_sec)
        };
        runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let spread = (key(&runs[0]), key(&runs[count - 1]));
        let mut median = runs.swap_remove(count / 2);
        median.rounds = count;
        median.spread = (count > 1).then_some(spread);
        out.push(median);
    }
    out
}

fn options(args: &BenchArgs, cell: Cell) -> WalOptions {
    let max_delay = Duration::from_millis(args.max_delay_ms);
    WalOptions {
        durability: match args.mode {
            Mode::Strict => Durability::Strict,
            Mode::Batched => Durability::Batched {
                max_delay,
                max_bytes: 64 << 20,
            },
            Mode::Async => Durability::Async { max_delay },
        },
        segment_bytes: args.segment_mib << 20,
        // The default record limit (8 MiB) does not fit a small segment; the bench's records
        // are one value each, far below either.
        max_record_bytes: u32::try_from((args.segment_mib << 20) / 2)
            .unwrap_or(u32::MAX)
            .min(WalOptions::default().max_record_bytes),
        backend: match cell.backend {
            Backend::Auto => BackendChoice::Auto,
            Backend::Std => BackendChoice::Std,
            Backend::Uring => BackendChoice::Uring,
        },
        io_depth: args.io_depth,
        ..WalOptions::default()
    }
}

/// What the committers of one run share with the thread that watches the clock.
struct Clock {
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    start: Instant,
    duration: Duration,
    progress: ProgressBar,
}

impl Clock {
    fn start(args: &BenchArgs, label: &str) -> Clock {
        let duration = Duration::from_secs_f64(args.duration);
        Clock {
            total: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            progress: progress_bar(args, label, duration),
            start: Instant::now(),
            duration,
        }
    }

    /// Shows progress until the duration has passed, then tells the committers to stop.
    fn watch(&self) {
        while self.start.elapsed() < self.duration {
            std::thread::sleep(
                Duration::from_millis(100).min(self.duration.saturating_sub(self.start.elapsed())),
            );
            let position = self
                .start
                .elapsed()
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX);
            self.progress.set_position(position);
            self.progress
                .set_message(format!("{} commits", self.total.load(Ordering::Relaxed)));
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Merges the committers' latencies: the run's outcome.
    fn finish(
        self,
        latencies: impl IntoIterator<Item = Result<Histogram<u64>, String>>,
    ) -> Result<(Histogram<u64>, u64, Duration), String> {
        let mut merged = latency_histogram();
        for one in latencies {
            merged.add(&one?).map_err(|e| e.to_string())?;
        }
        let elapsed = self.start.elapsed();
        self.progress.finish_and_clear();
        Ok((merged, self.total.load(Ordering::Relaxed), elapsed))
    }
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid bounds")
}

fn record_latency(latencies: &mut Histogram<u64>, began: Instant, total: &AtomicU64) {
    latencies.saturating_record(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
    total.fetch_add(1, Ordering::Relaxed);
}

/// Runs `commit` on `writers` threads for the configured duration, with a progress bar.
/// Returns the merged latency histogram, the commit count and the elapsed time.
fn drive<F>(
    args: &BenchArgs,
    writers: u32,
    label: &str,
    commit: F,
) -> Result<(Histogram<u64>, u64, Duration), String>
where
    F: Fn(u32, u64) -> Result<(), String> + Send + Sync + 'static,
{
    let commit = Arc::new(commit);
    let clock = Clock::start(args, label);
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let (commit, total, stop) = (
                Arc::clone(&commit),
                Arc::clone(&clock.total),
                Arc::clone(&clock.stop),
            );
            std::thread::spawn(move || -> Result<Histogram<u64>, String> {
                let mut latencies = latency_histogram();
                let mut sequence = 0;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    commit(writer, sequence)?;
                    record_latency(&mut latencies, began, &total);
                    sequence += 1;
                }
                Ok(latencies)
            })
        })
        .collect();
    clock.watch();
    let joined = threads.into_iter().map(|thread| {
        thread
            .join()
            .map_err(|_| "a bench thread panicked".to_string())?
    });
    clock.finish(joined.collect::<Vec<_>>())
}

/// Like [`drive`], with each committer a tokio task awaiting the future `commit` returns.
fn drive_tasks<F>(
    args: &BenchArgs,
    writers: u32,
    label: &str,
    commit: F,
) -> Result<(Histogram<u64>, u64, Duration), String>
where
    F: Fn(u32, u64) -> keel_wal::CommitFuture + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let commit = Arc::new(commit);
    let clock = Clock::start(args, label);
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let (commit, total, stop) = (
                Arc::clone(&commit),
                Arc::clone(&clock.total),
                Arc::clone(&clock.stop),
            );
            runtime.spawn(async move {
                let mut latencies = latency_histogram();
                let mut sequence = 0;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    commit(writer, sequence).await.map_err(|e| e.to_string())?;
                    record_latency(&mut latencies, began, &total);
                    sequence += 1;
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    clock.watch();
    let joined = tasks.into_iter().map(|task| {
        runtime
            .block_on(task)
            .map_err(|_| "a bench task panicked".to_string())?
    });
    clock.finish(joined.collect::<Vec<_>>())
}

fn progress_bar(args: &BenchArgs, label: &str, duration: Duration) -> ProgressBar {
    if args.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(duration.as_millis().try_into().unwrap_or(u64::MAX));
    let style =
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {msg}").expect("valid template");
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(label.to_owned());
    bar
}

fn outcome(
    args: &BenchArgs,
    cell: Cell,
    target: &str,
    backend: &str,
    run: (Histogram<u64>, u64, Duration),
    fsyncs: u64,
    bytes_per_commit: usize,
) -> Outcome {
    let (latencies, commits, elapsed) = run;
    let seconds = elapsed.as_secs_f64();
    let micros = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Outcome {
        target: target.to_owned(),
        backend: backend.to_owned(),
        mode: args.mode,
        committers: if target == "keel" {
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
        ratio_to_std: None,
        rotations: None,
        rounds: 1,
        spread: None,
    }
}

fn entry(writer: u32, sequence: u64, value: &[u8]) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(u128::from(writer) + 1),
        txn_id: sequence,
        key: format!("w{writer}-{sequence:012}").into_bytes(),
        value: value.to_vec(),
    }
}

fn keel_run(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    let wal = Arc::new(Wal::open(dir, options(args, cell)).map_err(|e| e.to_string())?);
    let backend = wal.backend().name();
    let value = vec![0x6b; cell.value_size];
    let record_bytes = keel_wal::EncodedBatch::encode(&[entry(0, 0, &value)], u32::MAX >> 6)
        .map_err(|e| e.to_string())?
        .byte_len();
    let committer = Arc::clone(&wal);
    let label = format!(
        "keel {backend} {:?} w{} {}B",
        args.mode, cell.writers, cell.value_size
    )
    .to_lowercase();
    let run = match args.committers {
        Committers::Threads => drive(args, cell.writers, &label, move |writer, sequence| {
            committer
                .append(&[entry(writer, sequence, &value)])
                .wait()
                .map(drop)
                .map_err(|e| e.to_string())
        })?,
        Committers::Tasks => drive_tasks(args, cell.writers, &label, move |writer, sequence| {
            committer.append(&[entry(writer, sequence, &value)])
        })?,
    };
    let stats = wal.stats();
    Arc::into_inner(wal)
        .ok_or("the log is still shared")?
        .close()
        .map_err(|e| e.to_string())?;
    let mut result = outcome(args, cell, "keel", backend, run, stats.fsyncs, record_bytes);
    result.rotations = Some((stats.rotations, stats.rotation_waits));
    Ok(result)
}

/// `writers` threads, each `pwrite`s one record's worth of bytes into its own region of a
/// preallocated file and `fdatasync`s, in a loop.
fn raw_baseline(args: &BenchArgs, cell: Cell, dir: &Path) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let record_bytes = (cell.value_size + 64).div_ceil(8) * 8;
    let region = (record_bytes as u64 * 4096).max(1 << 20);
    let size = region * u64::from(cell.writers);
    let path = dir.join("raw.dat");
    let file =
        preallocate(&path, size).map_err(|e| format!("preallocating {}: {e}", path.display()))?;
    let file = Arc::new(file);
    let fsyncs = Arc::new(AtomicU64::new(0));
    let (worker_file, worker_fsyncs) = (Arc::clone(&file), Arc::clone(&fsyncs));
    let buffer = vec![0x72u8; record_bytes];
    let label = format!("raw w{} {}B", cell.writers, cell.value_size);
    let run = drive(args, cell.writers, &label, move |writer, sequence| {
        let slot = sequence % (region / record_bytes as u64);
        let offset = u64::from(writer) * region + slot * record_bytes as u64;
        worker_file
            .write_all_at(&buffer, offset)
            .map_err(|e| e.to_string())?;
        worker_file.sync_data().map_err(|e| e.to_string())?;
        worker_fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })?;
    Ok(outcome(
        args,
        cell,
        "raw pwrite+fdatasync",
        "std",
        run,
        fsyncs.load(Ordering::Relaxed),
        record_bytes,
    ))
}

fn preallocate(path: &Path, size: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        file.write_all_at(&zeros, offset)?;
        offset += zeros.len() as u64;
    }
    file.sync_all()?;
    Ok(file)
}

fn print_table(report: &Report) {
    println!("directory: {}", report.directory.display());
    if let Some(rounds) = report.runs.first().map(|r| r.rounds).filter(|&r| r > 1) {
        println!(
            "each row: the median of {rounds} interleaved rounds; range: lowest-highest ratio \
             (vs std, else vs raw) across them"
        );
    }
    println!(
        "{:<22} {:<7} {:<8} {:>7} {:>7} {:>10} {:>12} {:>8} {:>9} {:>9} {:>9} {:>13} {:>8} {:>8} {:>11}",
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
        "vs std",
        "range"
    );
    for run in &report.runs {
        let ratio = run
            .ratio_to_raw
            .map_or("-".to_string(), |r| format!("{r:.2}x"));
        let vs_std = run
            .ratio_to_std
            .map_or("-".to_string(), |r| format!("{r:.2}x"));
        let range = run.spread.map_or("-".to_string(), |(low, high)| {
            if low > 100.0 {
                format!("{low:.0}-{high:.0}")
            } else {
                format!("{low:.2}-{high:.2}")
            }
        });
        println!(
            "{:<22} {:<7} {:<8} {:>7} {:>7} {:>10} {:>12.0} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>13.3} {:>8} {:>8} {:>11}",
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
            ratio,
            vs_std,
            range
        );
    }
    for run in &report.runs {
        if let Some((rotations, waits)) = run.rotations {
            println!(
                "keel {} w{} {}B: {rotations} segment rotations, {waits} waited for preallocation",
                run.backend, run.writers, run.value_bytes
            );
        }
    }
}
