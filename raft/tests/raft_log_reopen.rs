//! The Raft log store across clean reopens, on every backend: truncated entries stay gone,
//! purges delete segments and survive, marks come back; and what is not a Raft log, or is
//! damaged, is refused at open with an error.

use keel_raft::{KeelLogStore, KvRequest, TypeConfig};
use keel_wal::{BackendChoice, RunId, WalEntry, WalOptions};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entries(term: u64, indexes: std::ops::Range<u64>) -> Vec<Entry<TypeConfig>> {
    indexes
        .map(|i| Entry {
            log_id: log_id(term, i),
            payload: EntryPayload::Normal(KvRequest::Set {
                key: format!("k{i}"),
                value: format!("term {term} {}", "x".repeat(200)),
            }),
        })
        .collect()
}

fn options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        backend,
        segment_bytes: 8192,
        max_record_bytes: 2048,
        ..WalOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn truncation_purge_and_marks_survive_reopening() {
    for &backend in BackendChoice::available() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        runtime().block_on(async {
            let mut store = KeelLogStore::<TypeConfig>::open(&path, options(backend)).unwrap();
            store.blocking_append(entries(1, 0..40)).await.unwrap();
            store.truncate(log_id(1, 30)).await.unwrap();
            store.blocking_append(entries(2, 30..35)).await.unwrap();
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            store.save_committed(Some(log_id(2, 33))).await.unwrap();
            let segments_before = keel_wal::dir::list_directory(&path).unwrap().segments;
            store.purge(log_id(1, 20)).await.unwrap();
            let segments_after = keel_wal::dir::list_directory(&path).unwrap().segments;
            assert!(
                segments_after.len() < segments_before.len(),
                "a purge deletes segments ({} before, {} after)",
                segments_before.len(),
                segments_after.len()
            );
            assert!(store.stats().segments_deleted > 0);
        });
        runtime().block_on(async {
            let mut store = KeelLogStore::<TypeConfig>::open(&path, options(backend)).unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 20)));
            assert_eq!(state.last_log_id, Some(log_id(2, 34)));
            assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
            assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 33)));
            let read = store.try_get_log_entries(0..100).await.unwrap();
            let ids: Vec<LogId<u64>> = read.iter().map(|e| e.log_id).collect();
            let expected: Vec<LogId<u64>> = (21..30)
                .map(|i| log_id(1, i))
                .chain((30..35).map(|i| log_id(2, i)))
                .collect();
            assert_eq!(ids, expected, "truncated entries 35..40 must not come back");
            assert_eq!(read, {
                let mut all = entries(1, 21..30);
                all.extend(entries(2, 30..35));
                all
            });
            assert_eq!(
                store.stats().entries_read_from_log,
                14,
                "served by position"
            );
            // Ranges inside the log, and empty ones.
            assert_eq!(store.try_get_log_entries(25..27).await.unwrap().len(), 2);
            assert!(store.try_get_log_entries(27..27).await.unwrap().is_empty());
            assert!(store.try_get_log_entries(50..60).await.unwrap().is_empty());
        });
    }
}

#[test]
fn a_log_that_is_not_a_raft_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options(BackendChoice::Std)).unwrap();
    wal.append(&[WalEntry::CommitTxn {
        run_id: RunId::from_u128(5),
        txn_id: 1,
    }])
    .wait()
    .unwrap();
    wal.close().unwrap();
    let error = KeelLogStore::<TypeConfig>::open(dir.path(), options(BackendChoice::Std))
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a Raft log record"), "{error}");
}

#[test]
fn damage_before_the_tail_is_refused_not_skipped() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut store =
            KeelLogStore::<TypeConfig>::open(dir.path(), options(BackendChoice::Std)).unwrap();
        store.blocking_append(entries(1, 0..40)).await.unwrap();
    });
    // A flipped byte in the first segment's first record (the log goes on after it).
    let first = &keel_wal::dir::list_directory(dir.path()).unwrap().segments[0];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&first.path)
        .unwrap();
    file.write_all_at(&[0x5a], 4096 + 100).unwrap();
    drop(file);
    let error = KeelLogStore::<TypeConfig>::open(dir.path(), options(BackendChoice::Std))
        .unwrap_err()
        .to_string();
    assert!(error.contains("checksum"), "{error}");
}

#[test]
fn an_entry_too_large_for_the_log_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut store =
            KeelLogStore::<TypeConfig>::open(dir.path(), options(BackendChoice::Std)).unwrap();
        store.blocking_append(entries(1, 0..3)).await.unwrap();
        let huge = Entry {
            log_id: log_id(1, 3),
            payload: EntryPayload::Normal(KvRequest::Set {
                key: "huge".into(),
                value: "x".repeat(4096),
            }),
        };
        let error = store.blocking_append(vec![huge]).await.unwrap_err();
        assert!(error.to_string().contains("exceeds the maximum"), "{error}");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        assert_eq!(store.try_get_log_entries(0..).await.unwrap().len(), 3);
        // The log goes on.
        store.blocking_append(entries(1, 3..5)).await.unwrap();
        assert_eq!(store.try_get_log_entries(0..).await.unwrap().len(), 5);
    });
}
