//! A commit is applied to the state as the log acknowledges it (the log's acknowledgement
//! hook, `Wal::on_acknowledged`), before its committer wakes: not only by whoever reads or
//! commits next. So a commit whose future was dropped once it was queued is applied when it
//! becomes durable, with no committer left to apply it and nothing read meanwhile; and the
//! committers of a group find their commits applied when they wake.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};

use futures::StreamExt;
use futures::executor::block_on;
use keel::{BackendChoice, Database, FeedEvent, Options};

fn options(backend: BackendChoice) -> Options {
    Options {
        backend,
        segment_bytes: 64 * 1024,
        max_record_bytes: 16 * 1024,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

#[test]
fn a_dropped_commit_is_applied_once_the_log_acknowledges_it() {
    for &backend in BackendChoice::available() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), options(backend)).unwrap();
        let run = block_on(db.begin_run("hook")).unwrap();
        let mut feed = db.subscribe(db.stats().wal.durable_lsn + 1);
        let mut late = Vec::new();
        for i in 0..20u32 {
            let key = format!("k{i}");
            let mut txn = db.transaction(run).unwrap();
            txn.put(key.as_str(), b"v").unwrap();
            // Polled once (queued in the log, waiting for its sync), then dropped: the commit
            // goes ahead without its committer.
            let mut commit = Box::pin(txn.commit());
            let mut cx = Context::from_waker(Waker::noop());
            let finished = Pin::as_mut(&mut commit).poll(&mut cx).is_ready();
            drop(commit);
            // The feed delivers the commit once durable, and reads the log, not the state.
            let delivered = loop {
                match block_on(feed.next()).expect("the feed is open").unwrap() {
                    FeedEvent::Commit(c) if !c.is_system() => break c,
                    _ => {}
                }
            };
            assert_eq!(delivered.changes.len(), 1, "{backend:?}");
            // Counted before `stats` reads the state (which would apply what is due).
            if db.stats().pending_commits != 0 {
                late.push((i, finished));
            }
        }
        // Without the hook every one of them waits here. With it, a feed poll that falls
        // between the log's publication of the durable position and the hook (back to back
        // on the writer's thread) could find one still queued: at most 2 are let through.
        assert!(
            late.len() <= 2,
            "{backend:?}: durable commits still waiting to be applied (index, finished at its \
             first poll): {late:?}"
        );
        for i in 0..20u32 {
            let value = db.get(run, format!("k{i}")).unwrap();
            assert_eq!(
                value.map(|v| v.value),
                Some(b"v".to_vec()),
                "{backend:?}: k{i}"
            );
        }
        db.close().unwrap();
    }
}
