//! Adversarial review (helper-51) of 4021a5c: `Wal::bytes_appended`, `Replay::read` at open,
//! the abort's `maybe_checkpoint`, and `checkpoint_missed` (the checkpointer looks again
//! after a checkpoint that was asked for while it ran).
//!
//! Deterministic: a snapshot's sync is held or failed by the test's own `Storage`, the log's
//! writes by `common::gated`; waits are bounded by a watchdog that measures no speed.
//!
//! Fail at 4021a5c: `..._failed_checkpoint_leaves_missed_set` (passes at 00ab0df: new) and
//! `..._commits_during_the_checkpoint_sync_are_not_counted` (at 00ab0df it fails too, with
//! 0 checkpoints: the held log was not counted at all then). The others pass.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};
use keel_wal::Storage;

mod common;
use common::gated::{Gate, GatedStorage, Release};

const WATCHDOG: Duration = Duration::from_secs(60);

/// The file system; a snapshot's sync (the temporary file written whole) can be held until
/// released, and can fail.
#[derive(Debug, Default)]
struct SnapGate {
    hold: Mutex<bool>,
    /// A sync is held (set by the checkpointer, cleared on release).
    held: Mutex<bool>,
    changed: Condvar,
    fail: AtomicBool,
}

impl SnapGate {
    fn set_hold(&self, hold: bool) {
        *self.hold.lock().unwrap() = hold;
        self.changed.notify_all();
    }

    fn wait_held(&self) {
        let held = self.held.lock().unwrap();
        let (held, timeout) = self
            .changed
            .wait_timeout_while(held, WATCHDOG, |h| !*h)
            .unwrap();
        assert!(
            *held && !timeout.timed_out(),
            "no checkpoint reached the gate"
        );
    }
}

impl Storage for SnapGate {
    fn sync_file(&self, file: &std::fs::File, path: &Path, all: bool) -> std::io::Result<()> {
        if path.to_string_lossy().ends_with(".snap.tmp") {
            let mut hold = self.hold.lock().unwrap();
            if *hold {
                *self.held.lock().unwrap() = true;
                self.changed.notify_all();
                while *hold {
                    hold = self.changed.wait(hold).unwrap();
                }
                *self.held.lock().unwrap() = false;
            }
            drop(hold);
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("the test fails this snapshot's sync"));
            }
        }
        if all {
            file.sync_all()
        } else {
            file.sync_data()
        }
    }
}

fn options(threshold: u64, percent: u64) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: threshold,
        checkpoint_log_percent: percent,
        spill_txn_bytes: 8 * 1024,
        ..Options::default()
    }
}

fn put(db: &Database, run: RunId, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key, value).unwrap();
    block_on(txn.commit()).unwrap()
}

/// `db.wait_for_automatic_checkpoint()`, failing the test if it has not returned after the
/// watchdog.
fn wait_or_fail(db: &Database, what: &str) {
    let (done, returned) = std::sync::mpsc::channel();
    let waiter = db.clone();
    let thread = std::thread::spawn(move || {
        waiter.wait_for_automatic_checkpoint();
        let _ = done.send(());
    });
    if returned.recv_timeout(WATCHDOG).is_err() {
        panic!("{what}: wait_for_automatic_checkpoint never returned");
    }
    thread.join().unwrap();
}

/// The count settles: no checkpoint runs while nothing is written.
fn assert_settles(db: &Database, what: &str) -> u64 {
    wait_or_fail(db, what);
    let settled = db.stats().checkpoints;
    std::thread::sleep(Duration::from_millis(300));
    wait_or_fail(db, what);
    assert_eq!(
        db.stats().checkpoints,
        settled,
        "{what}: checkpoints went on on an idle database"
    );
    settled
}

/// Sound: with a threshold of 1 byte and no percentage (every checkpoint's own entry is
/// already "due"), one commit on an idle database asks for one checkpoint, and the
/// checkpointer stops.
#[test]
fn adversarial_checkpoint_drop2_tiny_threshold_one_commit_settles() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(1, 0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let before = assert_settles(&db, "after begin_run");
    put(&db, run, b"k", b"v");
    let after = assert_settles(&db, "after one commit");
    assert_eq!(after - before, 1, "one commit, one checkpoint");
    db.close().unwrap();
}

