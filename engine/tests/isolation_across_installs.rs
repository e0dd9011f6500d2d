//! Review coverage (no defect found).
//! A snapshot install between a transaction's first read and its commit (an image of the
//! same database taken earlier: a rollback). The install is ordered before the commit, so
//! what the transaction read must still hold after it, or the commit is a conflict.

use futures::executor::block_on;
use keel::{Database, Error, Isolation, Options};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

#[test]
fn a_rollback_install_after_a_read_is_a_conflict() {
    for isolation in [Isolation::Serializable, Isolation::Snapshot] {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), options()).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        block_on(db.transact(run, 1, |t| t.put(b"n", b"0"))).unwrap();
        let image = db
            .read_snapshot(block_on(db.checkpoint()).unwrap())
            .unwrap();
        block_on(db.transact(run, 1, |t| t.put(b"n", b"1"))).unwrap();
        block_on(db.transact(run, 1, |t| t.put(b"absent-then", b"x"))).unwrap();
        // Reads n = 1 and "new" absent, then the image (n = 0, "new" = y) goes in.
        let mut txn = db.transaction_with(run, isolation).unwrap();
        assert_eq!(txn.get(b"n").unwrap().unwrap().value, b"1");
        txn.put(b"n", b"2").unwrap();
        block_on(db.install_snapshot(&image)).unwrap();
        assert_eq!(db.get(run, b"n").unwrap().unwrap().value, b"0");
        match block_on(txn.commit()) {
            Err(Error::Conflict { key, .. }) => assert_eq!(key, b"n"),
            other => panic!("{isolation:?}: read n = 1, the install set n = 0: {other:?}"),
        }
        // A key the view had and the image lacks (a scan of it).
        let mut txn = db.transaction_with(run, isolation).unwrap();
        txn.scan(b"").unwrap();
        txn.put(b"sum", b"3").unwrap();
        let later = db
            .read_snapshot(block_on(db.checkpoint()).unwrap())
            .unwrap();
        block_on(db.transact(run, 1, |t| t.put(b"extra", b"e"))).unwrap();
        block_on(db.install_snapshot(&later)).unwrap();
        let outcome = block_on(txn.commit());
        match isolation {
            Isolation::Serializable => assert!(
                matches!(outcome, Err(Error::Conflict { .. })),
                "a scan's view changed by an install: {outcome:?}"
            ),
            _ => assert!(outcome.is_ok(), "{outcome:?}"),
        }
        db.close().unwrap();
    }
}
