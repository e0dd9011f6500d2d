//! Review of a serializable transaction's lone first read (issue 20): the first point read
//! takes no view, the second takes it with the lone key checked unchanged in it, and a
//! commit with only the lone read checks that key against the state and the queued commits.
//! Coverage, no defect found there; one defect in `transact`'s retry of a conflict from a
//! read (the refused transaction was held through the wait for queued commits).

use std::sync::Arc;

use futures::FutureExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Lsn, Options, RunId, Transaction};

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

fn number(txn: &Transaction, key: &[u8]) -> keel::Result<i64> {
    let found = txn.get(key)?;
    Ok(found.map_or(0, |v| String::from_utf8(v.value).unwrap().parse().unwrap()))
}

fn conflict_key<T: std::fmt::Debug>(outcome: keel::Result<T>) -> Vec<u8> {
    match outcome {
        Err(Error::Conflict { key, .. }) => key,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A commit of the lone key queued (not acknowledged) after the lone read: not in the view
/// the second read takes, so that read passes; the commit finds it queued. Once it is
/// acknowledged before the second read, that read is refused.
#[test]
fn a_queued_commit_of_the_lone_key_is_caught_at_the_second_read_or_the_commit() {
    for acknowledged_first in [false, true] {
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
        put(&db, run, b"l", b"0");
        let mut reader = db.transaction(run).unwrap();
        assert_eq!(number(&reader, b"k").unwrap(), 0);
        gate.set_hold(true);
        let release = Release(Arc::clone(&gate));
        let mut writer = db.transaction(run).unwrap();
        writer.put(b"k", b"1").unwrap();
        let mut queued = Box::pin(writer.commit());
        assert!((&mut queued).now_or_never().is_none());
        if acknowledged_first {
            drop(release);
            block_on(queued).unwrap();
            assert_eq!(conflict_key(number(&reader, b"l")), b"k");
            // Every later read is refused too; the commit as well.
            assert_eq!(conflict_key(reader.scan(b"")), b"k");
            reader.put(b"l", b"1").unwrap();
            assert_eq!(conflict_key(block_on(reader.commit())), b"k");
        } else {
            assert_eq!(number(&reader, b"l").unwrap(), 0);
            reader.put(b"l", b"1").unwrap();
            let outcome = (&mut Box::pin(reader.commit())).now_or_never();
            assert_eq!(conflict_key(outcome.expect("refused at once")), b"k");
            drop(release);
            block_on(queued).unwrap();
        }
        assert_eq!(db.get(run, b"l").unwrap().unwrap().value, b"0");
        db.close().unwrap();
    }
}

/// A lone read of an absent key, created and deleted again before the second read: absent in
/// the view too, so every read is of that view, and the commit (ordered after both) is
/// serializable.
#[test]
fn an_absent_lone_key_created_and_deleted_again_is_still_absent_in_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"l", b"0");
    let mut txn = db.transaction(run).unwrap();
    assert_eq!(txn.get(b"k").unwrap(), None);
    put(&db, run, b"k", b"1");
    // Present now: a second read in between is refused...
    assert_eq!(conflict_key(txn.get(b"l")), b"k");
    delete(&db, run, b"k");
    // ...and once it is absent again, the view holds the lone read as it was.
    assert_eq!(number(&txn, b"l").unwrap(), 0);
    txn.put(b"k", b"2").unwrap();
    block_on(txn.commit()).unwrap();
    assert_eq!(db.get(run, b"k").unwrap().unwrap().value, b"2");
    db.close().unwrap();
}

/// Write skew with one lone read each (t1 reads x, writes y; t2 reads y, writes x): one of
/// them is refused, in either commit order.
#[test]
fn write_skew_over_lone_reads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"x", b"1");
    put(&db, run, b"y", b"1");
    let mut t1 = db.transaction(run).unwrap();
    let mut t2 = db.transaction(run).unwrap();
    let x = number(&t1, b"x").unwrap();
    let y = number(&t2, b"y").unwrap();
    t1.put(b"y", (x - 1).to_string()).unwrap();
    t2.put(b"x", (y - 1).to_string()).unwrap();
    block_on(t1.commit()).unwrap();
    assert_eq!(conflict_key(block_on(t2.commit())), b"y");
    db.close().unwrap();
}

/// A lone read, then the transaction's own write of that key and a scan over it: the scan's
/// view checks the lone key (changed meanwhile: refused), and a phantom created after the
/// view is a conflict at the commit.
#[test]
fn own_write_then_scan_after_a_lone_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"k", b"0");
    let mut txn = db.transaction(run).unwrap();
    assert_eq!(number(&txn, b"k").unwrap(), 0);
    txn.put(b"k", b"5").unwrap();
    // Its own write: no view taken.
    assert_eq!(number(&txn, b"k").unwrap(), 5);
    put(&db, run, b"k", b"9");
    assert_eq!(conflict_key(txn.scan(b"")), b"k");
    assert_eq!(conflict_key(block_on(txn.commit())), b"k");

    let mut txn = db.transaction(run).unwrap();
    assert_eq!(number(&txn, b"k").unwrap(), 9);
    txn.put(b"k", b"10").unwrap();
    let keys: Vec<_> = txn
        .scan(b"p")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.is_empty());
    put(&db, run, b"p1", b"phantom");
    assert_eq!(conflict_key(block_on(txn.commit())), b"p1");
    db.close().unwrap();
}

