//! Adversarial review (passes: a regression test): a database written under one record limit
//! and reopened under a smaller one (here an explicit 32 KiB, then the new default, an eighth
//! of 64 KiB segments: 8 KiB). The limit bounds new records only: records over it already in
//! the log are replayed, read back (a spilled transaction's values, by `Transaction::get`),
//! checkpointed and recovered whole; a new write over it is refused at `put`, before anything
//! is buffered, never at commit. What the smaller limit cannot express is a new record as
//! large as an old one: a key over it cannot be deleted by key (its `Delete` would not fit one
//! record), only with its run (`delete_run`), and a run whose name is over it can neither end
//! nor be deleted until the database is opened with a limit that holds the name again.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};

const BIG: usize = 20 * 1024;

fn large() -> Options {
    Options {
        backend: BackendChoice::Std,
        segment_bytes: 256 * 1024,
        max_record_bytes: 32 * 1024,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 1,
        ..Options::default()
    }
}

fn small() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 0,
        ..large()
    }
}

#[test]
fn records_over_a_smaller_limit_survive_reopens_checkpoints_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), large()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let long_name = "n".repeat(BIG);
    let named = block_on(db.begin_run(&long_name)).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"value", vec![1u8; BIG]).unwrap();
    txn.put(vec![b'k'; BIG], b"long key").unwrap();
    assert!(txn.spilled());
    let committed = block_on(txn.commit()).unwrap();
    db.close().unwrap();

    // Replayed (no checkpoint yet) under 8 KiB records.
    let db = Database::open(dir.path(), small()).unwrap();
    let got = db.get(run, b"value").unwrap().unwrap();
    assert_eq!((got.value.len(), got.version), (BIG, committed));
    assert_eq!(db.run_info(named).unwrap().name, long_name);
    // A new write that large is refused at put; a small one over the old key commits.
    let mut txn = db.transaction(run).unwrap();
    let refused = txn.put(b"value", vec![2u8; BIG]);
    assert!(
        matches!(refused, Err(Error::TooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(txn.get(b"value").unwrap().unwrap().value.len(), BIG);
    let refused = txn.delete(vec![b'k'; BIG]);
    assert!(
        matches!(refused, Err(Error::TooLarge { .. })),
        "{refused:?}"
    );
    txn.put(b"other", vec![3u8; 4096]).unwrap();
    block_on(txn.commit()).unwrap();
    let refused = block_on(db.delete_run(named));
    assert!(
        matches!(refused, Err(Error::TooLarge { key_bytes: 0, .. })),
        "{refused:?}"
    );
    let snapshot = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();

    // From the snapshot, then with the old limit back: the long-named run can be deleted.
    let db = Database::open(dir.path(), small()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(snapshot));
    assert_eq!(db.get(run, b"value").unwrap().unwrap().value.len(), BIG);
    assert_eq!(
        db.get(run, vec![b'k'; BIG]).unwrap().unwrap().value,
        b"long key"
    );
    assert_eq!(db.get(run, b"other").unwrap().unwrap().value.len(), 4096);
    db.close().unwrap();
    let db = Database::open(dir.path(), large()).unwrap();
    block_on(db.delete_run(named)).unwrap();
    assert!(db.run_info(named).is_none());
    db.close().unwrap();
}
