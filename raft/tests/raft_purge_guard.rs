//! The purge guard: a purge past what the state machine applied waits for it (as after a
//! follower's snapshot install, which openraft 0.9 does not wait for before purging), and
//! fails without touching the log when the state machine does not get there in time.

use std::time::Duration;

use keel_raft::{KeelLogStore, KeelStateMachine, TypeConfig};
use keel_wal::{BackendChoice, WalOptions};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, LogId};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn blanks(indexes: std::ops::Range<u64>) -> Vec<Entry<TypeConfig>> {
    indexes.map(|i| Entry::new_blank(log_id(i))).collect()
}

fn wal_options() -> WalOptions {
    WalOptions {
        backend: BackendChoice::Std,
        segment_bytes: 1 << 20,
        max_record_bytes: 64 << 10,
        ..WalOptions::default()
    }
}

fn sm_options() -> keel::Options {
    keel::Options {
        backend: BackendChoice::Std,
        segment_bytes: 1 << 20,
        max_record_bytes: 64 << 10,
        ..keel::Options::default()
    }
}

#[tokio::test]
async fn a_purge_past_the_applied_index_waits_for_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = KeelStateMachine::open(dir.path().join("sm"), sm_options())
        .await
        .unwrap();
    let mut log = KeelLogStore::<TypeConfig>::open(dir.path().join("log"), wal_options())
        .unwrap()
        .with_purge_guard(sm.applied_index(), Duration::from_secs(30));
    log.blocking_append(blanks(0..10)).await.unwrap();
    sm.apply(blanks(0..5)).await.unwrap();
    assert_eq!(sm.applied_index().current(), Some(4));

    // Within what was applied: no wait.
    log.purge(log_id(3)).await.unwrap();

    // Past it: the purge waits until the state machine gets there.
    let mut purging = log.clone();
    let purge = tokio::spawn(async move { purging.purge(log_id(8)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!purge.is_finished(), "the purge must wait for index 8");
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3)));
    sm.apply(blanks(5..9)).await.unwrap();
    purge.await.unwrap().unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(8)));
}

#[tokio::test]
async fn a_purge_the_state_machine_never_reaches_fails_and_leaves_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let sm = KeelStateMachine::open(dir.path().join("sm"), sm_options())
        .await
        .unwrap();
    let path = dir.path().join("log");
    {
        let mut log = KeelLogStore::<TypeConfig>::open(&path, wal_options())
            .unwrap()
            .with_purge_guard(sm.applied_index(), Duration::from_millis(50));
        log.blocking_append(blanks(0..10)).await.unwrap();
        let error = log.purge(log_id(8)).await.unwrap_err().to_string();
        assert!(error.contains("not purging through index 8"), "{error}");
    }
    let mut log = KeelLogStore::<TypeConfig>::open(&path, wal_options()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(state.last_log_id, Some(log_id(9)));
}
