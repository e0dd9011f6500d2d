//! Closing and dropping: nothing acknowledged is lost when a log is dropped without `close`,
//! whatever its mode; spares are reused across opens; rotation works without a background
//! preallocator.

mod common;

use std::time::Duration;

use keel_wal::{Durability, WalOptions};

fn in_mode(backend: keel_wal::BackendChoice, durability: Durability) -> WalOptions {
    WalOptions {
        durability,
        ..common::small_options(backend)
    }
}

#[test]
fn dropping_without_close_keeps_every_acknowledged_commit() {
    let hour = Duration::from_secs(3600);
    let modes = [
        Durability::Strict,
        Durability::Batched {
            max_delay: hour,
            max_bytes: u64::MAX,
        },
        Durability::Async { max_delay: hour },
    ];
    for backend in common::backends() {
        for durability in modes {
            let dir = tempfile::tempdir().unwrap();
            let wal = keel_recovery::open_wal(dir.path(), in_mode(backend, durability)).unwrap();
            let acked: Vec<u64> = (0..300)
                .map(|i| wal.append(&[common::write(3, i, "k", 300)]).wait().unwrap())
                .collect();
            drop(wal);
            let recovered: Vec<u64> = common::read_all(dir.path())
                .iter()
                .map(|(lsn, _)| *lsn)
                .collect();
            assert_eq!(recovered, acked, "{backend:?} {durability:?}");
            let wal = keel_recovery::open_wal(dir.path(), in_mode(backend, durability)).unwrap();
            assert_eq!(wal.stats().durable_lsn, 300, "reopened state is durable");
            assert_eq!(wal.next_lsn(), 301);
        }
    }
}

#[test]
fn a_ready_spare_is_reused_by_the_next_open() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        wal.append(&[common::write(1, 1, "k", 10)]).wait().unwrap();
        let spares = |dir: &std::path::Path| keel_wal::dir::list_directory(dir).unwrap().spares;
        let ready = |dir: &std::path::Path| {
            spares(dir)
                .iter()
                .any(|p| p.to_string_lossy().ends_with(".ready"))
        };
        // The background thread makes the next spare right after the first segment took one.
        let waiting = std::time::Instant::now();
        while !ready(dir.path()) {
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "no spare was made"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        wal.close().unwrap();
        let before = spares(dir.path());
        assert_eq!(before.len(), 1, "one ready spare after close: {before:?}");
        assert!(before[0].to_string_lossy().ends_with(".ready"));
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        // Fill the segment so the next append rotates into the reused spare.
        for i in 0..200 {
            wal.append(&[common::write(1, i, "k", 400)]).wait().unwrap();
        }
        assert!(wal.stats().rotations >= 1);
        wal.close().unwrap();
        assert!(
            !dir.path().join(before[0].file_name().unwrap()).exists(),
            "the spare became a segment"
        );
        assert_eq!(common::read_all(dir.path()).len(), 201);
    }
}

#[test]
fn rotation_works_without_a_background_preallocator() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            preallocate: false,
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        for i in 0..500 {
            wal.append(&[common::write(1, i, "k", 400)]).wait().unwrap();
        }
        let stats = wal.stats();
        assert!(stats.rotations >= 3);
        assert_eq!(
            stats.rotation_waits, stats.rotations,
            "every spare was made on demand"
        );
        wal.close().unwrap();
        assert_eq!(common::read_all(dir.path()).len(), 500);
    }
}

#[test]
fn a_large_unit_spanning_segments_is_written_whole() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let unit: Vec<_> = (0..400)
            .map(|i| common::write(2, 9, &format!("k{i}"), 1000))
            .collect();
        let last = wal.append(&unit).wait().unwrap();
        assert_eq!(last, 400);
        assert!(wal.stats().rotations >= 5);
        wal.close().unwrap();
        let records = common::read_all(dir.path());
        assert_eq!(
            records.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
            unit
        );
    }
}
