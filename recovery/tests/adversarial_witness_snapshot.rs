//! Adversarial review of the durable witness with a snapshot (`covered_through`).
//!
//! The newest records of the last segment are gone (zeroed to the end: nothing follows them),
//! and the segment's witness claims them; the caller's snapshot covers every LSN the witness
//! claims. Everything the witness proves lost is in the snapshot, and anything above it is
//! unproven, a torn tail: nothing needed is lost. Without a witness this log opens (a torn
//! tail, the log continuing above the snapshot); with it, the witness's proof must be judged
//! as damage the snapshot covers, not make the default policy refuse to open.

mod common;

use std::path::Path;

use keel_recovery::{Finding, RecoveryOptions, RecoveryPolicy, RecoveryReport, recover_with};
use keel_wal::Lsn;

use common::Collect;

fn run(dir: &Path, policy: RecoveryPolicy, covered_through: Lsn) -> RecoveryReport {
    let options = RecoveryOptions {
        policy,
        covered_through: Some(covered_through),
        ..RecoveryOptions::default()
    };
    recover_with(dir, options, &mut Collect::default())
        .unwrap_or_else(|e| panic!("{policy}, snapshot at {covered_through}: {e}"))
}

/// Ten transactions of one write (LSNs 1 to 20), closed (witness claims 20); the last two
/// transactions' records (LSNs 17 to 20) zeroed.
fn log_with_lost_tail(dir: &Path, options: keel_wal::WalOptions) {
    common::committed_log_with(dir, options, 10, 1, 100);
    let (path, from, _) = common::locate(dir, 17);
    let (_, last, len) = common::locate(dir, 20);
    common::patch(
        &path,
        from,
        &vec![0; usize::try_from(last + len - from).unwrap()],
    );
}

#[test]
fn a_witnessed_lost_tail_the_snapshot_covers_does_not_refuse_the_open() {
    let base = tempfile::tempdir().unwrap();
    // Without a witness: a torn tail below the snapshot; the log continues above it.
    let unwitnessed = base.path().join("unwitnessed");
    log_with_lost_tail(&unwitnessed, common::unwitnessed());
    let report = run(&unwitnessed, RecoveryPolicy::default(), 20);
    assert_eq!(report.next_lsn, 21, "{report}");
    // With the witness (claiming 20, all of it in the snapshot at 20): the same outcome.
    let dir = base.path().join("witnessed");
    log_with_lost_tail(&dir, common::options());
    let report = run(&dir, RecoveryPolicy::default(), 20);
    assert_eq!(report.next_lsn, 21, "{report}");
    assert!(
        report
            .anomalies
            .iter()
            .all(|a| matches!(a.finding, Finding::DamageCoveredBySnapshot { .. })),
        "{report}"
    );
    assert_eq!(report.lsns_lost, vec![(17, 20)], "{report}");
    // The next recovery judges it the same way, and the log opens and takes appends.
    let again = run(&dir, RecoveryPolicy::default(), 20);
    assert_eq!(again.next_lsn, 21, "{again}");
    let wal = common::open_after(&dir, RecoveryPolicy::default(), Some(20));
    assert_eq!(wal.next_lsn(), 21);
    // A `CommitSpan` (as the engine writes): a `CommitTxn` beginning right where reading
    // resumes after a gap is dropped by the conservative rule, with or without a witness.
    common::append_span_txn(&wal, 1, 50, 1, 10);
    wal.close().unwrap();
    let after = run(&dir, RecoveryPolicy::default(), 20);
    assert_eq!(after.next_lsn, 23, "{after}");
    assert_eq!(after.txns_applied, 1, "{after}");
}

/// A snapshot below what the witness proves lost does not cover it: still refused.
#[test]
fn a_witnessed_lost_tail_above_the_snapshot_is_still_refused() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("witnessed");
    log_with_lost_tail(&dir, common::options());
    let options = RecoveryOptions {
        policy: RecoveryPolicy::default(),
        covered_through: Some(19),
        ..RecoveryOptions::default()
    };
    match recover_with(&dir, options, &mut Collect::default()) {
        Err(keel_recovery::Error::Refused {
            finding: Finding::DamageBelowDurableMark { lsn: 17, .. },
            ..
        }) => {}
        other => panic!("expected a refusal at LSN 17, got {other:?}"),
    }
}

/// Skipped, the witnessed lost tail is counted lost: the witness proves LSNs 17 to 20 were
/// written (before, nothing was counted, as if the log had simply ended at 16).
#[test]
fn a_skipped_witnessed_lost_tail_is_counted_lost() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("witnessed");
    log_with_lost_tail(&dir, common::options());
    let options = RecoveryOptions {
        policy: RecoveryPolicy::SkipCorrupted,
        dry_run: true,
        ..RecoveryOptions::default()
    };
    let report = recover_with(&dir, options, &mut Collect::default()).unwrap();
    assert_eq!(report.lsns_lost, vec![(17, 20)], "{report}");
    assert_eq!(report.lsns_skipped, 4, "{report}");
}
