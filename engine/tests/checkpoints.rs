//! Checkpoints: a reopen recovers from the snapshot plus the log after it; automatic
//! checkpoints keep the log bounded; a damaged newest snapshot falls back to the previous one
//! plus the log, or is a clear error when that would lose commits.

use std::future::Future;
use std::path::Path;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options, RunId};

fn options(checkpoint_log_bytes: u64) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes,
        ..Options::default()
    }
}

fn commit_many(db: &Database, run: RunId, from: u32, count: u32) {
    for i in from..from + count {
        let mut txn = db.transaction(run).unwrap();
        txn.put(
            format!("k{:03}", i % 300).as_bytes(),
            i.to_le_bytes().repeat(250),
        )
        .unwrap();
        if i % 7 == 0 {
            txn.delete(format!("k{:03}", (i + 1) % 300).as_bytes())
                .unwrap();
        }
        block_on(txn.commit()).unwrap();
    }
}

fn contents(db: &Database, run: RunId) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
    db.scan(run, b"")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value, v.version))
        .collect()
}

fn segments(dir: &Path) -> usize {
    keel_wal::dir::list_directory(&dir.join("wal"))
        .unwrap()
        .segments
        .len()
}

fn snapshots(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("snapshots")) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    found.sort();
    found
}

#[test]
fn a_reopen_recovers_from_the_snapshot_plus_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit_many(&db, run, 0, 400);
    let lsn = block_on(db.checkpoint()).unwrap();
    commit_many(&db, run, 400, 100);
    let before = contents(&db, run);
    db.close().unwrap();
    let db = Database::open(dir.path(), options(0)).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(lsn));
    assert_eq!(contents(&db, run), before);
    assert_eq!(db.run_info(run).unwrap().name, "r");
    // Transaction ids are not reused after a snapshot.
    commit_many(&db, run, 500, 10);
    db.close().unwrap();
    let db = Database::open(dir.path(), options(0)).unwrap();
    assert!(db.recovery_report().is_clean());
    assert_eq!(db.recovery_report().txns_incomplete, 0);
    db.close().unwrap();
}

#[test]
fn automatic_checkpoints_keep_the_log_bounded() {
    // The fixed threshold alone (a state of about 300 KiB, under 128 KiB of log between
    // checkpoints: at most 8 segments), and with the default that waits for a snapshot's
    // worth of log (about 300 KiB between checkpoints, two of them kept: at most 14).
    for (percent, bound) in [(0, 8), (100, 14)] {
        keeps_the_log_bounded(percent, bound);
    }
}

fn keeps_the_log_bounded(percent: u64, bound: usize) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        checkpoint_log_percent: percent,
        ..options(128 * 1024)
    };
    let db = Database::open(dir.path(), options.clone()).unwrap();
    let run = block_on(db.begin_run("long")).unwrap();
    let mut most = 0;
    for round in 0..30 {
        commit_many(&db, run, round * 100, 100);
        // Checkpoints run on their own thread: look once the one asked for is done (while
        // it runs, its new snapshot and the log it will release are both still there).
        db.wait_for_automatic_checkpoint();
        most = most.max(segments(dir.path()));
        assert!(snapshots(dir.path()).len() <= 2);
    }
    let written = db.stats().wal.bytes_written;
    assert!(db.stats().checkpoints > 3);
    assert!(written > 3 << 20, "a long workload: {written} bytes");
    assert!(
        most <= bound,
        "at most {most} segments of 64 KiB for {written} bytes (percent {percent})"
    );
    let before = contents(&db, run);
    db.close().unwrap();
    let db = Database::open(dir.path(), options).unwrap();
    assert!(db.snapshot_lsn().is_some());
    assert_eq!(contents(&db, run), before);
    db.close().unwrap();
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit_many(&db, run, 0, 200);
    let first = block_on(db.checkpoint()).unwrap();
    commit_many(&db, run, 200, 200);
    block_on(db.checkpoint()).unwrap();
    commit_many(&db, run, 400, 50);
    let before = contents(&db, run);
    db.close().unwrap();
    let newest = snapshots(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let db = Database::open(dir.path(), options(0)).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(first));
    assert_eq!(db.snapshots_skipped().len(), 1);
    assert!(db.snapshots_skipped()[0].1.contains("checksum"));
    assert_eq!(contents(&db, run), before);
    db.close().unwrap();
}

