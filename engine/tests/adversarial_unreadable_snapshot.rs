//! Adversarial review (passes: a regression test): a snapshot file that cannot be read at
//! all (an I/O error such as EIO; modelled here by a snapshot name whose target is gone).
//! Open passes over it; the first checkpoint after that fails in `release_before` (a read
//! error is returned, not judged), after writing its snapshot and entry. The next one takes
//! that snapshot as its fallback and deletes the unreadable one unread, so the log is
//! released again: retention stays bounded.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

fn fill(db: &Database, run: RunId, tag: &str, n: u32) {
    for i in 0..n {
        let mut txn = db.transaction(run).unwrap();
        txn.put(format!("{tag}-{i:03}").as_bytes(), [7u8; 400])
            .unwrap();
        block_on(txn.commit()).unwrap();
    }
}

fn segments(dir: &std::path::Path) -> usize {
    keel_wal::dir::list_directory(&dir.join("wal"))
        .unwrap()
        .segments
        .len()
}

#[test]
fn an_unreadable_snapshot_fails_one_checkpoint_then_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    fill(&db, run, "a", 200);
    let s1 = block_on(db.checkpoint()).unwrap();
    fill(&db, run, "b", 200);
    let s2 = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    // The newest snapshot can no longer be read at all.
    let snap = dir.path().join("snapshots").join(format!("{s2:020}.snap"));
    std::fs::remove_file(&snap).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), &snap).unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(s1), "open passed over it");
    assert_eq!(db.snapshots_skipped().len(), 1);
    let mut failures = Vec::new();
    for round in 0..4 {
        fill(&db, run, &format!("c{round}"), 200);
        if let Err(error) = block_on(db.checkpoint()) {
            failures.push(error.to_string());
        }
    }
    let left = segments(dir.path());
    println!("segments left after 4 checkpoints: {left}; failures: {failures:?}");
    assert!(failures.len() <= 1, "{failures:?}");
    assert!(
        std::fs::symlink_metadata(&snap).is_err(),
        "the unreadable snapshot was deleted"
    );
    assert!(left <= 3, "the log was released: {left} segments");
    db.close().unwrap();
}
