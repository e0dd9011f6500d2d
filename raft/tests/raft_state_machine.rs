//! The state machine on its own: what `apply` does to the replicated map and its marks, that a
//! reopen gives the same answer, and that snapshot installs which do not match what they claim
//! are refused and change nothing.

use std::collections::BTreeSet;
use std::io::Cursor;

use keel_raft::{KeelStateMachine, KvRequest, KvResponse, SM_RUN, TypeConfig};
use keel_wal::BackendChoice;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder,
    SnapshotMeta, StoredMembership,
};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn options() -> keel::Options {
    keel::Options {
        backend: BackendChoice::Std,
        segment_bytes: 1 << 20,
        max_record_bytes: 64 << 10,
        ..keel::Options::default()
    }
}

fn normal(index: u64, request: KvRequest) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(request),
    }
}

fn set(index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
    normal(
        index,
        KvRequest::Set {
            key: key.into(),
            value: value.into(),
        },
    )
}

fn delete(index: u64, key: &str) -> Entry<TypeConfig> {
    normal(index, KvRequest::Delete { key: key.into() })
}

fn membership() -> Membership<u64, BasicNode> {
    Membership::new(vec![BTreeSet::from([1, 2])], None)
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn apply_sets_deletes_and_records_membership_and_a_reopen_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = KeelStateMachine::open(dir.path(), options()).await.unwrap();
        let replies = sm
            .apply(vec![
                set(1, "a", "1"),
                set(2, "b", "2"),
                Entry {
                    log_id: log_id(3),
                    payload: EntryPayload::Blank,
                },
                delete(4, "a"),
                Entry {
                    log_id: log_id(5),
                    payload: EntryPayload::Membership(membership()),
                },
                set(6, "c", "3"),
            ])
            .await
            .unwrap();
        let value = |v: Option<&str>| KvResponse {
            value: v.map(str::to_string),
        };
        assert_eq!(
            replies,
            vec![
                value(Some("1")),
                value(Some("2")),
                value(None),
                value(None),
                value(None),
                value(Some("3")),
            ]
        );
        assert_eq!(sm.data().await.unwrap(), pairs(&[("b", "2"), ("c", "3")]));
        assert_eq!(sm.get("a").await.unwrap(), None, "deleted");
        assert_eq!(sm.get("b").await.unwrap().as_deref(), Some("2"));
        assert_eq!(sm.applied_index().current(), Some(6));
        // The state lives in its own run of the database underneath.
        let db = sm.database().await;
        assert!(db.list_runs().iter().any(|r| r.name == SM_RUN));
    }
    let mut sm = KeelStateMachine::open(dir.path(), options()).await.unwrap();
    assert_eq!(sm.data().await.unwrap(), pairs(&[("b", "2"), ("c", "3")]));
    assert_eq!(sm.applied_index().current(), Some(6));
    let (applied, stored) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(6)));
    assert_eq!(stored, StoredMembership::new(Some(log_id(5)), membership()));
}

#[tokio::test]
async fn an_empty_apply_answers_nothing_and_moves_no_mark() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = KeelStateMachine::open(dir.path(), options()).await.unwrap();
    sm.apply(vec![set(1, "a", "1")]).await.unwrap();
    let commits = sm.database().await.stats().commits;
    let replies = sm.apply(Vec::new()).await.unwrap();
    assert!(replies.is_empty());
    assert_eq!(sm.applied_index().current(), Some(1));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
    assert_eq!(
        sm.database().await.stats().commits,
        commits,
        "no transaction was committed"
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _sm = KeelStateMachine::open(dir.path(), options()).await.unwrap();
    let error = KeelStateMachine::open(dir.path(), options())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("when Read StateMachine: "), "{error}");
    assert!(
        error.contains("lock"),
        "says the directory is in use: {error}"
    );
}

/// A snapshot built by a second state machine at `index`, with key `k` set to `value`.
async fn snapshot_at(
    index: u64,
    value: &str,
) -> (SnapshotMeta<u64, BasicNode>, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = KeelStateMachine::open(dir.path(), options()).await.unwrap();
    leader.apply(vec![set(index, "k", value)]).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (snapshot.meta, snapshot.snapshot.into_inner(), dir)
}

#[tokio::test]
async fn an_install_whose_data_is_not_at_its_metadata_is_refused_and_changes_nothing() {
    let (meta, bytes, _leader) = snapshot_at(9, "leader").await;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = KeelStateMachine::open(dir.path(), options()).await.unwrap();
    sm.apply(vec![set(1, "k", "mine")]).await.unwrap();

    let lying = SnapshotMeta {
        last_log_id: Some(log_id(12)),
        ..meta.clone()
    };
    let error = sm
        .install_snapshot(&lying, Box::new(Cursor::new(bytes.clone())))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("when Read Snapshot(None): "), "{text}");
    assert!(text.contains("the snapshot's data is at"), "{text}");
    assert!(
        text.contains("index: 9") && text.contains("index: 12"),
        "{text}"
    );

    // Bytes that are no snapshot image at all.
    let error = sm
        .install_snapshot(&meta, Box::new(Cursor::new(b"not an image".to_vec())))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("when Read Snapshot(None): "), "{error}");

    assert_eq!(sm.data().await.unwrap(), pairs(&[("k", "mine")]));
    assert_eq!(sm.applied_index().current(), Some(1));

    // The honest install goes through.
    sm.install_snapshot(&meta, Box::new(Cursor::new(bytes)))
        .await
        .unwrap();
    assert_eq!(sm.data().await.unwrap(), pairs(&[("k", "leader")]));
    assert_eq!(sm.applied_index().current(), Some(9));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
}

#[tokio::test]
async fn an_image_without_the_state_machine_run_or_snapshot_id_is_refused() {
    // A checkpoint of a database that is no state machine's.
    let other = tempfile::tempdir().unwrap();
    let db = keel::Database::open(other.path(), options()).unwrap();
    let run = db.begin_run("something-else").await.unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"x", b"y").unwrap();
    txn.commit().await.unwrap();
    let lsn = db.checkpoint().await.unwrap();
    let foreign = db.read_snapshot(lsn).unwrap();

    let (meta, _, _leader) = snapshot_at(3, "v").await;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = KeelStateMachine::open(dir.path(), options()).await.unwrap();
    let error = sm
        .install_snapshot(&meta, Box::new(Cursor::new(foreign)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("the snapshot has no run {SM_RUN:?}")),
        "{error}"
    );

    // A checkpoint of a state machine's database taken by hand: no snapshot id.
    let hand = tempfile::tempdir().unwrap();
    let mut by_hand = KeelStateMachine::open(hand.path(), options())
        .await
        .unwrap();
    by_hand.apply(vec![set(3, "k", "v")]).await.unwrap();
    let db = by_hand.database().await;
    let lsn = db.checkpoint().await.unwrap();
    let unnamed = db.read_snapshot(lsn).unwrap();
    let error = sm
        .install_snapshot(&meta, Box::new(Cursor::new(unnamed)))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("carries no snapshot id"), "{error}");
    // ... and it is no current snapshot openraft could send.
    assert!(by_hand.get_current_snapshot().await.unwrap().is_none());

    assert!(sm.data().await.unwrap().is_empty(), "nothing was installed");
    assert_eq!(sm.applied_index().current(), None);
}
