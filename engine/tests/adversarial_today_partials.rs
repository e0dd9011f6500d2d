//! Adversarial review of today's partial-snapshot clean-up (8e155ed): a checkpoint or install
//! removes `<lsn>.snap.tmp` entries a crash left. That clean-up is a courtesy; it must not
//! turn one entry it cannot remove (here a directory of that name) into a failure of every
//! later checkpoint, each of which then leaves its snapshot behind: snapshot files piled up
//! without bound, and every automatic checkpoint failed.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RunId};

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

fn snapshot_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".snap")
        })
        .count()
}

#[test]
fn an_unremovable_partial_snapshot_fails_no_checkpoint_and_pins_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit(&db, run, "k", b"v");
    block_on(db.checkpoint()).unwrap();
    // Named like a partial snapshot, but not a file: `remove_file` cannot remove it.
    let odd = dir
        .path()
        .join("snapshots")
        .join(format!("{:020}.snap.tmp", 1u64 << 40));
    std::fs::create_dir(&odd).unwrap();
    for i in 0..5 {
        commit(&db, run, &format!("k{i}"), b"v");
        if let Err(error) = block_on(db.checkpoint()) {
            panic!("checkpoint {i} failed over an entry it only meant to tidy: {error}");
        }
        assert!(
            snapshot_count(dir.path()) <= 2,
            "checkpoint {i}: {} snapshot files kept (the newest and one fallback expected)",
            snapshot_count(dir.path())
        );
    }
    let image = db
        .read_snapshot(db.newest_snapshot().unwrap().unwrap().0)
        .unwrap();
    if let Err(error) = block_on(db.install_snapshot(&image)) {
        panic!("the install failed over an entry it only meant to tidy: {error}");
    }
    assert_eq!(
        snapshot_count(dir.path()),
        1,
        "an install keeps only its snapshot"
    );
    assert!(odd.is_dir(), "what is not a partial file is left alone");
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.get(run, b"k4").unwrap().unwrap().value, b"v");
    db.close().unwrap();
}
