//! The engine's refusals as a user meets them: each names what is wrong, changes nothing it
//! should not, and leaves the database working (or, for damaged metadata, refusing the same
//! way on every open).

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options, RunId, SnapshotImage};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 8 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

fn commit(db: &Database, run: RunId, key: &str, value: &[u8]) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value).unwrap();
    block_on(txn.commit()).unwrap()
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "snap"));
    found.sort();
    found
}

fn expect_metadata<T: std::fmt::Debug>(outcome: keel::Result<T>, needle: &str) -> String {
    match outcome {
        Err(Error::Metadata(message)) => {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
            message
        }
        Err(other) => panic!("expected a metadata error naming {needle:?}, got {other:?}"),
        Ok(_) => panic!("expected a metadata error naming {needle:?}, but it succeeded"),
    }
}

#[test]
fn run_misuse_is_refused_by_name_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.path(), dir.path());
    let run = block_on(db.begin_run("r")).unwrap();
    assert_eq!(db.transaction(run).unwrap().run(), run);
    commit(&db, run, "k", b"v");
    let stranger = RunId::from_u128(0xfeed);
    assert!(matches!(db.transaction(stranger), Err(Error::UnknownRun(r)) if r == stranger));
    assert!(matches!(db.get(stranger, b"k"), Err(Error::UnknownRun(_))));
    assert!(matches!(db.scan(stranger, b""), Err(Error::UnknownRun(_))));
    assert!(matches!(
        block_on(db.end_run(stranger)),
        Err(Error::UnknownRun(_))
    ));

    let ended_at = block_on(db.end_run(run)).unwrap();
    let again = block_on(db.end_run(run));
    assert!(
        matches!(again, Err(Error::RunEnded(r)) if r == run),
        "{again:?}"
    );
    let txn = db.transaction(run);
    assert!(matches!(txn, Err(Error::RunEnded(_))), "{:?}", txn.err());
    assert!(
        Error::RunEnded(run).to_string().contains("has ended"),
        "the message says why"
    );
    // An ended run stays readable, and the refusals logged nothing.
    assert_eq!(db.get(run, b"k").unwrap().unwrap().value, b"v");
    assert_eq!(db.scan(run, b"").unwrap().len(), 1);
    let next = db.stats();
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.recovery_report().next_lsn, ended_at + 1, "{next:?}");
    assert!(matches!(
        db.run_info(run).unwrap().state,
        keel::RunState::Ended(lsn) if lsn == ended_at
    ));
    db.close().unwrap();
}

#[test]
fn close_with_another_handle_open_is_refused_and_the_other_handle_works_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let other = db.clone();
    let run = block_on(db.begin_run("r")).unwrap();
    match db.close() {
        Err(error @ keel::CloseError::InUse { handles: 1, .. }) => {
            assert!(error.to_string().contains("last handle"), "{error}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let lsn = commit(&other, run, "k", b"after");
    other.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let got = db.get(run, b"k").unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"after"[..], lsn));
    db.close().unwrap();
}

/// A snapshot with no log behind it (the log directory was removed, or restored from an older
/// backup than the snapshots) is refused on every open, naming both LSNs.
#[test]
fn a_snapshot_ahead_of_the_log_is_refused_on_every_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    for i in 0..20 {
        commit(&db, run, &format!("k{i}"), b"v");
    }
    let snapshot = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let wal = dir.path().join("wal");
    std::fs::remove_dir_all(&wal).unwrap();
    // Each open refuses, the same way, and changes nothing: an open that made the log
    // directory before refusing let the next open succeed on an empty log.
    for _ in 0..2 {
        let message = expect_metadata(
            Database::open(dir.path(), options()),
            &format!("the snapshot covers LSN {snapshot}"),
        );
        assert!(message.contains("has no segment"), "{message}");
        assert!(!wal.exists(), "a refused open created the log directory");
    }
    // An empty log directory (no segment) is the same case. The open takes the directory's
    // lock before it lists it (the listing the refusal is judged on is the one the recovery
    // would use), so the lock file is all it leaves: no identity, no segment.
    std::fs::create_dir(&wal).unwrap();
    for _ in 0..2 {
        expect_metadata(Database::open(dir.path(), options()), "has no segment");
        assert_only_the_lock(&wal);
    }
    assert_eq!(snapshot_files(dir.path()).len(), 1, "the snapshot is kept");
    // And when the snapshot does not read back either: no empty database over it.
    std::fs::write(&snapshot_files(dir.path())[0], b"damaged").unwrap();
    for _ in 0..2 {
        let message = expect_metadata(
            Database::open(dir.path(), options()),
            "no snapshot reads back",
        );
        assert!(message.contains("unreadable snapshots"), "{message}");
        assert_only_the_lock(&wal);
    }
}

