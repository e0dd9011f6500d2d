//! The change feed (`Database::subscribe`): every acknowledged commit delivered once, in
//! commit order, whole (spilled ones included, aborted ones never), across rotations,
//! checkpoints, a reopen and a resume; installs as events; a removed position named.
//!
//! Waits on the follower thread are bounded by a watchdog (a minute; each returns as soon as
//! the events arrive) and measure no speed.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, FeedChange, FeedCommit, FeedEvent, Lsn, Options, RunId};

const WATCHDOG: Duration = Duration::from_secs(60);

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

/// What a commit wrote, as the feed should deliver it.
type Expected = (RunId, Lsn, Vec<FeedChange>);

fn put(key: String, value: Vec<u8>) -> FeedChange {
    FeedChange::Put {
        key: Bytes::from(key),
        value: Bytes::from(value),
    }
}

/// Commits `count` transactions numbered from `from`: every fifth spills (about 3 KiB over
/// several records), every seventh also deletes a key, every eleventh is dropped uncommitted
/// (after spilling, when it does: its `AbortTxn` is in the log).
fn commit_some(db: &Database, run: RunId, from: u32, count: u32) -> Vec<Expected> {
    let mut expected = Vec::new();
    for i in from..from + count {
        let mut txn = db.transaction(run).unwrap();
        let mut changes = Vec::new();
        let parts = if i % 5 == 0 { 6 } else { 1 };
        for p in 0..parts {
            let key = format!("k{:03}-{p}", i % 200);
            let value = format!("{i}/{p}").repeat(if i % 5 == 0 { 90 } else { 3 });
            txn.put(key.as_bytes(), value.as_bytes()).unwrap();
            changes.push(put(key, value.into_bytes()));
        }
        if i % 7 == 0 {
            let key = format!("k{:03}-0", (i + 3) % 200);
            txn.delete(key.as_bytes()).unwrap();
            changes.push(FeedChange::Delete {
                key: Bytes::from(key),
            });
        }
        if i % 11 == 0 {
            drop(txn);
            continue;
        }
        let lsn = block_on(txn.commit()).unwrap();
        // A transaction logs one change per key, in key order (this data spills no key
        // twice, and its chunks are in key order too).
        changes.sort_by(|a, b| key_of(a).cmp(key_of(b)));
        expected.push((run, lsn, changes));
    }
    expected
}

fn key_of(change: &FeedChange) -> &Bytes {
    match change {
        FeedChange::Put { key, .. } | FeedChange::Delete { key } => key,
    }
}

/// Follows `db` from `from` on a thread until the stream ends: the events.
fn follow(db: &Database, from: Lsn) -> mpsc::Receiver<Vec<FeedEvent>> {
    let mut feed = db.subscribe(from);
    let (done, events) = mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(event) = block_on(feed.next()) {
            got.push(event.expect("the feed reads a clean log"));
        }
        done.send(got).unwrap();
    });
    events
}

/// The user commits among `events`, as `(run, commit LSN, changes)`.
fn commits(events: &[FeedEvent]) -> Vec<Expected> {
    events
        .iter()
        .filter_map(|event| match event {
            FeedEvent::Commit(commit) if !commit.is_system() => Some(commit),
            _ => None,
        })
        .map(|c: &FeedCommit| (c.run, c.commit_lsn, c.changes.clone()))
        .collect()
}

#[test]
fn every_commit_is_delivered_once_in_order_across_rotations_checkpoints_reopen_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    let follower = follow(&db, 1);
    let mut expected = commit_some(&db, run, 0, 150);
    block_on(db.checkpoint()).unwrap();
    expected.extend(commit_some(&db, run, 150, 150));
    db.close().unwrap();
    let events = follower
        .recv_timeout(WATCHDOG)
        .expect("the feed ended at close");
    assert_eq!(commits(&events), expected);
    let lsns: Vec<Lsn> = events.iter().map(FeedEvent::lsn).collect();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "commit order: {lsns:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, FeedEvent::Commit(c) if c.is_system())),
        "the run's beginning is a system commit"
    );
    let segments = keel_wal::dir::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments
        .len();
    assert!(segments >= 4, "rotations: {segments} segments");

    // A consumer that stored the last LSN it applied resumes after it, across a reopen.
    let resume_after = expected[200].1;
    let db = Database::open(dir.path(), options()).unwrap();
    let follower = follow(&db, resume_after + 1);
    let more = commit_some(&db, run, 300, 60);
    db.close().unwrap();
    let events = follower.recv_timeout(WATCHDOG).unwrap();
    let mut rest = expected[201..].to_vec();
    rest.extend(more);
    assert_eq!(commits(&events), rest);
}

