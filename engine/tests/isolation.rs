//! Isolation: a transaction reads one view (taken at its first read) plus its own writes, and
//! its commit is refused with `Error::Conflict`, naming the key and logging nothing, when a
//! commit since changed what it read (serializable, the default) or what it writes
//! (snapshot isolation).

use std::sync::Arc;

use futures::FutureExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Isolation, Lsn, Options, RunId, Transaction};

mod common;
use common::gated::{Gate, GatedStorage, Release};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 1024,
        ..Options::default()
    }
}

fn open(dir: &std::path::Path) -> (Database, RunId) {
    let db = Database::open(dir, options()).unwrap();
    let run = block_on(db.begin_run("accounts")).unwrap();
    (db, run)
}

fn put(db: &Database, run: RunId, key: &[u8], value: &[u8]) -> Lsn {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key, value).unwrap();
    block_on(txn.commit()).unwrap()
}

fn delete(db: &Database, run: RunId, key: &[u8]) {
    let mut txn = db.transaction(run).unwrap();
    txn.delete(key).unwrap();
    block_on(txn.commit()).unwrap();
}

fn number(txn: &Transaction, key: &[u8]) -> i64 {
    txn.get(key)
        .unwrap()
        .map_or(0, |v| String::from_utf8(v.value).unwrap().parse().unwrap())
}

fn set(txn: &mut Transaction, key: &[u8], n: i64) {
    txn.put(key, n.to_string().as_bytes()).unwrap();
}

fn conflict_key(outcome: keel::Result<Lsn>) -> Vec<u8> {
    match outcome {
        Err(Error::Conflict { key, .. }) => key,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// The issue's transcript: two transactions read `n = 0` and each write `n + 1`. Before,
/// both committed and `n` ended at 1 (a lost update); now the second is refused.
#[test]
fn a_lost_update_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    put(&db, run, b"n", b"0");
    let (mut a, mut b) = (db.transaction(run).unwrap(), db.transaction(run).unwrap());
    let (na, nb) = (number(&a, b"n"), number(&b, b"n"));
    assert_eq!((na, nb), (0, 0));
    set(&mut a, b"n", na + 1);
    set(&mut b, b"n", nb + 1);
    block_on(a.commit()).unwrap();
    let refused = block_on(b.commit());
    let message = refused.as_ref().unwrap_err().to_string();
    assert_eq!(conflict_key(refused), b"n");
    assert!(message.contains("key \"n\""), "{message}");
    let n = |db: &Database| db.get(run, b"n").unwrap().unwrap().value;
    assert_eq!(n(&db), b"1");

    // With retries, both increments land.
    let increment = |txn: &mut Transaction| {
        let n = number(txn, b"n");
        set(txn, b"n", n + 1);
        Ok(())
    };
    let mut first = db.transaction(run).unwrap();
    let seen = number(&first, b"n");
    block_on(db.transact(run, 3, increment)).unwrap();
    set(&mut first, b"n", seen + 1);
    assert!(matches!(
        block_on(first.commit()),
        Err(Error::Conflict { .. })
    ));
    block_on(db.transact(run, 3, increment)).unwrap();
    assert_eq!(n(&db), b"3");
    db.close().unwrap();
}

#[test]
fn snapshot_isolation_refuses_lost_updates_and_allows_write_skew() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    put(&db, run, b"n", b"0");
    let mut a = db.transaction_with(run, Isolation::Snapshot).unwrap();
    let mut b = db.transaction_with(run, Isolation::Snapshot).unwrap();
    assert_eq!(a.isolation(), Isolation::Snapshot);
    let (na, nb) = (number(&a, b"n"), number(&b, b"n"));
    set(&mut a, b"n", na + 1);
    set(&mut b, b"n", nb + 1);
    block_on(a.commit()).unwrap();
    assert_eq!(conflict_key(block_on(b.commit())), b"n");

    // Write skew: x + y must stay >= 0; each withdraws 100 from its own account after
    // checking the sum of both. Under snapshot isolation both commit.
    put(&db, run, b"x", b"50");
    put(&db, run, b"y", b"50");
    let skew = |isolation| {
        let mut t1 = db.transaction_with(run, isolation).unwrap();
        let mut t2 = db.transaction_with(run, isolation).unwrap();
        for (txn, own) in [(&mut t1, b"x"), (&mut t2, b"y")] {
            let sum = number(txn, b"x") + number(txn, b"y");
            assert!(sum >= 100);
            let left = number(txn, own) - 100;
            set(txn, own, left);
        }
        (block_on(t1.commit()), block_on(t2.commit()))
    };
    let (first, second) = skew(Isolation::Snapshot);
    first.unwrap();
    second.unwrap();
    let total = |db: &Database| {
        let x: i64 = String::from_utf8(db.get(run, b"x").unwrap().unwrap().value)
            .unwrap()
            .parse()
            .unwrap();
        let y: i64 = String::from_utf8(db.get(run, b"y").unwrap().unwrap().value)
            .unwrap()
            .parse()
            .unwrap();
        x + y
    };
    assert_eq!(
        total(&db),
        -100,
        "snapshot isolation lets write skew through"
    );

    // Serializable refuses the second.
    put(&db, run, b"x", b"50");
    put(&db, run, b"y", b"50");
    let (first, second) = skew(Isolation::Serializable);
    first.unwrap();
    assert_eq!(conflict_key(second), b"x");
    assert_eq!(total(&db), 0);
    db.close().unwrap();
}

