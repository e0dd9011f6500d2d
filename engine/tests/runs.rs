//! Runs as a restarted service uses them: found by name (unique among active runs, also when
//! two services begin one at once), deleted with all their keys durably (recovery and
//! checkpoints honour it) and gone from memory.

use futures::executor::block_on;
use keel::{Database, Error, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 1024,
        ..Options::default()
    }
}

fn put(db: &Database, run: RunId, key: &str, value: &str) {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key, value).unwrap();
    block_on(txn.commit()).unwrap();
}

#[test]
fn runs_are_found_by_name_and_names_are_unique_among_active_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.find_run("ingest"), None);
    let first = block_on(db.begin_run("ingest")).unwrap();
    assert_eq!(db.find_run("ingest"), Some(first));
    let taken = block_on(db.begin_run("ingest"));
    match taken {
        Err(Error::RunNameTaken { name, run }) => {
            assert_eq!((name.as_str(), run), ("ingest", first))
        }
        other => panic!("expected RunNameTaken, got {other:?}"),
    }
    block_on(db.end_run(first)).unwrap();
    assert_eq!(db.find_run("ingest"), None, "an ended run is not found");
    let second = block_on(db.begin_run("ingest")).unwrap();
    assert_ne!(second, first);
    db.close().unwrap();
    // After a restart, the service finds its run again.
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.find_run("ingest"), Some(second));
    db.close().unwrap();
}

/// Racing `begin_run`s of one name: exactly one commits (the check is made where commits
/// are ordered, not before).
#[test]
fn racing_begins_of_one_name_commit_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    for round in 0..20 {
        let name = format!("service-{round}");
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..6)
                .map(|_| s.spawn(|| block_on(db.begin_run(&name))))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(_) | Err(Error::RunNameTaken { .. }))),
            "{outcomes:?}"
        );
        let active = db
            .list_runs()
            .into_iter()
            .filter(|r| r.name == name)
            .count();
        assert_eq!(active, 1);
    }
    db.close().unwrap();
}

#[test]
fn a_deleted_run_is_gone_with_its_keys_after_reopens_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let doomed = block_on(db.begin_run("doomed")).unwrap();
    let kept = block_on(db.begin_run("kept")).unwrap();
    for i in 0..50 {
        put(&db, doomed, &format!("k{i:02}"), "v");
        put(&db, kept, &format!("k{i:02}"), "v");
    }
    let checkpointed = block_on(db.checkpoint()).unwrap();
    let mut open_txn = db.transaction(doomed).unwrap();
    open_txn.put("late", "write").unwrap();
    block_on(db.end_run(doomed)).unwrap();
    block_on(db.delete_run(doomed)).unwrap();
    let gone = |db: &Database| {
        assert_eq!(db.run_info(doomed), None);
        assert!(db.list_runs().iter().all(|r| r.id != doomed));
        assert!(matches!(db.get(doomed, "k00"), Err(Error::UnknownRun(_))));
        assert!(matches!(db.transaction(doomed), Err(Error::UnknownRun(_))));
        assert_eq!(
            db.scan(kept, "k").unwrap().len(),
            50,
            "the other run is untouched"
        );
        assert_eq!(db.find_run("doomed"), None);
    };
    gone(&db);
    assert!(matches!(
        block_on(open_txn.commit()),
        Err(Error::UnknownRun(_))
    ));
    assert!(matches!(
        block_on(db.delete_run(doomed)),
        Err(Error::UnknownRun(_))
    ));
    db.close().unwrap();

    // Replayed over the snapshot taken before the delete.
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(checkpointed));
    gone(&db);
    // A checkpoint after it writes a snapshot without the run.
    block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    gone(&db);
    // Its name is free again.
    let again = block_on(db.begin_run("doomed")).unwrap();
    assert!(db.scan(again, "").unwrap().is_empty());
    db.close().unwrap();
}

#[test]
fn an_active_run_can_be_deleted_and_its_name_taken_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("scratch")).unwrap();
    put(&db, run, "a", "1");
    block_on(db.delete_run(run)).unwrap();
    let again = block_on(db.begin_run("scratch")).unwrap();
    assert_eq!(db.find_run("scratch"), Some(again));
    assert_eq!(db.get(again, "a").unwrap(), None);
    db.close().unwrap();
}
