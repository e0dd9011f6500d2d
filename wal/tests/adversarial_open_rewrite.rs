//! The open's rewrite (`open_last_segment`, `Storage::rewrite`) makes durable what a reopen
//! after a failed fdatasync reads back from clean, never written pages (fsyncgate), but only in
//! the segment appends continue in. When recovery starts a fresh segment instead (here:
//! `SkipCorrupted` passed over damage inside the last segment, which seals it), the segment
//! the log's read ended in gets a plain sync (`recovery/src/repair.rs`, `sync_segment`): the
//! records the failed sync dropped stay on the cache only, yet the reopen replays them and
//! publishes them durable (`durable_lsn`), and the first Strict commit in the fresh segment is
//! acknowledged on top of them. A power loss then loses what the reopen called durable.
//!
//! Seeded sim, automatic mode, within the life of the failed sync (as
//! `adversarial_post_poison2.rs`).

use std::sync::Arc;

use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError};
use keel_sim::{CrashPlan, Damage, Sim, SimFaults};
use keel_wal::{Durability, Lsn, RunId, WalEntry, WalOptions};

const SEED: u64 = 0x5eed_0055;

fn entry(txn_id: u64, len: usize, byte: u8) -> WalEntry {
    WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id,
        key: b"k".to_vec(),
        value: vec![byte; len],
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

/// The LSNs of the records recovery reads.
#[derive(Default)]
struct Lsns(Vec<Lsn>);

impl Replay for Lsns {
    fn read(&mut self, lsn: Lsn, _: u64) {
        self.0.push(lsn);
    }

    fn apply(&mut self, _: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        Ok(())
    }
}

#[test]
fn records_a_reopen_publishes_durable_before_a_fresh_segment_survive_a_power_loss() {
    println!("seed {SEED}");
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("wal");
    let sim = Sim::new(&dir, SEED).unwrap();

    // LSN 1 durable; LSNs 2 and 3 (one write) dropped by a failed sync (fsyncgate).
    let wal = keel_recovery::open_wal(&dir, options(&sim)).unwrap();
    assert_eq!(wal.append(&[entry(1, 2000, 1)]).wait().unwrap(), 1);
    sim.arm(&SimFaults {
        fail_sync: Some(0),
        ..SimFaults::default()
    });
    let failed = wal
        .append(&[entry(2, 16 << 10, 2), entry(3, 16 << 10, 3)])
        .wait();
    assert!(
        failed.is_err(),
        "the failed sync fails LSNs 2-3: {failed:?}"
    );
    assert!(wal.close().is_err(), "the log was poisoned");

    // Media damage inside LSN 1 (in the cache and on the disk alike), which LSN 2's durable
    // mark proves durable: SkipCorrupted passes over it.
    let name = keel_wal::segment::file_name(1);
    let bytes = std::fs::read(dir.join(&name)).unwrap();
    let run = vec![1u8; 1000];
    let at = bytes
        .windows(run.len())
        .position(|w| w == run.as_slice())
        .expect("LSN 1's value") as u64;
    sim.damage(&Damage::BitFlip {
        path: name.into(),
        offset: at + 100,
        bit: 0,
    })
    .unwrap();

    // The reopen, same life: SkipCorrupted passes over LSN 1, reads LSNs 2 and 3 from the
    // cache, seals the segment with a fresh one, and publishes LSN 3 durable. A Strict commit goes on from there.
    let mut replayed = Lsns::default();
    let (wal, report) = keel_recovery::open_log(
        &dir,
        options(&sim),
        RecoveryPolicy::SkipCorrupted,
        None,
        &mut replayed,
    )
    .unwrap();
    let reopened_durable = wal.durable_lsn();
    let acknowledged = wal.append(&[entry(4, 100, 4)]).wait();
    println!(
        "reopen replayed {:?}, lost {:?}, durable_lsn {reopened_durable}; Strict commit: \
         {acknowledged:?}",
        replayed.0, report.lsns_lost
    );
    assert!(replayed.0.contains(&3), "the reopen read LSN 3");
    assert!(reopened_durable >= 3);

    // A power loss now: the durable image, none of the pending writes.
    let crash = sim.crash();
    let image = base.path().join("image");
    crash
        .materialize(&CrashPlan::prefix(&crash, 0, false), &image)
        .unwrap();
    drop(wal);
    let mut after = Lsns::default();
    let recovered = keel_recovery::recover(&image, RecoveryPolicy::SkipCorrupted, &mut after);
    println!(
        "after the power loss: {:?}, records read {:?}",
        recovered.as_ref().map(|r| &r.lsns_lost),
        after.0
    );
    assert!(
        after.0.contains(&3),
        "seed {SEED}: the reopen replayed LSN 3 and published durable_lsn {reopened_durable}, \
         and the Strict commit {acknowledged:?} was acknowledged after it, yet a power loss \
         keeps only LSNs {:?} (the fresh segment's plain sync of the sealed one wrote nothing \
         of what the failed sync dropped)",
        after.0
    );
}
