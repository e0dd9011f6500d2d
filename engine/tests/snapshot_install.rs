//! Snapshot images: one database's checkpoint, read back as bytes, installed into another
//! that held other data. The installed state is the image's (versions moved to the installing
//! database's LSN), survives a reopen, and leaves no snapshot to fall back to; a bad image is
//! refused and changes nothing; an install whose snapshot never landed leaves the old state;
//! an installed snapshot that later turns unreadable is an error at open, never the old state.

use std::path::{Path, PathBuf};

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Lsn, Options, RunId, SnapshotImage};

fn options(backend: BackendChoice) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 4096,
        ..Options::default()
    }
}

fn std_options() -> Options {
    options(BackendChoice::Std)
}

/// Every run (id, name, ended) with its keys and values, versions left out.
type Dump = Vec<(RunId, String, bool, Vec<(Vec<u8>, Vec<u8>)>)>;

fn dump(db: &Database) -> Dump {
    db.list_runs()
        .into_iter()
        .map(|info| {
            let ended = matches!(info.state, keel::RunState::Ended(_));
            let keys = db
                .scan(info.id, b"")
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.value))
                .collect();
            (info.id, info.name, ended, keys)
        })
        .collect()
}

fn dump_image(image: &SnapshotImage) -> Dump {
    image
        .runs()
        .into_iter()
        .map(|info| {
            let ended = matches!(info.state, keel::RunState::Ended(_));
            let keys = image
                .scan(info.id, b"")
                .into_iter()
                .map(|(k, v)| (k, v.value))
                .collect();
            (info.id, info.name, ended, keys)
        })
        .collect()
}

/// Every version of every key and every run's beginning and end.
fn lsns(db: &Database) -> Vec<Lsn> {
    let mut found = Vec::new();
    for info in db.list_runs() {
        found.push(info.began);
        if let keel::RunState::Ended(at) = info.state {
            found.push(at);
        }
        found.extend(
            db.scan(info.id, b"")
                .unwrap()
                .iter()
                .map(|(_, v)| v.version),
        );
    }
    found
}

fn put(db: &Database, run: RunId, key: &str, value: &str) -> Lsn {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value.as_bytes()).unwrap();
    block_on(txn.commit()).unwrap()
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join("snapshots")) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    found.sort();
    found
}

/// A database with three runs (one ended, one with a deleted key), checkpointed; returns it
/// and the checkpoint's LSN.
fn source(dir: &Path, backend: BackendChoice) -> (Database, Lsn) {
    let db = Database::open(dir, options(backend)).unwrap();
    let alpha = block_on(db.begin_run("alpha")).unwrap();
    let beta = block_on(db.begin_run("beta")).unwrap();
    for i in 0..40 {
        put(&db, alpha, &format!("a{i:02}"), &format!("alpha value {i}"));
    }
    put(&db, beta, "b", "beta value");
    block_on(db.end_run(beta)).unwrap();
    let gamma = block_on(db.begin_run("gamma")).unwrap();
    put(&db, gamma, "gone", "soon deleted");
    put(&db, gamma, "kept", "stays");
    let mut txn = db.transaction(gamma).unwrap();
    txn.delete(b"gone").unwrap();
    block_on(txn.commit()).unwrap();
    let lsn = block_on(db.checkpoint()).unwrap();
    (db, lsn)
}

/// A database with data of its own, two checkpoints and a tail after them.
fn target(dir: &Path, backend: BackendChoice) -> (Database, RunId) {
    let db = Database::open(dir, options(backend)).unwrap();
    let old = block_on(db.begin_run("old")).unwrap();
    for i in 0..30 {
        put(&db, old, &format!("o{i:02}"), &"old value ".repeat(20));
    }
    block_on(db.checkpoint()).unwrap();
    put(&db, old, "more", "after the first checkpoint");
    block_on(db.checkpoint()).unwrap();
    put(&db, old, "tail", "in the log only");
    assert_eq!(snapshots(dir).len(), 2);
    (db, old)
}

