//! `keel checkpoint-bench`: what a checkpoint of a large state costs, and what commits see
//! while one runs.
//!
//! 1. Fills a new database with `--state-mib` of values (`--value-size` each, distinct keys),
//!    with automatic checkpoints off, so that only the checkpoints measured here run.
//! 2. **With `--reopen`, recovery from the log, then from a snapshot**: reopens the database,
//!    replaying the whole fill from the log (what an open reads of a state that only grew,
//!    which automatic checkpoints leave in the log since they would drop nothing); then,
//!    after the checkpoint of step 3, reopens it from that snapshot. Both read what the fill
//!    left in the page cache, so they compare the work of an open, not the device. The
//!    memory figures after a reopen include the first state's memory, freed but kept by the
//!    allocator: measure memory without it.
//! 3. **A checkpoint alone**: its time and peak resident memory with nothing else running.
//! 4. **Without a checkpoint**: `--writers` threads overwrite random keys of that state, one
//!    put per durable commit, for `--window` seconds: commit latency percentiles.
//! 5. **During a checkpoint**: the same committers while a checkpoint of the whole state
//!    runs on another thread; only commits that began while it ran count. Reports how long
//!    the checkpoint took and the peak resident memory meanwhile (Linux: `VmHWM`, reset
//!    just before), against the state's own bytes.
//!
//! Both windows run in one process on one device, so they read as a ratio.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

#[derive(Debug, Args)]
pub struct CheckpointBenchArgs {
    /// MiB of values the state holds (keys are extra).
    #[arg(long, default_value_t = 1024)]
    state_mib: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 4096)]
    value_size: usize,
    /// Committer threads in both windows.
    #[arg(long, default_value_t = 8)]
    writers: u32,
    /// Seconds of the window without a checkpoint (the one during lasts as long as the
    /// checkpoint does).
    #[arg(long, default_value_t = 5.0)]
    window: f64,
    /// Use the portable std backend instead of the default (io_uring where it runs).
    #[arg(long)]
    std: bool,
    /// Directory to run in; default: a new temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also time an open that replays the whole fill from the log, and one from the
    /// snapshot (the resident figures after it include freed memory the allocator kept).
    #[arg(long)]
    reopen: bool,
}

type Db = Arc<keel::Database>;

