//! What `keel bench` takes on the command line, and the log options a run of it opens with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use keel_wal::{BackendChoice, Durability, WalOptions};
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
    /// One OS thread per committer, blocking in `Wal::append_wait` (the engine rows:
    /// `Transaction::commit_blocking`).
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
    /// io_uring with records written O_DIRECT (O_DSYNC in Strict) instead of through the
    /// page cache and an fdatasync.
    UringDirect,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent committers (a list runs each).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    pub(super) writers: Vec<u32>,
    /// Bytes of each value (a list runs each).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub(super) value_size: Vec<usize>,
    /// Durability mode.
    #[arg(long, value_enum, default_value_t = Mode::Strict)]
    pub(super) mode: Mode,
    /// Committers as OS threads or as tokio tasks (the raw baselines always use threads).
    #[arg(long, value_enum, default_value_t = Committers::Threads)]
    pub(super) committers: Committers,
    /// Sync timer of the batched and async modes, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub(super) max_delay_ms: u64,
    /// IO backend (a list runs each, side by side).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "auto")]
    pub(super) backend: Vec<Backend>,
    /// Chains the io_uring backend keeps in flight.
    #[arg(long, default_value_t = keel_wal::DEFAULT_IO_DEPTH)]
    pub(super) io_depth: usize,
    /// Rounds of the whole comparison; each cell reports its median round (noisy machines).
    #[arg(long, default_value_t = 1)]
    pub(super) rounds: usize,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 5.0)]
    pub(super) duration: f64,
    /// Directory to run in (on the device to measure); default: a new temporary directory.
    #[arg(long)]
    pub(super) dir: Option<PathBuf>,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    pub(super) segment_mib: u64,
    /// Skip the raw baselines (pwrite + fdatasync of each record, group commit by hand, and
    /// group commit on the ring).
    #[arg(long)]
    pub(super) no_baseline: bool,
    /// Also run the engine beside the log: transactions through `Database`, one put of the
    /// value per commit, automatic checkpoints at their default (`keel-db` rows, committer
    /// threads; each compared with the log on the same backend).
    #[arg(long)]
    pub(super) engine: bool,
    /// The engine rows' automatic checkpoint threshold in MiB of log (0: none; default: the
    /// engine's, `Options::checkpoint_log_bytes`).
    #[arg(long)]
    pub(super) checkpoint_log_mib: Option<u64>,
    /// With `--engine`, also run the engine with one change-feed subscriber following every
    /// commit (`keel-db+feed` rows): its commits/s beside keel-db's, the rate the feed
    /// delivered, and each commit's latency from its acknowledgement (durable, in strict
    /// mode) to its delivery.
    #[arg(long)]
    pub(super) feed: bool,
    /// With `--engine`, also run the engine with transactions that read before they write
    /// (`keel-db+rw` rows): each reads the key its committer wrote last, then puts, so every
    /// commit is validated under serializable isolation; its commits/s beside keel-db's.
    #[arg(long)]
    pub(super) read_write: bool,
    /// Also run the log with its covered segments removed as it writes them (every 20 ms,
    /// below the durable LSN, as checkpoints would): `keel+trim` rows, deleting them (every
    /// new segment zero-filled), and `keel+recycle` rows, keeping this many as spares that
    /// later segments are written over (`WalOptions::recycle_segments`; no zero fill); with
    /// `--engine`, also `keel-db+recycle` rows, the engine with its checkpoints recycling
    /// (the other `keel-db` rows then recycle none, for the comparison; without this option
    /// they run with the engine's default, which recycles).
    #[arg(long)]
    pub(super) recycle: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

impl BenchArgs {
    /// Refuses what cannot run: no committers, no rounds, no time.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.writers.contains(&0) || self.duration <= 0.0 || self.rounds == 0 {
            return Err("--writers, --rounds and --duration must be above 0".into());
        }
        Ok(())
    }

    /// The log options of one run on `backend`.
    pub(super) fn wal_options(&self, backend: Backend) -> WalOptions {
        let max_delay = Duration::from_millis(self.max_delay_ms);
        WalOptions {
            durability: match self.mode {
                Mode::Strict => Durability::Strict,
                Mode::Batched => Durability::Batched {
                    max_delay,
                    max_bytes: 64 << 20,
                },
                Mode::Async => Durability::Async { max_delay },
            },
            // The record limit follows it (an eighth); the bench's records are one value
            // each, far below.
            segment_bytes: self.segment_mib << 20,
            backend: match backend {
                Backend::Auto => BackendChoice::Auto,
                Backend::Std => BackendChoice::Std,
                Backend::Uring => BackendChoice::Uring,
                Backend::UringDirect => BackendChoice::UringDirect,
            },
            io_depth: self.io_depth,
            ..WalOptions::default()
        }
    }
}
