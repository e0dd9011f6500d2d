//! The batched ring's tests. Each skips, with a note, where io_uring does not run
//! ([`BackendChoice::available`]).

use std::sync::Arc;
use std::thread;

use keel_wal::BackendChoice;

use super::*;

/// Whether io_uring runs here; prints why the test is skipped when it does not.
fn ring_runs(test: &str) -> bool {
    let runs = BackendChoice::available().contains(&BackendChoice::Uring);
    if !runs {
        eprintln!("{test}: skipped, io_uring is not available here");
    }
    runs
}

fn contents(log: &RawUringBatched) -> Vec<u8> {
    std::fs::read(log.path()).unwrap()
}

#[test]
fn open_preallocates_zeros_of_the_exact_size() {
    if !ring_runs("open_preallocates_zeros_of_the_exact_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = (1 << 20) + 5;
    let log = RawUringBatched::open(dir.path(), size, 4).unwrap();
    assert_eq!(log.path(), dir.path().join(FILE_NAME));
    assert_eq!(contents(&log).len() as u64, size);
    assert!(contents(&log).iter().all(|&b| b == 0));
    assert_eq!((log.size_bytes(), log.syncs(), log.bytes()), (size, 0, 0));
}

#[test]
fn commits_land_in_order_and_wrap_at_the_end() {
    if !ring_runs("commits_land_in_order_and_wrap_at_the_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = RawUringBatched::open(dir.path(), 10, 4).unwrap();
    log.commit(b"aaaa").unwrap();
    log.commit(b"bbbb").unwrap();
    assert_eq!(contents(&log), b"aaaabbbb\0\0");
    // Four more bytes would pass the end: the chain goes to the start.
    log.commit(b"cccc").unwrap();
    assert_eq!(contents(&log), b"ccccbbbb\0\0");
    assert_eq!((log.syncs(), log.bytes(), log.records()), (3, 12, 3));
}

#[test]
fn concurrent_committers_all_return_and_share_chains() {
    if !ring_runs("concurrent_committers_all_return_and_share_chains") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Room for four records: chains wrap, and queues of more are split to fit.
    let log = RawUringBatched::open(dir.path(), 96, 8).unwrap();
    let (threads, commits, record) = (8u8, 200u64, 24usize);
    thread::scope(|scope| {
        for thread in 0..threads {
            let log = &log;
            scope.spawn(move || {
                for _ in 0..commits {
                    log.commit(&[thread + 1; 24]).unwrap();
                }
            });
        }
    });
    let total = u64::from(threads) * commits;
    assert_eq!(log.records(), total);
    assert_eq!(log.bytes(), total * record as u64);
    assert!(log.syncs() >= 1 && log.syncs() <= total, "{}", log.syncs());
    // Every record landed whole: the file holds only whole 24-byte records of one thread.
    for chunk in contents(&log).chunks(record).filter(|c| c.len() == record) {
        assert!(chunk.iter().all(|&b| b == chunk[0]), "{chunk:?}");
    }
}

#[test]
fn a_record_longer_than_the_file_is_refused() {
    if !ring_runs("a_record_longer_than_the_file_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = RawUringBatched::open(dir.path(), 4, 2).unwrap();
    let error = log.commit(b"12345").unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(contents(&log), b"\0\0\0\0");
    assert_eq!(log.syncs(), 0);
    // The log still commits what fits.
    log.commit(b"1234").unwrap();
    assert_eq!(contents(&log), b"1234");
}

#[test]
fn a_failed_chain_fails_its_committer_and_every_commit_after() {
    if !ring_runs("a_failed_chain_fails_its_committer_and_every_commit_after") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(UringFaults::default());
    faults.ring_only(true);
    let log = RawUringBatched::open_with(dir.path(), 64, 2, Some(&faults)).unwrap();
    log.commit(b"good").unwrap();
    faults.fail_write_after(0);
    let first = log.commit(b"lost").unwrap_err();
    let later = log.commit(b"late").unwrap_err();
    assert_eq!(first.kind(), later.kind());
    assert!(later.to_string().contains("failed"), "{later}");
    assert_eq!((log.syncs(), log.records()), (1, 1));
}

#[test]
fn drop_stops_and_joins_the_ring_thread() {
    if !ring_runs("drop_stops_and_joins_the_ring_thread") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = RawUringBatched::open(dir.path(), 64, 4).unwrap();
    log.commit(b"kept").unwrap();
    let shared = Arc::downgrade(&log.shared);
    assert!(
        shared.strong_count() > 1,
        "the ring thread holds the log's state too"
    );
    let path = log.path().to_path_buf();
    drop(log);
    // The ring thread held the other reference until it returned: drop waited for it.
    assert_eq!(
        shared.strong_count(),
        0,
        "the ring thread ended before drop returned"
    );
    assert_eq!(&std::fs::read(path).unwrap()[..4], b"kept");
}
