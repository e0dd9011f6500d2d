//! Adversarial review of 93f2aa8 (a commit wakes the log's writer after releasing `pending`,
//! through a `WriterWake` guard dropped at the end of `queue_commit`).
//!
//! A panic in that wake now comes after the commit was queued in the log *and* in the
//! engine's queue, with `pending` released: the handle goes on, and the commit becomes
//! visible once durable. But for a spilled transaction, `Transaction::commit` forgets its
//! spill only after `queue_commit` returns: the panic unwinds through the transaction's
//! `Drop`, which treats the transaction as never committed. It logs an `AbortTxn` after the
//! commit and drops the spill's registration (`Spills::abandon`), so the next checkpoint
//! no longer keeps the spill's head: it removes the segments holding the spilled writes,
//! while the commit (above the new snapshot) still needs them. The live handle serves the
//! transaction; a reopen drops it (its head is gone). Before 93f2aa8 the same panic came
//! under `pending`, which stopped the handle (no checkpoint could remove anything).
//!
//! The panic is the storage's (a backend whose waker panics, as in
//! `adversarial_commit_path_poisoned_pending.rs`). The interleaving is forced, not raced:
//! a backend that holds completions back keeps chains in flight, so the writer parks in the
//! backend and appends wake it through the waker; the checkpoint's view is taken (its first
//! poll) while the commit is not yet durable. The waits are bounded by a generous watchdog
//! (a minute) and measure no speed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Context;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};
use keel_wal::Storage;

mod common;
use common::gated::{Gate, GatedStorage};

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 4096,
        storage,
        ..Options::default()
    }
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i:05}-").repeat(20).into_bytes()
}

fn fill(db: &Database, run: RunId, tag: &str, n: u32) {
    for i in 0..n {
        let mut filler = db.transaction(run).unwrap();
        filler
            .put(format!("f{tag}-{i:03}").as_bytes(), value(i))
            .unwrap();
        block_on(filler.commit()).unwrap();
    }
}

#[test]
fn a_panic_in_a_spilled_commits_deferred_wake_does_not_abandon_the_queued_commit() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        gate: Arc::clone(&gate),
    });
    let db = Database::open(dir.path(), options(storage)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();

    // A spilled transaction whose head lies in an old segment, kept (it is open) by two
    // checkpoints taken above it.
    let mut txn = db.transaction(run).unwrap();
    for i in 0..50 {
        txn.put(format!("spilled{i:03}").as_bytes(), value(i))
            .unwrap();
    }
    assert!(txn.spilled());
    fill(&db, run, "a", 300);
    block_on(db.checkpoint()).unwrap();
    fill(&db, run, "b", 300);
    let s2 = block_on(db.checkpoint()).unwrap();
    // Its spilled writes are written (read back at its commit).
    assert!(txn.get(b"spilled000").unwrap().is_some());

    // Another spill keeps a chain in flight: the writer parks in the backend.
    gate.set_hold(true);
    let mut other = db.transaction(run).unwrap();
    other.put(b"other", [7; 8192]).unwrap();
    assert!(other.spilled());
    gate.wait_until("the writer never parked", |s| s.parked);

    // The commit's deferred wake panics, after the commit was queued in the log and in the
    // engine, and `pending` was released.
    gate.panic_in_waker.store(true, Ordering::SeqCst);
    let committer = std::thread::spawn(move || block_on(txn.commit()));
    assert!(
        committer.join().is_err(),
        "the waker's panic reached the committer"
    );
    // A checkpoint takes its view while the commit is not yet durable: its first poll takes
    // the view, then waits for the log (completions are still held back). They then go through.
    let s3 = {
        let mut checkpoint = Box::pin(db.checkpoint());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            checkpoint.as_mut().poll(&mut cx).is_pending(),
            "the checkpoint waits for the log held back"
        );
        gate.set_hold(false);
        block_on(checkpoint).unwrap()
    };
    assert!(s2 < s3);

    // The live handle: the commit is durable (a later Strict commit's acknowledgement says
    // so) and shown whole.
    fill(&db, run, "c", 1);
    let live = db.scan(run, b"spilled").unwrap().len();
    assert_eq!(live, 50, "the queued commit went ahead in the live handle");
    let first_segment = keel_wal::dir::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments[0]
        .first_lsn;
    drop(other);
    db.close().unwrap();

    let recovered = Database::open(dir.path(), options(keel_wal::storage::file_system()))
        .map_err(|e| e.to_string())
        .and_then(|db| {
            let n = db.scan(run, b"spilled").map_err(|e| e.to_string())?.len();
            db.close().map_err(|e| e.to_string())?;
            Ok(n)
        });
    assert_eq!(
        recovered,
        Ok(live),
        "the live handle showed the spilled commit, a reopen does not recover it (snapshots \
         {s2}, {s3}; the log now starts at LSN {first_segment}: the spill's head was removed)"
    );
}