pub fn run(args: &CheckpointBenchArgs) -> Result<(), String> {
    if args.writers == 0 || args.value_size == 0 || args.window <= 0.0 {
        return Err("--writers, --value-size and --window must be above 0".into());
    }
    let temp = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("cannot create a directory to run in: {e}"))?;
    let options = keel::Options {
        checkpoint_log_bytes: 0,
        backend: if args.std {
            keel::BackendChoice::Std
        } else {
            keel::BackendChoice::Auto
        },
        ..keel::Options::default()
    };
    let db =
        Arc::new(keel::Database::open(temp.path(), options.clone()).map_err(|e| e.to_string())?);
    let run =
        futures::executor::block_on(db.begin_run("checkpoint-bench")).map_err(|e| e.to_string())?;
    let keys = (args.state_mib << 20) / args.value_size as u64;
    let filled = Instant::now();
    fill(&db, run, keys, args.value_size)?;
    let fill_secs = filled.elapsed().as_secs_f64();
    let (rss_filled, _) = memory();
    println!(
        "state: {keys} keys of {} B = {} MiB of values, filled in {fill_secs:.1} s; resident {}",
        args.value_size,
        args.state_mib,
        mib(rss_filled)
    );

    let mut db = db;
    let mut log_secs = 0.0;
    if args.reopen {
        (db, log_secs) = reopen(db, temp.path(), &options)?;
        let replayed = db.recovery_report().bytes;
        println!(
            "open from the log alone: {log_secs:.2} s ({} MiB of log replayed, {:.0} MiB/s)",
            replayed >> 20,
            (replayed >> 20) as f64 / log_secs.max(1e-9)
        );
    }

    // A checkpoint with nothing else running: its own time and memory.
    reset_peak();
    let (rss_idle, _) = memory();
    let began = Instant::now();
    futures::executor::block_on(db.checkpoint()).map_err(|e| e.to_string())?;
    let idle_secs = began.elapsed().as_secs_f64();
    let (_, idle_peak) = memory();
    println!(
        "checkpoint alone: {idle_secs:.2} s ({:.0} MiB/s of values); resident before {}, peak {} (peak − before: {})",
        args.state_mib as f64 / idle_secs.max(1e-9),
        mib(rss_idle),
        mib(idle_peak),
        mib(idle_peak.map(|p| p.saturating_sub(rss_idle.unwrap_or(0))))
    );
    print_goal("alone", idle_peak, args.state_mib << 20);
    if args.reopen {
        let snapshot_secs;
        (db, snapshot_secs) = reopen(db, temp.path(), &options)?;
        println!(
            "open from the snapshot: {snapshot_secs:.2} s ({:.2} of the open from the log)",
            snapshot_secs / log_secs.max(1e-9)
        );
    }

    let quiet = commit_window(&db, run, keys, args, None)?;
    print_window("without a checkpoint", &quiet);

    reset_peak();
    let (rss_before, _) = memory();
    let during = commit_window(&db, run, keys, args, Some(Arc::clone(&db)))?;
    let (_, peak) = memory();
    print_window("during the checkpoint", &during);
    let secs = during.checkpoint_secs.unwrap_or(0.0);
    let state_bytes = args.state_mib << 20;
    println!(
        "checkpoint under commits: {secs:.2} s ({:.0} MiB/s of values); resident before {}, peak {} (peak − before: {})",
        args.state_mib as f64 / secs.max(1e-9),
        mib(rss_before),
        mib(peak),
        mib(peak.map(|p| p.saturating_sub(rss_before.unwrap_or(0))))
    );
    print_goal("under commits", peak, state_bytes);
    let ratio = |q: f64| {
        during.latencies.value_at_quantile(q) as f64
            / quiet.latencies.value_at_quantile(q).max(1) as f64
    };
    println!(
        "during ÷ without: p50 {:.2}, p99 {:.2}, p99.9 {:.2}; commits/s {:.2}",
        ratio(0.5),
        ratio(0.99),
        ratio(0.999),
        during.per_sec() / quiet.per_sec().max(1e-9)
    );
    drop(Arc::into_inner(db).ok_or("the database is still shared")?);
    Ok(())
}

/// Closes `db` and opens it again: the new handle and the open's seconds.
fn reopen(db: Db, path: &std::path::Path, options: &keel::Options) -> Result<(Db, f64), String> {
    let db = Arc::into_inner(db).ok_or("the database is still shared")?;
    db.close().map_err(|e| e.to_string())?;
    let began = Instant::now();
    let db = keel::Database::open(path, options.clone()).map_err(|e| e.to_string())?;
    Ok((Arc::new(db), began.elapsed().as_secs_f64()))
}

