//! Adversarial review of 281c4c9 (checkpoints off the commit path): a panic on the
//! checkpointer thread.
//!
//! An automatic checkpoint runs on the thread "keel-checkpoint". A panic in it (here from the
//! caller's own `Storage`, as any foreign code may) used to end the thread with its flags
//! set: the signal's `running` stayed true, so `wait_for_automatic_checkpoint` waited for
//! good, and `checkpointing` stayed true, so no automatic checkpoint ran again for the life
//! of the handle (the log grew without bound), and nothing but a line logged at drop said
//! so. (Before 281c4c9 the checkpoint ran on the committing task, whose flag was cleared on
//! unwinding.)
//!
//! The deadlock is detected with a watchdog (a generous bound on a wait that returns at once
//! when the checkpoint is over; it measures no speed).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};
use keel_wal::Storage;

/// The file system, which panics once syncing a snapshot's temporary file when armed (the
/// file written whole, not yet renamed).
#[derive(Debug, Default)]
struct PanicsOnce {
    armed: AtomicBool,
}

impl Storage for PanicsOnce {
    fn sync_file(&self, file: &std::fs::File, path: &Path, all: bool) -> std::io::Result<()> {
        let snapshot = path.to_string_lossy().ends_with(".snap.tmp");
        if snapshot && self.armed.swap(false, Ordering::SeqCst) {
            panic!("the storage panicked syncing {}", path.display());
        }
        if all {
            file.sync_all()
        } else {
            file.sync_data()
        }
    }
}

fn options(storage: Arc<dyn Storage>) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 1, // every commit asks for one
        checkpoint_log_percent: 0,
        storage,
        ..Options::default()
    }
}

fn commit(db: &Database, run: RunId, key: &[u8]) {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key, b"value").unwrap();
    block_on(txn.commit()).unwrap();
}

/// The partial snapshot files in the database `dir`.
fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// `db.wait_for_automatic_checkpoint()`, failing the test if it has not returned after a
/// minute (it returns as soon as the checkpoint asked for is over).
fn wait_or_fail(db: &Database, what: &str) {
    let (done, returned) = std::sync::mpsc::channel();
    let waiter = db.clone();
    let thread = std::thread::spawn(move || {
        waiter.wait_for_automatic_checkpoint();
        let _ = done.send(());
    });
    if returned.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!("{what}: wait_for_automatic_checkpoint never returned");
    }
    thread.join().unwrap(); // its clone of the handle is gone
}

/// Failed before the fix (the wait after the panic never returned). A panicking automatic checkpoint
/// is counted as a failed one, with its message, and the next commit's checkpoint runs.
#[test]
fn adversarial_bg_checkpoint_a_panic_is_a_failed_checkpoint_and_the_next_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(PanicsOnce::default());
    let db = Database::open(dir.path(), options(Arc::clone(&storage) as _)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    wait_or_fail(&db, "control");
    let before = db.stats();
    assert_eq!(before.auto_checkpoint_failures, 0);

    storage.armed.store(true, Ordering::SeqCst);
    commit(&db, run, b"a");
    wait_or_fail(&db, "after the panic");
    let stats = db.stats();
    assert_eq!(stats.auto_checkpoint_failures, 1);
    let error = stats.last_auto_checkpoint_error.unwrap_or_default();
    assert!(error.contains("the storage panicked"), "{error}");
    assert_eq!(stats.checkpoints, before.checkpoints);
    assert_eq!(partials(dir.path()).len(), 1, "the panic left its file");

    // Automatic checkpoints go on; the partial file the panic left is cleaned up.
    commit(&db, run, b"b");
    wait_or_fail(&db, "the next checkpoint");
    assert_eq!(db.stats().checkpoints, before.checkpoints + 1);
    assert_eq!(partials(dir.path()), Vec::<String>::new());
    db.close().unwrap();

    let db = Database::open(dir.path(), options(Arc::new(PanicsOnce::default()))).unwrap();
    assert_eq!(db.get(run, b"a").unwrap().unwrap().value, b"value");
    assert_eq!(db.get(run, b"b").unwrap().unwrap().value, b"value");
    db.close().unwrap();
}

/// Passes before and after (a guard): `close()` refused because another clone is open
/// leaves the checkpointer running for that clone.
#[test]
fn adversarial_bg_checkpoint_a_refused_close_leaves_automatic_checkpoints_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(Arc::new(PanicsOnce::default()))).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    wait_or_fail(&db, "control");
    let other = db.clone();
    assert!(db.close().is_err(), "another clone is open");
    let before = other.stats().checkpoints;
    commit(&other, run, b"a");
    wait_or_fail(&other, "after the refused close");
    assert_eq!(other.stats().checkpoints, before + 1);
    other.close().unwrap();
}
