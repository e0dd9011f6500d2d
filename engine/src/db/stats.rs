//! The database's counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use keel_wal::WalStats;

use super::Database;
use super::sync::lock;

/// A snapshot of a database's counters.
#[derive(Clone, Debug)]
pub struct Stats {
    /// The log's counters, including the backend in use.
    pub wal: WalStats,
    /// Commits made through this handle since open (transactions and run changes).
    pub commits: u64,
    /// Commit latency, from `commit()` to its acknowledgement, in microseconds.
    pub commit_p50_us: f64,
    /// The 99th percentile of the same.
    pub commit_p99_us: f64,
    /// The 99.9th percentile of the same.
    pub commit_p999_us: f64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Automatic checkpoints that failed since open (each commit that ran one succeeded);
    /// the next automatic or explicit checkpoint retries.
    pub auto_checkpoint_failures: u64,
    /// The last automatic checkpoint failure's message.
    pub last_auto_checkpoint_error: Option<String>,
    /// Spilled transactions whose heads the log keeps: open ones, and committed ones above
    /// the oldest snapshot a restart may load. Bounded by those; a leak here pins the log.
    pub spills_tracked: usize,
    /// Commits queued in the log and not yet visible. Bounded by the log's queue: a refused
    /// commit (a poisoned log) is never queued here.
    pub pending_commits: usize,
    /// Runs in the state, active and ended.
    pub runs: usize,
    /// Keys in the state, every run's (the runs' own records included).
    pub keys: usize,
}

impl Database {
    /// Counters: the log's (commits, bytes, fsyncs, batch sizes, backend in use) and the
    /// database's (commit latency percentiles, checkpoints, runs, keys).
    ///
    /// Each lock is taken on its own and released before the next: the engine's order is
    /// `pending` before `state` (a commit is applied under `pending`), so holding the state
    /// while taking `pending` could deadlock against a commit being applied.
    pub fn stats(&self) -> Stats {
        let (commits, [commit_p50_us, commit_p99_us, commit_p999_us]) = self.latency();
        let pending_commits = lock(&self.inner.pending).len();
        let spills_tracked = lock(&self.inner.spills).len();
        let (runs, keys) = {
            let state = self.read();
            (state.runs.len(), state.data.len())
        };
        Stats {
            wal: self.inner.wal.stats(),
            commits,
            commit_p50_us,
            commit_p99_us,
            commit_p999_us,
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            auto_checkpoint_failures: self.inner.auto_checkpoint_failures.load(Ordering::Relaxed),
            last_auto_checkpoint_error: lock(&self.inner.last_auto_checkpoint_error).clone(),
            spills_tracked,
            pending_commits,
            runs,
            keys,
        }
    }

    /// Commits timed, and the p50, p99 and p999 commit latencies in microseconds.
    fn latency(&self) -> (u64, [f64; 3]) {
        let latency = self.inner.latency.merged();
        let micros = |q: f64| {
            if latency.is_empty() {
                0.0
            } else {
                latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        (latency.len(), [micros(0.50), micros(0.99), micros(0.999)])
    }
}

/// Commit latencies in nanoseconds, in shards picked by thread, so concurrent committers
/// rarely meet on one lock (one global histogram was a contended lock per commit).
#[derive(Debug)]
pub(super) struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

const LATENCY_SHARDS: usize = 16;

impl Latencies {
    pub fn new() -> Result<Latencies, hdrhistogram::CreationError> {
        let shards = (0..LATENCY_SHARDS)
            .map(|_| Histogram::new_with_bounds(1_000, 600_000_000_000, 3).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Latencies { shards })
    }

    /// Records one commit's latency in the calling thread's shard.
    pub fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        lock(&self.shards[shard()]).saturating_record(nanos);
    }

    /// Every shard added up.
    fn merged(&self) -> Histogram<u64> {
        let mut all = lock(&self.shards[0]).clone();
        for shard in &self.shards[1..] {
            // Same bounds in every shard: adding cannot fail.
            let _ = all.add(&*lock(shard));
        }
        all
    }
}

/// The calling thread's latency shard: threads take them in turn as they first commit.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LATENCY_SHARDS;
    }
    SHARD.with(|shard| *shard)
}
