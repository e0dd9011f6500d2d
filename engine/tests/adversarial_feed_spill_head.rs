//! A subscription made while a spilled transaction is open (a consumer resuming after the
//! last LSN it applied, say) must deliver that transaction when it commits: it is committed
//! above `from`, acknowledged, and the subscription holds the log from its position.
//!
//! Before the fix the subscription held the log only from `from`. The transaction's head
//! (its `BeginTxn`, below `from`) was kept by the engine's spill registration only until a
//! checkpoint's fallback snapshot reached the commit; two checkpoints later its segment was
//! gone, and the subscription, reaching the commit and reading again from the head the
//! commit names, ended with `LsnRemoved` for an LSN it never asked for, though it was well
//! within its lag and its own position was still in the log.

use bytes::Bytes;
use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, FeedChange, FeedEvent, Options, RunId};

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

/// `count` small transactions (each below the spill threshold): about 1 KiB of log each.
fn filler(db: &Database, run: RunId, tag: &str, count: u32) -> Vec<u64> {
    (0..count)
        .map(|i| {
            let mut txn = db.transaction(run).unwrap();
            txn.put(format!("{tag}-{i}").as_bytes(), [b'f'; 1000])
                .unwrap();
            block_on(txn.commit()).unwrap()
        })
        .collect()
}

#[test]
fn a_spill_open_when_the_subscription_began_is_delivered_after_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("feed")).unwrap();

    let mut spilled = db.transaction(run).unwrap();
    let mut changes = Vec::new();
    for p in 0..6u8 {
        let key = format!("spilled-{p}");
        let value = vec![b'0' + p; 700];
        spilled.put(key.as_bytes(), &value).unwrap();
        changes.push(FeedChange::Put {
            key: Bytes::from(key),
            value: Bytes::from(value),
        });
    }
    assert!(spilled.spilled());
    // Several segments between the spill's head and where the consumer resumes.
    filler(&db, run, "a", 250);
    let from = db.stats().wal.durable_lsn + 1;
    let mut feed = db.subscribe(from);
    let mut wanted = filler(&db, run, "b", 20);
    let commit = block_on(spilled.commit()).unwrap();
    wanted.push(commit);
    wanted.extend(filler(&db, run, "c", 20));
    // The first checkpoint's snapshot holds the commit; the second makes it the fallback,
    // and the spill's registration no longer keeps its head.
    block_on(db.checkpoint()).unwrap();
    filler(&db, run, "d", 5);
    block_on(db.checkpoint()).unwrap();

    let mut got = Vec::new();
    while got.len() < wanted.len() {
        match block_on(feed.next()) {
            Some(Ok(FeedEvent::Commit(c))) if !c.is_system() => {
                if c.commit_lsn == commit {
                    assert_eq!(c.changes, changes, "the spilled transaction, whole");
                }
                got.push(c.commit_lsn);
            }
            Some(Ok(_)) => {}
            other => panic!(
                "the commit at {commit} (from {from}) was not delivered: {other:?} \
                 after {got:?}"
            ),
        }
    }
    assert_eq!(got, wanted);
    db.close().unwrap();
}