#[test]
fn a_transaction_begun_before_the_first_lsn_read_is_delivered_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    let before = commit_some(&db, run, 1, 4);
    // A spilled transaction, its head well before its commit, others committed between.
    let mut spilled = db.transaction(run).unwrap();
    let mut changes = Vec::new();
    for p in 0..6 {
        let key = format!("spilled-{p}");
        let value = vec![b'0' + p; 700];
        spilled.put(key.as_bytes(), &value).unwrap();
        changes.push(put(key, value));
    }
    assert!(spilled.spilled());
    let between = commit_some(&db, run, 1, 4);
    let commit = block_on(spilled.commit()).unwrap();
    let head = before.last().unwrap().1 + 1;
    let after = commit_some(&db, run, 1, 3);
    // From inside its records (its head, a chunk, between them, the commit record itself):
    // delivered whole, after the commits between that are at or above `from`.
    for from in [head, head + 1, between[0].1, commit - 1, commit] {
        let mut wanted: Vec<Expected> = between.iter().filter(|b| b.1 >= from).cloned().collect();
        wanted.push((run, commit, changes.clone()));
        wanted.extend(after.iter().cloned());
        let mut feed = db.subscribe(from);
        let mut got = Vec::new();
        while got.len() < wanted.len() {
            if let FeedEvent::Commit(c) = block_on(feed.next()).unwrap().unwrap() {
                got.push((c.run, c.commit_lsn, c.changes));
            }
        }
        assert_eq!(got, wanted, "from {from}");
    }
    // From after its commit: not delivered.
    let mut feed = db.subscribe(commit + 1);
    let first = block_on(feed.next()).unwrap().unwrap();
    assert_eq!(first.lsn(), after[0].1);
    db.close().unwrap();
}

#[test]
fn an_install_is_an_event_and_a_removed_position_names_the_oldest_lsn() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Database::open(source_dir.path(), options()).unwrap();
    let source_run = block_on(source.begin_run("source")).unwrap();
    commit_some(&source, source_run, 0, 10);
    let image = source
        .read_snapshot(block_on(source.checkpoint()).unwrap())
        .unwrap();
    source.close().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    commit_some(&db, run, 0, 100);
    // From the next LSN: the install removes the log below its marker.
    let next = db.stats().wal.durable_lsn + 1;
    let mut feed = db.subscribe(next);
    let installed = block_on(db.install_snapshot(&image)).unwrap();
    let mut saw_install = false;
    while let Some(event) = block_on(feed.next()) {
        let event = event.unwrap();
        if event == (FeedEvent::Installed { lsn: installed }) {
            saw_install = true;
            break;
        }
    }
    assert!(saw_install, "the install at {installed} is delivered");

    // Two checkpoints later the log below the first is gone: from 1 is refused by name.
    commit_some(&db, source_run, 100, 100);
    block_on(db.checkpoint()).unwrap();
    commit_some(&db, source_run, 200, 100);
    block_on(db.checkpoint()).unwrap();
    let oldest = keel_wal::dir::list_directory(&dir.path().join("wal"))
        .unwrap()
        .segments[0]
        .first_lsn;
    assert!(oldest > 1);
    let mut feed = db.subscribe(1);
    match block_on(feed.next()) {
        Some(Err(keel::Error::Wal(keel_wal::Error::LsnRemoved {
            requested,
            oldest: named,
        }))) => {
            assert_eq!((requested, named), (1, oldest));
        }
        other => panic!("expected LsnRemoved, got {other:?}"),
    }
    assert!(block_on(feed.next()).is_none(), "ended");
    db.close().unwrap();
}