#[test]
fn a_scanned_range_conflicts_with_a_key_created_changed_or_deleted_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    let other_run = block_on(db.begin_run("other")).unwrap();
    for key in [b"a1", b"a3", b"b1"] {
        put(&db, run, key, b"v");
    }
    type Change<'a> = (&'a str, Box<dyn Fn(&Database) + 'a>, Option<&'a [u8]>);
    let changes: Vec<Change<'_>> = vec![
        (
            "created",
            Box::new(|db| {
                put(db, run, b"a2", b"new");
            }),
            Some(b"a2"),
        ),
        (
            "changed",
            Box::new(|db| {
                put(db, run, b"a3", b"new");
            }),
            Some(b"a3"),
        ),
        (
            "deleted",
            Box::new(|db| delete(db, run, b"a1")),
            Some(b"a1"),
        ),
        (
            "outside",
            Box::new(|db| {
                put(db, run, b"b2", b"new");
            }),
            None,
        ),
        (
            "other run",
            Box::new(|db| {
                put(db, other_run, b"a2", b"x");
            }),
            None,
        ),
    ];
    for (what, change, expected) in changes {
        let mut txn = db.transaction(run).unwrap();
        let seen = txn.scan(b"a").unwrap();
        assert!(!seen.is_empty());
        txn.put(b"summary", seen.len().to_string().as_bytes())
            .unwrap();
        change(&db);
        let outcome = block_on(txn.commit());
        match expected {
            Some(key) => assert_eq!(conflict_key(outcome), key, "{what}"),
            None => {
                outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
            }
        }
    }
    // Ranges with bounds, forward: the range read is what is validated.
    let mut txn = db.transaction(run).unwrap();
    let seen = txn.range(b"a2".as_slice()..b"a4".as_slice()).unwrap();
    let keys: Vec<_> = seen.map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"a2".to_vec(), b"a3".to_vec()]);
    put(&db, run, b"a1", b"outside the range read");
    txn.put(b"z", b"1").unwrap();
    block_on(txn.commit()).unwrap();
    db.close().unwrap();
}

#[test]
fn reads_come_from_one_view() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    put(&db, run, b"x", b"1");
    put(&db, run, b"y", b"1");
    for isolation in [Isolation::Serializable, Isolation::Snapshot] {
        put(&db, run, b"x", b"1");
        put(&db, run, b"y", b"1");
        let txn = db.transaction_with(run, isolation).unwrap();
        // Made before its first read: seen.
        put(&db, run, b"x", b"2");
        assert_eq!(number(&txn, b"x"), 2);
        // A serializable transaction's first point read is made on the state as it is; its
        // view is taken at its second read (with `x` checked unchanged in it), so this is
        // seen too. Under snapshot isolation the view was taken at the first read.
        put(&db, run, b"y", b"3");
        let y = number(&txn, b"y");
        match isolation {
            Isolation::Serializable => assert_eq!(y, 3),
            _ => assert_eq!(y, 1),
        }
        // Made after the view: not seen, by point reads nor by scans.
        put(&db, run, b"y", b"4");
        put(&db, run, b"w", b"4");
        assert_eq!(number(&txn, b"y"), y);
        let keys: Vec<_> = txn.scan(b"").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"x".to_vec(), b"y".to_vec()]);
        match isolation {
            // It read a key changed since: refused, though it writes nothing.
            Isolation::Serializable => assert_eq!(conflict_key(block_on(txn.commit())), b"y"),
            _ => {
                block_on(txn.commit()).unwrap();
            }
        }
        delete(&db, run, b"w");
    }
    // A lone first read whose key changes before the second read: no view holds both, so
    // the second read is refused (the commit would be).
    let txn = db.transaction(run).unwrap();
    assert_eq!(number(&txn, b"x"), 2);
    put(&db, run, b"x", b"5");
    match txn.get(b"y") {
        Err(Error::Conflict { key, .. }) => assert_eq!(key, b"x"),
        other => panic!("expected a conflict on x, got {other:?}"),
    }
    drop(txn);
    db.close().unwrap();
}

#[test]
fn blind_writes_never_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    for isolation in [Isolation::Serializable, Isolation::Snapshot] {
        let mut a = db.transaction_with(run, isolation).unwrap();
        let mut b = db.transaction_with(run, isolation).unwrap();
        a.put(b"k", b"a").unwrap();
        b.put(b"k", b"b").unwrap();
        block_on(a.commit()).unwrap();
        block_on(b.commit()).unwrap();
        assert_eq!(db.get(run, b"k").unwrap().unwrap().value, b"b");
    }
    db.close().unwrap();
}

