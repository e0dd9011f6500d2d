//! The Raft log store's async calls are cancel-safe: each is polled to each of its await
//! points in turn and dropped there; then what the live store reports (vote, committed,
//! purged, last log id, the entries) must equal what a reopen recovers, and the store must
//! keep working.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use keel_raft::{KeelLogStore, KvRequest, TypeConfig};
use keel_wal::{BackendChoice, WalOptions};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};

type Store = KeelLogStore<TypeConfig>;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entries(term: u64, indexes: std::ops::Range<u64>) -> Vec<Entry<TypeConfig>> {
    indexes
        .map(|i| Entry {
            log_id: log_id(term, i),
            payload: EntryPayload::Normal(KvRequest::Set {
                key: format!("k{i}"),
                value: "x".repeat(300),
            }),
        })
        .collect()
}

fn options() -> WalOptions {
    WalOptions {
        backend: BackendChoice::Std,
        segment_bytes: 8192,
        max_record_bytes: 2048,
        ..WalOptions::default()
    }
}

/// Everything openraft can read back from the store.
#[derive(Debug, PartialEq)]
struct View {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    last: Option<LogId<u64>>,
    ids: Vec<LogId<u64>>,
}

async fn view(store: &mut Store) -> View {
    let state = store.get_log_state().await.unwrap();
    let read = store.try_get_log_entries(0..1000).await.unwrap();
    View {
        vote: store.read_vote().await.unwrap(),
        committed: store.read_committed().await.unwrap(),
        purged: state.last_purged_log_id,
        last: state.last_log_id,
        ids: read.iter().map(|e| e.log_id).collect(),
    }
}

/// Polls `future` `polls` times (the writer thread progresses in between) and drops it
/// unless it finished. Returns whether it finished.
fn poll_then_drop<F: Future>(future: F, polls: usize) -> bool {
    let mut future = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..polls {
        if Pin::as_mut(&mut future).poll(&mut cx).is_ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn each_await_point(what: &str, op: impl Fn(&mut Store, usize) -> bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = runtime.enter();
    for polls in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut store = Store::open(&path, options()).unwrap();
        runtime.block_on(async {
            store.blocking_append(entries(1, 0..30)).await.unwrap();
            store.save_vote(&Vote::new(1, 1)).await.unwrap();
            store.save_committed(Some(log_id(1, 10))).await.unwrap();
        });
        let finished = op(&mut store, polls);
        // Whatever the dropped call queued settles first.
        store.wal().sync().wait().unwrap();
        let live = runtime.block_on(view(&mut store));
        drop(store);
        let mut store = Store::open(&path, options()).unwrap();
        let recovered = runtime.block_on(view(&mut store));
        assert_eq!(
            live, recovered,
            "{what}, dropped after {polls} polls: the live store and its recovery differ"
        );
        // It keeps working.
        runtime.block_on(async {
            let next = live.last.map_or(0, |l| l.index + 1);
            store
                .blocking_append(entries(3, next..next + 3))
                .await
                .unwrap();
            store.save_vote(&Vote::new(3, 1)).await.unwrap();
        });
        if finished {
            println!("{what}: finished after {polls} polls; every earlier drop checked");
            return;
        }
        assert!(polls < 200, "{what}: never finished");
    }
}

#[test]
fn a_cancelled_save_vote_leaves_the_store_as_its_recovery() {
    each_await_point("save_vote", |store, polls| {
        poll_then_drop(store.save_vote(&Vote::new(2, 1)), polls)
    });
}

#[test]
fn a_cancelled_save_committed_leaves_the_store_as_its_recovery() {
    each_await_point("save_committed", |store, polls| {
        poll_then_drop(store.save_committed(Some(log_id(1, 20))), polls)
    });
}

#[test]
fn a_cancelled_truncate_leaves_the_store_as_its_recovery() {
    each_await_point("truncate", |store, polls| {
        poll_then_drop(store.truncate(log_id(1, 25)), polls)
    });
}

#[test]
fn a_cancelled_purge_leaves_the_store_as_its_recovery() {
    each_await_point("purge", |store, polls| {
        poll_then_drop(store.purge(log_id(1, 18)), polls)
    });
}
