//! `keel-uring`, `keel-uring-direct`, `keel-std`, `keel-batched`, `keel-async` and the `-fill` and
//! `-handoff` rows: `keel_wal::Wal`, one transaction
//! (a write and its commit) per record.
//!
//! The rows remove the log behind its durable LSN as they go, as an application's
//! checkpoints would (and as the `okaywal` row checkpoints every 48 MiB and reuses its
//! files): the segments removed become the next ones, recycled, instead of new zero-filled
//! files. `keel-uring-fill` and `keel-batched-fill` (the recovery table's filler) keep
//! every record, as `okaywal-fill` does.

use std::io;
use std::path::Path;
use std::sync::Arc;

use keel_wal::{BackendChoice, Durability, RunId, Wal, WalEntry, WalOptions};

use keel_bench::Trimmer;

use crate::harness::Peer;

/// The log, whether a commit waits through `append(..).wait()` (every commit handed to
/// the writer thread) instead of `append_wait` (a committer that finds the writer idle
/// writes its own commit), and the thread that removes covered log, if it is removed.
pub struct Keel {
    wal: Arc<Wal>,
    handoff: bool,
    trimmer: Option<Trimmer>,
}

/// How a row treats its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    /// Commits go through `append_wait`; covered log is removed as it is written.
    Trimmed,
    /// Commits go through `append(..).wait()`; covered log is removed as it is written.
    TrimmedHandoff,
    /// Commits go through `append_wait`; every record is kept (new segments are zero-filled).
    Kept,
}

/// Opens a log on `backend` with `durability`, treated as `log` says.
pub fn open(
    dir: &Path,
    backend: BackendChoice,
    durability: Durability,
    log: Log,
) -> io::Result<Box<dyn Peer>> {
    let options = WalOptions {
        durability,
        backend,
        max_record_bytes: 1 << 20,
        ..WalOptions::default()
    };
    let wal = Arc::new(keel_recovery::open_wal(dir, options).map_err(io::Error::other)?);
    let trimmer = (log != Log::Kept).then(|| Trimmer::start(Arc::clone(&wal)));
    Ok(Box::new(Keel {
        wal,
        handoff: log == Log::TrimmedHandoff,
        trimmer,
    }))
}

/// Recovers the log (counting the entries of every committed transaction), then opens it.
pub fn reopen(dir: &Path) -> io::Result<u64> {
    struct Count(u64);
    impl keel_recovery::Replay for Count {
        fn apply(
            &mut self,
            txn: &keel_recovery::CommittedTxn<'_>,
        ) -> Result<(), keel_recovery::ReplayError> {
            self.0 += txn.entries().len() as u64;
            Ok(())
        }
    }
    let mut count = Count(0);
    keel_recovery::recover(dir, keel_recovery::RecoveryPolicy::default(), &mut count)
        .map_err(io::Error::other)?;
    let wal = keel_recovery::open_wal(dir, WalOptions::default()).map_err(io::Error::other)?;
    drop(wal);
    Ok(count.0)
}

impl Peer for Keel {
    fn commit(&self, thread: usize, seq: u64, payload: &[u8]) -> io::Result<()> {
        let run_id = RunId::from_u128(thread as u128 + 1);
        let entries = [
            WalEntry::Write {
                run_id,
                txn_id: seq,
                key: seq.to_le_bytes().to_vec(),
                value: payload.to_vec(),
            },
            WalEntry::CommitTxn {
                run_id,
                txn_id: seq,
            },
        ];
        if let Some(why) = self.trimmer.as_ref().and_then(Trimmer::failure) {
            return Err(io::Error::other(format!(
                "removing covered log failed: {why}"
            )));
        }
        let committed = if self.handoff {
            self.wal.append(&entries).wait()
        } else {
            self.wal.append_wait(&entries)
        };
        committed.map(drop).map_err(io::Error::other)
    }

    fn counters(&self) -> Option<String> {
        let s = self.wal.stats();
        Some(format!(
            "{} commits in {} writes and {} fdatasyncs ({:.1} commits/write, at most {}), \
             {} rotations ({} waited for a spare, {} into recycled files), \
             {} written by their committer",
            s.commits,
            s.writes,
            s.fsyncs,
            s.commits as f64 / s.writes.max(1) as f64,
            s.max_batch_commits,
            s.rotations,
            s.rotation_waits,
            s.segments_recycled,
            s.driven
        ))
    }
}
