//! Adversarial review of 268f236 (the commit path trimmed): a reader no longer takes the
//! `pending` lock when `first_pending` says nothing acknowledged waits, and `first_pending`
//! learned of a commit only after its append returned.
//!
//! Between a commit's append and its queueing, the log already holds the commit (it can be
//! written, synced and acknowledged), while `first_pending` still said "nothing queued". A
//! panic in that window (here from the caller's own `Storage`: the backend's waker runs on
//! the committing thread, inside the append) left the commit in the log but never queued,
//! the `pending` lock poisoned, and `first_pending` saying "nothing to apply". The engine's
//! policy for that case (`engine/src/db/sync.rs`) is to stop the handle, because "the live
//! state would never show what a reopen recovers"; before 268f236 every read took `pending`
//! and stopped. After it, readers took the shortcut and went on serving the state without
//! the commit, which a reopen then recovered: the live handle and the log disagreed, silently.
//!
//! The writer's wake is now made after the engine queued the commit and released `pending`
//! (`Wal::append_closed_by_deferring_wake`), so the first test's panic no longer falls in
//! that window; it keeps checking that the live handle and a reopen agree.
//!
//! The interleaving is forced, not raced: a backend that holds completions back keeps a chain
//! in flight, so the writer parks in the backend and the next append calls its waker on the
//! committing thread. The waits on the writer are bounded by a generous watchdog (a minute;
//! each returns as soon as the writer gets there) and measure no speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options};
use keel_wal::Storage;

mod common;
use common::gated::{Gate, GatedStorage};

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 1024,
        storage,
        ..Options::default()
    }
}

/// A panic inside a commit's append (after the log took it) must stop the handle's readers,
/// or they must show what a reopen recovers. Since the writer's wake is made after the
/// engine queued the commit and released `pending`, the panic comes with the commit queued
/// in both, and the handle goes on: readers show it once it is durable.
#[test]
fn a_panic_between_append_and_queue_does_not_leave_readers_serving_a_stale_state() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let storage = Arc::new(GatedStorage {
        gate: Arc::clone(&gate),
    });
    let db = Database::open(dir.path(), options(storage)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"k", b"old").unwrap();
    block_on(txn.commit()).unwrap();

    // A spill (in the log, not in the engine's queue of commits) keeps a chain in flight:
    // the writer parks in the backend.
    gate.set_hold(true);
    let mut spilled = db.transaction(run).unwrap();
    spilled.put(b"big", [7; 2048]).unwrap();
    assert!(spilled.spilled());
    gate.wait_until("the writer never parked", |s| s.parked);

    // The commit's append wakes the parked writer through the backend's waker, which panics.
    // Before the wake was deferred: the commit was queued in the log, the engine never
    // queued it, `pending` was poisoned.
    gate.panic_in_waker.store(true, Ordering::SeqCst);
    let committer = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut txn = db.transaction(run).unwrap();
            txn.put(b"k", b"new").unwrap();
            block_on(txn.commit())
        })
    };
    assert!(
        committer.join().is_err(),
        "the waker's panic reached the committer"
    );
    gate.set_hold(false);

    // The panicked commit was never acknowledged, so a reader may leave it out until it is
    // durable: a later commit's acknowledgement (Strict) makes it so. Where the panic came
    // after the queueing (the wake is made once `pending` is released), the handle goes on
    // and a reader must show it; where it poisoned `pending`, the handle stops.
    let reader = std::panic::AssertUnwindSafe(db.clone());
    let live = std::panic::catch_unwind(move || {
        let mut later = reader.transaction(run).unwrap();
        later.put(b"later", b"x").unwrap();
        block_on(later.commit()).unwrap();
        reader.get(run, b"k").unwrap().map(|v| v.value)
    });
    drop(spilled);
    db.close().unwrap();

    let db = Database::open(dir.path(), options(keel_wal::storage::file_system())).unwrap();
    let recovered = db.get(run, b"k").unwrap().map(|v| v.value);
    db.close().unwrap();
    assert_eq!(
        recovered.as_deref(),
        Some(&b"new"[..]),
        "the commit is in the log"
    );
    match live {
        Err(_) => {} // the handle stopped, as the lock policy says
        Ok(live) => assert_eq!(
            live, recovered,
            "after a panic under `pending`, a reader served a state a reopen does not recover"
        ),
    }
}

/// The file system, whose directory sync panics (once, when armed) after a snapshot file
/// was renamed into place: an install's step 2, under the `pending` lock, with the snapshot
/// already at its name.
#[derive(Debug, Default)]
struct PanicsAfterRename {
    armed: AtomicBool,
    renamed: AtomicBool,
}

impl Storage for PanicsAfterRename {
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        if to.to_string_lossy().ends_with(".snap") {
            self.renamed.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        if self.renamed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            panic!("the storage panicked syncing {}", dir.display());
        }
        std::fs::File::open(dir)?.sync_all()
    }
}

/// An install whose storage panics after its snapshot reached its name: `pending` poisoned,
/// the installed state on disk, the old one in memory. Readers must stop, or show what a
/// reopen recovers.
#[test]
fn a_panic_in_an_install_after_its_rename_does_not_leave_readers_serving_the_old_state() {
    let source_dir = tempfile::tempdir().unwrap();
    let source =
        Database::open(source_dir.path(), options(keel_wal::storage::file_system())).unwrap();
    let source_run = block_on(source.begin_run("r")).unwrap();
    let mut txn = source.transaction(source_run).unwrap();
    txn.put(b"k", b"installed").unwrap();
    block_on(txn.commit()).unwrap();
    let image = source
        .read_snapshot(block_on(source.checkpoint()).unwrap())
        .unwrap();
    source.close().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(PanicsAfterRename::default());
    let db = Database::open(dir.path(), options(storage.clone())).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"k", b"old").unwrap();
    block_on(txn.commit()).unwrap();
    block_on(db.checkpoint()).unwrap();

    storage.armed.store(true, Ordering::SeqCst);
    storage.renamed.store(false, Ordering::SeqCst);
    let installer = {
        let db = db.clone();
        std::thread::spawn(move || block_on(db.install_snapshot(&image)))
    };
    assert!(
        installer.join().is_err(),
        "the storage's panic reached the install"
    );

    let reader = std::panic::AssertUnwindSafe(db.clone());
    // The old state has no such run: `None` (not a panic) there.
    let live = std::panic::catch_unwind(move || value(&reader, source_run));
    db.close().unwrap();

    let db = Database::open(dir.path(), options(keel_wal::storage::file_system())).unwrap();
    let recovered = value(&db, source_run);
    db.close().unwrap();
    assert_eq!(
        recovered.as_deref(),
        Some(&b"installed"[..]),
        "the install took effect on disk"
    );
    match live {
        Err(_) => {} // the handle stopped, as the lock policy says
        Ok(live) => assert_eq!(
            live, recovered,
            "after a panic under `pending`, a reader served a state a reopen does not recover"
        ),
    }
}

/// The value of `k` in `run`; `None` when unset or `run` is unknown.
fn value(db: &Database, run: keel::RunId) -> Option<Vec<u8>> {
    db.get(run, b"k").ok().flatten().map(|v| v.value)
}
