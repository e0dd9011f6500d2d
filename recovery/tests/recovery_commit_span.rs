//! `CommitSpan` names its transaction's first LSN, so recovery applies a transaction only when
//! it read every entry from there on: a removed head segment, or a gap inside it, is a
//! `PartialTransaction` finding (refused by default, dropped and counted under
//! `SkipCorrupted`), never a partial apply. And a transaction that begins right after a gap is
//! applied, where a `CommitTxn` one has to be dropped.

mod common;

use std::path::Path;

use keel_recovery::{
    Decision, Error, Finding, RecoveryOptions, RecoveryPolicy, RecoveryReport, recover,
    recover_with,
};
use keel_wal::Lsn;

use common::Collect;

fn run(dir: &Path, policy: RecoveryPolicy) -> (Result<RecoveryReport, Error>, Collect) {
    let mut sink = Collect::default();
    (recover(dir, policy, &mut sink), sink)
}

/// Every transaction is counted once.
fn counted(report: &RecoveryReport) -> u64 {
    report.txns_applied
        + report.txns_aborted
        + report.txns_incomplete
        + report.txns_partial
        + report.txns_covered
}

/// Transaction 7 begins (a spilled one) in the first segment, is interleaved with 60 others,
/// and commits in a later segment; then the first segment is removed.
#[test]
fn a_commit_span_whose_head_segment_is_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), common::options()).unwrap();
    let begin = wal.next_lsn();
    wal.append(&[common::begin_txn(1, 7)]).wait().unwrap();
    let mut spans = Vec::new();
    for t in 100..160 {
        spans.push(common::append_span_txn(&wal, 1, t, 2, 1000));
    }
    wal.append(&[common::write(1, 7, "late", 10)])
        .wait()
        .unwrap();
    let commit = wal
        .append(&[common::commit_span(1, 7, begin)])
        .wait()
        .unwrap();
    wal.close().unwrap();
    let segments = common::segments(dir.path());
    assert!(segments.len() >= 3);
    let head_end = common::first_lsn_of(&segments[1]);
    std::fs::remove_file(&segments[0]).unwrap();
    // Transaction 7, and one of the others if it straddles the removed segment's end.
    let straddling = spans
        .iter()
        .filter(|(first, commit)| *first < head_end && *commit >= head_end)
        .count() as u64;
    // Transactions wholly in the removed segment are not met at all.
    let met = 61
        - spans
            .iter()
            .filter(|(_, commit)| *commit < head_end)
            .count() as u64;
    let before = common::files(dir.path());

    match run(dir.path(), RecoveryPolicy::TolerateTornTail).0 {
        Err(Error::Refused {
            finding:
                Finding::PartialTransaction {
                    first_lsn: Some(first),
                    commit_lsn,
                    ..
                },
            ..
        }) => assert!(first < head_end && commit_lsn >= head_end),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        common::files(dir.path()),
        before,
        "a refusal changes nothing"
    );

    let (report, sink) = run(dir.path(), RecoveryPolicy::SkipCorrupted);
    let report = report.unwrap();
    println!("{report}");
    assert_eq!(report.txns_partial, 1 + straddling, "{report}");
    assert!(sink.applied.iter().all(|a| a.txn != 7));
    assert!(
        report
            .anomalies
            .iter()
            .all(|a| matches!(a.finding, Finding::PartialTransaction { .. })
                && a.decision == Decision::Skip)
    );
    assert_eq!(counted(&report), met);

    // A snapshot that covers its commit holds it.
    let options = RecoveryOptions {
        policy: RecoveryPolicy::TolerateTornTail,
        covered_through: Some(commit),
        ..RecoveryOptions::default()
    };
    let report = recover_with(dir.path(), options, &mut Collect::default()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.txns_covered, met);
}

