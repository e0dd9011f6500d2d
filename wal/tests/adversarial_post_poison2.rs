//! A reopen after a failed fdatasync is not "the way back" (`docs/DESIGN.md`, "Failure")
//! when it happens in the same life of the storage as the failure.
//!
//! The failed sync dropped its write from the durable path while the page cache keeps it
//! (fsyncgate, which the sim models within the life of the failed sync, `sync_file`
//! included). The reopen reads the segment through the cache, finds the record the failure
//! dropped, counts it durable (`durable_lsn`), and its `sync_file` of the last segment makes
//! nothing of it durable: the pages are clean. The first Strict commit after the reopen
//! then resolves `Ok` behind a hole a power loss opens: recovery stops at the hole and the
//! acknowledged commit is gone.
//!
//! Seeded sim, automatic mode; the record the failure drops spans several pages, so a
//! kernel that writes whole pages would not rewrite it with the next record either.

use std::sync::Arc;

use keel_sim::{CrashPlan, Sim, SimFaults};
use keel_wal::{Durability, RunId, WalEntry, WalOptions};

const SEED: u64 = 0x5eed_0054;

fn entry(txn_id: u64, len: usize) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id,
        key: b"k".to_vec(),
        value: vec![7; len],
    }
}

fn options(sim: &Arc<Sim>) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        witness_idle: None,
        storage: Arc::clone(sim) as _,
        ..WalOptions::default()
    }
}

#[test]
fn a_strict_commit_after_a_reopen_following_a_failed_sync_survives_a_power_loss() {
    println!("seed {SEED}");
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("wal");
    let sim = Sim::new(&dir, SEED).unwrap();

    // LSN 1, Strict: its sync fails and drops the write (fsyncgate); the log is poisoned.
    let wal = keel_recovery::open_wal(&dir, options(&sim)).unwrap();
    sim.arm(&SimFaults {
        fail_sync: Some(0),
        ..SimFaults::default()
    });
    let failed = wal.append(&[entry(1, 16 << 10)]).wait();
    assert!(failed.is_err(), "the failed sync fails LSN 1: {failed:?}");
    assert!(wal.close().is_err(), "the log was poisoned");

    // The way back: reopen (same process, same storage), then commit.
    let wal = keel_recovery::open_wal(&dir, options(&sim)).unwrap();
    let reopened_next = wal.next_lsn();
    let reopened_durable = wal.durable_lsn();
    let acknowledged = wal.append(&[entry(2, 100)]).wait();
    let trace = sim.trace();
    assert!(
        trace
            .iter()
            .any(|line| line.contains("EIO, 1 writes dropped (fsyncgate)")),
        "the failed sync dropped LSN 1: {trace:#?}"
    );

    // A power loss now: the durable image, none of the pending writes.
    let crash = sim.crash();
    let image = base.path().join("image");
    crash
        .materialize(&CrashPlan::prefix(&crash, 0, false), &image)
        .unwrap();
    drop(wal);
    let recovered = keel_recovery::open_wal(&image, WalOptions::default()).map(|wal| {
        let kept_through = wal.next_lsn() - 1;
        drop(wal);
        kept_through
    });
    println!(
        "reopened: next_lsn {reopened_next}, durable_lsn {reopened_durable}; Strict commit \
         after the reopen: {acknowledged:?}; after a power loss: {recovered:?}"
    );
    if let Ok(lsn) = acknowledged {
        assert!(
            recovered.as_ref().is_ok_and(|&kept| kept >= lsn),
            "seed {SEED}: the Strict commit after the reopen resolved Ok({lsn}) (the reopen \
             found LSN 1, which the failed sync dropped, and published durable_lsn \
             {reopened_durable}), yet a power loss recovers {recovered:?}"
        );
    }
}
