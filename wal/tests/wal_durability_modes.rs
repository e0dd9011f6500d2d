//! Batched syncs on its timer with no further appends; Async resolves before any write;
//! `sync()` makes everything before it durable; a Strict override inside a Batched log waits
//! for its fdatasync.

mod common;

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use keel_wal::{Durability, Wal, WalOptions};

fn options(backend: keel_wal::BackendChoice, durability: Durability) -> WalOptions {
    WalOptions {
        durability,
        ..common::small_options(backend)
    }
}

/// Polls the counters until `done` holds. The bound is only there to fail instead of hanging
/// when it never does (liveness), never a measure of how fast it happened.
fn wait_until(wal: &Wal, limit: Duration, done: impl Fn(&keel_wal::WalStats) -> bool) {
    let start = Instant::now();
    while !done(&wal.stats()) {
        assert!(
            start.elapsed() < limit,
            "condition never reached (waited {limit:?}): {:?}",
            wal.stats()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Batched resolves once written; nothing but its timer syncs: with a timer of an hour the
/// record stays unsynced, with a short one it becomes durable with no further append. (No
/// wall-clock assertion: when the timer fires is the scheduler's business.)
#[test]
fn batched_mode_syncs_on_its_timer_without_further_appends() {
    for backend in common::backends() {
        for max_delay in [Duration::from_secs(3600), Duration::from_millis(20)] {
            let dir = tempfile::tempdir().unwrap();
            let durability = Durability::Batched {
                max_delay,
                max_bytes: u64::MAX,
            };
            let wal = keel_recovery::open_wal(dir.path(), options(backend, durability)).unwrap();
            let lsn = wal.append(&[common::write(1, 1, "k", 100)]).wait().unwrap();
            let stats = wal.stats();
            assert!(
                stats.written_lsn >= lsn,
                "Batched resolves once written: {stats:?}"
            );
            if max_delay > Duration::from_secs(60) {
                assert_eq!(stats.fsyncs, 0, "nothing syncs before the timer: {stats:?}");
                assert!(stats.durable_lsn < lsn);
            } else {
                wait_until(&wal, Duration::from_secs(60), |s| s.durable_lsn >= lsn);
                assert_eq!(wal.stats().fsyncs, 1, "one timer sync");
            }
            wal.close().unwrap();
        }
    }
}

#[test]
fn batched_mode_syncs_once_max_bytes_are_unsynced() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let durability = Durability::Batched {
            max_delay: Duration::from_secs(3600),
            max_bytes: 4096,
        };
        let wal = keel_recovery::open_wal(dir.path(), options(backend, durability)).unwrap();
        let mut last = 0;
        for i in 0..20 {
            last = wal
                .append(&[common::write(1, i, "k", 1000)])
                .wait()
                .unwrap();
        }
        wait_until(&wal, Duration::from_secs(10), |s| s.fsyncs >= 3);
        assert!(wal.stats().durable_lsn > 0 && wal.stats().durable_lsn <= last);
        wal.close().unwrap();
    }
}

#[test]
fn async_resolves_at_enqueue_and_sync_makes_it_durable() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let durability = Durability::Async {
            max_delay: Duration::from_secs(3600),
        };
        let wal = keel_recovery::open_wal(dir.path(), options(backend, durability)).unwrap();
        let mut future = Box::pin(wal.append(&[common::write(1, 1, "k", 100)]));
        let mut cx = Context::from_waker(Waker::noop());
        // Resolved before the writer thread has had any say: nothing was written for it yet
        // as far as this future knows.
        let Poll::Ready(lsn) = future.as_mut().poll(&mut cx) else {
            panic!("Async must resolve at enqueue")
        };
        let lsn = lsn.unwrap();
        assert_eq!(lsn, 1);
        let more: Vec<u64> = (2..50)
            .map(|i| wal.append(&[common::write(1, i, "k", 100)]).wait().unwrap())
            .collect();
        assert_eq!(more, (2..50).collect::<Vec<_>>());
        let synced = wal.sync().wait().unwrap();
        assert_eq!(synced, 49);
        let stats = wal.stats();
        assert!(stats.durable_lsn >= 49, "{stats:?}");
        assert!(stats.fsyncs >= 1);
        drop(wal);
        assert_eq!(common::read_all(dir.path()).len(), 49);
    }
}

#[test]
fn a_strict_commit_inside_a_batched_log_waits_for_its_sync() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let durability = Durability::Batched {
            max_delay: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        let wal = keel_recovery::open_wal(dir.path(), options(backend, durability)).unwrap();
        let batched = wal.append(&[common::write(1, 1, "k", 10)]).wait().unwrap();
        assert!(wal.stats().durable_lsn < batched);
        let strict = wal
            .append_with(&[common::write(1, 2, "k", 10)], Durability::Strict)
            .wait()
            .unwrap();
        let stats = wal.stats();
        assert!(stats.durable_lsn >= strict, "{stats:?}");
        assert_eq!(stats.fsyncs, 1);
        wal.close().unwrap();
    }
}

#[test]
fn sync_on_an_idle_durable_log_resolves_at_once() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal =
            keel_recovery::open_wal(dir.path(), options(backend, Durability::Strict)).unwrap();
        assert_eq!(wal.sync().wait().unwrap(), 0);
        let lsn = wal.append(&[common::write(1, 1, "k", 10)]).wait().unwrap();
        assert_eq!(wal.sync().wait().unwrap(), lsn);
        assert_eq!(wal.stats().fsyncs, 1);
        wal.close().unwrap();
    }
}
