//! Adversarial review of 61df330: `Transaction::commit_blocking` waits for its commit's
//! acknowledgement with `CommitFuture::wait` (a condvar on the commit's slot) inside its
//! `block_on`, through `Database::finish_commit_blocking`, instead of awaiting it. Regression
//! tests, all passing: no way was found through the change to lose, strand or hang a blocking
//! commit, to fail a durable one, to return before it is visible on the committing thread,
//! or to keep the database from closing.
//!
//! Covered: `close` (refused, then accepted) and a weak commit's barrier while a blocking
//! committer is parked in its drive; a panic of the log's writer thread while blocking,
//! async and weak committers wait on it; a poisoned log under spilled blocking commits;
//! read-your-writes after every blocking commit in `Async`, `Batched` and `Strict`
//! databases beside stronger and weaker `commit_with` commits and a change feed.
//!
//! Every test is seeded where it is random (the seed is printed), and waits for its threads
//! under a watchdog instead of hanging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, CloseError, Database, Durability, FeedEvent, Lsn, Options, RunId};

mod common;
use common::blocking::{Rng, within};
use common::gated::{GatedStorage, Release};

/// The shared small options, with automatic checkpoints off.
fn options(backend: BackendChoice, durability: Durability) -> Options {
    Options {
        checkpoint_log_bytes: 0,
        ..common::blocking::options(backend, durability)
    }
}

fn version(db: &Database, run: RunId, key: &str) -> Option<Lsn> {
    db.get(run, key).unwrap().map(|v| v.version)
}

/// A blocking committer parked in its drive (completions held back): `close` on another
/// handle is refused with `InUse` and closes nothing; a weak (`Async`) commit queued behind
/// it does not resolve before the parked commit is durable (its barrier), and sees it once
/// it does; the blocking committer sees its own commit when it returns; and once every
/// committer returned, `close` succeeds at once (the committing transaction's handle is
/// gone). A reopen finds all three commits. (The std backend only: the gate wraps it.)
#[test]
fn close_and_a_weak_commit_while_a_blocking_committer_is_parked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let gate = Arc::new(common::gated::Gate::default());
    let opts = Options {
        storage: Arc::new(GatedStorage {
            gate: Arc::clone(&gate),
        }),
        ..options(BackendChoice::Std, Durability::Strict)
    };
    let acked = within("close beside a parked drive", move || {
        let _release = Release(Arc::clone(&gate));
        let db = Database::open(&path, opts).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        let mut txn = db.transaction(run).unwrap();
        txn.put("before", "v").unwrap();
        txn.commit_blocking().unwrap();
        // Let the writer thread settle into its wait for work, so the commit drives.
        std::thread::sleep(Duration::from_millis(50));
        gate.set_hold(true);
        let driven = db.stats().wal.driven;
        let committer = {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut txn = db.transaction(run).unwrap();
                txn.put("parked", "v").unwrap();
                let lsn = txn.commit_blocking().unwrap();
                (lsn, version(&db, run, "parked"), db.stats().wal.durable_lsn)
            })
        };
        gate.wait_until("nothing parked in the backend", |s| s.parked);
        let drove = db.stats().wal.driven > driven;
        let db = match db.close() {
            Err(CloseError::InUse { db, handles }) => {
                assert!(handles >= 1, "{handles} handles beside a parked committer");
                db
            }
            Err(error) => panic!("close failed beside a parked committer: {error}"),
            Ok(()) => panic!("closed under a parked committer"),
        };
        let weak = {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut txn = db.transaction(run).unwrap();
                txn.put("weak", "v").unwrap();
                let lsn = block_on(txn.commit_with(Durability::Async {
                    max_delay: Duration::ZERO,
                }))
                .unwrap();
                (lsn, version(&db, run, "parked"), version(&db, run, "weak"))
            })
        };
        let strong = {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut txn = db.transaction(run).unwrap();
                txn.put("strong", "v").unwrap();
                let lsn = block_on(txn.commit()).unwrap();
                (lsn, version(&db, run, "strong"))
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !committer.is_finished(),
            "the parked commit returned with its completion held back (drove: {drove})"
        );
        assert!(
            !weak.is_finished(),
            "a weak commit behind a parked strict one resolved (drove: {drove})"
        );
        assert_eq!(version(&db, run, "parked"), None, "visible before durable");
        gate.set_hold(false);
        let (parked, seen, durable) = committer.join().unwrap();
        assert_eq!(
            seen,
            Some(parked),
            "the committer does not see its own commit"
        );
        assert!(
            durable >= parked,
            "returned at durable {durable} < {parked}"
        );
        let (weak_lsn, weak_saw_parked, weak_saw_own) = weak.join().unwrap();
        assert!(weak_lsn > parked);
        assert_eq!(
            weak_saw_parked,
            Some(parked),
            "weak commit overtook the parked"
        );
        assert_eq!(weak_saw_own, Some(weak_lsn));
        let (strong_lsn, strong_seen) = strong.join().unwrap();
        assert_eq!(strong_seen, Some(strong_lsn));
        println!("drove: {drove}; parked {parked}, weak {weak_lsn}, strong {strong_lsn}");
        db.close()
            .map_err(|e| e.to_string())
            .expect("close once every committer returned");
        vec![
            ("parked", parked),
            ("weak", weak_lsn),
            ("strong", strong_lsn),
        ]
    });
    let db = Database::open(dir.path(), options(BackendChoice::Std, Durability::Strict)).unwrap();
    let run = db.find_run("r").unwrap();
    for (key, lsn) in acked {
        assert_eq!(version(&db, run, key), Some(lsn), "{key} lost");
    }
    db.close().unwrap();
}