/// A spilled transaction whose only state read is a lone read: checked at its commit.
#[test]
fn a_spilled_transaction_with_a_lone_read_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"n", b"0");
    let mut txn = db.transaction(run).unwrap();
    assert_eq!(number(&txn, b"n").unwrap(), 0);
    for i in 0..20u32 {
        txn.put(format!("big{i:02}").as_bytes(), [7; 200]).unwrap();
    }
    assert!(txn.spilled());
    put(&db, run, b"n", b"1");
    txn.put(b"n", b"1").unwrap();
    assert_eq!(conflict_key(block_on(txn.commit())), b"n");
    assert_eq!(db.get(run, b"big00").unwrap(), None);
    db.close().unwrap();
}

/// An install between a lone read and the commit rebases every version: a kept key is a
/// conflict, an absent key absent in the image is not.
#[test]
fn an_install_after_a_lone_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"n", b"0");
    let image = db
        .read_snapshot(block_on(db.checkpoint()).unwrap())
        .unwrap();
    let mut kept = db.transaction(run).unwrap();
    assert_eq!(number(&kept, b"n").unwrap(), 0);
    kept.put(b"n", b"1").unwrap();
    let mut absent = db.transaction(run).unwrap();
    assert_eq!(absent.get(b"gone").unwrap(), None);
    absent.put(b"gone", b"x").unwrap();
    block_on(db.install_snapshot(&image)).unwrap();
    assert_eq!(conflict_key(block_on(kept.commit())), b"n");
    block_on(absent.commit()).unwrap();
    db.close().unwrap();
}

/// Transfers between two keys (a lone read, then a read taking the view) and increments of
/// a third (a lone read only), from several threads with checkpoints alongside; readers
/// read both accounts and must see the total, or be refused. Every increment and transfer
/// that committed is in the result.
#[test]
fn concurrent_transfers_and_increments_keep_their_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: keel::Durability::Async {
            max_delay: std::time::Duration::from_millis(1),
        },
        ..options()
    };
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"a", b"100");
    put(&db, run, b"b", b"100");
    let (threads, rounds) = (4, 200);
    std::thread::scope(|s| {
        for t in 0..threads {
            let db = &db;
            s.spawn(move || {
                for i in 0..rounds {
                    let (from, to): (&[u8], &[u8]) = if (t + i) % 2 == 0 {
                        (b"a", b"b")
                    } else {
                        (b"b", b"a")
                    };
                    block_on(db.transact(run, 1000, |txn| {
                        let f = number(txn, from)?;
                        let g = number(txn, to)?;
                        txn.put(from, (f - 1).to_string())?;
                        txn.put(to, (g + 1).to_string())
                    }))
                    .unwrap();
                    block_on(db.transact(run, 1000, |txn| {
                        let c = number(txn, b"c")?;
                        txn.put(b"c", (c + 1).to_string())
                    }))
                    .unwrap();
                    let reader = db.transaction(run).unwrap();
                    if let Ok(a) = number(&reader, b"a") {
                        match number(&reader, b"b") {
                            Ok(b) => assert_eq!(a + b, 200, "read skew: a {a}, b {b}"),
                            Err(Error::Conflict { .. }) => {}
                            Err(other) => panic!("{other}"),
                        }
                    }
                    if i % 50 == 0 {
                        block_on(db.checkpoint()).unwrap();
                    }
                }
            });
        }
    });
    let total = |key: &[u8]| -> i64 {
        let value = db.get(run, key).unwrap().unwrap().value;
        String::from_utf8(value).unwrap().parse().unwrap()
    };
    assert_eq!(total(b"a") + total(b"b"), 200);
    assert_eq!(total(b"c"), (threads * rounds) as i64);
    db.close().unwrap();
}

/// `transact` whose body is refused at a read (the lone key changed before the second read)
/// waits for the commits queued then before running again: the refused transaction is
/// dropped before that wait, not held through it (its view, its handle, a spill's
/// registration). Before, it lived until the wait ended: `Database::close` on another
/// handle counted it.
#[test]
fn transact_drops_a_transaction_refused_at_a_read_before_waiting() {
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
    put(&db, run, b"l", b"0");
    let release = Release(Arc::clone(&gate));
    let held = std::cell::RefCell::new(None);
    let mut attempts = 0;
    let mut transact = Box::pin(db.transact(run, 2, |txn| {
        attempts += 1;
        let k = number(txn, b"k")?;
        if attempts == 1 {
            put(&db, run, b"k", b"1");
            // A commit queued and held, so the retry has something to wait for.
            gate.set_hold(true);
            let mut other = db.transaction(run).unwrap();
            other.put(b"q", b"1").unwrap();
            let mut queued = Box::pin(other.commit());
            assert!((&mut queued).now_or_never().is_none());
            *held.borrow_mut() = Some(queued);
        }
        let l = number(txn, b"l")?;
        txn.put(b"sum", (k + l).to_string())
    }));
    assert!((&mut transact).now_or_never().is_none(), "waits for q");
    // Handles now: `db`, `probe`, the held commit of q (and the refused transaction, if kept).
    let probe = db.clone();
    match probe.close() {
        Err(keel::CloseError::InUse { handles, .. }) => {
            assert_eq!(handles, 2, "the refused transaction is still alive")
        }
        other => panic!("{other:?}"),
    }
    drop(release);
    let queued = held.borrow_mut().take().unwrap();
    block_on(queued).unwrap();
    block_on(transact).unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(db.get(run, b"sum").unwrap().unwrap().value, b"1");
    db.close().unwrap();
}
