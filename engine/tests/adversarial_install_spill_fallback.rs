//! Adversarial review (passes: a regression test): an install races an open spilled
//! transaction, which then commits above the install's LSN `L` with its head below it. After
//! a reopen (spill registered from replay, `covered_through = L` with the install marker at
//! `L`), a checkpoint keeps `L` as its fallback and the spill's head; with the new snapshot
//! damaged, open falls back to `L` and replays the spilled commit whole.

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

fn put(db: &Database, run: RunId, key: &str, value: &[u8]) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value).unwrap();
    block_on(txn.commit()).unwrap()
}

fn damage(dir: &std::path::Path, lsn: u64) {
    let snap = dir.join("snapshots").join(format!("{lsn:020}.snap"));
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&snap, bytes).unwrap();
}

#[test]
fn spill_across_an_install_survives_a_fallback_to_the_installed_snapshot() {
    let source = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (image, shared) = {
        let db = Database::open(source.path(), options()).unwrap();
        let run = block_on(db.begin_run("shared")).unwrap();
        put(&db, run, "from-image", b"x");
        let lsn = block_on(db.checkpoint()).unwrap();
        let bytes = db.read_snapshot(lsn).unwrap();
        db.close().unwrap();
        (bytes, run)
    };
    let db = Database::open(dir.path(), options()).unwrap();
    // The run the spill writes to must survive the install: install the image once first.
    block_on(db.install_snapshot(&image)).unwrap();
    let mut spilled = db.transaction(shared).unwrap();
    for i in 0..40 {
        spilled
            .put(format!("s{i:02}").as_bytes(), [b'x'; 300])
            .unwrap();
    }
    assert!(spilled.spilled());
    for i in 0..150 {
        put(&db, shared, &format!("fill{i:03}"), &[b'f'; 1000]);
    }
    let l = block_on(db.install_snapshot(&image)).unwrap();
    let c = block_on(spilled.commit()).unwrap();
    assert!(c > l);
    for i in 0..150 {
        put(&db, shared, &format!("late{i:03}"), &[b'g'; 1000]);
    }
    db.close().unwrap();

    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(l));
    assert_eq!(db.scan(shared, b"s").unwrap().len(), 40);
    assert_eq!(db.stats().spills_tracked, 1, "registered from replay");
    let s = block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    damage(dir.path(), s);
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(
        db.snapshot_lsn(),
        Some(l),
        "fell back to the installed snapshot"
    );
    assert_eq!(db.scan(shared, b"s").unwrap().len(), 40);
    assert_eq!(db.scan(shared, b"late").unwrap().len(), 150);
    assert!(
        db.scan(shared, b"fill").unwrap().is_empty(),
        "replaced by the install"
    );
    db.close().unwrap();
}
