//! Recovery told that a snapshot covers every LSN up to `S` (`covered_through`): damage that
//! lost only LSNs at or below `S` is reported and passed over, never a reason to cut, zero or
//! refuse what lies above `S` (but under `Absolute`); damage that loses a later LSN is judged
//! as without a snapshot; a transaction committed above `S` that lost entries is refused.

mod common;

use std::path::{Path, PathBuf};

use keel_recovery::{
    Decision, Error, Finding, RecoveryOptions, RecoveryPolicy, RecoveryReport, recover_with,
};
use keel_wal::Lsn;

use common::{Applied, Collect};

const TXNS: u64 = 100;

/// 100 transactions of two writes and a commit (transaction `t` at LSNs `3t+1..=3t+3`) over
/// at least three segments, by `CommitSpan` or by `CommitTxn`.
fn log(dir: &Path, span: bool) -> Vec<PathBuf> {
    if span {
        common::span_log(dir, TXNS, 2, 1000);
    } else {
        common::committed_log(dir, TXNS, 2, 1000);
    }
    let segments = common::segments(dir);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    segments
}

fn run(
    dir: &Path,
    policy: RecoveryPolicy,
    covered_through: Option<Lsn>,
) -> (Result<RecoveryReport, Error>, Collect) {
    let mut sink = Collect::default();
    let options = RecoveryOptions {
        policy,
        covered_through,
        ..RecoveryOptions::default()
    };
    (recover_with(dir, options, &mut sink), sink)
}

fn refused(dir: &Path, policy: RecoveryPolicy, covered_through: Option<Lsn>) -> Finding {
    match run(dir, policy, covered_through).0 {
        Err(Error::Refused { finding, .. }) => finding,
        other => panic!("{policy}: expected a refusal, got {other:?}"),
    }
}

/// Every transaction met is counted once (all of them unless a gap swallowed some whole).
fn assert_counted(report: &RecoveryReport) {
    assert_counted_of(report, TXNS);
}

fn assert_counted_of(report: &RecoveryReport, met: u64) {
    let counted = report.txns_applied
        + report.txns_aborted
        + report.txns_incomplete
        + report.txns_partial
        + report.txns_covered;
    assert_eq!(counted, met, "{report}");
}

/// What a clean recovery applies above `covered_through`.
fn above(dir: &Path, covered_through: Lsn) -> Vec<Applied> {
    let (report, sink) = run(dir, RecoveryPolicy::Absolute, None);
    report.unwrap();
    sink.applied
        .into_iter()
        .filter(|a| a.commit_lsn > covered_through)
        .collect()
}

