//! The database's counters.

use std::sync::atomic::Ordering;

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
    pub commit_p99_us: f64,
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
    pub runs: usize,
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
        let latency = lock(&self.inner.latency);
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