/// Storage whose rename of a spare into a segment (a rotation) panics once, when armed, on
/// the log's writer thread: the writer thread dies while committers wait on it.
#[derive(Debug)]
struct WriterPanics {
    armed: AtomicBool,
    fired: AtomicBool,
    inner: Arc<keel_sim::Faults>,
}

impl keel_wal::Storage for WriterPanics {
    fn backend(
        &self,
        choice: BackendChoice,
        io_depth: usize,
    ) -> keel_wal::Result<Box<dyn keel_wal::backend::Backend>> {
        self.inner.backend(choice, io_depth)
    }

    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        let rotation = to.extension().is_some_and(|e| e == "wal");
        if rotation
            && std::thread::current().name() == Some("keel-wal-writer")
            && self.armed.swap(false, Ordering::SeqCst)
        {
            self.fired.store(true, Ordering::SeqCst);
            panic!(
                "the storage panicked renaming {} on the writer",
                to.display()
            );
        }
        std::fs::rename(from, to)
    }
}

/// The writer thread panics (a rotation) while blocking committers wait for it on their
/// slots' condvars beside async and weak ones: every committer is answered (nobody hangs),
/// a blocking commit acknowledged `Ok` is visible on its thread when it returns, `close`
/// returns, and every strict commit acknowledged `Ok` comes back after a reopen (a weak one
/// too, unless no strict commit after it was acknowledged).
#[test]
fn a_writer_thread_panic_while_blocking_committers_wait() {
    let seed = 0x0b10_c4a1_7e57;
    println!("seed {seed:#x}");
    for backend in BackendChoice::available() {
        let backend = *backend;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let storage = Arc::new(WriterPanics {
            armed: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            inner: keel_sim::Faults::new(),
        });
        let opts = Options {
            storage: storage.clone(),
            ..options(backend, Durability::Strict)
        };
        let (acked, failed, fired, closed) = within("a writer panic", move || {
            let db = Database::open(&path, opts).unwrap();
            let run = block_on(db.begin_run("r")).unwrap();
            storage.armed.store(true, Ordering::SeqCst);
            let start = Arc::new(Barrier::new(6));
            let workers: Vec<_> = (0..6usize)
                .map(|worker| {
                    let (db, start) = (db.clone(), Arc::clone(&start));
                    std::thread::spawn(move || {
                        let mut rng = Rng::new(seed ^ (worker as u64 + 1));
                        start.wait();
                        let (mut acked, mut failed) = (Vec::new(), Vec::new());
                        for i in 0..400u32 {
                            let mut txn = db.transaction(run).unwrap();
                            let key = format!("w{worker}-{i:05}");
                            let size = 200 + rng.below(900);
                            txn.put(&key, vec![b'v'; usize::try_from(size).unwrap()])
                                .unwrap();
                            let outcome = match worker % 3 {
                                0 | 1 => txn.commit_blocking(),
                                2 if worker == 2 => block_on(txn.commit()),
                                _ => block_on(txn.commit_with(Durability::Async {
                                    max_delay: Duration::from_millis(1),
                                })),
                            };
                            match outcome {
                                Ok(lsn) => {
                                    if worker % 3 != 2 {
                                        assert_eq!(
                                            version(&db, run, &key),
                                            Some(lsn),
                                            "{key}: acknowledged, not visible on its thread"
                                        );
                                    }
                                    acked.push((key, lsn, worker != 5));
                                }
                                Err(_) => {
                                    failed.push(key);
                                    break;
                                }
                            }
                        }
                        (acked, failed)
                    })
                })
                .collect();
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            for worker in workers {
                let (a, f) = worker.join().unwrap();
                acked.extend(a);
                failed.extend(f);
            }
            let closed = db.close().map_err(|e| e.to_string());
            (acked, failed, storage.fired.load(Ordering::SeqCst), closed)
        });
        println!(
            "{backend:?}: writer panicked {fired}, {} acked, {} failed, close {closed:?}",
            acked.len(),
            failed.len()
        );
        if fired {
            assert!(
                !failed.is_empty(),
                "{backend:?}: the writer died, nobody failed"
            );
            // A weak commit acknowledged when queued may have gone with the writer: `close`
            // must not report success over it (`wal/tests/adversarial_writer_panic_close.rs`).
            assert!(
                closed.is_err(),
                "{backend:?}: the writer died, and close returned {closed:?}"
            );
        }
        // A weak (`Async`) commit acknowledged once queued may be lost with the writer, but
        // never while a strict commit after it survives (the log keeps their order).
        let last_strong = acked
            .iter()
            .filter(|(_, _, strong)| *strong)
            .map(|(_, lsn, _)| *lsn)
            .max()
            .unwrap_or(0);
        let db = Database::open(dir.path(), options(backend, Durability::Strict)).unwrap();
        let run = db.find_run("r").unwrap();
        for (key, lsn, strong) in &acked {
            let found = version(&db, run, key);
            if *strong || *lsn < last_strong {
                assert_eq!(found, Some(*lsn), "{backend:?}: {key} lost");
            } else {
                assert!(
                    found.is_none_or(|v| v == *lsn),
                    "{backend:?}: {key} changed"
                );
            }
        }
        db.close().unwrap();
    }
}

