//! What the Raft log store refuses, and what it must never lose: logs whose records do not
//! make a Raft log (a hole, a record whose entry is not the one its frame names, damage found
//! after open) are errors that say what is wrong, and a purge of every entry, or an empty
//! append, leaves a log that reopens to the same state.

use std::os::unix::fs::FileExt;

use keel_raft::record::{self, RAFT_RUN};
use keel_raft::{KeelLogStore, KvRequest, LogSummary, TypeConfig};
use keel_wal::{BackendChoice, WalEntry, WalOptions};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(KvRequest::Set {
            key: format!("k{index}"),
            value: format!("term {term} {}", "x".repeat(200)),
        }),
    }
}

fn entries(term: u64, indexes: std::ops::Range<u64>) -> Vec<Entry<TypeConfig>> {
    indexes.map(|i| entry(term, i)).collect()
}

fn options() -> WalOptions {
    WalOptions {
        backend: BackendChoice::Std,
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

/// A log of exactly `records`, written below the store.
fn write_log(dir: &std::path::Path, records: &[WalEntry]) {
    let wal = keel_recovery::open_wal(dir, options()).unwrap();
    wal.append(records).wait().unwrap();
    wal.close().unwrap();
}

fn open_error(dir: &std::path::Path) -> String {
    KeelLogStore::<TypeConfig>::open(dir, options())
        .unwrap_err()
        .to_string()
}

#[test]
fn an_entry_after_a_hole_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<WalEntry> = [0, 1, 3]
        .map(|i| record::entry::<TypeConfig>(&log_id(1, i), &entry(1, i)))
        .into();
    write_log(dir.path(), &written);
    let error = open_error(dir.path());
    assert!(
        error.contains("entry 3 follows entry 1: the log has a hole (LSN 3)"),
        "{error}"
    );
}

#[test]
fn an_unknown_or_malformed_raft_record_is_refused_at_open_with_its_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = WalEntry::Payload {
        run_id: RAFT_RUN,
        tag: 77,
        payload: b"{}".to_vec(),
    };
    write_log(
        dir.path(),
        &[record::vote::<TypeConfig>(&Vote::new(1, 1)), unknown],
    );
    let error = open_error(dir.path());
    assert!(
        error.contains("LSN 2: unknown Raft record tag 77"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let short = WalEntry::Payload {
        run_id: RAFT_RUN,
        tag: record::TAG_ENTRY,
        payload: vec![200, 0, 0, 0, b'{'],
    };
    write_log(dir.path(), &[short]);
    let error = open_error(dir.path());
    assert!(
        error.contains("LSN 1: an entry record shorter than its framing"),
        "{error}"
    );
}

#[test]
fn an_entry_that_is_not_the_one_its_record_names_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    // The frame of the third record names entry 2; the entry in it is entry 7.
    write_log(
        dir.path(),
        &[
            record::entry::<TypeConfig>(&log_id(1, 0), &entry(1, 0)),
            record::entry::<TypeConfig>(&log_id(1, 1), &entry(1, 1)),
            record::entry::<TypeConfig>(&log_id(1, 2), &entry(1, 7)),
        ],
    );
    runtime().block_on(async {
        // Opening reads only the frames.
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        let error = store
            .try_get_log_entries(0..3)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the record at LSN 3 holds entry 7, not 2"),
            "{error}"
        );
        // The entries before it read back whole.
        assert_eq!(
            store.try_get_log_entries(0..2).await.unwrap(),
            entries(1, 0..2)
        );
    });
}

#[test]
fn damage_found_after_open_is_an_error_on_read_not_a_wrong_entry() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        store.blocking_append(entries(1, 0..10)).await.unwrap();
    });
    runtime().block_on(async {
        // Reopened: every entry is read from the log by position.
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        let first = &keel_wal::dir::list_directory(dir.path()).unwrap().segments[0];
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&first.path)
            .unwrap();
        // A flipped byte in the first record's body (entry 0).
        file.write_all_at(&[0x5a], 4096 + 100).unwrap();
        drop(file);
        let error = store.try_get_log_entries(0..10).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("checksum"), "{text}");
        assert!(text.contains("LogIndex(0)"), "names the entry: {text}");
        // The entries the damage did not touch still read back.
        assert_eq!(
            store.try_get_log_entries(1..10).await.unwrap(),
            entries(1, 1..10)
        );
    });
}

#[test]
fn an_empty_append_completes_at_once_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        store.blocking_append(entries(1, 0..3)).await.unwrap();
        let lsn = store.wal().next_lsn();
        store.blocking_append(Vec::new()).await.unwrap();
        assert_eq!(store.wal().next_lsn(), lsn, "nothing was written");
        assert_eq!(store.stats().appends, 1, "an empty append is not counted");
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            entries(1, 0..3)
        );
    });
}

#[test]
fn purging_every_entry_deletes_the_segments_and_reopens_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let expected = LogSummary {
        vote: Some(Vote::new(1, 1)),
        committed: Some(log_id(1, 39)),
        last_purged_log_id: Some(log_id(1, 39)),
        last_log_id: Some(log_id(1, 39)),
        entries: 0,
    };
    runtime().block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        store.blocking_append(entries(1, 0..40)).await.unwrap();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        store.save_committed(Some(log_id(1, 39))).await.unwrap();
        let before = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
        store.purge(log_id(1, 39)).await.unwrap();
        let after = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
        assert_eq!(after.len(), 1, "only the segment appends go on in is left");
        assert_eq!(store.stats().segments_deleted, before.len() as u64 - 1);
        assert_eq!(store.summary(), expected);
        assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    });
    runtime().block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        assert_eq!(
            store.summary(),
            expected,
            "the marks survive the deleted segments"
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 39)));
        // The log goes on after the purge point.
        store.blocking_append(entries(2, 40..43)).await.unwrap();
    });
    runtime().block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        assert_eq!(store.summary().entries, 3);
        assert_eq!(store.summary().last_log_id, Some(log_id(2, 42)));
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            entries(2, 40..43)
        );
    });
}

#[test]
fn entries_a_purge_mark_covers_are_never_served_wherever_they_lie() {
    let dir = tempfile::tempdir().unwrap();
    let marks = record::Marks::<TypeConfig> {
        vote: Some(Vote::new(1, 1)),
        committed: Some(log_id(1, 5)),
        purged: Some(log_id(1, 3)),
    };
    // Entries 2 and 3 after the mark that purged them (as a log whose segments were deleted
    // down to a later `State` record can read).
    let mut written = vec![record::state::<TypeConfig>(&marks)];
    written.extend((2..6).map(|i| record::entry::<TypeConfig>(&log_id(1, i), &entry(1, i))));
    write_log(dir.path(), &written);
    runtime().block_on(async {
        let mut store = KeelLogStore::<TypeConfig>::open(dir.path(), options()).unwrap();
        assert_eq!(
            store.summary(),
            LogSummary {
                vote: Some(Vote::new(1, 1)),
                committed: Some(log_id(1, 5)),
                last_purged_log_id: Some(log_id(1, 3)),
                last_log_id: Some(log_id(1, 5)),
                entries: 2,
            }
        );
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            entries(1, 4..6)
        );
    });
}
