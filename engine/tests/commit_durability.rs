//! Durability per commit: `commit_with` asks for more than the database's durability (a
//! `Strict` commit in a `Batched` database resolves once durable), never less (a weaker one
//! gets the database's, so a commit never resolves before its effects are visible); and a
//! blocking commit for callers that are not async, needing no runtime.

use std::time::Duration;

use futures::executor::block_on;
use keel::{Database, Durability, Options};

fn options(durability: Durability) -> Options {
    Options {
        durability,
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

#[test]
fn a_strict_commit_in_a_batched_database_resolves_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let lazy = Durability::Batched {
        max_delay: Duration::from_secs(600),
        max_bytes: u64::MAX,
    };
    let db = Database::open(dir.path(), options(lazy)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put("batched", "v").unwrap();
    let batched = block_on(txn.commit()).unwrap();
    assert!(
        db.stats().wal.durable_lsn < batched,
        "a Batched commit resolves once written (the sync comes within 600 s)"
    );
    let mut txn = db.transaction(run).unwrap();
    txn.put("strict", "v").unwrap();
    let strict = block_on(txn.commit_with(Durability::Strict)).unwrap();
    assert!(
        db.stats().wal.durable_lsn >= strict,
        "resolved once durable"
    );
    assert!(db.get(run, "strict").unwrap().is_some());
    db.close().unwrap();
}

#[test]
fn a_weaker_durability_gets_the_databases_and_a_blocking_commit_needs_no_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(Durability::Strict)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put("k", "v").unwrap();
    let async_mode = Durability::Async {
        max_delay: Duration::from_secs(600),
    };
    let lsn = block_on(txn.commit_with(async_mode)).unwrap();
    assert!(db.stats().wal.durable_lsn >= lsn, "still Strict: durable");
    assert_eq!(
        db.get(run, "k").unwrap().unwrap().version,
        lsn,
        "and visible"
    );

    // From plain threads, no executor in sight.
    std::thread::scope(|s| {
        for t in 0..4 {
            let db = &db;
            s.spawn(move || {
                let mut txn = db.transaction(run).unwrap();
                txn.put(format!("t{t}"), "v").unwrap();
                let lsn = txn.commit_blocking().unwrap();
                assert_eq!(db.get(run, format!("t{t}")).unwrap().unwrap().version, lsn);
            });
        }
    });
    db.close().unwrap();
}