/// The single anomaly of `report`: covered damage whose inner finding `inner` accepts.
fn assert_covered(
    report: &RecoveryReport,
    lost_from: Lsn,
    resume_lsn: Lsn,
    covered_through: Lsn,
    inner: impl Fn(&Finding) -> bool,
) {
    let [anomaly] = &report.anomalies[..] else {
        panic!("one anomaly expected: {report}");
    };
    assert_eq!(anomaly.decision, Decision::Skip);
    match &anomaly.finding {
        Finding::DamageCoveredBySnapshot {
            damage,
            lost_from: from,
            resume_lsn: resume,
            covered_through: covered,
        } => {
            assert!(inner(damage), "{report}");
            assert_eq!(
                (*from, *resume, *covered),
                (lost_from, resume_lsn, covered_through)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn damage_below_the_snapshot_in_a_sealed_segment_is_passed_over() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = log(&original, false);
    let victim = common::first_lsn_of(&segments[1]) + 4;
    let covered = (common::first_lsn_of(&segments[2]) + 3).next_multiple_of(3);
    let wanted = above(&original, covered);
    assert!(!wanted.is_empty());
    for policy in [
        RecoveryPolicy::TolerateTornTail,
        RecoveryPolicy::PointInTime,
        RecoveryPolicy::SkipCorrupted,
    ] {
        let dir = base.path().join(policy.to_string());
        common::copy_dir(&original, &dir);
        common::damage_record(&dir, victim);
        let before = common::files(&dir);
        for round in 0..2 {
            let (report, sink) = run(&dir, policy, Some(covered));
            let report = report.unwrap();
            println!("{policy}, round {round}: {report}");
            assert_eq!(
                sink.applied, wanted,
                "{policy}: every commit above the snapshot"
            );
            assert_covered(
                &report,
                victim,
                victim + 1,
                covered,
                |f| matches!(f, Finding::DamageInSealedSegment { lsn, .. } if *lsn == victim),
            );
            assert_eq!(
                common::files(&dir),
                before,
                "{policy}: nothing on disk changes"
            );
            assert_eq!(report.lsns_skipped, 1);
            assert_eq!(report.txns_applied, wanted.len() as u64);
            assert_eq!(
                report.txns_partial, 0,
                "partial below the snapshot: not a finding"
            );
            assert_counted(&report);
        }
        // Without the snapshot the same damage is judged as ever.
        assert!(matches!(
            refused(&dir, RecoveryPolicy::TolerateTornTail, None),
            Finding::DamageInSealedSegment { lsn, .. } if lsn == victim
        ));
    }
    let dir = base.path().join("absolute");
    common::copy_dir(&original, &dir);
    common::damage_record(&dir, victim);
    assert!(matches!(
        refused(&dir, RecoveryPolicy::Absolute, Some(covered)),
        Finding::DamageCoveredBySnapshot { .. }
    ));
}

#[test]
fn damage_below_the_snapshot_in_the_last_segment_seals_it() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = log(&original, false);
    let victim = common::first_lsn_of(segments.last().unwrap()) + 2;
    let covered = (victim + 3).next_multiple_of(3);
    assert!(
        covered < 3 * TXNS,
        "commits above the snapshot in the last segment"
    );
    let wanted = above(&original, covered);
    for policy in [
        RecoveryPolicy::TolerateTornTail,
        RecoveryPolicy::PointInTime,
    ] {
        let dir = base.path().join(policy.to_string());
        common::copy_dir(&original, &dir);
        common::damage_record(&dir, victim);
        let before = common::files(&dir);
        let (report, sink) = run(&dir, policy, Some(covered));
        let report = report.unwrap();
        println!("{report}");
        assert_eq!(sink.applied, wanted);
        assert_covered(
            &report,
            victim,
            victim + 1,
            covered,
            |f| matches!(f, Finding::DamageBelowDurableMark { lsn, .. } | Finding::TornTail { lsn, .. } if *lsn == victim),
        );
        assert_eq!(report.next_lsn, 3 * TXNS + 1);
        assert_counted(&report);
        // Every file as it was; a fresh segment seals the damaged one.
        let after = common::files(&dir);
        let fresh = keel_wal::segment::file_name(3 * TXNS + 1);
        let mut expected = before.clone();
        expected.insert(fresh.clone(), after[&fresh]);
        assert_eq!(after, expected);
        // Sealed, the damage is judged the same way again, and appends continue.
        let (again, sink) = run(&dir, policy, Some(covered));
        let again = again.unwrap();
        assert_eq!(sink.applied, wanted);
        assert_covered(
            &again,
            victim,
            victim + 1,
            covered,
            |f| matches!(f, Finding::DamageInSealedSegment { lsn, .. } if *lsn == victim),
        );
        assert_eq!(common::files(&dir), after);
        let wal = common::open_after(&dir, policy, Some(covered));
        let lsn = wal.append(&common::txn(1, 900, 1, 10)).wait().unwrap();
        assert_eq!(lsn, 3 * TXNS + 2);
        wal.close().unwrap();
        let (third, sink) = run(&dir, policy, Some(covered));
        assert_eq!(third.unwrap().txns_applied, wanted.len() as u64 + 1);
        assert_eq!(sink.applied.last().unwrap().commit_lsn, lsn);
    }
}

/// The last record of a sealed segment is damaged: reading resumes at the next segment. One
/// LSN is lost; whether the snapshot covers it decides. (Transactions commit by `CommitSpan`:
/// the one starting right after the gap proves it lost nothing.)
#[test]
fn damage_that_loses_an_lsn_above_the_snapshot_is_judged_by_the_policy() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = log(&original, true);
    let resume = common::first_lsn_of(&segments[1]);
    let victim = resume - 1;
    common::damage_record(&original, victim);

    let dir = base.path().join("covered");
    common::copy_dir(&original, &dir);
    let (report, sink) = run(&dir, RecoveryPolicy::TolerateTornTail, Some(victim));
    let report = report.unwrap();
    assert_covered(
        &report,
        victim,
        resume,
        victim,
        |f| matches!(f, Finding::DamageInSealedSegment { lsn, .. } if *lsn == victim),
    );
    assert!(sink.applied.iter().all(|a| a.commit_lsn > victim));
    assert_counted(&report);

    let dir = base.path().join("not-covered");
    common::copy_dir(&original, &dir);
    let before = common::files(&dir);
    assert!(matches!(
        refused(&dir, RecoveryPolicy::TolerateTornTail, Some(victim - 1)),
        Finding::DamageInSealedSegment { lsn, .. } if lsn == victim
    ));
    assert_eq!(common::files(&dir), before);
    let (report, sink) = run(&dir, RecoveryPolicy::PointInTime, Some(victim - 1));
    let report = report.unwrap();
    assert_eq!(report.anomalies.len(), 1, "{report}");
    assert_eq!(report.anomalies[0].decision, Decision::Truncate);
    assert_eq!(report.next_lsn, victim);
    assert!(sink.applied.iter().all(|a| a.commit_lsn < victim));
}

/// The first write of a transaction is lost to damage the snapshot covers, but the
/// transaction commits above the snapshot: it is needed, and it is partial.
#[test]
fn a_transaction_committed_above_the_snapshot_that_lost_entries_is_partial() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = log(&original, true);
    let txn = common::first_lsn_of(&segments[1]) / 3 + 2;
    let (first, commit) = (3 * txn + 1, 3 * txn + 3);
    common::damage_record(&original, first);
    let partial = Finding::PartialTransaction {
        txn_id: txn,
        first_lsn: Some(first),
        commit_lsn: commit,
    };
    let before = common::files(&original);
    for policy in [
        RecoveryPolicy::TolerateTornTail,
        RecoveryPolicy::PointInTime,
    ] {
        assert_eq!(refused(&original, policy, Some(first)), partial, "{policy}");
        assert_eq!(common::files(&original), before);
    }
    let dir = base.path().join("skip");
    common::copy_dir(&original, &dir);
    let (report, sink) = run(&dir, RecoveryPolicy::SkipCorrupted, Some(first));
    let report = report.unwrap();
    println!("{report}");
    assert_eq!(report.txns_partial, 1);
    assert!(sink.applied.iter().all(|a| a.txn != txn));
    assert!(
        report
            .anomalies
            .iter()
            .any(|a| a.finding == partial && a.decision == Decision::Skip)
    );
    assert_counted(&report);
    // A snapshot that covers its commit holds it: no finding.
    let (report, sink) = run(&original, RecoveryPolicy::TolerateTornTail, Some(commit));
    let report = report.unwrap();
    assert_eq!(report.txns_partial, 0, "{report}");
    assert!(sink.applied.iter().all(|a| a.commit_lsn > commit));
    assert_counted(&report);
}