/// Writes `keys` keys of `value_size` bytes, 16 to a transaction, from 4 threads.
fn fill(db: &Db, run: keel::RunId, keys: u64, value_size: usize) -> Result<(), String> {
    const PER_TXN: u64 = 16;
    const THREADS: u64 = 4;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = Arc::clone(db);
            std::thread::spawn(move || -> Result<(), String> {
                let value = vec![0x5a; value_size];
                let mut first = t * PER_TXN;
                while first < keys {
                    let mut txn = db.transaction(run).map_err(|e| e.to_string())?;
                    for key in first..(first + PER_TXN).min(keys) {
                        txn.put(key_of(key), &value).map_err(|e| e.to_string())?;
                    }
                    futures::executor::block_on(txn.commit()).map_err(|e| e.to_string())?;
                    first += THREADS * PER_TXN;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a fill thread panicked")??;
    }
    Ok(())
}

fn key_of(key: u64) -> [u8; 8] {
    key.to_be_bytes()
}

/// What one window measured.
struct Window {
    latencies: Histogram<u64>,
    commits: u64,
    secs: f64,
    checkpoint_secs: Option<f64>,
}

impl Window {
    fn per_sec(&self) -> f64 {
        self.commits as f64 / self.secs.max(1e-9)
    }
}

/// Committers overwriting random keys: for `--window` seconds, or, given `checkpoint`, while
/// a checkpoint of it runs (counting only commits begun meanwhile).
fn commit_window(
    db: &Db,
    run: keel::RunId,
    keys: u64,
    args: &CheckpointBenchArgs,
    checkpoint: Option<Db>,
) -> Result<Window, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(checkpoint.is_none()));
    let commits = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let committers: Vec<_> = (0..args.writers)
        .map(|writer| {
            let (db, stop, counting, commits, latencies) = (
                Arc::clone(db),
                Arc::clone(&stop),
                Arc::clone(&counting),
                Arc::clone(&commits),
                Arc::clone(&latencies),
            );
            let value = vec![0xa5; args.value_size];
            std::thread::spawn(move || -> Result<(), String> {
                let mut mine = Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3)
                    .map_err(|e| e.to_string())?;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(writer);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let counted = counting.load(Ordering::Acquire);
                    let began = Instant::now();
                    let mut txn = db.transaction(run).map_err(|e| e.to_string())?;
                    txn.put(key_of(rng % keys), &value)
                        .map_err(|e| e.to_string())?;
                    futures::executor::block_on(txn.commit()).map_err(|e| e.to_string())?;
                    if counted {
                        let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        mine.saturating_record(nanos);
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
                    .lock()
                    .map_err(|_| "a committer panicked")?
                    .add(&mine)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let started = Instant::now();
    let checkpoint_secs = match checkpoint {
        None => {
            std::thread::sleep(Duration::from_secs_f64(args.window));
            None
        }
        Some(db) => {
            // Let the committers reach their pace first.
            std::thread::sleep(Duration::from_millis(500));
            let began = Instant::now();
            counting.store(true, Ordering::Release);
            futures::executor::block_on(db.checkpoint()).map_err(|e| e.to_string())?;
            counting.store(false, Ordering::Release);
            Some(began.elapsed().as_secs_f64())
        }
    };
    let secs = checkpoint_secs.unwrap_or_else(|| started.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for committer in committers {
        committer.join().map_err(|_| "a committer panicked")??;
    }
    let latencies = Arc::into_inner(latencies)
        .ok_or("latencies still shared")?
        .into_inner()
        .map_err(|_| "a committer panicked")?;
    Ok(Window {
        latencies,
        commits: commits.load(Ordering::Relaxed),
        secs,
        checkpoint_secs,
    })
}

/// The peak against the goal: at most 1.2 × the state + 64 MiB.
fn print_goal(what: &str, peak: Option<u64>, state_bytes: u64) {
    if let Some(peak) = peak {
        let goal = state_bytes as f64 * 1.2 + 64.0 * 1048576.0;
        println!(
            "{what}: peak ÷ state {:.2}; goal peak ≤ 1.2 × state + 64 MiB = {:.0} MiB: {}",
            peak as f64 / state_bytes as f64,
            goal / 1048576.0,
            if (peak as f64) <= goal {
                "met"
            } else {
                "missed"
            }
        );
    }
}

fn print_window(what: &str, window: &Window) {
    let us = |q: f64| window.latencies.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{what}: {} commits in {:.2} s = {:.0}/s; latency µs p50 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0}",
        window.commits,
        window.secs,
        window.per_sec(),
        us(0.5),
        us(0.99),
        us(0.999),
        window.latencies.max() as f64 / 1000.0
    );
}

/// Resident and peak resident bytes of this process (Linux; `None` elsewhere).
fn memory() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident size to the current one (Linux: `5` to `clear_refs`).
fn reset_peak() {
    if let Err(error) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak resident size ({error}); the peak is the process's");
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0))
}
