//! The group commit's tests. Groups are made deterministic by holding the lead from the test,
//! as a leader in the middle of its sync would: committers started one by one queue up behind
//! it, in order, and form one group when it is let go.

use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn contents(log: &RawGroupLog) -> Vec<u8> {
    std::fs::read(log.path()).unwrap()
}

/// Takes the lead, as a committer that is writing and syncing a group: arrivals wait.
fn hold_lead(log: &RawGroupLog) {
    log.lock().leading = true;
}

/// Lets go of the lead taken by [`hold_lead`] and wakes the waiting committers: one of them
/// leads what they appended.
fn release_lead(log: &RawGroupLog) {
    log.lock().leading = false;
    log.published.notify_all();
}

/// Waits (at most 10 s) until `count` records were appended.
fn wait_appended(log: &RawGroupLog, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.lock().appended_through < count {
        assert!(Instant::now() < deadline, "{count} records never appended");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Commits `records` on a thread each, started one after another so that they append in
/// order behind a held lead; releases the lead and returns each commit's result.
fn commit_behind_the_lead(log: &RawGroupLog, records: &[&[u8]]) -> Vec<io::Result<()>> {
    hold_lead(log);
    thread::scope(|scope| {
        let committers: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, &record)| {
                let committer = scope.spawn(move || log.commit(record));
                wait_appended(log, i as u64 + 1);
                committer
            })
            .collect();
        release_lead(log);
        committers.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn open_preallocates_zeros_of_the_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    let size = (1 << 20) + 5;
    let log = RawGroupLog::open(dir.path(), size).unwrap();
    assert_eq!(log.path(), dir.path().join(FILE_NAME));
    assert_eq!(contents(&log).len() as u64, size);
    assert!(contents(&log).iter().all(|&b| b == 0));
    assert_eq!((log.size_bytes(), log.syncs(), log.bytes()), (size, 0, 0));
}

#[test]
fn commits_go_one_after_another_and_wrap_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = RawGroupLog::open(dir.path(), 10).unwrap();
    log.commit(b"aaaa").unwrap();
    log.commit(b"bbbb").unwrap();
    assert_eq!(contents(&log), b"aaaabbbb\0\0");
    // Four more bytes would pass the end: the group goes to the start.
    log.commit(b"cccc").unwrap();
    assert_eq!(contents(&log), b"ccccbbbb\0\0");
    assert_eq!((log.syncs(), log.bytes()), (3, 12));
}

#[test]
fn commits_that_arrive_during_a_sync_share_the_next_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = RawGroupLog::open(dir.path(), 32).unwrap();
    let records: [&[u8]; 8] = [b"aa", b"bb", b"cc", b"dd", b"ee", b"ff", b"gg", b"hh"];
    for result in commit_behind_the_lead(&log, &records) {
        result.unwrap();
    }
    assert_eq!(log.syncs(), 1, "one group, one fdatasync");
    assert_eq!(log.bytes(), 16);
    assert_eq!(&contents(&log)[..16], b"aabbccddeeffgghh");
}

#[test]
fn a_group_too_big_for_the_file_is_split_and_the_rest_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let log = RawGroupLog::open(dir.path(), 10).unwrap();
    for result in commit_behind_the_lead(&log, &[b"aaaa", b"bbbb", b"cccc"]) {
        result.unwrap();
    }
    // The first two fit together; the third goes in a second group, at the start.
    assert_eq!(log.syncs(), 2);
    assert_eq!(contents(&log), b"ccccbbbb\0\0");
}

/// One row per case of [`records_that_fit`].
#[test]
fn a_group_takes_the_longest_run_of_records_that_fits() {
    assert_eq!(records_that_fit(&[4, 8, 12], 12), 3, "all fit");
    assert_eq!(records_that_fit(&[4, 8, 12], 11), 2, "the last does not");
    assert_eq!(records_that_fit(&[10, 11], 10), 1, "the first alone");
}

#[test]
#[should_panic(expected = "its first record fits")]
fn a_group_whose_first_record_does_not_fit_is_a_bug() {
    records_that_fit(&[11], 10);
}

#[test]
fn concurrent_committers_all_return_and_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = RawGroupLog::open(dir.path(), 4096).unwrap();
    let (threads, each, len) = (8u8, 200u64, 16usize);
    thread::scope(|scope| {
        for thread in 0..threads {
            let log = &log;
            scope.spawn(move || {
                let record = vec![thread; len];
                for _ in 0..each {
                    log.commit(&record).unwrap();
                }
            });
        }
    });
    let commits = u64::from(threads) * each;
    assert_eq!(log.bytes(), commits * len as u64);
    assert!((1..=commits).contains(&log.syncs()), "{}", log.syncs());
    let group = log.lock();
    assert_eq!(group.synced_through, commits);
    assert!(group.pending.is_empty() && !group.leading);
}

#[test]
fn a_record_longer_than_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = RawGroupLog::open(dir.path(), 4).unwrap();
    let error = log.commit(b"12345").unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(contents(&log), b"\0\0\0\0");
    assert_eq!(log.syncs(), 0);
}

/// The file handle is read-only, so the group's `pwrite` fails (EBADF): each committer of
/// the group gets the error, and so does every commit after.
#[test]
fn a_failed_group_fails_every_committer_in_it_and_every_commit_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = RawGroupLog::open(dir.path(), 64).unwrap().path().to_owned();
    let read_only = File::open(&path).unwrap();
    let log = RawGroupLog::with_file(read_only, path, 64);
    let results = commit_behind_the_lead(&log, &[b"aa", b"bb", b"cc", b"dd"]);
    let kinds: Vec<io::ErrorKind> = results
        .into_iter()
        .map(|result| {
            let error = result.unwrap_err();
            assert!(
                error.to_string().contains("raw group commit failed"),
                "{error}"
            );
            error.kind()
        })
        .collect();
    assert!(kinds.iter().all(|&kind| kind == kinds[0]), "{kinds:?}");
    assert_eq!(log.syncs(), 0);
    assert!(log.commit(b"ee").is_err(), "a failed log stays failed");
    let group = log.lock();
    assert_eq!((group.taken_through, group.synced_through), (4, 0));
    assert!(group.pending.is_empty(), "a refused commit is not queued");
}