/// Nothing but the lock file in the log directory `wal`.
fn assert_only_the_lock(wal: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.iter().all(|name| name == "LOCK"), "{left:?}");
}

/// A snapshot file renamed to another LSN (a copy gone wrong) is not read as that LSN.
#[test]
fn a_snapshot_whose_name_lies_is_refused_by_read_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit(&db, run, "k", b"v");
    let first = block_on(db.checkpoint()).unwrap();
    commit(&db, run, "k2", b"v2");
    let second = block_on(db.checkpoint()).unwrap();
    let files = snapshot_files(dir.path());
    assert_eq!(files.len(), 2);
    // Swap the two files' contents: each name now names the other's LSN.
    let (a, b) = (
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&files[1]).unwrap(),
    );
    std::fs::write(&files[0], &b).unwrap();
    std::fs::write(&files[1], &a).unwrap();
    for (asked, held) in [(first, second), (second, first)] {
        let message = expect_metadata(db.read_snapshot(asked), "not the LSN its name gives");
        assert!(message.contains(&format!("holds LSN {held}")), "{message}");
    }
    // An absent one is an IO error naming the file, not a panic or an empty image.
    let missing = db.read_snapshot(second + 1000);
    assert!(
        matches!(&missing, Err(Error::Wal(keel_wal::Error::Io { .. }))),
        "{missing:?}"
    );
    // The next checkpoint does not keep a lying file as its fallback.
    commit(&db, run, "k3", b"v3");
    let third = block_on(db.checkpoint()).unwrap();
    let kept: Vec<_> = snapshot_files(dir.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for bytes in &kept {
        let image = SnapshotImage::decode(bytes).unwrap();
        assert!(
            image.lsn() == third || image.lsn() == first || image.lsn() == second,
            "{}",
            image.lsn()
        );
    }
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(third));
    assert_eq!(db.get(run, b"k3").unwrap().unwrap().value, b"v3");
    db.close().unwrap();
}

/// A truncated snapshot is named with what is wrong (its checksum no longer matches), and the
/// database falls back to the previous one with the log behind it.
#[test]
fn a_truncated_snapshot_is_named_and_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit(&db, run, "a", b"1");
    let older = block_on(db.checkpoint()).unwrap();
    commit(&db, run, "b", b"2");
    let newer = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let newest = snapshot_files(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() - 3]).unwrap();

    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(older));
    let (path, why) = &db.snapshots_skipped()[0];
    assert_eq!(path, &newest);
    assert!(why.contains("truncated"), "{why}");
    assert_eq!(db.get(run, b"b").unwrap().unwrap().value, b"2");
    let read = db.read_snapshot(newer);
    assert!(read.is_err(), "a damaged snapshot is never handed out");
    assert_eq!(db.newest_snapshot().unwrap().unwrap().0, older);
    db.close().unwrap();
}