/// Spilled transactions committed blocking beside small ones while a write or a sync fails
/// (the log is poisoned): every committer returns, a failed commit is never visible, an
/// acknowledged one is visible on its thread and comes back after a reopen, and the
/// database closes (reporting the failure) instead of waiting for an abandoned spill.
#[test]
fn spilled_blocking_commits_across_a_poisoned_log() {
    for backend in BackendChoice::available() {
        for (case, fail_sync) in [(0u32, false), (1, true), (2, true), (3, false)] {
            let backend = *backend;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_path_buf();
            let faults = keel_sim::Faults::new();
            let opts = Options {
                storage: faults.clone(),
                ..options(backend, Durability::Strict)
            };
            let (acked, failed, closed) = within("spills across a failure", move || {
                let db = Database::open(&path, opts).unwrap();
                let run = block_on(db.begin_run("r")).unwrap();
                let after = 6 + case * 5;
                if fail_sync {
                    faults.fail_sync_after(after);
                } else {
                    faults.fail_write_after(after);
                }
                let workers: Vec<_> = (0..3usize)
                    .map(|worker| {
                        let db = db.clone();
                        std::thread::spawn(move || {
                            let (mut acked, mut failed) = (Vec::new(), Vec::new());
                            for i in 0..60u32 {
                                let key = format!("w{worker}-{i:05}");
                                let Ok(mut txn) = db.transaction(run) else {
                                    failed.push(key);
                                    break;
                                };
                                let parts = if worker == 2 { 1 } else { 4 };
                                let mut put = Ok(());
                                for p in 0..parts {
                                    let value = vec![b'a' + (i % 26) as u8; 3000];
                                    put = put.and_then(|()| txn.put(format!("{key}.{p}"), value));
                                }
                                let outcome = put.and_then(|()| {
                                    assert_eq!(txn.spilled(), worker != 2);
                                    txn.commit_blocking()
                                });
                                match outcome {
                                    Ok(lsn) => {
                                        for p in 0..parts {
                                            let k = format!("{key}.{p}");
                                            assert_eq!(
                                                version(&db, run, &k),
                                                Some(lsn),
                                                "{k}: acknowledged, not visible on its thread"
                                            );
                                        }
                                        acked.push((key, parts, lsn));
                                    }
                                    Err(_) => {
                                        failed.push(key);
                                        break;
                                    }
                                }
                            }
                            (acked, failed)
                        })
                    })
                    .collect();
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                for worker in workers {
                    let (a, f) = worker.join().unwrap();
                    acked.extend(a);
                    failed.extend(f);
                }
                for key in &failed {
                    for p in 0..4 {
                        let k = format!("{key}.{p}");
                        assert_eq!(version(&db, run, &k), None, "{k}: failed, and visible");
                    }
                }
                let closed = db.close().is_err();
                (acked, failed, closed)
            });
            println!(
                "{backend:?} case {case}: {} acked, {} failed",
                acked.len(),
                failed.len()
            );
            assert!(
                !failed.is_empty(),
                "{backend:?} case {case}: nothing failed"
            );
            assert!(closed, "{backend:?} case {case}: close hid the failure");
            let db = Database::open(dir.path(), options(backend, Durability::Strict)).unwrap();
            let run = db.find_run("r").unwrap();
            for (key, parts, lsn) in &acked {
                for p in 0..*parts {
                    let k = format!("{key}.{p}");
                    assert_eq!(version(&db, run, &k), Some(*lsn), "{backend:?}: {k} lost");
                }
            }
            db.close().unwrap();
        }
    }
}