#[test]
fn an_installed_image_replaces_the_state_and_survives_a_reopen() {
    for backend in keel_wal::BackendChoice::available() {
        let source_dir = tempfile::tempdir().unwrap();
        let target_dir = tempfile::tempdir().unwrap();
        let (a, checkpointed) = source(source_dir.path(), *backend);
        let bytes = a.read_snapshot(checkpointed).unwrap();
        assert_eq!(
            a.newest_snapshot().unwrap(),
            Some((checkpointed, bytes.clone()))
        );
        let expected = dump(&a);
        let image = SnapshotImage::decode(&bytes).unwrap();
        assert_eq!(image.lsn(), checkpointed);
        assert_eq!(dump_image(&image), expected);
        assert_eq!(image.len(), 40 + 1 + 1);
        let alpha = image.find_run("alpha").unwrap();
        assert_eq!(
            image.get(alpha, b"a07").unwrap().value,
            b"alpha value 7".to_vec()
        );
        assert_eq!(image.scan(alpha, b"a1").len(), 10);
        assert_eq!(image.find_run("nobody"), None);

        let (b, old) = target(target_dir.path(), *backend);
        let installed = block_on(b.install_snapshot(&bytes)).unwrap();
        assert_eq!(dump(&b), expected);
        assert!(lsns(&b).iter().all(|lsn| *lsn == installed));
        assert!(matches!(b.get(old, b"tail"), Err(Error::UnknownRun(_))));
        assert_eq!(
            snapshots(target_dir.path()),
            vec![
                target_dir
                    .path()
                    .join(format!("snapshots/{installed:020}.snap"))
            ]
        );
        assert_eq!(b.newest_snapshot().unwrap().unwrap().0, installed);

        // Commits after the install apply on top of it, and a reopen recovers both.
        let later = put(&b, alpha, "after", "the install");
        assert!(later > installed);
        let live = dump(&b);
        b.close().unwrap();
        let b = Database::open(target_dir.path(), options(*backend)).unwrap();
        assert_eq!(b.snapshot_lsn(), Some(installed));
        assert!(b.snapshots_skipped().is_empty());
        assert_eq!(dump(&b), live);
        assert_eq!(b.get(alpha, b"a00").unwrap().unwrap().version, installed);
        assert_eq!(b.get(alpha, b"after").unwrap().unwrap().version, later);
        b.close().unwrap();
        a.close().unwrap();
    }
}

#[test]
fn a_bad_image_is_refused_and_changes_nothing() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (a, checkpointed) = source(source_dir.path(), BackendChoice::Std);
    let good = a.read_snapshot(checkpointed).unwrap();
    a.close().unwrap();
    let (b, old) = target(target_dir.path(), BackendChoice::Std);
    let before = dump(&b);
    let files_before = snapshots(target_dir.path());
    let appends_before = b.stats().wal.commits;

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let mut magic = good.clone();
    magic[..8].copy_from_slice(b"NOTSNAPS");
    let mut version = good.clone();
    version[8] = 9;
    let bad: [(&str, Vec<u8>, &str); 5] = [
        ("truncated", good[..good.len() - 1].to_vec(), "truncated"),
        ("flipped", flipped, "checksum"),
        ("magic", magic, "magic"),
        ("version", version, "version"),
        ("empty", Vec::new(), "too short"),
    ];
    for (what, bytes, why) in bad {
        match SnapshotImage::decode(&bytes) {
            Err(Error::InvalidSnapshotImage(message)) => {
                assert!(message.contains(why), "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
        match block_on(b.install_snapshot(&bytes)) {
            Err(Error::InvalidSnapshotImage(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(dump(&b), before);
    assert_eq!(snapshots(target_dir.path()), files_before);
    assert_eq!(b.stats().wal.commits, appends_before, "nothing was logged");
    put(&b, old, "still", "writable");
    let live = dump(&b);
    b.close().unwrap();
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    assert_eq!(dump(&b), live);
    b.close().unwrap();
}

#[test]
fn decode_refuses_every_truncation_and_every_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), std_options()).unwrap();
    let run = block_on(db.begin_run("small")).unwrap();
    put(&db, run, "k", "v");
    let lsn = block_on(db.checkpoint()).unwrap();
    let good = db.read_snapshot(lsn).unwrap();
    db.close().unwrap();
    assert!(SnapshotImage::decode(&good).is_ok());
    for len in 0..good.len() {
        assert!(
            matches!(
                SnapshotImage::decode(&good[..len]),
                Err(Error::InvalidSnapshotImage(_))
            ),
            "truncated to {len}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(SnapshotImage::decode(&longer).is_err());
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << bit;
            assert!(
                matches!(
                    SnapshotImage::decode(&bytes),
                    Err(Error::InvalidSnapshotImage(_))
                ),
                "bit {bit} of byte {at}"
            );
        }
    }
}

#[test]
fn read_snapshot_of_a_missing_lsn_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), std_options()).unwrap();
    assert_eq!(db.newest_snapshot().unwrap(), None);
    let run = block_on(db.begin_run("r")).unwrap();
    put(&db, run, "k", "v");
    let lsn = block_on(db.checkpoint()).unwrap();
    assert!(db.read_snapshot(lsn + 1).is_err());
    assert!(db.read_snapshot(lsn).is_ok());
    db.close().unwrap();
}

