//! Adversarial review 2 of the change feed and `apply_feed_commit` (helper-49).
//!
//! 1. `apply_feed_commit` replayed (a replica resuming from a position stored before its
//!    last applied commit, which the method's docs promise converges): a run ended and then
//!    deleted on the primary. Replaying the end record, the run is absent here, and the
//!    record is taken as not in effect; applying it fails with `UnknownRun`.
//! 2. The same with a run deleted and its name begun again (a new id): replaying the first
//!    begin record re-creates the deleted run under a name that is now active here (the
//!    primary's own later run), and fails with `RunNameTaken`. Not guessed: the replica
//!    cannot tell that run from one of its own of that name, and skipping a clash with its
//!    own would drop the primary's run. The refusal is documented, with the way to avoid it
//!    (store the applied position after every system commit, so at most the last one is
//!    applied again), and tested below.
//! 3. `Tail::keep_from`: a subscription made at the live end of a log with earlier segments
//!    keeps the log back to `unit_start_bound`, which counts back `spill_txn_bytes` plus two
//!    records of segments, however large `feed_max_lag_bytes` is. When that is more than the
//!    lag, the first checkpoint lets the subscription go with `TailFellBehind`, though it
//!    was at the head of the log, had read everything and held nothing behind its position.

use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, FeedEvent, Lsn, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: 1500,
        ..Options::default()
    }
}

fn put(db: &Database, run: RunId, key: &str, value: &[u8]) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value).unwrap();
    block_on(txn.commit()).unwrap()
}

/// Polls `feed` for its next item, giving up (a failure, not a hang) after 10 s.
fn next_item(feed: &mut keel::Subscription) -> Option<keel::Result<FeedEvent>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let event = block_on(feed.next());
            let _ = tx.send(event);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(event) => event,
            Err(_) => {
                eprintln!("watchdog: no feed event within 10 s");
                std::process::abort();
            }
        }
    })
}

/// The primary's feed from `from` through its durable LSN, as commits.
fn feed_commits(primary: &Database, from: Lsn) -> Vec<keel::FeedCommit> {
    let target = primary.stats().wal.durable_lsn;
    let mut feed = primary.subscribe(from);
    let mut commits = Vec::new();
    loop {
        let event = next_item(&mut feed).expect("an event").expect("no error");
        let lsn = event.lsn();
        match event {
            FeedEvent::Commit(commit) => commits.push(commit),
            other => panic!("no install here: {other:?}"),
        }
        if lsn >= target {
            return commits;
        }
    }
}

/// A primary with one run, and a replica bootstrapped from its snapshot.
fn primary_and_replica(
    primary_dir: &std::path::Path,
    replica_dir: &std::path::Path,
) -> (Database, Database, Lsn) {
    let primary = Database::open(primary_dir, options()).unwrap();
    let kept = block_on(primary.begin_run("kept")).unwrap();
    put(&primary, kept, "k", b"v");
    let snapshot = block_on(primary.checkpoint()).unwrap();
    let replica = Database::open(replica_dir, options()).unwrap();
    block_on(replica.install_snapshot(&primary.read_snapshot(snapshot).unwrap())).unwrap();
    (primary, replica, snapshot)
}

fn apply_all(replica: &Database, commits: &[keel::FeedCommit], pass: &str) {
    for commit in commits {
        if let Err(error) = block_on(replica.apply_feed_commit(commit)) {
            panic!(
                "{pass}: applying the commit at {} ({:?}) failed: {error}",
                commit.commit_lsn, commit.changes
            );
        }
    }
}

#[test]
fn replaying_the_end_of_a_run_deleted_since_is_skipped() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, replica, snapshot) = primary_and_replica(pd.path(), rd.path());
    let run = block_on(primary.begin_run("short")).unwrap();
    put(&primary, run, "a", b"1");
    block_on(primary.end_run(run)).unwrap();
    block_on(primary.delete_run(run)).unwrap();
    let commits = feed_commits(&primary, snapshot + 1);
    apply_all(&replica, &commits, "first pass");
    assert!(replica.run_info(run).is_none());
    // Resuming from a position stored before the last applied commit: from the end record.
    let at_end = commits.len() - 2;
    apply_all(&replica, &commits[at_end..], "from the end record again");
    assert!(replica.run_info(run).is_none());
    replica.close().unwrap();
    primary.close().unwrap();
}

