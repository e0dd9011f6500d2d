//! Adversarial review of the change feed (engine/src/db/feed.rs).
//!
//! 1. A failed install's marker below the snapshot a reopen loads. An install logs its marker
//!    at `M` and then fails to write `M.snap`: the install never happened, and the feed must
//!    not deliver `Installed { lsn: M }` (it names a snapshot that does not exist). Recovery
//!    notes the failed markers it replays past, but only those *above* the snapshot it loaded:
//!    once a later checkpoint's snapshot is above `M`, a reopened database no longer knows
//!    `M` failed, and a subscriber from below `M` (the log still holds it) receives it.
//!    Fixed: a failed install logs an abandoned-install record naming its marker, before
//!    any later commit or checkpoint, and the feed reads the outcome of a marker from before
//!    a reopen from the log; the test failed with `Installed { lsn: 5 }` before.
//! 2. A subscription from inside a transaction that straddles segments (below). Fixed: the
//!    subscription keeps the log from where such a unit may have begun until it has read
//!    past it (`Tail::keep_from`); the test failed with `LsnRemoved` before.

use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, FeedEvent, Options, RunId};

fn options() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

fn put(db: &Database, run: RunId, key: &str, value: &str) -> u64 {
    let mut txn = db.transaction(run).unwrap();
    txn.put(key.as_bytes(), value.as_bytes()).unwrap();
    block_on(txn.commit()).unwrap()
}

/// Polls `feed` for its next event, giving up (a failure, not a hang) after 10 s.
fn next_event(feed: &mut keel::Subscription) -> FeedEvent {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let event = block_on(feed.next());
            let _ = tx.send(event);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(event) => event.expect("the feed ended").expect("a feed event"),
            Err(_) => {
                eprintln!("watchdog: no feed event within 10 s");
                std::process::abort();
            }
        }
    })
}

/// A snapshot image of another database, one run with one key.
fn image() -> Vec<u8> {
    let source = tempfile::tempdir().unwrap();
    let db = Database::open(source.path(), options()).unwrap();
    let run = block_on(db.begin_run("source")).unwrap();
    put(&db, run, "from-image", "x");
    let lsn = block_on(db.checkpoint()).unwrap();
    let bytes = db.read_snapshot(lsn).unwrap();
    db.close().unwrap();
    bytes
}

/// Installs `image` into `db` (in `dir`) with its snapshot's temporary file made impossible
/// to create: the install logs its marker at `marker`, then fails.
fn fail_install(db: &Database, dir: &std::path::Path, image: &[u8], marker: u64) {
    let blocker = dir.join("snapshots").join(format!("{marker:020}.snap.tmp"));
    std::fs::create_dir_all(&blocker).unwrap();
    assert!(block_on(db.install_snapshot(image)).is_err());
    std::fs::remove_dir(&blocker).unwrap();
}

#[test]
fn a_failed_install_below_the_loaded_snapshot_is_not_delivered_after_a_reopen() {
    let image = image();

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("local")).unwrap();
    let last = put(&db, run, "k", "before");
    // The marker goes at `last + 1`; its snapshot's temporary file cannot be created.
    let marker = last + 1;
    fail_install(&db, dir.path(), &image, marker);
    assert!(db.read_snapshot(marker).is_err(), "no snapshot at {marker}");
    let after = put(&db, run, "k", "after");
    // A checkpoint above the marker: the snapshot a reopen loads.
    let checkpoint = block_on(db.checkpoint()).unwrap();
    assert!(checkpoint > marker);
    db.close().unwrap();

    let db = Database::open(dir.path(), options()).unwrap();
    assert!(
        db.read_snapshot(marker).is_err(),
        "still no snapshot at {marker}"
    );
    let mut feed = db.subscribe(last + 1);
    let first = next_event(&mut feed);
    assert!(
        matches!(&first, FeedEvent::Commit(c) if c.commit_lsn == after),
        "after a reopen that loaded the snapshot at {checkpoint}, the failed install at \
         {marker} is delivered: {first:?}"
    );
    db.close().unwrap();
}

/// The first LSNs of the log's segments, in order.
fn segment_lsns(db_dir: &std::path::Path) -> Vec<u64> {
    keel_wal::dir::list_directory(&db_dir.join("wal"))
        .unwrap()
        .segments
        .iter()
        .map(|s| s.first_lsn)
        .collect()
}