#[test]
fn damaged_snapshots_without_the_log_behind_them_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(0)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    for round in 0..3 {
        commit_many(&db, run, round * 300, 300);
        block_on(db.checkpoint()).unwrap();
    }
    db.close().unwrap();
    assert!(
        keel_wal::dir::list_directory(&dir.path().join("wal"))
            .unwrap()
            .segments[0]
            .first_lsn
            > 1,
        "checkpoints removed the oldest segments"
    );
    for snapshot in snapshots(dir.path()) {
        std::fs::write(&snapshot, b"garbage").unwrap();
    }
    match Database::open(dir.path(), options(0)) {
        Err(Error::Metadata(message)) => {
            assert!(message.contains("cannot be recovered"), "{message}");
            assert!(message.contains("bad magic"), "{message}");
        }
        other => panic!("expected a metadata error, got {other:?}"),
    }
}

/// The automatic threshold counts the log written since the last snapshot's view, not since
/// its checkpoint finished: commits go on while a checkpoint writes, and what they log is not
/// in its snapshot. (Counted from the end, a log could grow by the threshold plus what two
/// checkpoints' worth of commits wrote before the next one.)
#[test]
fn log_written_during_a_checkpoint_counts_toward_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let threshold = 512 * 1024;
    let db = Database::open(dir.path(), options(threshold)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    // Commits of about 1 KiB; 300 of them are about 300 KiB of log. The first 300 give
    // the snapshot its keys, so every commit after it overwrites one: all its log counts
    // toward the next checkpoint (a new key's would not; see
    // `a_state_that_only_grows_is_not_rewritten_for_every_threshold`).
    commit_many(&db, run, 0, 300);
    db.wait_for_automatic_checkpoint();
    assert_eq!(db.stats().checkpoints, 0, "new keys alone ask for none");
    let base = db.stats().wal.bytes_written;
    let mut explicit = Box::pin(db.checkpoint());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Polled once: it takes its view and writes its snapshot, then waits for its entry.
    assert!(explicit.as_mut().poll(&mut cx).is_pending());
    commit_many(&db, run, 300, 300);
    let during = db.stats().wal.bytes_written - base;
    block_on(explicit).unwrap();
    db.wait_for_automatic_checkpoint();
    assert_eq!(
        db.stats().checkpoints,
        1,
        "nothing asked for a second one yet"
    );
    // Another 300 KiB: past the threshold counted from the view, not from the end.
    commit_many(&db, run, 600, 300);
    db.wait_for_automatic_checkpoint();
    let written = db.stats().wal.bytes_written - base;
    assert!(
        written > threshold + 4096 && during < threshold,
        "{during} then {written}"
    );
    assert_eq!(
        db.stats().checkpoints,
        2,
        "{written} bytes written, about {} since the view: past {threshold}",
        written - during
    );
    db.close().unwrap();
}

/// With a large state, a fixed threshold would rewrite the whole state for every
/// `checkpoint_log_bytes` of log: the automatic threshold also waits for the log to reach
/// `checkpoint_log_percent` of the newest snapshot's size.
#[test]
fn automatic_checkpoints_wait_for_a_log_in_proportion_to_the_snapshot() {
    for percent in [100, 0] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            checkpoint_log_percent: percent,
            ..options(64 * 1024)
        };
        let db = Database::open(dir.path(), options.clone()).unwrap();
        let run = block_on(db.begin_run("r")).unwrap();
        // 300 keys of 1000 bytes: a snapshot of about 300 KiB.
        commit_many(&db, run, 0, 300);
        db.wait_for_automatic_checkpoint();
        block_on(db.checkpoint()).unwrap();
        let snapshot = std::fs::metadata(snapshots(dir.path()).last().unwrap())
            .unwrap()
            .len();
        assert!(snapshot > 256 * 1024, "a snapshot of {snapshot} bytes");
        let checkpoints = db.stats().checkpoints;
        let from = db.stats().wal.bytes_written;
        // About 150 KiB of overwrites: past 64 KiB, not past the snapshot's size.
        commit_many(&db, run, 300, 150);
        db.wait_for_automatic_checkpoint();
        let grown = db.stats().wal.bytes_written - from;
        assert!(
            grown > 128 * 1024 && grown < snapshot,
            "{grown} bytes of log"
        );
        let taken = db.stats().checkpoints - checkpoints;
        if percent == 0 {
            assert!(taken >= 1, "{grown} bytes past 64 KiB: {taken} checkpoints");
            db.close().unwrap();
            continue;
        }
        assert_eq!(
            taken, 0,
            "{grown} bytes, below the {snapshot}-byte snapshot"
        );
        // Past the snapshot's size: one now, counted from the explicit one.
        commit_many(&db, run, 450, 200);
        db.wait_for_automatic_checkpoint();
        let grown = db.stats().wal.bytes_written - from;
        assert!(grown > snapshot, "{grown} bytes of log");
        assert_eq!(db.stats().checkpoints - checkpoints, 1, "{grown} bytes");
        db.close().unwrap();
        // A reopen knows the loaded snapshot's size: 150 KiB more takes no checkpoint.
        let db = Database::open(dir.path(), options).unwrap();
        let from = db.stats().wal.bytes_written;
        commit_many(&db, run, 650, 150);
        db.wait_for_automatic_checkpoint();
        assert!(db.stats().wal.bytes_written - from > 128 * 1024);
        assert_eq!(db.stats().checkpoints, 0, "after a reopen");
        db.close().unwrap();
    }
}