#[test]
fn an_install_whose_snapshot_never_lands_leaves_the_old_state() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (a, checkpointed) = source(source_dir.path(), BackendChoice::Std);
    let image = a.read_snapshot(checkpointed).unwrap();
    a.close().unwrap();
    // No checkpoint yet, and a file where the snapshot directory goes: the install logs its
    // marker, then fails to write the snapshot (as a crash before the rename would leave it).
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    let old = block_on(b.begin_run("old")).unwrap();
    put(&b, old, "k", "before");
    let blocker = target_dir.path().join("snapshots");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let before = dump(&b);
    assert!(block_on(b.install_snapshot(&image)).is_err());
    assert_eq!(dump(&b), before);
    put(&b, old, "k", "after");
    let live = dump(&b);
    b.close().unwrap();
    std::fs::remove_file(&blocker).unwrap();
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    assert_eq!(
        b.recovery_report().checkpoints,
        2,
        "the marker is in the log, and the record that its install was abandoned"
    );
    assert_eq!(dump(&b), live);
    b.close().unwrap();
}

#[test]
fn an_unreadable_installed_snapshot_is_an_error_not_the_old_state() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (a, checkpointed) = source(source_dir.path(), BackendChoice::Std);
    let image = a.read_snapshot(checkpointed).unwrap();
    a.close().unwrap();
    // A small target: its whole log is one segment from LSN 1, which the install keeps.
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    let old = block_on(b.begin_run("old")).unwrap();
    put(&b, old, "k", "old");
    let older = block_on(b.checkpoint()).unwrap();
    let older_snapshot = std::fs::read(snapshots(target_dir.path()).pop().unwrap()).unwrap();
    let installed = block_on(b.install_snapshot(&image)).unwrap();
    let live = dump(&b);
    b.close().unwrap();

    // A crash after the rename but before the older snapshot was deleted: the install holds.
    let older_path = target_dir
        .path()
        .join(format!("snapshots/{older:020}.snap"));
    std::fs::write(&older_path, &older_snapshot).unwrap();
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    assert_eq!(b.snapshot_lsn(), Some(installed));
    assert_eq!(dump(&b), live);
    b.close().unwrap();

    // The installed snapshot damaged: neither the older snapshot nor the log from LSN 1 may
    // stand in for it.
    let installed_path = target_dir
        .path()
        .join(format!("snapshots/{installed:020}.snap"));
    let mut bytes = std::fs::read(&installed_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&installed_path, &bytes).unwrap();
    for fallback in [Some(&older_path), None] {
        match Database::open(target_dir.path(), std_options()) {
            Err(error) => assert!(
                error.to_string().contains("installed"),
                "fallback {fallback:?}: {error}"
            ),
            Ok(db) => panic!("fallback {fallback:?}: opened with {:?}", dump(&db)),
        }
        if let Some(path) = fallback {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[test]
fn open_transactions_are_ordered_after_an_install() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let (a, first) = source(source_dir.path(), BackendChoice::Std);
    let first_image = a.read_snapshot(first).unwrap();
    let alpha = SnapshotImage::decode(&first_image)
        .unwrap()
        .find_run("alpha")
        .unwrap();
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    let local = block_on(b.begin_run("local")).unwrap();
    block_on(b.install_snapshot(&first_image)).unwrap();

    // The source moves on; the target opens transactions (one spilled, to a run the new
    // image has; one to a run it lacks), then installs the newer image.
    put(&a, alpha, "a00", "newer");
    let second = block_on(a.checkpoint()).unwrap();
    let second_image = a.read_snapshot(second).unwrap();
    let mut spilled = b.transaction(alpha).unwrap();
    for i in 0..40 {
        spilled
            .put(format!("s{i:02}").as_bytes(), [b'x'; 200])
            .unwrap();
    }
    assert!(spilled.spilled());
    // Enough commits after the spill began that the install's segment comes later: the
    // segment holding the spill is kept anyway.
    for i in 0..100 {
        put(&b, alpha, &format!("fill{i:03}"), &"f".repeat(1000));
    }
    let local_run = block_on(b.begin_run("doomed")).unwrap();
    let mut doomed = b.transaction(local_run).unwrap();
    doomed.put(b"k", b"v").unwrap();
    let installed = block_on(b.install_snapshot(&second_image)).unwrap();
    assert_eq!(b.get(alpha, b"a00").unwrap().unwrap().value, b"newer");
    assert!(b.run_info(local).is_none());

    let committed = block_on(spilled.commit()).unwrap();
    assert!(committed > installed);
    assert_eq!(b.scan(alpha, b"s").unwrap().len(), 40);
    assert!(matches!(
        block_on(doomed.commit()),
        Err(Error::UnknownRun(_))
    ));
    let live = dump(&b);
    b.close().unwrap();
    let b = Database::open(target_dir.path(), std_options()).unwrap();
    assert_eq!(b.snapshot_lsn(), Some(installed));
    assert_eq!(dump(&b), live);
    b.close().unwrap();
    a.close().unwrap();
}