/// Sound: a burst of commits from another thread while checkpoints run (each asks again:
/// `checkpoint_missed`) with a 1-byte threshold ends; `wait_for_automatic_checkpoint`
/// returns and the count settles.
#[test]
fn adversarial_checkpoint_drop2_tiny_threshold_burst_settles() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(1, 0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let writer = db.clone();
    let thread = std::thread::spawn(move || {
        for i in 0..300u32 {
            put(&writer, run, (i % 7).to_be_bytes(), [3u8; 200]);
        }
    });
    thread.join().unwrap();
    assert_settles(&db, "after the burst");
    db.close().unwrap();
}

/// Was a DEFECT (minor, b), fixed (the flag is cleared as each run starts): `checkpoint_missed` is consumed only after a checkpoint that was
/// written. A commit that asked while a checkpoint ran that then failed leaves it set: the
/// next successful checkpoint, however much later, "looks again" and, below a threshold of
/// about a checkpoint entry, runs a second checkpoint back to back on an idle database that
/// drops nothing but the first one's own `Checkpoint` entry.
#[test]
fn adversarial_checkpoint_drop2_failed_checkpoint_leaves_missed_set() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(SnapGate::default());
    let opts = Options {
        storage: Arc::clone(&gate) as Arc<dyn Storage>,
        ..options(1, 0)
    };
    let db = Database::open(dir.path(), opts).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    wait_or_fail(&db, "control");
    let base = db.stats().checkpoints;

    gate.fail.store(true, Ordering::SeqCst);
    gate.set_hold(true);
    put(&db, run, b"a", b"1");
    gate.wait_held();
    // Asked while the first runs: `checkpoint_missed`.
    put(&db, run, b"b", b"2");
    gate.set_hold(false);
    wait_or_fail(&db, "the failed checkpoint");
    let stats = db.stats();
    assert_eq!(stats.checkpoints, base);
    assert_eq!(stats.auto_checkpoint_failures, 1);

    // Much later: one commit, one checkpoint asked for.
    gate.fail.store(false, Ordering::SeqCst);
    put(&db, run, b"c", b"3");
    let after = assert_settles(&db, "after the failure");
    assert_eq!(
        after - base,
        1,
        "one commit on an idle database after a failed checkpoint ran {} checkpoints back to \
         back (the stale `checkpoint_missed` of the failed one)",
        after - base
    );
    db.close().unwrap();
}

/// Sound: a commit asked while a held checkpoint ran; after it is written the checkpointer
/// looks again, and the threshold decides (not due here: the commit was tiny).
#[test]
fn adversarial_checkpoint_drop2_missed_looks_again_under_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(SnapGate::default());
    let threshold = 64 * 1024;
    let opts = Options {
        storage: Arc::clone(&gate) as Arc<dyn Storage>,
        ..options(threshold, 0)
    };
    let db = Database::open(dir.path(), opts).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    for i in 0..50u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    wait_or_fail(&db, "control");
    assert_eq!(db.stats().checkpoints, 0);
    gate.set_hold(true);
    for i in 0..10u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    gate.wait_held();
    put(&db, run, b"tiny", b"1");
    gate.set_hold(false);
    assert_eq!(assert_settles(&db, "after the held one"), 1);
    db.close().unwrap();
}

fn spilled(db: &Database, run: RunId, tag: &str) -> keel::Transaction {
    let mut txn = db.transaction(run).unwrap();
    for j in 0..10u32 {
        txn.put(format!("{tag}-{j}"), vec![2u8; 1000]).unwrap();
    }
    assert!(txn.spilled());
    txn
}

