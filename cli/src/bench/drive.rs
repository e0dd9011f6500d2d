//! Committers in a loop for the run's duration, as threads or as tokio tasks, with a progress
//! bar: each commit's latency goes to a histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use super::BenchArgs;

/// What one run measured: every commit's latency (ns), the commits, and the time it took.
#[derive(Debug)]
pub(super) struct Measured {
    pub(super) latencies: Histogram<u64>,
    pub(super) commits: u64,
    pub(super) elapsed: Duration,
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
    ) -> Result<Measured, String> {
        let mut merged = latency_histogram();
        for one in latencies {
            merged.add(&one?).map_err(|e| e.to_string())?;
        }
        let elapsed = self.start.elapsed();
        self.progress.finish_and_clear();
        Ok(Measured {
            latencies: merged,
            commits: self.total.load(Ordering::Relaxed),
            elapsed,
        })
    }
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid bounds")
}

fn record_latency(latencies: &mut Histogram<u64>, began: Instant, total: &AtomicU64) {
    latencies.saturating_record(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
    total.fetch_add(1, Ordering::Relaxed);
}

/// Runs `commit(writer, sequence)` on `writers` threads for the configured duration, with a
/// progress bar.
pub(super) fn threads<F>(
    args: &BenchArgs,
    writers: u32,
    label: &str,
    commit: F,
) -> Result<Measured, String>
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

/// Like [`threads`], with each committer a tokio task awaiting the future `commit` returns.
pub(super) fn tasks<F>(
    args: &BenchArgs,
    writers: u32,
    label: &str,
    commit: F,
) -> Result<Measured, String>
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