/// A whole segment below the snapshot has a damaged header: it is set aside, and everything
/// after it is kept.
#[test]
fn a_damaged_segment_below_the_snapshot_is_set_aside() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = log(&original, true);
    let (from, resume) = (
        common::first_lsn_of(&segments[1]),
        common::first_lsn_of(&segments[2]),
    );
    // Every transaction with an entry in the damaged segment commits at or below it.
    let covered = (resume - 1).next_multiple_of(3);
    let wanted = above(&original, covered);
    common::patch(&segments[1], 0, b"NOTKEEL!");
    for policy in [
        RecoveryPolicy::TolerateTornTail,
        RecoveryPolicy::PointInTime,
    ] {
        let dir = base.path().join(policy.to_string());
        common::copy_dir(&original, &dir);
        let (report, sink) = run(&dir, policy, Some(covered));
        let report = report.unwrap();
        println!("{report}");
        assert_eq!(sink.applied, wanted);
        assert_covered(&report, from, resume, covered, |f| {
            matches!(f, Finding::DamagedSegmentHeader { .. })
        });
        assert_eq!(report.lsns_skipped, resume - from);
        assert_eq!(
            report.segments_discarded,
            [dir.join(segments[1].file_name().unwrap())]
        );
        let swallowed = (0..TXNS)
            .filter(|t| 3 * t + 1 >= from && 3 * t + 3 < resume)
            .count() as u64;
        assert_counted_of(&report, TXNS - swallowed);
        // Set aside, it leaves a missing segment the snapshot covers just the same.
        let (again, sink) = run(&dir, policy, Some(covered));
        let again = again.unwrap();
        assert_eq!(sink.applied, wanted);
        assert_covered(&again, from, resume, covered, |f| {
            *f == Finding::MissingSegment {
                expected: from,
                found: resume,
            }
        });
    }
}
