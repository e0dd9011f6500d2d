//! `Wal::tail`: every record once, in LSN order, only once durable; following rotations and
//! a writer that appends meanwhile; ending when the log closes; a removed position named.
//!
//! The waits on another thread are bounded by a watchdog (a minute; each returns as soon as
//! the records arrive) and measure no speed.

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use futures::executor::block_on;
use keel_wal::{Durability, Error, Lsn, RunId, Wal, WalEntry};

const WATCHDOG: Duration = Duration::from_secs(60);

fn unit(i: u64) -> Vec<WalEntry> {
    vec![
        common::write(
            7,
            i,
            &format!("key-{i}"),
            usize::try_from(i * 37 % 900).unwrap(),
        ),
        WalEntry::CommitTxn {
            run_id: RunId::from_u128(7),
            txn_id: i,
        },
    ]
}

/// Reads the tail from `from` to its end (the log closed) on a thread: the LSNs and entries.
fn follow(wal: &Wal, from: Lsn) -> mpsc::Receiver<Vec<(Lsn, WalEntry)>> {
    let mut tail = wal.tail(from);
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let mut read = Vec::new();
        while let Some(record) = block_on(tail.next()) {
            let record = record.expect("a clean log reads whole");
            read.push((record.lsn(), record.entry().to_owned_entry()));
        }
        done.send(read).unwrap();
    });
    result
}

#[test]
fn a_tail_reads_every_record_once_in_order_across_rotations_while_appends_go_on() {
    for backend in common::backends() {
        for durability in [
            Durability::Strict,
            Durability::Async {
                max_delay: Duration::from_millis(1),
            },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let options = keel_wal::WalOptions {
                durability,
                ..common::small_options(backend)
            };
            let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
            let from_start = follow(&wal, 1);
            let mut expected = Vec::new();
            for i in 0..400u64 {
                let entries = unit(i);
                wal.append(&entries).wait().unwrap();
                expected.extend(entries);
            }
            // One more follower that starts in the middle (a consumer resuming after LSN
            // 300): it reads from 301 on.
            let resumed = follow(&wal, 301);
            for i in 400..500u64 {
                let entries = unit(i);
                wal.append(&entries).wait().unwrap();
                expected.extend(entries);
            }
            Arc::into_inner(wal).unwrap().close().unwrap();
            let segments = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
            assert!(segments.len() >= 4, "{} segments", segments.len());

            let read = from_start.recv_timeout(WATCHDOG).expect("the tail ended");
            let lsns: Vec<Lsn> = read.iter().map(|(lsn, _)| *lsn).collect();
            assert_eq!(lsns, (1..=expected.len() as u64).collect::<Vec<_>>());
            let entries: Vec<WalEntry> = read.into_iter().map(|(_, e)| e).collect();
            assert_eq!(entries, expected, "{backend:?} {durability:?}");

            let read = resumed.recv_timeout(WATCHDOG).expect("the tail ended");
            assert_eq!(read.first().map(|(lsn, _)| *lsn), Some(301));
            assert_eq!(read.len(), expected.len() - 300);
            assert_eq!(read.last().unwrap().1, *expected.last().unwrap());
        }
    }
}

#[test]
fn a_tail_never_yields_a_record_before_it_is_durable() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = keel_wal::WalOptions {
            durability: Durability::Async {
                max_delay: Duration::from_millis(1),
            },
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        wal.append(&unit(0)).wait().unwrap();
        block_on(wal.sync()).unwrap();
        let mut tail = wal.tail(1);
        assert_eq!(tail.try_next().unwrap().unwrap().lsn(), 1);
        assert_eq!(tail.try_next().unwrap().unwrap().lsn(), 2);
        // Held, the writer takes nothing: Async appends are acknowledged, not durable.
        wal.hold_writer(true);
        for i in 1..20 {
            wal.append(&unit(i)).wait().unwrap();
        }
        assert_eq!(wal.durable_lsn(), 2);
        assert!(tail.try_next().unwrap().is_none(), "nothing durable yet");
        // A follower waiting at the durable position wakes once the writer makes them so.
        let (got, arrived) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let first = block_on(tail.next()).unwrap().unwrap().lsn();
            got.send(first).unwrap();
            tail
        });
        wal.hold_writer(false);
        block_on(wal.sync()).unwrap();
        assert_eq!(arrived.recv_timeout(WATCHDOG).unwrap(), 3);
        let mut tail = waiter.join().unwrap();
        let mut last = 3;
        while let Some(record) = tail.try_next().unwrap() {
            assert_eq!(record.lsn(), last + 1);
            assert!(record.lsn() <= wal.durable_lsn());
            last = record.lsn();
        }
        assert_eq!(last, 40);
        wal.close().unwrap();
    }
}

