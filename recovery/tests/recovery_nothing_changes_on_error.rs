//! A recovery that fails changes nothing on disk: every finding is judged, and the repair is
//! planned and checked, before the first rename or write.

mod common;

use keel_recovery::{Error, Finding, RecoveryOptions, RecoveryPolicy, recover, recover_with};

use common::Collect;

/// Cutting before the only segment leaves no segment, so a fresh one must be started, which
/// needs `IDENTITY`. Without it recovery fails, and must fail before setting anything aside
/// (else the next recovery finds no log at all and LSNs restart at 1).
#[test]
fn a_repair_that_cannot_be_completed_is_not_started() {
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 10, 2, 100);
    let segments = common::segments(dir.path());
    assert_eq!(segments.len(), 1);
    common::patch(&segments[0], 0, b"NOTKEEL!");
    std::fs::remove_file(dir.path().join("IDENTITY")).unwrap();
    let before = common::files(dir.path());
    let result = recover(
        dir.path(),
        RecoveryPolicy::PointInTime,
        &mut Collect::default(),
    );
    assert!(matches!(result, Err(Error::Internal(_))), "{result:?}");
    assert_eq!(common::files(dir.path()), before, "the directory changed");
}

/// A transaction whose head segment was removed is refused before the torn tail after it is
/// cut: the refusal leaves the tail as it was.
#[test]
fn a_partial_transaction_is_refused_before_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), common::options()).unwrap();
    let begin = wal.next_lsn();
    wal.append(&[common::begin_txn(1, 7)]).wait().unwrap();
    for t in 100..160 {
        common::append_span_txn(&wal, 1, t, 2, 1000);
    }
    wal.append(&[
        common::write(1, 7, "late", 10),
        common::commit_span(1, 7, begin),
    ])
    .wait()
    .unwrap();
    wal.close().unwrap();
    let segments = common::segments(dir.path());
    assert!(segments.len() >= 2);
    std::fs::remove_file(&segments[0]).unwrap();
    // Debris after the last record: a torn tail that would be zeroed.
    let last = segments.last().unwrap();
    let (_, offset, len) = *common::record_spans(dir.path(), last).last().unwrap();
    common::patch(last, offset + len, b"torn write");
    let before = common::files(dir.path());
    for policy in [
        RecoveryPolicy::TolerateTornTail,
        RecoveryPolicy::PointInTime,
    ] {
        let options = RecoveryOptions {
            policy,
            covered_through: None,
            ..RecoveryOptions::default()
        };
        match recover_with(dir.path(), options, &mut Collect::default()) {
            Err(Error::Refused {
                finding: Finding::PartialTransaction { .. },
                ..
            }) => {}
            other => panic!("{policy}: {other:?}"),
        }
        assert_eq!(
            common::files(dir.path()),
            before,
            "{policy}: the directory changed"
        );
    }
}