/// 2. A transaction written at its commit whose records straddle a segment boundary (the log
///    rotates inside an append when a record does not fit). A subscription from inside it,
///    at the first LSN of the second segment, holds the log from there; it reads the commit,
///    finds the transaction began below its first record, and reads again from the first
///    LSN the commit names (the module's "or `from` inside a commit's records"). A
///    checkpoint between the subscribe and that read may remove the segment that LSN is in:
///    nothing held it. The subscription, whose own position was never removed and which is
///    well within its lag, ends with `LsnRemoved` for an LSN it never asked for.
#[test]
fn a_subscription_from_inside_a_transaction_that_straddles_segments_delivers_it() {
    let options = Options {
        spill_txn_bytes: 1 << 20,
        ..options()
    };
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options.clone()).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    // Transactions of 8 puts of 3000 bytes (about 24 KiB of log each) until one straddles.
    let (first, second, commit) = loop {
        let mut txn = db.transaction(run).unwrap();
        let start = db.stats().wal.durable_lsn + 1;
        for p in 0..8u8 {
            txn.put(format!("key-{start}-{p}").as_bytes(), [p; 3000])
                .unwrap();
        }
        assert!(!txn.spilled());
        let commit = block_on(txn.commit()).unwrap();
        let first = commit - 8;
        if let Some(&second) = segment_lsns(dir.path())
            .iter()
            .find(|&&s| first < s && s <= commit)
        {
            break (first, second, commit);
        }
        assert!(
            commit < 1000,
            "no transaction straddled a segment boundary: {:?}",
            segment_lsns(dir.path())
        );
    };
    println!("transaction {first}..={commit}, second segment from {second}");
    let mut feed = db.subscribe(second);
    // More log, and two checkpoints: the second one's fallback holds the commit.
    for i in 0..4 {
        let mut txn = db.transaction(run).unwrap();
        txn.put(format!("after-{i}").as_bytes(), [b'a'; 3000])
            .unwrap();
        block_on(txn.commit()).unwrap();
    }
    block_on(db.checkpoint()).unwrap();
    block_on(db.checkpoint()).unwrap();
    println!(
        "segments after the checkpoints: {:?}",
        segment_lsns(dir.path())
    );
    assert!(
        segment_lsns(dir.path()).iter().any(|&s| s <= second),
        "the subscription's position {second} is still in the log"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(block_on(feed.next()));
        });
        let event = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| {
                eprintln!("watchdog: no feed event within 10 s");
                std::process::abort()
            });
        assert!(
            matches!(&event, Some(Ok(FeedEvent::Commit(c))) if c.commit_lsn == commit
                && c.changes.len() == 8),
            "the subscription from {second} (inside the transaction {first}..={commit}) \
             did not deliver it: {event:?}"
        );
    });
    db.close().unwrap();
}

/// 1b. The other outcomes across a reopen. An install that took effect before the reopen is
///     delivered after it (at the next commit, once the log shows the install ended); one
///     that failed is not, whether the snapshot loaded is below its marker (the reopen finds
///     it failed) or above it (its abandoned-install record says so).
#[test]
fn installs_from_before_a_reopen_are_delivered_as_they_turned_out() {
    let image = image();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let local = block_on(db.begin_run("local")).unwrap();
    let first = put(&db, local, "k", "before");
    // A failed install (its snapshot's temporary file cannot be created), then one that
    // takes effect, with no commit after it.
    let failed = first + 1;
    fail_install(&db, dir.path(), &image, failed);
    let installed = block_on(db.install_snapshot(&image)).unwrap();
    assert!(installed > failed);
    db.close().unwrap();

    // Reopened on the installed snapshot: both markers are at or below it.
    let db = Database::open(dir.path(), options()).unwrap();
    let run = db.find_run("source").expect("the image's run");
    let mut feed = db.subscribe(failed);
    let after = put(&db, run, "k", "after the reopen");
    assert_eq!(
        next_event(&mut feed),
        FeedEvent::Installed { lsn: installed }
    );
    match next_event(&mut feed) {
        FeedEvent::Commit(commit) => assert_eq!(commit.commit_lsn, after),
        other => panic!("expected the commit at {after}, got {other:?}"),
    }

    // The failed install is not delivered when read again after the reopen either.
    let mut feed = db.subscribe(failed);
    assert_eq!(
        next_event(&mut feed),
        FeedEvent::Installed { lsn: installed }
    );
    // An install that took effect as the log's last record: after a reopen, its outcome is
    // known at the end of the log, when the database closes.
    let last = block_on(db.install_snapshot(&image)).unwrap();
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let mut feed = db.subscribe(last);
    db.close().unwrap();
    let mut events = Vec::new();
    while let Some(event) = block_on(feed.next()) {
        events.push(event.unwrap());
    }
    assert_eq!(events, vec![FeedEvent::Installed { lsn: last }]);
}

/// 1c. A crash between a failed install's marker and its abandoned-install record (or a log
///     written before the record existed): the next open finds the marker without its
///     snapshot, and logs the record then, so the outcome survives later checkpoints.
#[test]
fn an_open_records_a_failed_install_it_finds_without_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("local")).unwrap();
    put(&db, run, "k", "before");
    db.close().unwrap();
    // What a crash right after an install's durable marker leaves: the marker alone.
    let marker = {
        let wal_options = keel_wal::WalOptions {
            segment_bytes: 64 * 1024,
            max_record_bytes: 16 * 1024,
            backend: BackendChoice::Std,
            ..keel_wal::WalOptions::default()
        };
        let wal = keel_recovery::open_wal(dir.path().join("wal"), wal_options).unwrap();
        let appended = wal.append_closed_by(
            keel_wal::EncodedBatch::default(),
            keel_wal::Durability::Strict,
            |snapshot_lsn| keel_wal::WalEntry::Checkpoint {
                run_id: RunId::from_u128(0),
                snapshot_lsn,
            },
        );
        let marker = appended.future.wait().unwrap();
        wal.close().unwrap();
        marker
    };
    // Opened: the install never happened. A commit, and a checkpoint above the marker.
    let db = Database::open(dir.path(), options()).unwrap();
    let after = put(&db, run, "k", "after");
    assert!(block_on(db.checkpoint()).unwrap() > marker);
    db.close().unwrap();
    // Opened on that checkpoint: the marker is below it, and its outcome comes from the log.
    let db = Database::open(dir.path(), options()).unwrap();
    let mut feed = db.subscribe(marker);
    let first = next_event(&mut feed);
    assert!(
        matches!(&first, FeedEvent::Commit(c) if c.commit_lsn == after),
        "the install marked at {marker} never happened, and is delivered: {first:?}"
    );
    db.close().unwrap();
}
