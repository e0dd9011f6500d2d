//! Adversarial review of 427aa37 (commits applied by the log's acknowledgement hook).

use std::alloc::System;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Durability, Lsn, Options};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

fn options(durability: Durability) -> Options {
    Options {
        durability,
        segment_bytes: 256 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

const ASYNC: Durability = Durability::Async {
    max_delay: Duration::from_millis(2),
};
const BATCHED: Durability = Durability::Batched {
    max_delay: Duration::from_millis(1),
    max_bytes: 1 << 20,
};

/// A small seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Committers in every mode (per-commit durabilities, blocking ones that drive the writer,
/// async ones that do not) each write their own key; every commit must be visible to its
/// committer when it returns, and every snapshot taken meanwhile must hold a prefix of the
/// log: no commit below the highest version a snapshot shows may be missing from it.
#[test]
fn commits_are_visible_on_return_and_snapshots_are_log_prefixes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("KEEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    println!("seed {seed}");
    for db_mode in [Durability::Strict, BATCHED, ASYNC] {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), options(db_mode)).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        let threads = 4;
        let commits = 150;
        let stop = Arc::new(AtomicBool::new(false));
        let snapshots = {
            let db = db.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut taken = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let snap = db.snapshot();
                    let versions: Vec<Option<Lsn>> = (0..threads)
                        .map(|t| snap.get(run, key(t)).unwrap().map(|v| v.version))
                        .collect();
                    taken.push(versions);
                    std::thread::yield_now();
                }
                taken
            })
        };
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let db = db.clone();
                let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                std::thread::spawn(move || {
                    let mut lsns = Vec::new();
                    for i in 0..commits {
                        let mut txn = db.transaction(run).unwrap();
                        txn.put(key(t), i.to_string()).unwrap();
                        let choice = rng.next() % 8;
                        let lsn = match choice {
                            0 => block_on(txn.commit_with(Durability::Strict)),
                            1 => block_on(txn.commit_with(BATCHED)),
                            2 => block_on(txn.commit_with(ASYNC)),
                            3 | 4 => txn.commit_blocking(),
                            _ => block_on(txn.commit()),
                        }
                        .unwrap();
                        let got = db.get(run, key(t)).unwrap().expect("read-your-writes");
                        assert_eq!(
                            got.version, lsn,
                            "{db_mode:?} choice {choice}: commit {lsn} returned before visible"
                        );
                        lsns.push(lsn);
                    }
                    lsns
                })
            })
            .collect();
        let lsns: Vec<Vec<Lsn>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        let taken = snapshots.join().unwrap();
        for versions in &taken {
            let highest = versions.iter().flatten().copied().max().unwrap_or(0);
            for (t, own) in lsns.iter().enumerate() {
                let below = own.iter().copied().filter(|l| *l <= highest).max();
                if let Some(below) = below {
                    let seen = versions[t].unwrap_or(0);
                    assert!(
                        seen >= below,
                        "{db_mode:?}: a snapshot shows LSN {highest} but not thread {t}'s commit {below} (has {seen})"
                    );
                }
            }
        }
        println!("{db_mode:?}: {} snapshots checked", taken.len());
        db.close().unwrap();
    }
}

