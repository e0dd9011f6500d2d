//! A tail that ended with an error holds nothing: only a live tail keeps the log from its
//! position. Before the fix an ended tail (here: made at a position already removed, which
//! ends with `LsnRemoved`) that its owner had not dropped yet kept its hold at that position,
//! so no later removal took anything until the log grew past `tail_max_lag_bytes` (1 GiB by
//! default): a consumer holding on to a failed subscription while it re-bootstraps from a
//! snapshot stopped every checkpoint from trimming the log.

mod common;

use futures::StreamExt;
use futures::executor::block_on;
use keel_wal::{Error, RunId, WalEntry};

fn unit(i: u64) -> Vec<WalEntry> {
    vec![
        common::write(7, i, &format!("key-{i}"), 500),
        WalEntry::CommitTxn {
            run_id: RunId::from_u128(7),
            txn_id: i,
        },
    ]
}

#[test]
fn a_tail_ended_by_an_error_does_not_hold_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::small_options(keel_wal::BackendChoice::Std);
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let segments = || keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    for i in 0..300u64 {
        wal.append(&unit(i)).wait().unwrap();
    }
    assert!(wal.remove_segments_before(400).unwrap() > 0);
    let mut failed = wal.tail(1);
    assert!(matches!(failed.try_next(), Err(Error::LsnRemoved { .. })));
    assert!(block_on(failed.next()).is_none(), "ended");

    for i in 300..900u64 {
        wal.append(&unit(i)).wait().unwrap();
    }
    let before = segments().len();
    assert!(before >= 4, "{before} segments");
    // `failed` is still in scope (its owner has not dropped it yet), but it has ended.
    let removed = wal.remove_segments_before(1500).unwrap();
    assert!(
        removed >= before - 2,
        "an ended tail kept the log: {removed} of {before} segments removed"
    );

    // Moved to a position still there, it is live again: it reads, and it holds.
    let oldest = segments()[0].first_lsn;
    failed.seek(oldest);
    assert_eq!(failed.try_next().unwrap().unwrap().lsn(), oldest);
    for i in 900..1500u64 {
        wal.append(&unit(i)).wait().unwrap();
    }
    assert_eq!(wal.remove_segments_before(2500).unwrap(), 0, "held again");
    drop(failed);
    assert!(wal.remove_segments_before(2500).unwrap() > 0);
    wal.close().unwrap();
}
