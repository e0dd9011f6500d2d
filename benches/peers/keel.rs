//! `keel-uring`, `keel-uring-direct`, `keel-std`, `keel-batched`, `keel-async`: `keel_wal::Wal`, one transaction
//! (a write and its commit) per record.

use std::io;
use std::path::Path;

use keel_wal::{BackendChoice, Durability, RunId, Wal, WalEntry, WalOptions};

use crate::harness::Peer;

/// The log, and whether a commit waits through `append(..).wait()` (every commit handed to
/// the writer thread) instead of `append_wait` (a committer that finds the writer idle
/// writes its own commit).
pub struct Keel(Wal, bool);

/// Opens a log on `backend` with `durability`; `handoff`: commits go through
/// `append(..).wait()`.
pub fn open(
    dir: &Path,
    backend: BackendChoice,
    durability: Durability,
    handoff: bool,
) -> io::Result<Box<dyn Peer>> {
    let options = WalOptions {
        durability,
        backend,
        max_record_bytes: 1 << 20,
        ..WalOptions::default()
    };
    Ok(Box::new(Keel(
        keel_recovery::open_wal(dir, options).map_err(io::Error::other)?,
        handoff,
    )))
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
        let committed = if self.1 {
            self.0.append(&entries).wait()
        } else {
            self.0.append_wait(&entries)
        };
        committed.map(drop).map_err(io::Error::other)
    }

    fn counters(&self) -> Option<String> {
        let s = self.0.stats();
        Some(format!(
            "{} commits in {} writes and {} fdatasyncs ({:.1} commits/write, at most {}), \
             {} rotations ({} waited for a spare), {} written by their committer",
            s.commits,
            s.writes,
            s.fsyncs,
            s.commits as f64 / s.writes.max(1) as f64,
            s.max_batch_commits,
            s.rotations,
            s.rotation_waits,
            s.driven
        ))
    }
}
