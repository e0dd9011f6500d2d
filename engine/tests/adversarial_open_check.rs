//! Adversarial review (2) of the one open path: the check that the log reaches back to the
//! snapshot (`check_log_behind`, now run from `Replay::begin` on recovery's own listing,
//! 5d5435a).

use futures::executor::block_on;
use keel::{BackendChoice, Database, Options, RecoveryPolicy, RunId};

fn options(policy: RecoveryPolicy) -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        recovery_policy: policy,
        ..Options::default()
    }
}

fn commit_many(db: &Database, run: RunId, from: u32, count: u32) {
    for i in from..from + count {
        let mut txn = db.transaction(run).unwrap();
        txn.put(format!("k{i:04}").as_bytes(), [7u8; 2000]).unwrap();
        block_on(txn.commit()).unwrap();
    }
}

/// Failed before the fix (the check now judges the log as the repair leaves it, on every
/// open alike). SkipCorrupted. The snapshot covers LSN `S`, inside the first segment; that
/// segment's header is damaged, so the commits above `S` in it are lost (reported: the
/// policy accepts that). The first open passes the check, because `Replay::begin` is handed
/// the first segment *by name* (LSN 1, the damaged one), then the recovery sets that
/// segment aside and the database opens, and acknowledges a commit. The second open, with
/// the same snapshot and policy, lists the set-aside segment no more: the log now starts at
/// the second segment, above `S + 1`, and `check_log_behind` refuses ("commits S+1 to X
/// cannot be recovered") the very loss the first open accepted: the commit acknowledged
/// in between is stranded.
///
/// Root cause: the check judges the first segment name in the listing, before the walk has
/// read anything; whether the log reaches back to the snapshot depends on which segments the
/// recovery keeps. Fix: make the check agree across opens, e.g. hand `begin` the first LSN
/// of a segment whose header reads (refusing then, before anything changes, on the first
/// open too), or let the recovery judge a log that starts above `S + 1` as a gap (a
/// `MissingSegment` below the first segment, judged by the policy) instead of the sink.
#[test]
fn a_skip_that_the_first_open_accepts_is_refused_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let skip = options(RecoveryPolicy::SkipCorrupted);
    let db = Database::open(dir.path(), skip.clone()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit_many(&db, run, 0, 3);
    let snapshot = block_on(db.checkpoint()).unwrap();
    commit_many(&db, run, 3, 80);
    db.close().unwrap();
    let wal = dir.path().join("wal");
    let segments = keel_wal::dir::list_directory(&wal).unwrap().segments;
    assert!(segments.len() >= 3 && segments[1].first_lsn > snapshot + 1);
    // The first segment's header damaged.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segments[0].path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 33).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], 33).unwrap();
    }
    // The check judges the log as the repair would leave it: the damaged first segment would
    // be set aside, so the log would start above the snapshot's successor. Every open
    // refuses, the same way, before anything changes (the segment is not set aside).
    let before = keel_wal::dir::list_directory(&wal).unwrap().segments;
    for open in 0..2 {
        let error = match Database::open(dir.path(), skip.clone()) {
            Ok(_) => panic!("open {open} accepted a log that does not reach back to the snapshot"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("cannot be recovered"),
            "open {open}: {error}"
        );
        assert_eq!(
            keel_wal::dir::list_directory(&wal).unwrap().segments,
            before,
            "open {open} changed the log"
        );
    }
}

/// Failed before the fix (the message only). A snapshot with no log behind it is refused before anything
/// changes (passes), but the engine's own refusal comes back wrapped twice: "the database's
/// metadata is damaged: the database's metadata is damaged: the snapshot covers ...".
///
/// Root cause: `OpenSink::begin` (engine/src/db/open.rs) returns
/// `Box::new(e).into()`, which boxes the `Box<keel::Error>` again as the `dyn Error` (a
/// `Box<E>` is itself an `Error`), so `open_log`'s `declined.downcast::<Error>()` never
/// matches and every refusal becomes `Error::Metadata(its own message)`. Fix:
/// `ReplayError::from(e)` (one box, of the engine's error).
#[test]
fn a_snapshot_without_its_log_is_refused_with_the_engines_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let tolerate = options(RecoveryPolicy::TolerateTornTail);
    let db = Database::open(dir.path(), tolerate.clone()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    commit_many(&db, run, 0, 3);
    block_on(db.checkpoint()).unwrap();
    db.close().unwrap();
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let refused = match Database::open(dir.path(), tolerate) {
        Ok(_) => panic!("a snapshot with no log behind it opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        !dir.path().join("wal").exists(),
        "nothing changes: {refused}"
    );
    assert_eq!(
        refused.matches("metadata is damaged").count(),
        1,
        "the refusal is wrapped twice: {refused}"
    );
}
