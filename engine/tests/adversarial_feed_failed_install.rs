//! The feed's `Installed { lsn }` says "the state after `lsn` is the snapshot's": a consumer
//! drops what it built and re-bootstraps from the snapshot at `lsn`. An install logs its
//! marker durably *before* it writes that snapshot; when the write fails (or the process
//! crashes before its rename) the install never happened: the state stays the one before,
//! and recovery says so ("a marker without its snapshot file is an install that never
//! happened"). The feed delivers the marker as an install as soon as it is durable, so a
//! subscriber receives an install that a failure (or a crash) takes back, and a snapshot at
//! that LSN that does not exist. (Failed before the fix: `Installed { lsn: 5 }`.)

use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, FeedEvent, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

fn put(db: &Database, run: RunId, key: &str, value: &str) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value.as_bytes()).unwrap();
    block_on(txn.commit()).unwrap()
}

#[test]
fn an_install_that_failed_is_not_delivered() {
    let source = tempfile::tempdir().unwrap();
    let image = {
        let db = Database::open(source.path(), options()).unwrap();
        let run = block_on(db.begin_run("source")).unwrap();
        put(&db, run, "from-image", "x");
        let lsn = block_on(db.checkpoint()).unwrap();
        let bytes = db.read_snapshot(lsn).unwrap();
        db.close().unwrap();
        bytes
    };

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("local")).unwrap();
    let last = put(&db, run, "k", "before");
    let mut feed = db.subscribe(last + 1);
    // The marker goes at `last + 1`; its snapshot's temporary file cannot be created.
    let marker = last + 1;
    let blocker = dir
        .path()
        .join("snapshots")
        .join(format!("{marker:020}.snap.tmp"));
    std::fs::create_dir_all(&blocker).unwrap();
    assert!(block_on(db.install_snapshot(&image)).is_err());
    std::fs::remove_dir(&blocker).unwrap();
    // The install did not take effect: the state is the one before it.
    assert_eq!(db.get(run, b"k").unwrap().unwrap().value, b"before");
    assert!(db.read_snapshot(marker).is_err(), "no snapshot at {marker}");

    let after = put(&db, run, "k", "after");
    let first = block_on(feed.next()).unwrap().unwrap();
    assert!(
        matches!(&first, FeedEvent::Commit(c) if c.commit_lsn == after),
        "the next event is the commit at {after}, not a failed install: {first:?}"
    );
    db.close().unwrap();

    // After a reopen (recovery replays past the marker: its snapshot is absent), the same.
    let db = Database::open(dir.path(), options()).unwrap();
    let mut feed = db.subscribe(last + 1);
    let first = block_on(feed.next()).unwrap().unwrap();
    assert!(
        matches!(&first, FeedEvent::Commit(c) if c.commit_lsn == after),
        "after a reopen: {first:?}"
    );
    db.close().unwrap();
}