#[test]
fn a_snapshot_image_answers_for_absent_runs_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let empty = SnapshotImage::decode(
        &db.read_snapshot(block_on(db.checkpoint()).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    let run = block_on(db.begin_run("r")).unwrap();
    commit(&db, run, "p/1", b"one");
    commit(&db, run, "p/2", b"two");
    commit(&db, run, "q", b"three");
    let lsn = block_on(db.checkpoint()).unwrap();
    let image = SnapshotImage::decode(&db.read_snapshot(lsn).unwrap()).unwrap();
    assert_eq!(image.lsn(), lsn);
    assert!(!image.is_empty());
    assert_eq!(image.len(), 3);
    assert!(image.max_txn_id() >= 3, "{}", image.max_txn_id());
    assert_eq!(image.find_run("r"), Some(run));
    assert_eq!(image.run_info(run).unwrap().name, "r");
    assert_eq!(image.scan(run, b"p/").len(), 2);
    let stranger = RunId::from_u128(7);
    assert!(image.run_info(stranger).is_none());
    assert!(image.get(stranger, b"q").is_none());
    assert!(image.scan(stranger, b"").is_empty());
    assert!(image.get(run, b"absent").is_none());
    assert!(matches!(
        SnapshotImage::decode(b"not an image"),
        Err(Error::InvalidSnapshotImage(_))
    ));
    db.close().unwrap();
}

/// A spilled transaction reads its own spilled writes back from the log, and its own deletes
/// as absent, before and after more writes.
#[test]
fn a_spilled_transaction_reads_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        Options {
            spill_txn_bytes: 1024,
            ..options()
        },
    )
    .unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit(&db, run, "gone", b"committed");
    let mut txn = db.transaction(run).unwrap();
    txn.delete(b"gone").unwrap();
    for i in 0..40u8 {
        txn.put(format!("k{i:02}").as_bytes(), [i; 100]).unwrap();
    }
    assert!(txn.spilled());
    assert_eq!(txn.get(b"k00").unwrap().unwrap().value, vec![0; 100]);
    assert_eq!(txn.get(b"gone").unwrap(), None, "its own delete, spilled");
    assert_eq!(db.get(run, b"gone").unwrap().unwrap().value, b"committed");
    txn.put(b"k00", b"rewritten").unwrap();
    assert_eq!(txn.get(b"k00").unwrap().unwrap().value, b"rewritten");
    let lsn = block_on(txn.commit()).unwrap();
    assert_eq!(db.get(run, b"gone").unwrap(), None);
    assert_eq!(db.get(run, b"k00").unwrap().unwrap().value, b"rewritten");
    assert_eq!(db.get(run, b"k39").unwrap().unwrap().version, lsn);
    db.close().unwrap();
}

/// A process that died while writing a snapshot leaves `<lsn>.snap.tmp`: the open ignores it,
/// and the next checkpoint (or install) removes it, so crashes do not pile files up.
#[test]
fn partial_snapshots_a_crash_left_are_removed_by_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit(&db, run, "k", b"v");
    let lsn = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    let snapshots = dir.path().join("snapshots");
    let name = snapshot_files(dir.path())[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let partial = snapshots.join(format!(
        "{}.tmp",
        name.replace(&lsn.to_string(), &(lsn + 1).to_string())
    ));
    std::fs::write(&partial, b"half a snap").unwrap();
    let unrelated = snapshots.join("notes.tmp");
    std::fs::write(&unrelated, b"not ours").unwrap();

    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(lsn));
    assert!(
        db.snapshots_skipped().is_empty(),
        "a partial file is no snapshot"
    );
    assert!(partial.exists(), "the open changes nothing");
    commit(&db, run, "k2", b"v2");
    block_on(db.checkpoint()).unwrap();
    assert!(
        !partial.exists(),
        "the checkpoint removed the partial snapshot"
    );
    assert!(
        unrelated.exists(),
        "files that are not partial snapshots are left alone"
    );

    std::fs::write(&partial, b"half a snap").unwrap();
    let image = db
        .read_snapshot(db.newest_snapshot().unwrap().unwrap().0)
        .unwrap();
    block_on(db.install_snapshot(&image)).unwrap();
    assert!(
        !partial.exists(),
        "the install removed the partial snapshot"
    );
    db.close().unwrap();
}
