//! `Database::close` with other handles alive (a clone, an open transaction) closes nothing,
//! says so with its own error, and gives the handle back, so the close can be retried.

use futures::executor::block_on;
use keel::{BackendChoice, CloseError, Database, Error, Options};

fn options() -> Options {
    Options {
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

/// `close` with a live transaction (or clone) is refused with its own error and gives the
/// handle back; once the others are dropped the same handle closes. With and without the
/// automatic checkpoints' thread (which holds a handle of its own that must not count).
#[test]
fn close_with_a_live_transaction_is_in_use_and_succeeds_on_the_same_handle_after() {
    for checkpoint_log_bytes in [0, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let options = || Options {
            checkpoint_log_bytes,
            ..options()
        };
        let db = Database::open(dir.path(), options()).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        let mut txn = db.transaction(run).unwrap();
        txn.put(b"k", b"v").unwrap();
        let clone = db.clone();
        let db = match db.close() {
            Err(CloseError::InUse { db, handles: 2 }) => db,
            other => panic!("expected InUse with 2 handles, got {other:?}"),
        };
        drop(clone);
        let error = db.close().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("1 other handle(s)"), "{message}");
        assert!(message.contains("open Transactions"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        let CloseError::InUse { db, .. } = error else {
            panic!("expected InUse, got {error:?}")
        };
        // Committing consumes the transaction, and its handle with it.
        let version = block_on(txn.commit()).unwrap();
        db.close().unwrap();
        let db = Database::open(dir.path(), options()).unwrap();
        assert_eq!(db.get(run, b"k").unwrap().unwrap().version, version);
        db.close().unwrap();
    }
}

/// Into `keel::Error` (a `?` in a function returning `keel::Result`), the refusal is
/// `Error::InUse`, naming the handles.
#[test]
fn a_refused_close_is_error_in_use_through_question_mark() {
    fn close(db: Database) -> keel::Result<()> {
        db.close()?;
        Ok(())
    }
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let other = db.clone();
    match close(db) {
        Err(Error::InUse { path, handles: 1 }) => assert_eq!(path, dir.path()),
        other => panic!("expected Error::InUse, got {other:?}"),
    }
    close(other).unwrap();
}
