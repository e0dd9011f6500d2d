//! A run's end and a commit to that run racing: `Transaction::commit` checked the run was
//! writable against the applied state, outside the `pending` lock where commits are ordered.
//! An `end_run` the log had taken but not yet acknowledged (so not applied) passed that check,
//! and the transaction's commit was appended after the end: both were acknowledged, and the
//! ended run held a key written after its end (`RunState::Ended(e)` with a key at version
//! above `e`), which no serial order of the two allows.

use std::sync::Arc;

use futures::FutureExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options, RunState};

mod common;
use common::gated::{Gate, GatedStorage, Release};

fn gated_db(dir: &std::path::Path) -> (Database, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        gate: Arc::clone(&gate),
    });
    let options = Options {
        backend: BackendChoice::Std,
        storage,
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        ..Options::default()
    };
    (Database::open(dir, options).unwrap(), gate)
}

#[test]
fn a_commit_ordered_after_its_runs_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = gated_db(dir.path());
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"k", b"late").unwrap();
    gate.set_hold(true);
    let release = Release(Arc::clone(&gate));
    // The end is in the log's queue, not acknowledged: the state still says Active.
    let mut end = Box::pin(db.end_run(run));
    assert!((&mut end).now_or_never().is_none());
    let mut commit = Box::pin(txn.commit());
    let refused = (&mut commit).now_or_never();
    drop(release);
    let ended_at = block_on(end).unwrap();
    let outcome = match refused {
        Some(outcome) => outcome,
        None => block_on(commit),
    };
    assert_eq!(db.run_info(run).unwrap().state, RunState::Ended(ended_at));
    match outcome {
        Err(Error::RunEnded(r)) => assert_eq!(r, run),
        other => panic!(
            "the commit came after the run's end (LSN {ended_at}) and should be refused; \
             got {other:?}, and the ended run holds {:?}",
            db.get(run, b"k").unwrap()
        ),
    }
    assert_eq!(db.get(run, b"k").unwrap(), None);
    db.close().unwrap();
}
