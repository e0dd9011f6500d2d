//! Durability per commit: `commit_with` asks for more than the database's durability (a
//! `Strict` commit in a `Batched` database resolves once durable) or less (an `Async` commit
//! in a `Strict` database resolves unsynced, visible, and never ahead of the commits before
//! it); and a blocking commit for callers that are not async, needing no runtime.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::gated::{Gate, GatedStorage, Release};
use futures::FutureExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Durability, Lsn, Options, RunId};

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

/// The database with its log on the std backend, whose completions `gate` holds back on
/// demand: a commit waiting for a write or a sync stays pending while the gate holds.
fn gated(dir: &std::path::Path, durability: Durability) -> (Database, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        gate: Arc::clone(&gate),
    });
    let options = Options {
        backend: BackendChoice::Std,
        storage,
        ..options(durability)
    };
    (Database::open(dir, options).unwrap(), gate)
}

fn commit_of(
    db: &Database,
    run: RunId,
    key: &str,
    durability: Durability,
) -> Pin<Box<impl Future<Output = keel::Result<Lsn>> + use<>>> {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key, "v").unwrap();
    Box::pin(txn.commit_with(durability))
}

const ASYNC: Durability = Durability::Async {
    max_delay: Duration::from_secs(600),
};

/// A weaker commit resolves at its own point, with no sync (the syncs are held back), and is
/// visible when it resolves; behind a commit that waits for its sync it waits too, and is
/// not visible before it.
#[test]
fn an_async_commit_in_a_strict_database_resolves_unsynced_and_never_overtakes_a_strict_one() {
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = gated(dir.path(), Durability::Strict);
    let run = block_on(db.begin_run("r")).unwrap();
    gate.set_hold(true);
    let release = Release(Arc::clone(&gate));

    let alone = commit_of(&db, run, "alone", ASYNC).now_or_never();
    let alone = alone.expect("resolved with every sync held back").unwrap();
    assert!(db.stats().wal.durable_lsn < alone, "not durable");
    let seen = db
        .get(run, "alone")
        .unwrap()
        .expect("visible once resolved");
    assert_eq!(seen.version, alone);

    let mut strict = commit_of(&db, run, "strict", Durability::Strict);
    assert!((&mut strict).now_or_never().is_none(), "waits for its sync");
    let mut behind = commit_of(&db, run, "behind", ASYNC);
    assert!(
        (&mut behind).now_or_never().is_none(),
        "an Async commit behind a Strict one waits for its sync"
    );
    assert_eq!(db.get(run, "strict").unwrap(), None);
    assert_eq!(
        db.get(run, "behind").unwrap(),
        None,
        "nor is it visible first"
    );

    drop(release);
    let strict = block_on(strict).unwrap();
    let behind = block_on(behind).unwrap();
    assert!(strict < behind);
    assert!(db.stats().wal.durable_lsn >= strict);
    assert_eq!(db.get(run, "behind").unwrap().unwrap().version, behind);
    db.close().unwrap();

    // A clean close makes it durable.
    let db = Database::open(dir.path(), options(Durability::Strict)).unwrap();
    for (key, lsn) in [("alone", alone), ("strict", strict), ("behind", behind)] {
        assert_eq!(db.get(run, key).unwrap().unwrap().version, lsn, "{key}");
    }
    db.close().unwrap();
}

/// In a `Batched` database an `Async` commit behind a `Batched` one waits until that one is
/// written, and the wait starts no sync of its own (`Wal::barrier` at the written point).
#[test]
fn an_async_commit_behind_a_batched_one_waits_for_its_write_and_forces_no_sync() {
    let dir = tempfile::tempdir().unwrap();
    let lazy = Durability::Batched {
        max_delay: Duration::from_secs(600),
        max_bytes: u64::MAX,
    };
    let (db, gate) = gated(dir.path(), lazy);
    let run = block_on(db.begin_run("r")).unwrap();
    let durable_before = db.stats().wal.durable_lsn;
    gate.set_hold(true);
    let release = Release(Arc::clone(&gate));
    let mut batched = commit_of(&db, run, "batched", lazy);
    assert!(
        (&mut batched).now_or_never().is_none(),
        "waits for its write"
    );
    let mut behind = commit_of(&db, run, "behind", ASYNC);
    assert!((&mut behind).now_or_never().is_none(), "waits behind it");
    assert_eq!(db.get(run, "behind").unwrap(), None);
    drop(release);
    let batched = block_on(batched).unwrap();
    let behind = block_on(behind).unwrap();
    assert!(batched < behind);
    assert_eq!(db.get(run, "behind").unwrap().unwrap().version, behind);
    assert_eq!(
        db.stats().wal.durable_lsn,
        durable_before,
        "no sync yet: the Batched delay is 600 s"
    );
    db.close().unwrap();
}

#[test]
fn a_blocking_commit_needs_no_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(Durability::Strict)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
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

/// `commit_blocking` from a lone committer: when the log's writer is idle, the committing
/// thread writes and syncs its own commit (`WalStats::driven`); every commit, spilled ones
/// included, is durable when it returns, visible, and comes back after a reopen.
#[test]
fn a_lone_blocking_committer_writes_its_own_commits() {
    for backend in BackendChoice::available() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            backend: *backend,
            spill_txn_bytes: 8 * 1024,
            ..options(Durability::Strict)
        };
        let db = Database::open(dir.path(), options.clone()).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        let mut last = 0;
        for i in 0..200u32 {
            let mut txn = db.transaction(run).unwrap();
            // Every tenth transaction spills (three 4 KiB writes over an 8 KiB threshold).
            let writes = if i % 10 == 0 { 3 } else { 1 };
            for w in 0..writes {
                txn.put(format!("k{i}-{w}"), vec![b'v'; 4000]).unwrap();
            }
            assert_eq!(txn.spilled(), writes == 3, "{backend:?}");
            let lsn = txn.commit_blocking().unwrap();
            assert!(lsn > last);
            last = lsn;
            assert!(
                db.stats().wal.durable_lsn >= lsn,
                "{backend:?}: acknowledged, not durable"
            );
            assert_eq!(
                db.get(run, format!("k{i}-0")).unwrap().unwrap().version,
                lsn
            );
        }
        let driven = db.stats().wal.driven;
        assert!(
            driven > 0,
            "{backend:?}: no commit was written by its committer"
        );
        println!("{backend:?}: {driven} of 200 commits written by their committer");
        db.close().unwrap();
        let db = Database::open(dir.path(), options).unwrap();
        for i in 0..200u32 {
            assert!(
                db.get(run, format!("k{i}-0")).unwrap().is_some(),
                "{backend:?}: k{i} lost"
            );
        }
        db.close().unwrap();
    }
}