#[test]
fn replaying_the_begin_of_a_run_deleted_and_named_again_is_refused_by_name() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, replica, snapshot) = primary_and_replica(pd.path(), rd.path());
    let first = block_on(primary.begin_run("name")).unwrap();
    put(&primary, first, "a", b"1");
    block_on(primary.delete_run(first)).unwrap();
    let second = block_on(primary.begin_run("name")).unwrap();
    put(&primary, second, "b", b"2");
    let commits = feed_commits(&primary, snapshot + 1);
    apply_all(&replica, &commits, "first pass");
    assert!(replica.run_info(first).is_none());
    // Applied again from the first begin: refused by name, nothing changed.
    match block_on(replica.apply_feed_commit(&commits[0])) {
        Err(keel::Error::RunNameTaken { run, .. }) => assert_eq!(run, second),
        other => panic!("expected RunNameTaken, got {other:?}"),
    }
    assert!(replica.run_info(first).is_none());
    // A replica that stored its position after each system commit applies at most the last
    // one again: it is in effect, and the rest converges.
    let last_system = commits.iter().rposition(|c| c.is_system()).unwrap();
    apply_all(
        &replica,
        &commits[last_system..],
        "again from the last system commit",
    );
    assert!(replica.run_info(first).is_none());
    assert!(replica.run_info(second).is_some());
    assert_eq!(
        replica.get(second, b"b").unwrap().unwrap().value.as_slice(),
        b"2"
    );
    replica.close().unwrap();
    primary.close().unwrap();
}

fn segment_count(db_dir: &std::path::Path) -> usize {
    keel_wal::dir::list_directory(&db_dir.join("wal"))
        .unwrap()
        .segments
        .len()
}

#[test]
fn a_subscription_at_the_head_of_the_log_survives_a_checkpoint() {
    // Lag of 4 segments; spills past 1 MiB (16 segments' worth).
    let options = Options {
        spill_txn_bytes: 1 << 20,
        feed_max_lag_bytes: 4 * 64 * 1024,
        ..options()
    };
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    // Ten segments of log, in small commits.
    let mut i = 0;
    while segment_count(dir.path()) < 10 {
        put(&db, run, &format!("k{i}"), &[b'x'; 3000]);
        i += 1;
    }
    // A checkpoint: the fallback of the next one, which removes the log below it.
    block_on(db.checkpoint()).unwrap();
    // At the head: nothing behind it to read.
    let head = db.stats().wal.durable_lsn + 1;
    let mut feed = db.subscribe(head);
    let after = put(&db, run, "after", b"y");
    block_on(db.checkpoint()).unwrap();
    println!(
        "subscribed at {head}, {} segments left",
        segment_count(dir.path())
    );
    match next_item(&mut feed) {
        Some(Ok(FeedEvent::Commit(commit))) if commit.commit_lsn == after => {}
        other => panic!(
            "a subscription at the head of the log ({head}) did not deliver the commit at \
             {after} after a checkpoint: {other:?}"
        ),
    }
    db.close().unwrap();
}

/// 4. `unit_start_bound` counts back `spill_txn_bytes` plus two records of log, but a
///    transaction's spill threshold counts keys and values only: a transaction of many small
///    writes stays under it and is one append many times larger in the log (each write's
///    record has its framing), spanning several segments. A subscription from the first LSN
///    of its last segment keeps the log back one segment, not to the transaction's head; a
///    checkpoint removes the head, and the subscription, reading the commit and going back
///    for the head, ends with `LsnRemoved`. Fixed: a transaction counts each write as it is
///    logged (framing included), so this one spills, and a subscription inside a spill starts
///    at its head; a commit's last append is again within the bound.
#[test]
fn a_subscription_inside_a_transaction_of_small_writes_spanning_segments_delivers_it() {
    let options = Options {
        spill_txn_bytes: 8192,
        ..options()
    };
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    let segments = |dir: &std::path::Path| -> Vec<u64> {
        keel_wal::dir::list_directory(&dir.join("wal"))
            .unwrap()
            .segments
            .iter()
            .map(|s| s.first_lsn)
            .collect()
    };
    // 2000 writes of 4-byte keys and no value: 8000 bytes of keys, about 200 KiB of log. It
    // spills (it counted only the keys before, and did not).
    let first = db.stats().wal.durable_lsn + 1;
    let mut txn = db.transaction(run).unwrap();
    for i in 0..2000u32 {
        txn.put(format!("{i:04x}").as_bytes(), b"").unwrap();
    }
    assert!(txn.spilled());
    let commit = block_on(txn.commit()).unwrap();
    let inside: Vec<u64> = segments(dir.path())
        .into_iter()
        .filter(|&s| first < s && s <= commit)
        .collect();
    println!("transaction {first}..={commit}, segments from {inside:?} inside it");
    assert!(inside.len() >= 2, "it spans at least two boundaries");
    let last = *inside.last().unwrap();
    let mut feed = db.subscribe(last);
    for i in 0..4 {
        put(&db, run, &format!("after-{i}"), &[b'a'; 3000]);
    }
    block_on(db.checkpoint()).unwrap();
    block_on(db.checkpoint()).unwrap();
    println!("segments after the checkpoints: {:?}", segments(dir.path()));
    assert!(
        segments(dir.path()).iter().any(|&s| s <= last),
        "the subscription's position {last} is still in the log"
    );
    match next_item(&mut feed) {
        Some(Ok(FeedEvent::Commit(c))) if c.commit_lsn == commit && c.changes.len() == 2000 => {}
        other => panic!(
            "the subscription from {last} (inside the transaction {first}..={commit}) did not \
             deliver it: {:?}",
            other.map(|r| r.map(|e| e.lsn()))
        ),
    }
    db.close().unwrap();
}