/// A refused commit logs nothing: a spilled one is aborted, and a reopen recovers the state
/// without it.
#[test]
fn a_refused_spilled_transaction_is_aborted_and_recovered_without() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    put(&db, run, b"n", b"0");
    let mut txn = db.transaction(run).unwrap();
    assert_eq!(number(&txn, b"n"), 0);
    for i in 0..20u32 {
        txn.put(format!("big{i:02}").as_bytes(), [7; 200]).unwrap();
    }
    assert!(txn.spilled());
    // Its own spilled writes show in its range reads, merged with its buffer.
    txn.delete(b"big05").unwrap();
    let own = txn.scan(b"big").unwrap();
    assert_eq!(own.len(), 19);
    assert!(
        own.iter()
            .all(|(_, v)| v.version == 0 && v.value == [7; 200])
    );
    put(&db, run, b"n", b"1");
    set(&mut txn, b"n", 1);
    assert_eq!(conflict_key(block_on(txn.commit())), b"n");
    assert!(db.scan(run, b"big").unwrap().is_empty());
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert!(db.scan(run, b"big").unwrap().is_empty());
    assert_eq!(db.get(run, b"n").unwrap().unwrap().value, b"1");
    db.close().unwrap();
}

/// A commit the log took and has not acknowledged yet (held in the backend) is newer than any
/// view: a transaction that read its key conflicts with it, though the state does not show it.
#[test]
fn a_queued_unacknowledged_commit_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        gate: Arc::clone(&gate),
    });
    let options = Options {
        backend: BackendChoice::Std,
        storage,
        ..options()
    };
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"k", b"0");
    let mut reader = db.transaction(run).unwrap();
    assert_eq!(number(&reader, b"k"), 0);
    gate.set_hold(true);
    let release = Release(Arc::clone(&gate));
    let mut writer = db.transaction(run).unwrap();
    writer.put(b"k", b"1").unwrap();
    // One poll queues it in the log; its completion is held back, so it stays queued.
    let mut queued = Box::pin(writer.commit());
    assert!((&mut queued).now_or_never().is_none());
    assert_eq!(
        db.get(run, b"k").unwrap().unwrap().value,
        b"0",
        "not visible yet"
    );
    set(&mut reader, b"k", 1);
    let mut refused = Box::pin(reader.commit());
    let outcome = (&mut refused).now_or_never().expect("refused at once");
    assert_eq!(conflict_key(outcome), b"k");
    drop(release);
    block_on(queued).unwrap();
    assert_eq!(db.get(run, b"k").unwrap().unwrap().value, b"1");
    db.close().unwrap();
}

#[test]
fn transact_gives_up_after_its_attempts_and_returns_other_errors_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    put(&db, run, b"n", b"0");
    let mut runs = 0;
    let outcome = block_on(db.transact(run, 3, |txn| {
        runs += 1;
        let n = number(txn, b"n");
        // Someone else always gets there first (committed from another thread: this one is
        // inside `block_on`).
        std::thread::scope(|s| {
            s.spawn(|| put(&db, run, b"n", (n + 10).to_string().as_bytes()));
        });
        set(txn, b"n", n + 1);
        Ok(())
    }));
    assert!(
        matches!(outcome, Err(Error::Conflict { .. })),
        "{outcome:?}"
    );
    assert_eq!(runs, 3);
    let mut runs = 0;
    let outcome: keel::Result<((), Lsn)> = block_on(db.transact(run, 3, |txn| {
        runs += 1;
        txn.put(b"k", b"v")?;
        Err(Error::Metadata("the body's own error".into()))
    }));
    assert!(matches!(outcome, Err(Error::Metadata(_))));
    assert_eq!(runs, 1);
    assert_eq!(
        db.get(run, b"k").unwrap(),
        None,
        "a failed body commits nothing"
    );
    db.close().unwrap();
}

#[test]
fn inverted_and_empty_ranges_read_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, run) = open(dir.path());
    for key in [b"a", b"b", b"c"] {
        put(&db, run, key, b"v");
    }
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"bb", b"own").unwrap();
    assert!(
        txn.range(b"c".as_slice()..b"a".as_slice())
            .unwrap()
            .next()
            .is_none()
    );
    assert!(
        txn.range(b"b".as_slice()..b"b".as_slice())
            .unwrap()
            .next()
            .is_none()
    );
    let inclusive = txn.range(b"b".as_slice()..=b"b".as_slice()).unwrap();
    assert_eq!(inclusive.count(), 1);
    let all = txn.iter().unwrap();
    let keys: Vec<_> = all.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [b"a".to_vec(), b"b".to_vec(), b"bb".to_vec(), b"c".to_vec()]
    );
    assert_eq!(txn.scan([0xff, 0xff]).unwrap(), vec![]);
    drop(txn);
    db.close().unwrap();
}
