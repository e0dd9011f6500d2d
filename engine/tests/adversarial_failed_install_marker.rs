//! Adversarial review: a checkpoint's snapshot taken at the LSN of a failed install's marker.
//!
//! An install logs `Checkpoint { snapshot_lsn: L }` at `L` durably, then writes `L.snap`. When
//! that write fails (here: an I/O error creating the temporary file; ENOSPC does the same) the
//! install returns an error and the state is left unchanged, as documented; the marker stays
//! in the log, and "a marker without its snapshot file is an install that never happened".
//!
//! A checkpoint right after it (no commit in between) takes its snapshot at
//! `next_lsn - 1 = L`, i.e. it writes an ordinary checkpoint snapshot named `L.snap`. From then
//! on the log and the directory read exactly like a *successful* install at `L`. Should `L.snap`
//! become unreadable (the single fault the fallback snapshot exists for), open refuses: "a
//! snapshot was installed at LSN L, but its snapshot is unreadable", although the fallback
//! `P` plus the log rebuild the state exactly (no install ever took effect).

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 4096,
        ..Options::default()
    }
}

fn put(db: &Database, run: RunId, key: &str, value: &str) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value.as_bytes()).unwrap();
    block_on(txn.commit()).unwrap()
}

fn image(dir: &std::path::Path) -> Vec<u8> {
    let db = Database::open(dir, options()).unwrap();
    let run = block_on(db.begin_run("source")).unwrap();
    put(&db, run, "from-image", "x");
    let lsn = block_on(db.checkpoint()).unwrap();
    let bytes = db.read_snapshot(lsn).unwrap();
    db.close().unwrap();
    bytes
}

fn damage(dir: &std::path::Path, lsn: u64) {
    let snap = dir.join("snapshots").join(format!("{lsn:020}.snap"));
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&snap, bytes).unwrap();
}

/// Snapshot `P`, more commits, then an install at `L` whose snapshot write fails. Returns
/// `(run, P, L)`; the database is open, its state the one before the install.
fn failed_install(dir: &std::path::Path, source: &std::path::Path) -> (Database, RunId, u64, u64) {
    let bytes = image(source);
    let db = Database::open(dir, options()).unwrap();
    let run = block_on(db.begin_run("local")).unwrap();
    for i in 0..20 {
        put(&db, run, &format!("k{i:02}"), "before");
    }
    let p = block_on(db.checkpoint()).unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = put(&db, run, &format!("k{i:02}"), "after");
    }
    // The install's marker goes at the next LSN; its snapshot's temporary file cannot be
    // created there.
    let l = last + 1;
    let blocker = dir.join("snapshots").join(format!("{l:020}.snap.tmp"));
    std::fs::create_dir(&blocker).unwrap();
    let outcome = block_on(db.install_snapshot(&bytes));
    assert!(outcome.is_err(), "the install's snapshot write was to fail");
    std::fs::remove_dir(&blocker).unwrap();
    assert!(
        !dir.join("snapshots").join(format!("{l:020}.snap")).exists(),
        "the failed install left no snapshot"
    );
    // The install did not take effect.
    assert_eq!(db.get(run, b"k00").unwrap().unwrap().value, b"after");
    (db, run, p, l)
}

/// Control: one commit between the failed install and the checkpoint, so the checkpoint's
/// snapshot is not at `L`: a damaged newest snapshot falls back to `P` and replays the log.
#[test]
fn control_checkpoint_above_the_failed_marker_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    let (db, run, p, l) = failed_install(dir.path(), source.path());
    put(&db, run, "later", "v");
    let s = block_on(db.checkpoint()).unwrap();
    assert!(s > l);
    db.close().unwrap();
    damage(dir.path(), s);
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(p));
    assert_eq!(db.get(run, b"k19").unwrap().unwrap().value, b"after");
    db.close().unwrap();
}

/// The defect: the checkpoint right after the failed install snapshots at `L`, and a damaged
/// `L.snap` then reads as an installed snapshot lost: the database does not open.
#[test]
fn checkpoint_at_a_failed_install_marker_makes_a_damaged_snapshot_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    let (db, run, p, l) = failed_install(dir.path(), source.path());
    let s = block_on(db.checkpoint()).unwrap();
    println!("fallback P {p}, failed install marker at L {l}, checkpoint snapshot at {s}");
    db.close().unwrap();
    damage(dir.path(), s);
    match Database::open(dir.path(), options()) {
        Ok(db) => {
            assert_eq!(db.snapshot_lsn(), Some(p));
            assert_eq!(db.get(run, b"k19").unwrap().unwrap().value, b"after");
            db.close().unwrap();
        }
        Err(error) => panic!(
            "checkpoint snapshot {s} (no install ever took effect; fallback {p} kept) \
             damaged: the database does not open: {error}"
        ),
    }
}