/// Blocking committers in an `Async`, a `Batched` and a `Strict` database, beside commits
/// made stronger (`Strict`) and weaker (`Async`) with `commit_with`, some of them spilled,
/// and a change feed: each blocking commit is visible on its thread, in a snapshot taken
/// there, when it returns; the feed delivers every acknowledged commit in order; `close`
/// succeeds at once; a reopen finds every acknowledged commit.
#[test]
fn read_your_writes_after_every_blocking_commit_in_every_mode() {
    let seed = 0x5eed_0001_u64;
    println!("seed {seed:#x}");
    let modes = [
        Durability::Async {
            max_delay: Duration::from_millis(1),
        },
        Durability::Batched {
            max_delay: Duration::from_millis(1),
            max_bytes: 16 * 1024,
        },
        Durability::Strict,
    ];
    for backend in BackendChoice::available() {
        for durability in modes {
            let backend = *backend;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_path_buf();
            let (acked, delivered) = within("read your writes", move || {
                let db = Database::open(&path, options(backend, durability)).unwrap();
                let run = block_on(db.begin_run("r")).unwrap();
                let mut feed = db.subscribe(1);
                let kinds = 5usize;
                let start = Arc::new(Barrier::new(kinds));
                let workers: Vec<_> = (0..kinds)
                    .map(|worker| {
                        let (db, start) = (db.clone(), Arc::clone(&start));
                        std::thread::spawn(move || {
                            let mut rng = Rng::new(seed ^ ((worker as u64 + 1) << 8));
                            start.wait();
                            let mut acked = Vec::new();
                            for i in 0..60u32 {
                                let mut txn = db.transaction(run).unwrap();
                                let key = format!("w{worker}-{i:05}");
                                let spilled = rng.below(6) == 0;
                                let size = if spilled { 7000 } else { 50 + rng.below(300) };
                                txn.put(&key, vec![b'v'; usize::try_from(size).unwrap()])
                                    .unwrap();
                                let lsn = match worker {
                                    0..=2 => {
                                        let lsn = txn.commit_blocking().unwrap();
                                        assert_eq!(
                                            version(&db, run, &key),
                                            Some(lsn),
                                            "{durability:?}: {key} not visible on its thread"
                                        );
                                        let snapshot = db.snapshot();
                                        assert_eq!(
                                            snapshot.get(run, &key).unwrap().map(|v| v.version),
                                            Some(lsn),
                                            "{durability:?}: {key} not in a snapshot"
                                        );
                                        lsn
                                    }
                                    3 => block_on(txn.commit_with(Durability::Strict)).unwrap(),
                                    _ => block_on(txn.commit_with(Durability::Async {
                                        max_delay: Duration::ZERO,
                                    }))
                                    .unwrap(),
                                };
                                acked.push((key, lsn));
                            }
                            acked
                        })
                    })
                    .collect();
                let mut acked = Vec::new();
                for worker in workers {
                    acked.extend(worker.join().unwrap());
                }
                let last = acked.iter().map(|(_, lsn)| *lsn).max().unwrap();
                // Flush everything so the feed (durable-gated) can deliver it.
                let mut txn = db.transaction(run).unwrap();
                txn.put("done", "1").unwrap();
                let done = block_on(txn.commit_with(Durability::Strict)).unwrap();
                assert!(done > last);
                let mut delivered = Vec::new();
                let mut previous = 0;
                loop {
                    let event = block_on(feed.next()).unwrap().unwrap();
                    assert!(event.lsn() > previous, "feed out of order");
                    previous = event.lsn();
                    if let FeedEvent::Commit(commit) = &event {
                        delivered.push(commit.commit_lsn);
                    }
                    if event.lsn() >= done {
                        break;
                    }
                }
                drop(feed);
                db.close()
                    .map_err(|e| e.to_string())
                    .expect("close once every committer returned");
                (acked, delivered)
            });
            for (key, lsn) in &acked {
                assert!(
                    delivered.binary_search(lsn).is_ok(),
                    "{backend:?} {durability:?}: {key} at {lsn} not delivered"
                );
            }
            let db = Database::open(dir.path(), options(backend, durability)).unwrap();
            let run = db.find_run("r").unwrap();
            for (key, lsn) in &acked {
                assert_eq!(
                    version(&db, run, key),
                    Some(*lsn),
                    "{backend:?} {durability:?}: {key} lost"
                );
            }
            db.close().unwrap();
        }
    }
}
