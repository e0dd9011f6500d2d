//! Adversarial review: a checkpoint whose snapshot LSN equals the snapshot loaded at open.
//!
//! A checkpoint writes its snapshot `S`, then logs its `Checkpoint` entry. If that entry never
//! becomes durable (a failed write here; a crash the simulation models does the same), the
//! reopened database loads `S` and its log ends at `S`. The next checkpoint then runs at the
//! same LSN `S`: it rewrites `S.snap`, and `release_before` looks for a fallback among the
//! snapshots *below* `S`, so it picks the one before (`P`) and removes the log below `P + 1`
//! except the heads of the spills it knows. But open registered only the spills committed
//! above the loaded snapshot `S`: a spilled transaction committed between `P` and `S` is not
//! known, and its head is removed. The fallback `P` can no longer rebuild the state: with
//! `S.snap` damaged, the database does not open (the commit is a `PartialTransaction`), or
//! under `SkipCorrupted` the acknowledged commit is silently dropped.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RecoveryPolicy, RunId};

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

fn snapshots(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn damage(dir: &std::path::Path, lsn: u64) {
    let snap = dir.join("snapshots").join(format!("{lsn:020}.snap"));
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&snap, bytes).unwrap();
}

/// Builds the directory: snapshot `P`, a spilled transaction committed above `P`, then a
/// snapshot `S` whose `Checkpoint` entry never reached the log. Returns `(run, P, C, S)`.
fn build(dir: &std::path::Path) -> (RunId, u64, u64, u64) {
    let faults = keel_sim::Faults::new();
    let with_faults = Options {
        storage: faults.clone(),
        ..options()
    };
    let db = Database::open(dir, with_faults).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    for i in 0..50 {
        txn.put(format!("spilled{i:03}").as_bytes(), value(i))
            .unwrap();
    }
    assert!(txn.spilled());
    fill(&db, run, "a", 300);
    let p = block_on(db.checkpoint()).unwrap();
    fill(&db, run, "b", 50);
    let c = block_on(txn.commit()).unwrap();
    fill(&db, run, "c", 300);
    let before = snapshots(dir);
    // The snapshot is written; the write of its Checkpoint entry fails (as a crash before
    // the entry is durable would leave it).
    faults.fail_write_after(0);
    let outcome = block_on(db.checkpoint());
    assert!(outcome.is_err(), "the Checkpoint entry's write was to fail");
    let after = snapshots(dir);
    let s = after
        .iter()
        .find(|name| !before.contains(name))
        .expect("the snapshot was written before the entry failed")
        .trim_end_matches(".snap")
        .parse::<u64>()
        .unwrap();
    drop(db);
    assert!(p < c && c < s, "P {p} < C {c} < S {s}");
    (run, p, c, s)
}

/// Control: without a checkpoint in the reopened database, a damaged `S.snap` falls back to
/// `P` and the log still holds the spilled transaction whole.
#[test]
fn control_fallback_to_p_holds_the_spilled_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (run, p, _c, s) = build(dir.path());
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(s));
    db.close().unwrap();
    damage(dir.path(), s);
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(p));
    assert_eq!(db.scan(run, b"spilled").unwrap().len(), 50);
    db.close().unwrap();
}

/// The defect: one checkpoint at the reopened database's own snapshot LSN removes the head
/// of the spilled transaction committed between `P` and `S`, which the fallback `P` needs.
#[test]
fn checkpoint_at_the_loaded_snapshot_lsn_strands_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let (run, p, c, s) = build(dir.path());
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.snapshot_lsn(), Some(s));
    assert_eq!(db.scan(run, b"spilled").unwrap().len(), 50);
    let again = block_on(db.checkpoint()).unwrap();
    let left = snapshots(dir.path());
    let first = keel_wal::dir::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments[0]
        .first_lsn;
    println!(
        "P {p}, commit {c}, S {s}; checkpoint after reopen at {again}; snapshots {left:?}; log from LSN {first}"
    );
    db.close().unwrap();
    damage(dir.path(), s);
    match Database::open(dir.path(), options()) {
        Ok(db) => {
            let got = db.scan(run, b"spilled").unwrap().len();
            assert_eq!(
                got, 50,
                "fallback lost the acknowledged spilled commit at {c}"
            );
            db.close().unwrap();
        }
        Err(error) => panic!(
            "a damaged newest snapshot made the database unopenable (fallback {p} kept, log \
             from LSN {first}): {error}"
        ),
    }
    // Salvage drops the acknowledged commit rather than refusing.
    let salvage = Options {
        recovery_policy: RecoveryPolicy::SkipCorrupted,
        ..options()
    };
    let db = Database::open(dir.path(), salvage).unwrap();
    assert_eq!(db.scan(run, b"spilled").unwrap().len(), 50);
}
