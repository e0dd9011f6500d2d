//! `Database::apply_feed_commit`: a replica bootstrapped from a primary's snapshot applies the
//! primary's feed, runs begun, ended and deleted after the bootstrap included, and ends with
//! the primary's runs (same ids, names and states), keys and values; applying the whole feed
//! again (a replica resuming from a position stored before its last applied commit) changes
//! nothing. A system commit that holds anything but run records is refused.

use bytes::Bytes;
use futures::StreamExt;
use futures::executor::block_on;
use keel::{
    BackendChoice, Database, Error, FeedChange, FeedCommit, FeedEvent, Lsn, Options, RunId,
    RunState,
};

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

/// `count` commits numbered from `from`, in `runs` in turn: puts (every fifth spills), and a
/// delete every seventh.
fn commit_some(db: &Database, runs: &[RunId], from: u32, count: u32) {
    for i in from..from + count {
        let mut txn = db.transaction(runs[i as usize % runs.len()]).unwrap();
        let parts = if i % 5 == 0 { 6 } else { 1 };
        for p in 0..parts {
            let value = format!("{i}/{p}").repeat(if i % 5 == 0 { 90 } else { 3 });
            txn.put(format!("k{:03}-{p}", i % 50), value).unwrap();
        }
        if i % 7 == 0 {
            txn.delete(format!("k{:03}-0", (i + 3) % 50)).unwrap();
        }
        block_on(txn.commit()).unwrap();
    }
}

/// Every run (id, name, active) with its keys and values, in id order.
type State = Vec<(RunId, String, bool, Vec<(Vec<u8>, Vec<u8>)>)>;

fn state_of(db: &Database, leave_out: &str) -> State {
    let mut runs = db.list_runs();
    runs.retain(|run| run.name != leave_out);
    runs.sort_by_key(|run| run.id.as_u128());
    let runs = runs.into_iter().map(|run| {
        let data = db.scan(run.id, b"").unwrap().into_iter();
        let data = data
            .map(|(key, value)| (key, value.value.to_vec()))
            .collect();
        (run.id, run.name, run.state == RunState::Active, data)
    });
    runs.collect()
}

/// Applies the primary's feed from `from` to `replica` through the primary's durable LSN;
/// returns how many commits changed something there.
fn follow(primary: &Database, replica: &Database, from: Lsn) -> u64 {
    let target = primary.stats().wal.durable_lsn;
    let mut feed = primary.subscribe(from);
    let mut changed = 0;
    loop {
        let event = block_on(feed.next()).unwrap().unwrap();
        let FeedEvent::Commit(commit) = &event else {
            panic!("no install here: {event:?}");
        };
        changed += u64::from(
            block_on(replica.apply_feed_commit(commit))
                .unwrap()
                .is_some(),
        );
        if event.lsn() >= target {
            return changed;
        }
    }
}

#[test]
fn a_replica_applies_the_feed_runs_included_and_applying_it_again_changes_nothing() {
    let (primary_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Database::open(primary_dir.path(), options()).unwrap();
    let kept = block_on(primary.begin_run("kept")).unwrap();
    let ended = block_on(primary.begin_run("ended")).unwrap();
    commit_some(&primary, &[kept, ended], 0, 40);
    let snapshot = block_on(primary.checkpoint()).unwrap();
    let replica = Database::open(replica_dir.path(), options()).unwrap();
    block_on(replica.install_snapshot(&primary.read_snapshot(snapshot).unwrap())).unwrap();
    let own = block_on(replica.begin_run("replica's own")).unwrap();

    // After the bootstrap: a run begun, one ended, one begun and deleted, commits between.
    let later = block_on(primary.begin_run("later")).unwrap();
    commit_some(&primary, &[kept, ended, later], 40, 40);
    block_on(primary.end_run(ended)).unwrap();
    let gone = block_on(primary.begin_run("gone")).unwrap();
    commit_some(&primary, &[gone, later], 80, 20);
    block_on(primary.delete_run(gone)).unwrap();
    commit_some(&primary, &[kept, later], 100, 20);

    let applied = follow(&primary, &replica, snapshot + 1);
    assert!(applied >= 80, "{applied} commits applied");
    let want = state_of(&primary, "");
    assert_eq!(want.len(), 3, "kept, ended and later");
    assert!(
        want.iter()
            .any(|(id, _, active, _)| *id == ended && !active)
    );
    assert_eq!(state_of(&replica, "replica's own"), want, "after the feed");

    // The whole feed again, as a replica resuming from its bootstrap would: user commits
    // are applied again, run records already in effect are not.
    follow(&primary, &replica, snapshot + 1);
    assert_eq!(
        state_of(&replica, "replica's own"),
        want,
        "after the feed again"
    );
    assert!(
        replica.run_info(own).is_some(),
        "the replica's own run is untouched"
    );

    // A system commit holding something other than run records is not from a feed.
    let forged = FeedCommit {
        run: RunId::from_u128(0),
        txn_id: 1,
        first_lsn: 1,
        commit_lsn: 1,
        changes: vec![FeedChange::Put {
            key: Bytes::from_static(b"not/a-run"),
            value: Bytes::from_static(b"x"),
        }],
    };
    match block_on(replica.apply_feed_commit(&forged)) {
        Err(Error::Metadata(message)) => assert!(message.contains("run records"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nor is a run record of the system run itself.
    let mut key = b"run/".to_vec();
    key.extend_from_slice(&0u128.to_be_bytes());
    let forged = FeedCommit {
        changes: vec![FeedChange::Put {
            key: Bytes::from(key),
            value: Bytes::from_static(b"\0system"),
        }],
        ..forged
    };
    match block_on(replica.apply_feed_commit(&forged)) {
        Err(Error::Metadata(message)) => assert!(message.contains("run records"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A run begun on the primary under the name of one active here.
    let clash = block_on(primary.begin_run("replica's own")).unwrap();
    let mut feed = primary.subscribe(primary.stats().wal.durable_lsn);
    let FeedEvent::Commit(begun) = block_on(feed.next()).unwrap().unwrap() else {
        panic!("the run's record");
    };
    match block_on(replica.apply_feed_commit(&begun)) {
        Err(Error::RunNameTaken { run, .. }) => assert_eq!(run, own),
        other => panic!("expected RunNameTaken, got {other:?}"),
    }
    assert!(replica.run_info(clash).is_none());
    replica.close().unwrap();
    primary.close().unwrap();
}