/// Sound (c): a spilled transaction dropped while a panic unwinds (its `Drop` logs the
/// abort and asks for a checkpoint) neither aborts the process nor leaves the checkpointer
/// asked for.
#[test]
fn adversarial_checkpoint_drop2_spilled_abort_in_unwind() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(1, 0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _txn = spilled(&db, run, "u");
        panic!("the caller's code panics holding a spilled transaction");
    }));
    assert!(result.is_err());
    assert_settles(&db, "after the unwind");
    put(&db, run, b"after", b"1");
    assert_settles(&db, "after a commit");
    db.close().unwrap();
}

/// Sound (c): a spilled transaction holding the last user handle: its `Drop` asks for a
/// checkpoint, then drops the handle, which stops and joins the checkpointer; the directory
/// opens again at once.
#[test]
fn adversarial_checkpoint_drop2_spilled_abort_drops_the_last_handle() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(1, 0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let txn = spilled(&db, run, "l");
    // close refuses: the transaction holds a handle.
    let db = match db.close() {
        Err(keel::CloseError::InUse { db, .. }) => db,
        other => panic!("close with a live transaction: {other:?}"),
    };
    drop(db);
    let (done, dropped) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        drop(txn);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(WATCHDOG)
        .expect("dropping the transaction with the last handle never returned");
    thread.join().unwrap();
    let db = Database::open(dir.path(), options(1, 0)).unwrap();
    assert_eq!(db.recovery_report().lsns_skipped, 0);
    db.close().unwrap();
}

/// Sound (d): the count a reopen starts from is the log above the snapshot, once: about
/// 0.6 threshold of overwrites before and a tiny commit after a reopen ask for nothing;
/// another 0.6 after it asks.
#[test]
fn adversarial_checkpoint_drop2_reopen_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let threshold = 256 * 1024;
    let db = Database::open(dir.path(), options(threshold, 0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    for i in 0..150u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    // An aborted spill too (about 11 KiB, counted once by `read`).
    drop(spilled(&db, run, "a"));
    wait_or_fail(&db, "first life");
    assert_eq!(db.stats().checkpoints, 0);
    db.close().unwrap();
    let db = Database::open(dir.path(), options(threshold, 0)).unwrap();
    put(&db, run, b"tiny", b"1");
    wait_or_fail(&db, "after reopen");
    assert_eq!(db.stats().checkpoints, 0, "a reopen counted the log twice");
    for i in 0..110u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    wait_or_fail(&db, "second life");
    assert_eq!(
        db.stats().checkpoints,
        1,
        "about 1.1 threshold of overwrites"
    );
    db.close().unwrap();
}

/// Sound (e): the largest threshold and percentage overflow nothing.
#[test]
fn adversarial_checkpoint_drop2_largest_options() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        options(u64::MAX, Options::MAX_CHECKPOINT_LOG_PERCENT),
    )
    .unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, b"k", b"v");
    block_on(db.checkpoint()).unwrap();
    drop(spilled(&db, run, "x"));
    put(&db, run, b"k", b"w");
    assert_settles(&db, "largest");
    assert_eq!(db.stats().checkpoints, 1, "the explicit one alone");
    db.close().unwrap();
}

/// The last segment of `dir`'s log.
fn last_segment(dir: &Path) -> std::path::PathBuf {
    let listing = keel_wal::dir::list_directory(&dir.join("wal")).unwrap();
    listing.segments.last().unwrap().path.clone()
}

/// Sound (d): above a snapshot, with a torn tail (debris after the last record) that the
/// reopen cuts: the records below the snapshot and the debris count for nothing, the records
/// above it once (0.6 threshold before the reopen and a tiny commit after ask for nothing).
#[test]
fn adversarial_checkpoint_drop2_reopen_above_snapshot_with_torn_tail() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let threshold = 256 * 1024;
    let opts = || Options {
        segment_bytes: 4 << 20,
        ..options(threshold, 0)
    };
    let db = Database::open(dir.path(), opts()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    // Below the snapshot: 0.9 threshold of overwrites.
    for i in 0..220u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    block_on(db.checkpoint()).unwrap();
    for i in 0..150u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    wait_or_fail(&db, "first life");
    assert_eq!(db.stats().checkpoints, 1, "the explicit one");
    db.close().unwrap();
    // Debris a little past the last record: a torn tail.
    let path = last_segment(dir.path());
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    let at = (end + 4096) & !4095;
    assert!(
        at + 512 < bytes.len() as u64,
        "room for debris in the segment"
    );
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[0xA5; 512]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let db = Database::open(dir.path(), opts()).unwrap();
    let report = db.recovery_report().clone();
    assert!(
        !report.anomalies.is_empty() || report.bytes_truncated > 0,
        "the debris was seen: {report:?}"
    );
    put(&db, run, b"tiny", b"1");
    wait_or_fail(&db, "after reopen");
    assert_eq!(
        db.stats().checkpoints,
        0,
        "a tiny commit after reopening 0.6 threshold above the snapshot asked: {report:?}"
    );
    for i in 0..110u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    wait_or_fail(&db, "second life");
    assert_eq!(
        db.stats().checkpoints,
        1,
        "about 1.1 threshold above the snapshot"
    );
    db.close().unwrap();
}

