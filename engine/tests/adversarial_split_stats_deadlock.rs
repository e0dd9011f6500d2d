//! Adversarial review: `Database::stats` against commits, a lock-order deadlock.
//!
//! `stats()` took the state's read lock (through `Database::read`) and, still holding it, the
//! `pending` lock (for `pending_commits`). Every commit that becomes visible is applied the
//! other way round: `apply_visible` holds `pending` and takes the state's write lock. A
//! thread reading the stats while another applies a commit could then each hold one lock and
//! wait for the other: both threads stop for good, and so does every later use of the
//! database (each takes `pending`).
//!
//! The test runs committers next to a thread that reads the stats in a loop. A deadlock never
//! returns, so the main thread waits for the workers with a generous bound (minutes for work
//! that takes well under a second) and reports the hang instead of hanging the test run.

use std::sync::mpsc;
use std::time::Duration;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Durability, Options};

const COMMITTERS: u32 = 3;
const COMMITS: u32 = 3_000;
const HANG: Duration = Duration::from_secs(120);

#[test]
fn stats_next_to_commits_never_deadlocks() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        backend: BackendChoice::Std,
        durability: Durability::Async {
            max_delay: Duration::from_millis(1),
        },
        checkpoint_log_bytes: 0,
        ..Options::default()
    };
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("stats")).unwrap();
    let (done, finished) = mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for t in 0..COMMITTERS {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..COMMITS {
                let mut txn = db.transaction(run).unwrap();
                txn.put(format!("k{t}-{}", i % 16).as_bytes(), b"v")
                    .unwrap();
                block_on(txn.commit()).unwrap();
            }
            done.send("committer").unwrap();
        });
    }
    let reader = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let stats = db.stats();
                assert!(stats.keys <= (COMMITTERS * 16) as usize + 1);
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..COMMITTERS {
        let who = finished.recv_timeout(HANG).unwrap_or_else(|_| {
            panic!("a committer made no progress for {HANG:?}: stats() and a commit deadlocked")
        });
        assert_eq!(who, "committer");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    println!("stats read {reads} times during the commits");
    assert_eq!(db.scan(run, b"").unwrap().len(), (COMMITTERS * 16) as usize);
}
