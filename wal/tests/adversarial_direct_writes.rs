//! Adversarial review of `BackendChoice::UringDirect`: records written `O_DIRECT` from
//! block-aligned buffers widened to whole 4096-byte blocks, `O_DSYNC` while every chain of a
//! segment synced, a direct write into a block in flight held behind it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_sim::Faults;
use keel_wal::{BackendChoice, BackendKind, Durability, Wal, WalOptions};

fn direct_available() -> bool {
    let available = BackendChoice::available().contains(&BackendChoice::UringDirect);
    if !available {
        println!("skipped: uring-direct is not available here (or KEEL_BACKEND narrowed it)");
    }
    available
}

/// Every chain through the ring (several in flight), direct writes.
fn direct_ring_options(faults: &Arc<Faults>) -> WalOptions {
    faults.uring_ring_only(true);
    WalOptions {
        storage: Arc::clone(faults) as _,
        ..common::small_options(BackendChoice::UringDirect)
    }
}

/// A record's value length for committer `t`'s `i`th append.
fn value_len(seed: u64, t: u64, i: u64) -> usize {
    usize::try_from((seed ^ (t * 7919 + i * 104_729)) % 2900).unwrap()
}

/// `threads` committers, `per_thread` appends each, every third one's durability chosen by
/// `durability`; returns each committer's results.
fn commit_concurrently(
    wal: &Arc<Wal>,
    seed: u64,
    threads: u64,
    per_thread: u64,
    durability: fn(u64) -> Durability,
) -> Vec<keel_wal::Result<u64>> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let entry = common::write(
                            u128::from(t),
                            i,
                            &format!("t{t}-{i}"),
                            value_len(seed, t, i),
                        );
                        wal.append_with(&[entry], durability(i)).wait()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// The ring's short-write fault ([`Faults::uring_short_writes`]: every write submitted with
/// half its length, so each comes back short and is reissued) on a direct log: a direct
/// write's reissue must still be a valid direct write, and nothing may be lost.
#[test]
fn short_direct_writes_are_reissued_and_nothing_is_lost() {
    if !direct_available() {
        return;
    }
    let seed = common::seed(0xd1_7ec7);
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    faults.uring_short_writes(true);
    let wal = Arc::new(keel_recovery::open_wal(dir.path(), direct_ring_options(&faults)).unwrap());
    assert_eq!(wal.backend(), BackendKind::UringDirect);
    let results = commit_concurrently(&wal, seed, 4, 60, |_| Durability::Strict);
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "seed {seed}: {} of {} commits failed, the first with {}",
        failed.len(),
        results.len(),
        failed[0]
    );
    Arc::into_inner(wal).unwrap().close().unwrap();
    assert_eq!(common::read_all(dir.path()).len(), 240);
}

/// Strict, Batched and Async commits mixed on one direct log (so its segments switch from
/// `O_DSYNC` writes to direct writes and fdatasyncs), four committers pipelining through
/// the ring, while a tail reads every durable record as it comes (through the page cache,
/// from blocks direct writes rewrite); then reopened twice, each life's first write
/// starting inside a block it reads back. Every record reads back whole, in order, live and
/// after each close.
#[test]
fn mixed_durability_with_a_live_tail_reads_back_whole() {
    if !direct_available() {
        return;
    }
    let seed = common::seed(0x00d1_5ec7);
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0u64;
    for life in 0..3u64 {
        let faults = Faults::new();
        let options = WalOptions {
            durability: Durability::Batched {
                max_delay: Duration::from_millis(2),
                max_bytes: 64 * 1024,
            },
            recycle_segments: 2,
            ..direct_ring_options(&faults)
        };
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options).unwrap());
        let start = wal.next_lsn();
        let stop = Arc::new(AtomicBool::new(false));
        let tail = {
            let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut tail = wal.tail(start);
                let mut read = 0u64;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match tail.try_next() {
                        Ok(Some(record)) => {
                            assert_eq!(record.lsn(), start + read, "life {life}: out of order");
                            read += 1;
                        }
                        Ok(None)
                            if stop.load(Ordering::SeqCst)
                                && tail.next_lsn() > wal.durable_lsn() =>
                        {
                            return read;
                        }
                        Ok(None) => {
                            assert!(Instant::now() < deadline, "life {life}: the tail stalled");
                            std::thread::yield_now();
                        }
                        Err(e) => panic!(
                            "seed {seed} life {life}: the tail failed at {}: {e}",
                            tail.next_lsn()
                        ),
                    }
                }
            })
        };
        let results = commit_concurrently(&wal, seed ^ life, 4, 80, |i| match i % 3 {
            0 => Durability::Strict,
            1 => Durability::Batched {
                max_delay: Duration::from_millis(1),
                max_bytes: 16 * 1024,
            },
            _ => Durability::Async {
                max_delay: Duration::from_millis(1),
            },
        });
        assert!(results.iter().all(Result::is_ok), "seed {seed} life {life}");
        wal.sync().wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        let read = tail.join().unwrap();
        assert_eq!(
            read, 320,
            "seed {seed} life {life}: the tail read every record"
        );
        if life == 1 {
            wal.remove_segments_before(wal.durable_lsn()).unwrap();
        }
        Arc::into_inner(wal).unwrap().close().unwrap();
        total += 320;
        let all = common::read_all(dir.path());
        let last = all.last().map(|(l, _)| *l);
        assert_eq!(last, Some(start + 319), "seed {seed} life {life}");
        assert!(all.len() as u64 <= total);
    }
}