/// Was a DEFECT (d, bounded log), fixed: a checkpoint counted as "in its snapshot" the log appended up to
/// when `write_checkpoint` reads `log_bytes()` (`Wal::bytes_appended`), after its view and
/// after the `wal.sync()` that makes the view durable. Commits acknowledged while that sync
/// runs (under `Async` they are acknowledged at enqueue) are above the snapshot's LSN, so a
/// recovery reads them, but the checkpoint marks them dropped: the checkpointer's second look
/// (`checkpoint_missed`) finds nothing due, and the next checkpoint waits for another whole
/// threshold. Here 2 thresholds of overwrites land during the sync and no checkpoint follows;
/// a reopen (which counts the log above the snapshot, `Replay::read`) asks at its first
/// commit.
#[test]
fn adversarial_checkpoint_drop2_commits_during_the_checkpoint_sync_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let _release = Release(Arc::clone(&gate));
    let threshold = 64 * 1024;
    let opts = || Options {
        durability: keel_wal::Durability::Async {
            max_delay: Duration::from_millis(1),
        },
        storage: Arc::new(GatedStorage {
            gate: Arc::clone(&gate),
        }) as Arc<dyn Storage>,
        ..options(threshold, 0)
    };
    let db = Database::open(dir.path(), opts()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    for i in 0..50u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    wait_or_fail(&db, "control");
    assert_eq!(db.stats().checkpoints, 0);
    // The log's writes are held: the next checkpoint waits in its `wal.sync()`.
    gate.set_hold(true);
    for i in 0..20u32 {
        put(&db, run, b"same", i.to_be_bytes().repeat(250));
    }
    // The checkpointer takes its view and waits for the sync.
    std::thread::sleep(Duration::from_millis(300));
    // Two thresholds of overwrites, acknowledged at enqueue.
    let mut burst = Vec::new();
    for i in 0..130u32 {
        burst.push(put(&db, run, b"same", (i + 7).to_be_bytes().repeat(250)));
    }
    gate.set_hold(false);
    wait_or_fail(&db, "after the sync");
    let live = db.stats().checkpoints;
    // Fixed: the count is read with the view, so the second look finds the burst due and a
    // second checkpoint holds it. (Before, the newest snapshot lay below the burst.)
    let (snapshot_lsn, _) = db
        .newest_snapshot()
        .unwrap()
        .expect("a checkpoint was written");
    db.close().unwrap();
    let db = Database::open(dir.path(), opts()).unwrap();
    let above = db.recovery_report().bytes;
    put(&db, run, b"tiny", b"1");
    wait_or_fail(&db, "after reopen");
    let reopened = db.stats().checkpoints;
    db.close().unwrap();
    assert!(
        live >= 2 && snapshot_lsn >= burst[129],
        "{live} checkpoint(s) for about 4 thresholds of overwrites ({threshold} bytes each): the \
         130 commits (LSNs {}..={}) acknowledged during the sync of the checkpoint (newest \
         snapshot at LSN {snapshot_lsn}) were counted as in its snapshot; the reopen (log read: {above} bytes) \
         asked {reopened} at its first commit",
        burst[0],
        burst[129]
    );
}