/// The middle write of a three-write transaction in a sealed segment is damaged.
#[test]
fn a_gap_in_the_middle_of_a_commit_span_transaction_drops_it() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    common::span_log(&dir, 100, 3, 500);
    let segments = common::segments(&dir);
    assert!(segments.len() >= 2);
    let (full, _) = run(&dir, RecoveryPolicy::Absolute);
    assert_eq!(full.unwrap().txns_applied, 100);
    // Transaction t at LSNs 4t+1..=4t+4 (three writes, the commit).
    let txn = common::first_lsn_of(&segments[1]) / 4 - 3;
    let middle = 4 * txn + 2;
    assert!(middle < common::first_lsn_of(&segments[1]));
    common::damage_record(&dir, middle);

    assert!(matches!(
        run(&dir, RecoveryPolicy::TolerateTornTail).0,
        Err(Error::Refused {
            finding: Finding::DamageInSealedSegment { .. },
            ..
        })
    ));
    let (report, sink) = run(&dir, RecoveryPolicy::SkipCorrupted);
    let report = report.unwrap();
    println!("{report}");
    assert_eq!(
        (
            report.txns_applied,
            report.txns_partial,
            report.txns_incomplete
        ),
        (99, 1, 0)
    );
    assert_eq!(report.lsns_skipped, 1);
    assert!(
        sink.applied
            .iter()
            .all(|a| a.txn != txn && a.entries.len() == 3)
    );
    assert_eq!(
        report.anomalies[1].finding,
        Finding::PartialTransaction {
            txn_id: txn,
            first_lsn: Some(4 * txn + 1),
            commit_lsn: 4 * txn + 4
        }
    );
    assert_eq!(counted(&report), 100);
}

/// The commit of transaction `t` is damaged: `t` is incomplete, and transaction `t + 1`
/// begins exactly where reading resumes. Its `CommitSpan` proves it whole; the same log
/// written with `CommitTxn` cannot tell, so that transaction is dropped there.
#[test]
fn a_transaction_beginning_right_after_a_gap() {
    let base = tempfile::tempdir().unwrap();
    for span in [true, false] {
        let dir = base.path().join(format!("span-{span}"));
        if span {
            common::span_log(&dir, 100, 2, 300);
        } else {
            common::committed_log(&dir, 100, 2, 300);
        }
        let txn = 40;
        let commit: Lsn = 3 * txn + 3;
        common::damage_record(&dir, commit);
        let (report, sink) = run(&dir, RecoveryPolicy::SkipCorrupted);
        let report = report.unwrap();
        println!("{report}");
        assert_eq!(report.txns_incomplete, 1, "{report}");
        assert!(sink.applied.iter().all(|a| a.txn != txn));
        let next_applied = sink.applied.iter().any(|a| a.txn == txn + 1);
        assert_eq!(next_applied, span, "{report}");
        assert_eq!(report.txns_partial, u64::from(!span));
        assert_eq!(counted(&report), 100);
    }
}

/// A spilled transaction's `BeginTxn` is damaged; its later writes follow another
/// transaction's records. Only the `CommitSpan` tells that its head is missing.
#[test]
fn a_spilled_transaction_whose_begin_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), common::options()).unwrap();
    common::append_span_txn(&wal, 1, 1, 1, 10);
    let begin = wal.next_lsn();
    wal.append(&[common::begin_txn(1, 7)]).wait().unwrap();
    common::append_span_txn(&wal, 1, 2, 2, 10);
    wal.append(&[common::write(1, 7, "a", 10)]).wait().unwrap();
    common::append_span_txn(&wal, 1, 3, 1, 10);
    wal.append(&[
        common::write(1, 7, "b", 10),
        common::commit_span(1, 7, begin),
    ])
    .wait()
    .unwrap();
    common::append_span_txn(&wal, 1, 4, 1, 10);
    wal.close().unwrap();
    common::damage_record(dir.path(), begin);
    let (report, sink) = run(dir.path(), RecoveryPolicy::SkipCorrupted);
    let report = report.unwrap();
    println!("{report}");
    let applied: Vec<u64> = sink.applied.iter().map(|a| a.txn).collect();
    assert_eq!(applied, [1, 2, 3, 4]);
    assert_eq!(report.txns_partial, 1);
    assert_eq!(counted(&report), 5);
}