/// A checkpoint is asked for when it would drop the threshold from what a recovery reads,
/// not for every threshold of log: a state that only grows (every key new) would otherwise
/// be rewritten whole each time, a snapshot as large as all the log before it, and a
/// recovery would read as much as before. Overwrites and deletes count in full, across a
/// reopen too.
#[test]
fn a_state_that_only_grows_is_not_rewritten_for_every_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        checkpoint_log_percent: 0,
        ..options(256 * 1024)
    };
    let value = |i: u32| i.to_le_bytes().repeat(1000);
    let put = |db: &Database, run: RunId, keys: std::ops::Range<u32>, of: fn(u32) -> u32| {
        for i in keys {
            let mut txn = db.transaction(run).unwrap();
            txn.put(format!("k{i:05}").as_bytes(), value(of(i)))
                .unwrap();
            block_on(txn.commit()).unwrap();
        }
    };
    let db = Database::open(dir.path(), options.clone()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    // 512 new keys of 4000 bytes: 2 MiB of log, 8 times the threshold (and about 100 KiB
    // of framing, which a checkpoint would drop).
    put(&db, run, 0..512, |i| i);
    db.wait_for_automatic_checkpoint();
    let written = db.stats().wal.bytes_written;
    assert!(written > 2 << 20, "{written} bytes of log");
    assert_eq!(
        db.stats().checkpoints,
        0,
        "{written} bytes of log, all of it new keys: a checkpoint would drop only framing"
    );
    db.close().unwrap();
    // Another life: more new keys take none; the log a reopen replayed counts as it did.
    let db = Database::open(dir.path(), options.clone()).unwrap();
    put(&db, run, 512..768, |i| i);
    db.wait_for_automatic_checkpoint();
    assert_eq!(db.stats().checkpoints, 0, "new keys after a reopen");
    // Overwrites count in full: 64 of them (256 KiB, with the framing before) are past it.
    put(&db, run, 0..64, |i| i + 1);
    db.wait_for_automatic_checkpoint();
    assert_eq!(db.stats().checkpoints, 1, "256 KiB of overwrites");
    db.close().unwrap();
    // Deletes count the state they drop: 72 deletes are a few KiB of log, 288 KiB of state.
    let db = Database::open(dir.path(), options.clone()).unwrap();
    for i in 100..172 {
        let mut txn = db.transaction(run).unwrap();
        txn.delete(format!("k{i:05}").as_bytes()).unwrap();
        block_on(txn.commit()).unwrap();
    }
    db.wait_for_automatic_checkpoint();
    assert_eq!(db.stats().checkpoints, 1, "288 KiB of state deleted");
    db.close().unwrap();
    let db = Database::open(dir.path(), options).unwrap();
    for i in 0..768 {
        let got = db.get(run, format!("k{i:05}").as_bytes()).unwrap();
        let expected = match i {
            0..64 => Some(value(i + 1)),
            100..172 => None,
            _ => Some(value(i)),
        };
        assert_eq!(got.map(|v| v.value), expected, "key {i}");
    }
    db.close().unwrap();
}
