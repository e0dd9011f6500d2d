//! Small deterministic tests of bugs the simulation found.

use std::time::Duration;

use keel_sim::{Broken, Sim};
use keel_wal::{Durability, RunId, WalEntry, WalOptions};

use crate::harness::{poll_now, settle, wal_options};
use crate::random::run_seed;

/// A sync taken while a Batched write is in flight is held back until the write completes
/// (a sync covers only completed writes); then it must go out at once. It used to wait for
/// the next request or the Batched timer (here an hour), which also made seed 4136 of the
/// random driver depend on thread timing. The writer takes the sync while a write is in
/// flight when the sync was queued during a rotation's drain, as here.
#[test]
fn sim_a_held_sync_goes_out_when_the_writes_before_it_complete() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("wal");
    let sim = Sim::new(&dir, 7).unwrap();
    sim.set_manual(true);
    let options = WalOptions {
        durability: Durability::Batched {
            max_delay: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        },
        ..wal_options(8192, 4, 0, &sim)
    };
    let wal = keel_recovery::open_wal(&dir, options).unwrap();
    // Dropped first, also when a check fails: lets the log close without manual steps.
    struct Auto<'a>(&'a Sim);
    impl Drop for Auto<'_> {
        fn drop(&mut self) {
            self.0.set_manual(false);
        }
    }
    let _auto = Auto(&sim);
    settle(&wal, &sim);
    let entry = |txn_id, len| WalEntry::Write {
        run_id: RunId::from_u128(1),
        txn_id,
        key: b"k".to_vec(),
        value: vec![7; len],
    };
    // The second record does not fit in the first segment: the writer rotates, and blocks
    // until the first segment's write and sync complete.
    wal.hold_writer(true);
    let mut first = wal.append(&[entry(1, 2500)]);
    let mut second = wal.append(&[entry(2, 1500)]);
    wal.hold_writer(false);
    settle(&wal, &sim);
    let mut synced = wal.sync();
    settle(&wal, &sim);
    // The first segment's write and sync; then the writer installs the second segment,
    // writes the second record (no sync: Batched) and takes the sync request.
    sim.advance();
    settle(&wal, &sim);
    sim.advance();
    settle(&wal, &sim);
    assert!(matches!(poll_now(&mut first), Some(Ok(_))));
    assert_eq!(sim.operations_in_flight(), 1, "the second record's write");
    assert!(
        poll_now(&mut synced).is_none(),
        "no sync before that write completes"
    );
    sim.advance();
    settle(&wal, &sim);
    assert!(matches!(poll_now(&mut second), Some(Ok(_))));
    assert_eq!(
        sim.operations_in_flight(),
        1,
        "the held sync was submitted once the write completed"
    );
    sim.advance();
    settle(&wal, &sim);
    assert!(
        matches!(poll_now(&mut synced), Some(Ok(_))),
        "the sync resolved"
    );
}

/// Issue 15, blind spot 1; a regression test of the directory sync at reopening. The random
/// driver found these seeds: each crashes a process between a segment's rename and its
/// directory fsync (seed 724 while the log creates its first segment, seed 928 inside a
/// rotation), the next process recovers and acknowledges Strict commits in that segment, and
/// a power loss keeping the directory's durable entries then lost them ("I1: acknowledged
/// transaction (1, 1) at LSN 8 was lost (recovered log ends before LSN 1)", and "(3, 60) at
/// LSN 186 ... before LSN 174"). With the open's directory sync taken out again, all four
/// fail; with it, all pass. The sync adds storage events, so a seed's path moves with the
/// fix: at least one of them must still crash between a rename and its directory sync and
/// then lose power over what the crashed process left unsynced, or the test says so.
#[test]
fn sim_seeds_724_and_928_process_crash_before_a_segment_name_is_durable() {
    let mut reached = Vec::new();
    for seed in [724, 928, 2445, 6737] {
        let (run, result) = run_seed(seed, Broken::default());
        if let Err(violation) = result {
            panic!("{}", run.report(&violation));
        }
        let crashed_after_rename = run.traces.iter().any(|trace| {
            trace.windows(2).any(|pair| {
                pair[0].contains("] sync file spare-")
                    && pair[1].contains("CRASH at sync directory")
            })
        });
        if crashed_after_rename && run.tally.nondurable_starts > 0 && run.tally.inherited_losses > 0
        {
            reached.push(seed);
        }
    }
    assert!(
        !reached.is_empty(),
        "no seed still crashes between a segment's rename and its directory sync and then \
         loses power over what the crashed process left unsynced"
    );
}