/// Mixed committers (overrides, driving and not, spilled transactions), checkpoints and run
/// changes running together: every commit visible when it returns, and the live state, once
/// all returned, equal to what a reopen recovers.
#[test]
fn live_state_matches_a_reopen_under_mixed_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::env::var("KEEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xfeed_u64);
    println!("seed {seed}");
    for db_mode in [Durability::Strict, BATCHED] {
        let dir = tempfile::tempdir().unwrap();
        let options = || Options {
            spill_txn_bytes: 4096,
            ..options(db_mode)
        };
        let db = Database::open(dir.path(), options()).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let background = {
            let db = db.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    block_on(db.checkpoint()).unwrap();
                    let other = block_on(db.begin_run(&format!("o{i}"))).unwrap();
                    block_on(db.end_run(other)).unwrap();
                    if i % 2 == 0 {
                        block_on(db.delete_run(other)).unwrap();
                    }
                    i += 1;
                }
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let db = db.clone();
                let mut rng = Rng(seed ^ (t as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                std::thread::spawn(move || {
                    for i in 0..80 {
                        let mut txn = db.transaction(run).unwrap();
                        let big = rng.next().is_multiple_of(5);
                        let n = if big { 12 } else { 1 };
                        for j in 0..n {
                            let value = vec![u8::try_from((i + j) % 256).unwrap(); if big { 700 } else { 16 }];
                            txn.put(format!("k{t}-{j}"), value).unwrap();
                        }
                        if rng.next().is_multiple_of(7) {
                            txn.delete(format!("k{t}-0")).unwrap();
                        }
                        let choice = rng.next() % 6;
                        let lsn = match choice {
                            0 => block_on(txn.commit_with(Durability::Strict)),
                            1 => block_on(txn.commit_with(ASYNC)),
                            2 => block_on(txn.commit_with(BATCHED)),
                            3 | 4 => txn.commit_blocking(),
                            _ => block_on(txn.commit()),
                        }
                        .unwrap();
                        let last = format!("k{t}-{}", n - 1);
                        let got = db.get(run, &last).unwrap().map(|v| v.version);
                        assert!(
                            got.is_some_and(|v| v == lsn) || (n == 1 && got.is_none()),
                            "{db_mode:?} choice {choice} big {big}: commit {lsn} returned, {last} at {got:?}"
                        );
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap();
        let live: Vec<_> = db
            .iter(run)
            .unwrap()
            .map(|(k, v)| (k, v.value, v.version))
            .collect();
        let runs = db.list_runs().len();
        db.close().unwrap();
        let db = Database::open(dir.path(), options()).unwrap();
        let recovered: Vec<_> = db
            .iter(run)
            .unwrap()
            .map(|(k, v)| (k, v.value, v.version))
            .collect();
        assert_eq!(live, recovered, "{db_mode:?}: live state and reopen differ");
        assert_eq!(runs, db.list_runs().len(), "{db_mode:?}");
        println!("{db_mode:?}: {} keys, {runs} runs", live.len());
        db.close().unwrap();
    }
}

fn key(t: usize) -> String {
    format!("k{t}")
}

/// Counts the bytes allocated and freed, process-wide (`stats_alloc`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The tests of this file run one at a time: the leak test counts the process's memory.
static SERIAL: Mutex<()> = Mutex::new(());

/// A subscription is not a handle: it ends when the database closes. Closing the database
/// (last handle) must free its state; the subscription left behind may keep the log's shared
/// parts, not every key and value the database held. With the hook, the log's shared parts
/// (which a live tail holds) hold the hook, which holds the state and the queue of commits.
#[test]
fn a_subscription_left_after_close_does_not_keep_the_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 8 << 20,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    };
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let values = 256;
    let value_bytes = 128 * 1024;
    for i in 0..values {
        let mut txn = db.transaction(run).unwrap();
        txn.put(
            format!("k{i}"),
            vec![u8::try_from(i % 256).unwrap(); value_bytes],
        )
        .unwrap();
        txn.commit_blocking().unwrap();
    }
    let state_bytes = values * value_bytes;
    let subscription = db.subscribe(1);
    db.close().unwrap();
    let region = Region::new(GLOBAL);
    drop(subscription);
    let change = region.change();
    // What the drop freed, net of what it allocated and of what reallocations grew.
    let freed = change.bytes_deallocated as isize
        - change.bytes_allocated as isize
        - change.bytes_reallocated;
    let kept = usize::try_from(freed).unwrap_or(0);
    println!("state {state_bytes} bytes; the closed database's subscription kept {kept} bytes");
    assert!(
        kept < state_bytes / 4,
        "after close, a subscription kept {kept} bytes alive (the state holds {state_bytes})"
    );
}
