//! Large transactions spill to the log before their commit: one that aborts (or is dropped)
//! leaves no trace, one that commits is whole after a reopen, also across checkpoints that
//! remove segments.

use std::collections::BTreeMap;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 4096,
        ..Options::default()
    }
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i:05}-").repeat(20).into_bytes()
}

#[test]
fn a_spilled_transaction_that_aborts_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut keep = db.transaction(run).unwrap();
    keep.put(b"kept", b"yes").unwrap();
    block_on(keep.commit()).unwrap();
    for ending in ["abort", "drop"] {
        let mut txn = db.transaction(run).unwrap();
        for i in 0..100 {
            txn.put(format!("k{i:03}").as_bytes(), value(i)).unwrap();
        }
        txn.delete(b"kept").unwrap();
        assert!(txn.spilled(), "{ending}");
        // Read-your-writes, from the log for the spilled keys.
        assert_eq!(txn.get(b"k005").unwrap().unwrap().value, value(5));
        assert_eq!(txn.get(b"kept").unwrap(), None);
        if ending == "abort" {
            txn.abort();
        } else {
            drop(txn);
        }
        assert_eq!(db.get(run, b"k005").unwrap(), None, "{ending}");
        assert_eq!(db.get(run, b"kept").unwrap().unwrap().value, b"yes");
    }
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let report = db.recovery_report();
    assert_eq!(report.txns_aborted, 2, "{report}");
    assert_eq!(report.txns_incomplete, 0, "{report}");
    assert_eq!(db.scan(run, b"k").unwrap().len(), 1, "only `kept`");
    db.close().unwrap();
}

#[test]
fn a_spilled_transaction_that_commits_is_whole_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut expected = BTreeMap::new();
    let mut txn = db.transaction(run).unwrap();
    for i in 0..300 {
        let key = format!("k{:03}", i % 120).into_bytes();
        if i % 11 == 0 {
            txn.delete(&key).unwrap();
            expected.remove(&key);
        } else {
            txn.put(&key, value(i)).unwrap();
            expected.insert(key, value(i));
        }
    }
    assert!(txn.spilled());
    // A commit from another transaction in between.
    let mut other = db.transaction(run).unwrap();
    other.put(b"other", b"1").unwrap();
    block_on(other.commit()).unwrap();
    expected.insert(b"other".to_vec(), b"1".to_vec());
    let version = block_on(txn.commit()).unwrap();
    let live: BTreeMap<Vec<u8>, Vec<u8>> = db
        .scan(run, b"")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    assert_eq!(live, expected);
    assert_eq!(db.get(run, b"k001").unwrap().unwrap().version, version);
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let recovered: BTreeMap<Vec<u8>, Vec<u8>> = db
        .scan(run, b"")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    assert_eq!(recovered, expected);
    db.close().unwrap();
}

#[test]
fn a_spilled_transaction_survives_checkpoints_that_remove_segments() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    for i in 0..50 {
        txn.put(format!("spilled{i:03}").as_bytes(), value(i))
            .unwrap();
    }
    assert!(txn.spilled());
    for round in 0..4 {
        for i in 0..150 {
            let mut filler = db.transaction(run).unwrap();
            filler
                .put(format!("f{round}-{i:03}").as_bytes(), value(i))
                .unwrap();
            block_on(filler.commit()).unwrap();
        }
        block_on(db.checkpoint()).unwrap();
    }
    let segments = keel_wal::dir::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments;
    assert!(
        segments.len() > 2,
        "the spilled transaction holds the log back"
    );
    block_on(txn.commit()).unwrap();
    block_on(db.checkpoint()).unwrap();
    block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.scan(run, b"spilled").unwrap().len(), 50);
    assert_eq!(db.scan(run, b"f").unwrap().len(), 600);
    db.close().unwrap();
}