#[test]
fn a_tail_from_a_removed_position_names_the_oldest_lsn_still_there() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::small_options(keel_wal::BackendChoice::Std);
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    for i in 0..300u64 {
        wal.append(&unit(i)).wait().unwrap();
    }
    assert!(wal.remove_segments_before(400).unwrap() > 0);
    let oldest = keel_wal::dir::list_directory(dir.path()).unwrap().segments[0].first_lsn;
    assert!(oldest > 1 && oldest <= 400);
    let mut tail = wal.tail(1);
    match tail.try_next() {
        Err(Error::LsnRemoved {
            requested,
            oldest: named,
        }) => {
            assert_eq!((requested, named), (1, oldest));
        }
        other => panic!("expected LsnRemoved, got {other:?}"),
    }
    // Ended: nothing more, and the stream says so.
    assert!(block_on(tail.next()).is_none());
    // From the oldest LSN on, it reads.
    let mut tail = wal.tail(oldest);
    assert_eq!(tail.try_next().unwrap().unwrap().lsn(), oldest);
    wal.close().unwrap();
}

#[test]
fn a_tail_of_a_closed_log_ends_after_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::small_options(keel_wal::BackendChoice::Std);
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    wal.append(&unit(0)).wait().unwrap();
    let waiting = follow(&wal, 3);
    let all = follow(&wal, 1);
    wal.close().unwrap();
    assert_eq!(waiting.recv_timeout(WATCHDOG).unwrap(), Vec::new());
    assert_eq!(all.recv_timeout(WATCHDOG).unwrap().len(), 2);
}

#[test]
fn a_live_tail_holds_the_log_from_its_position_within_its_lag() {
    let dir = tempfile::tempdir().unwrap();
    let options = keel_wal::WalOptions {
        tail_max_lag_bytes: 16 * 64 * 1024,
        ..common::small_options(keel_wal::BackendChoice::Std)
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let mut tail = wal.tail(1);
    for i in 0..600u64 {
        wal.append(&unit(i)).wait().unwrap();
    }
    let segments = || keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    let before = segments().len();
    assert!((4..16).contains(&before), "{before} segments");
    // Held: nothing goes while the tail is at LSN 1.
    assert_eq!(wal.remove_segments_before(1300).unwrap(), 0);
    // Read up to 300: the segments wholly below it go, the one it reads stays.
    while tail.next_lsn() <= 600 {
        tail.try_next().unwrap().unwrap();
    }
    assert!(wal.remove_segments_before(1300).unwrap() > 0);
    let oldest = segments()[0].first_lsn;
    assert!(
        oldest <= 600,
        "the segment holding LSN 600 stays: oldest {oldest}"
    );
    // A dropped tail holds nothing.
    drop(tail);
    wal.remove_segments_before(1300).unwrap();
    assert!(segments()[0].first_lsn > 600 || segments().len() == 1);
    wal.close().unwrap();
}

#[test]
fn a_tail_too_far_behind_is_let_go_and_the_log_removed() {
    let dir = tempfile::tempdir().unwrap();
    let options = keel_wal::WalOptions {
        tail_max_lag_bytes: 2 * 64 * 1024,
        ..common::small_options(keel_wal::BackendChoice::Std)
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let mut slow = wal.tail(1);
    let (got, arrived) = mpsc::channel();
    // A follower waiting at the durable position is woken by being let go.
    let mut waiting = wal.tail(1);
    for i in 0..600u64 {
        wal.append(&unit(i)).wait().unwrap();
    }
    while waiting.try_next().unwrap().is_some() {}
    let waiter = std::thread::spawn(move || {
        got.send(block_on(waiting.next()).map(|r| r.map(|r| r.lsn())))
            .unwrap();
    });
    // `waiting` is at the head (lag 0): held; `slow` at 1 is 4+ segments behind: let go.
    let removed = wal.remove_segments_before(1300).unwrap();
    assert!(removed >= 3, "{removed} removed");
    match slow.try_next() {
        Err(Error::TailFellBehind {
            position: 1,
            lag_bytes,
            max_bytes,
        }) => assert!(lag_bytes > max_bytes, "{lag_bytes} > {max_bytes}"),
        other => panic!("expected TailFellBehind, got {other:?}"),
    }
    assert!(block_on(slow.next()).is_none(), "ended");
    // The waiting tail is still there: the next commit reaches it.
    wal.append(&unit(600)).wait().unwrap();
    let next = arrived.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(next.map(|r| r.unwrap()), Some(1201));
    waiter.join().unwrap();
    wal.close().unwrap();
}
