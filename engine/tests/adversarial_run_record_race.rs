//! Adversarial review: a run's delete and another run record of that run racing. `end_run`
//! checked the run against the applied state only; a `delete_run` the log had taken but not
//! yet acknowledged (so not applied) passed that check, and the end's record was appended
//! after the delete. Both were acknowledged, and applying the end after the delete put the
//! deleted run back (`Ended`, with its record in the system run), live and after a reopen:
//! an acknowledged delete undone by a later record that should have been refused.

use std::sync::Arc;

use futures::FutureExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};

mod common;
use common::gated::{Gate, GatedStorage, Release};

fn options(storage: Option<Arc<GatedStorage>>) -> Options {
    let mut options = Options {
        backend: BackendChoice::Std,
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        ..Options::default()
    };
    if let Some(storage) = storage {
        options.storage = storage;
    }
    options
}

#[test]
fn a_run_record_ordered_after_the_runs_delete_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        gate: Arc::clone(&gate),
    });
    let db = Database::open(dir.path(), options(Some(storage))).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"k", b"v").unwrap();
    block_on(txn.commit()).unwrap();
    gate.set_hold(true);
    let release = Release(Arc::clone(&gate));
    // The delete is in the log's queue, not acknowledged: the state still has the run.
    let mut delete = Box::pin(db.delete_run(run));
    assert!((&mut delete).now_or_never().is_none());
    let mut end = Box::pin(db.end_run(run));
    let refused = (&mut end).now_or_never();
    drop(release);
    let deleted_at = block_on(delete).unwrap();
    let outcome = match refused {
        Some(outcome) => outcome,
        None => block_on(&mut end),
    };
    drop(end);
    let live = db.run_info(run);
    db.close().unwrap();
    let db = Database::open(dir.path(), options(None)).unwrap();
    let reopened = db.run_info(run);
    db.close().unwrap();
    assert!(
        matches!(outcome, Err(Error::UnknownRun(r) | Error::RunEnded(r)) if r == run),
        "the end came after the run's delete (LSN {deleted_at}) and should be refused; got \
         {outcome:?}; the deleted run is back: live {live:?}, after a reopen {reopened:?}"
    );
    assert_eq!(
        (live, reopened),
        (None, None),
        "the deleted run stays deleted"
    );
}
