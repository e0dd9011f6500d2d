//! Transactions: committed ones reach the sink whole, in commit-LSN order; aborted and
//! incomplete ones are dropped and counted; interleaving and segment boundaries do not matter.

mod common;

use keel_recovery::{RecoveryPolicy, recover};
use keel_wal::{RunId, WalEntry};

use common::{Collect, commit, write};

fn begin(run: u128, txn_id: u64) -> WalEntry {
    WalEntry::BeginTxn {
        run_id: RunId::from_u128(run),
        txn_id,
    }
}

fn abort(run: u128, txn_id: u64) -> WalEntry {
    WalEntry::AbortTxn {
        run_id: RunId::from_u128(run),
        txn_id,
    }
}

#[test]
fn interleaved_aborted_and_incomplete_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), common::options()).unwrap();
    // Run 1: transactions 10 and 11 interleaved; 11 commits first. Transaction 12 aborts,
    // 13 never ends. Run 2 reuses txn id 10: a different transaction.
    let units: Vec<Vec<WalEntry>> = vec![
        vec![begin(1, 10), write(1, 10, "a", 5)],          // LSN 1-2
        vec![begin(1, 11), write(1, 11, "b", 6)],          // 3-4
        vec![write(1, 10, "c", 7)],                        // 5
        vec![begin(1, 12), write(1, 12, "x", 3)],          // 6-7
        vec![commit(1, 11)],                               // 8
        vec![write(2, 10, "other-run", 4), commit(2, 10)], // 9-10
        vec![abort(1, 12)],                                // 11
        vec![begin(1, 13), write(1, 13, "never", 2)],      // 12-13
        vec![commit(1, 10)],                               // 14
    ];
    for unit in &units {
        wal.append(unit).wait().unwrap();
    }
    wal.close().unwrap();
    let mut sink = Collect::default();
    let report = recover(dir.path(), RecoveryPolicy::default(), &mut sink).unwrap();
    assert!(report.is_clean(), "{report}");
    let order: Vec<(u128, u64, u64)> = sink
        .applied
        .iter()
        .map(|a| (a.run, a.txn, a.commit_lsn))
        .collect();
    assert_eq!(
        order,
        [(1, 11, 8), (2, 10, 10), (1, 10, 14)],
        "commit-LSN order"
    );
    let lsns = |i: usize| {
        sink.applied[i]
            .entries
            .iter()
            .map(|e| e.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(lsns(0), [4]);
    assert_eq!(lsns(1), [9]);
    assert_eq!(
        lsns(2),
        [2, 5],
        "txn 10 of run 1 gets only its own writes, in LSN order"
    );
    assert_eq!(sink.applied[2].entries[1].1, write(1, 10, "c", 7));
    assert_eq!(
        (
            report.txns_applied,
            report.txns_aborted,
            report.txns_incomplete
        ),
        (3, 1, 1)
    );
    assert_eq!(report.last_lsn, Some(14));
    assert!(report.peak_txn_bytes > 0);
}

#[test]
fn a_transaction_spanning_segments_is_applied_whole() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), common::options()).unwrap();
    wal.append(&[begin(1, 7)]).wait().unwrap();
    // ~200 KiB of writes in separate units: crosses several 64 KiB segments.
    for i in 0..50 {
        wal.append(&[write(1, 7, &format!("k{i}"), 4000)])
            .wait()
            .unwrap();
        if i == 25 {
            wal.append(&common::txn(1, 8, 1, 10)).wait().unwrap();
        }
    }
    wal.append(&[commit(1, 7)]).wait().unwrap();
    wal.close().unwrap();
    assert!(common::segments(dir.path()).len() >= 3);
    let mut sink = Collect::default();
    let report = recover(dir.path(), RecoveryPolicy::default(), &mut sink).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(sink.applied.len(), 2);
    assert_eq!(sink.applied[0].txn, 8);
    let big = &sink.applied[1];
    assert_eq!(big.txn, 7);
    assert_eq!(big.entries.len(), 50);
    for (i, (_, entry)) in big.entries.iter().enumerate() {
        assert_eq!(entry, &write(1, 7, &format!("k{i}"), 4000));
    }
    assert!(report.segments >= 3);
    // Memory held was one transaction's worth, not the log's.
    assert!(
        report.peak_txn_bytes < 50 * 4200,
        "{}",
        report.peak_txn_bytes
    );
}

#[test]
fn a_sink_error_stops_recovery_with_the_commit_lsn() {
    struct Fails;
    impl keel_recovery::Replay for Fails {
        fn apply(
            &mut self,
            _: &keel_recovery::CommittedTxn<'_>,
        ) -> Result<(), keel_recovery::ReplayError> {
            Err("sink is full".into())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 2, 1, 10);
    match recover(dir.path(), RecoveryPolicy::default(), &mut Fails) {
        Err(error @ keel_recovery::Error::Replay { .. }) => {
            assert_eq!(
                error.to_string(),
                "replaying the transaction committed at LSN 2 failed: sink is full"
            );
            let keel_recovery::Error::Replay { lsn, kind, source } = error else {
                unreachable!()
            };
            assert_eq!((lsn, kind), (2, keel_wal::EntryKind::CommitTxn));
            assert_eq!(source.to_string(), "sink is full");
        }
        other => panic!("expected a replay error, got {other:?}"),
    }
}
