//! `Wal::append_wait`: a committer that finds the writer idle writes its own append
//! (leader/follower). Every commit it acknowledges is durable and comes back from the log;
//! what it leaves to the writer thread (a `Batched` sync on a timer, the records of
//! committers that arrived meanwhile) is still carried out; a failure while it drives
//! poisons the log as a writer-thread failure does.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::within;
use keel_sim::Faults;
use keel_wal::{BackendChoice, Durability, Error, Lsn, WalOptions};

/// No idle witness: nothing but the appends wakes the writer thread, so a lone committer
/// finds it idle every time.
fn options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        witness_idle: None,
        ..common::small_options(backend)
    }
}

#[test]
fn a_lone_committer_writes_its_own_commits_and_they_are_durable() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), options(backend)).unwrap();
        common::wait_until_idle(&wal);
        let mut lsns = Vec::new();
        for i in 0..300 {
            // 300 × 2 KiB crosses several 64 KiB segments: drives rotate too.
            let lsn = wal.append_wait(&[common::write(1, i, "k", 2048)]).unwrap();
            assert!(
                wal.durable_lsn() >= lsn,
                "{backend:?}: acknowledged, not durable"
            );
            lsns.push(lsn);
        }
        assert_eq!(lsns, (1..=300).collect::<Vec<Lsn>>(), "{backend:?}");
        let stats = wal.stats();
        assert!(stats.rotations > 0, "{backend:?}: {stats:?}");
        // Only a spurious wake of the idle writer sends a commit through it.
        assert!(
            stats.driven >= 290,
            "{backend:?}: {} of 300 commits written by their committer",
            stats.driven
        );
        wal.close().unwrap();
        let recovered: Vec<Lsn> = common::read_all(dir.path()).iter().map(|r| r.0).collect();
        assert_eq!(recovered, lsns, "{backend:?}");
    }
}

#[test]
fn a_batched_commit_written_by_its_committer_is_synced_by_the_timer() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options(backend)).unwrap());
        common::wait_until_idle(&wal);
        let batched = Durability::Batched {
            max_delay: Duration::from_millis(20),
            max_bytes: u64::MAX,
        };
        for i in 0..5 {
            // A Batched commit resolves once written; the drive writes it and leaves its
            // sync to the writer thread, asleep without a deadline: the drive's end must
            // wake it for the timer, or the record stays unsynced.
            let batch = wal.encode(&[common::write(1, i, "b", 100)]).unwrap();
            let lsn = wal.append_encoded_wait(batch, batched).unwrap();
            let durable = Arc::clone(&wal);
            within(Duration::from_secs(10), "the timer's sync", move || {
                while durable.durable_lsn() < lsn {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            common::wait_until_idle(&wal);
        }
        assert!(wal.stats().driven >= 1, "{backend:?}");
        Arc::into_inner(wal).unwrap().close().unwrap();
        assert_eq!(common::read_all(dir.path()).len(), 5, "{backend:?}");
    }
}

#[test]
fn committers_driving_and_handing_off_together_lose_nothing() {
    let seed = common::seed(0x5eed_d21e);
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options(backend)).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    let mut rng = seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let mut acked = Vec::new();
                    for i in 0..250 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let entry = common::write(u128::from(t) + 1, i, "c", (rng % 3000) as usize);
                        let lsn = match rng % 4 {
                            // Mostly drivers; some hand their commit to the writer thread,
                            // some do not wait at all.
                            0 => wal.append(&[entry]).wait().unwrap(),
                            1 => {
                                let lazy = Durability::Async {
                                    max_delay: Duration::from_millis(1),
                                };
                                wal.append_with(&[entry], lazy).wait().unwrap()
                            }
                            _ => {
                                let lsn = wal.append_wait(&[entry]).unwrap();
                                assert!(wal.durable_lsn() >= lsn, "acknowledged, not durable");
                                lsn
                            }
                        };
                        acked.push(lsn);
                    }
                    acked
                })
            })
            .collect();
        let mut all = BTreeSet::new();
        for thread in threads {
            for lsn in thread.join().unwrap() {
                assert!(all.insert(lsn), "{backend:?}: LSN {lsn} given twice");
            }
        }
        assert_eq!(all.len(), 1000);
        assert_eq!(*all.last().unwrap(), 1000, "{backend:?}: LSNs are dense");
        let driven = wal.stats().driven;
        println!("{backend:?}: {driven} drives");
        Arc::into_inner(wal).unwrap().close().unwrap();
        let recovered: BTreeSet<Lsn> = common::read_all(dir.path()).iter().map(|r| r.0).collect();
        assert_eq!(recovered, all, "{backend:?}: seed {seed}");
    }
}

#[test]
fn a_failure_while_a_committer_drives_poisons_the_log() {
    for (operation, fail) in [
        ("write", Faults::fail_write_after as fn(&Faults, u32)),
        ("fdatasync", Faults::fail_sync_after),
    ] {
        for backend in common::backends() {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults::new();
            let wal = keel_recovery::open_wal(
                dir.path(),
                WalOptions {
                    storage: Arc::clone(&faults) as _,
                    ..options(backend)
                },
            )
            .unwrap();
            common::wait_until_idle(&wal);
            for i in 0..5 {
                wal.append_wait(&[common::write(1, i, "ok", 50)]).unwrap();
            }
            fail(&faults, 0);
            let error = wal
                .append_wait(&[common::write(1, 9, "lost", 50)])
                .unwrap_err();
            match &error {
                Error::Poisoned { cause } => assert_eq!(cause.operation, operation, "{error}"),
                other => panic!("{backend:?}: expected a poisoned log, got {other}"),
            }
            assert!(matches!(
                wal.append_wait(&[common::write(1, 10, "later", 50)]),
                Err(Error::Poisoned { .. })
            ));
            assert!(wal.stats().driven >= 6, "{backend:?}");
            assert_eq!(wal.durable_lsn(), 5, "{backend:?}");
            assert!(wal.close().is_err());
            let recovered: Vec<Lsn> = common::read_all(dir.path()).iter().map(|r| r.0).collect();
            assert!(
                recovered.starts_with(&[1, 2, 3, 4, 5]),
                "{backend:?}: {recovered:?}"
            );
        }
    }
}