/// A subscription keeps the log it has not read from checkpoints, within its lag; a slow one
/// past it is let go with an explicit error, and the log goes: writers never wait for it.
#[test]
fn a_slow_subscription_holds_the_log_within_its_lag_and_is_let_go_past_it() {
    for (max_lag, slow) in [(64 << 20, false), (2 * 64 * 1024, true)] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            checkpoint_log_bytes: 128 * 1024,
            checkpoint_log_percent: 0,
            feed_max_lag_bytes: max_lag,
            ..options()
        };
        let db = Database::open(dir.path(), options).unwrap();
        let run = block_on(db.begin_run("feed")).unwrap();
        let mut feed = db.subscribe(1);
        let mut expected = Vec::new();
        let mut most = 0;
        for round in 0..20 {
            expected.extend(commit_some(&db, run, round * 60, 60));
            db.wait_for_automatic_checkpoint();
            let segments = keel_wal::dir::list_directory(&dir.path().join("wal"))
                .unwrap()
                .segments
                .len();
            most = most.max(segments);
        }
        assert!(db.stats().checkpoints >= 6, "{:?}", db.stats().checkpoints);
        if slow {
            // Let go at the first removal past 2 segments: the log stayed small.
            assert!(most <= 8, "{most} segments");
            match block_on(feed.next()) {
                Some(Err(keel::Error::Wal(keel_wal::Error::TailFellBehind {
                    position: 1,
                    max_bytes,
                    ..
                }))) => assert_eq!(max_bytes, max_lag),
                other => panic!("expected TailFellBehind, got {other:?}"),
            }
            assert!(block_on(feed.next()).is_none());
        } else {
            // Held: every commit is still there to read.
            let mut got = Vec::new();
            while got.len() < expected.len() {
                if let FeedEvent::Commit(c) = block_on(feed.next()).unwrap().unwrap()
                    && !c.is_system()
                {
                    got.push((c.run, c.commit_lsn, c.changes));
                }
            }
            let lsns = |v: &[Expected]| v.iter().map(|e| e.1).collect::<Vec<_>>();
            assert_eq!(lsns(&got), lsns(&expected), "the commits, by LSN");
            for (g, e) in got.iter().zip(&expected) {
                let short = |c: &FeedChange| match c {
                    FeedChange::Put { key, value } => format!("put {key:?} {}", value.len()),
                    FeedChange::Delete { key } => format!("delete {key:?}"),
                };
                let (gs, es): (Vec<_>, Vec<_>) = (
                    g.2.iter().map(short).collect(),
                    e.2.iter().map(short).collect(),
                );
                assert_eq!(gs, es, "the changes of the commit at {}", e.1);
                assert!(g == e, "the values of the commit at {}", e.1);
            }
        }
        db.close().unwrap();
    }
}

/// A subscription holds the transactions it has read and that are still open (spilled ones,
/// delivered whole at their commit): within `feed_max_lag_bytes`, as the log it keeps is.
/// One that spills past it ends the stream with `FeedHeldTooMuch`, after everything before
/// it was delivered; one within it is delivered whole.
#[test]
fn a_subscription_holds_open_transactions_within_its_bound() {
    const MAX: u64 = 16 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        feed_max_lag_bytes: MAX,
        ..options()
    };
    let db = Database::open(dir.path(), options).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();
    let mut feed = db.subscribe(db.stats().wal.durable_lsn + 1);
    let spill = |name: &str, count: u8| {
        let mut txn = db.transaction(run).unwrap();
        for p in 0..count {
            txn.put(format!("{name}-{p:02}").as_bytes(), vec![p; 700])
                .unwrap();
        }
        assert!(txn.spilled());
        block_on(txn.commit()).unwrap()
    };
    // About 4 KiB, then about 28 KiB, spilled.
    let small = spill("small", 6);
    spill("large", 40);
    let after = commit_some(&db, run, 0, 2);
    match block_on(feed.next()) {
        Some(Ok(FeedEvent::Commit(commit))) => {
            assert_eq!(commit.commit_lsn, small);
            assert_eq!(commit.changes.len(), 6);
        }
        other => panic!(
            "expected the small transaction, got {:?}",
            other.map(|event| event.map(|event| event.lsn()))
        ),
    }
    match block_on(feed.next()) {
        Some(Err(keel::Error::FeedHeldTooMuch {
            held_bytes,
            max_bytes,
            ..
        })) => {
            assert_eq!(max_bytes, MAX);
            assert!(held_bytes > MAX && held_bytes < MAX + 2048, "{held_bytes}");
        }
        other => panic!(
            "expected FeedHeldTooMuch, got {:?}",
            other.map(|event| event.map(|event| event.lsn()))
        ),
    }
    assert!(block_on(feed.next()).is_none(), "the stream ended");
    // From after the large one, the rest is delivered.
    let mut feed = db.subscribe(after[0].1);
    assert_eq!(block_on(feed.next()).unwrap().unwrap().lsn(), after[0].1);
    db.close().unwrap();
}
