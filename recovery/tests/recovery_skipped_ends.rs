//! What a skip loses at the end of a segment is counted once and named for what it is: the
//! unreadable rest of a sealed segment is damage in that segment (never a missing segment),
//! and segments missing before a skipped last segment are counted.

mod common;

use keel_recovery::{Decision, Finding, RecoveryPolicy, recover};

use common::Collect;

/// A log of 100 transactions over at least three segments; its segment files.
fn log(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    common::committed_log(dir, 100, 2, 1000);
    let segments = common::segments(dir);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    segments
}

/// The last record of a sealed segment is damaged: nothing in that segment follows to resume
/// at; the next segment, present and intact, does.
#[test]
fn damage_at_the_end_of_a_sealed_segment_is_not_a_missing_segment() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = log(&original);
    let (victim, _, _) = *common::record_spans(&original, &segments[0])
        .last()
        .unwrap();
    assert_eq!(victim + 1, common::first_lsn_of(&segments[1]));
    common::damage_record(&original, victim);

    let dir = base.path().join("skip");
    common::copy_dir(&original, &dir);
    let report = recover(&dir, RecoveryPolicy::SkipCorrupted, &mut Collect::default()).unwrap();
    println!("{report}");
    assert!(
        matches!(
            report.anomalies[0].finding,
            Finding::DamageInSealedSegment { lsn, .. } if lsn == victim
        ),
        "{report}"
    );
    assert!(
        !report
            .anomalies
            .iter()
            .any(|a| matches!(a.finding, Finding::MissingSegment { .. })),
        "the next segment is present: {report}"
    );
    assert_eq!(report.lsns_skipped, 1, "{report}");

    let dir = base.path().join("pit");
    common::copy_dir(&original, &dir);
    let report = recover(&dir, RecoveryPolicy::PointInTime, &mut Collect::default()).unwrap();
    assert_eq!(report.anomalies.len(), 1, "{report}");
    assert_eq!(report.anomalies[0].decision, Decision::Truncate);
    assert_eq!(report.next_lsn, victim, "{report}");
}

/// The last segment's header is damaged and the segment before it is missing: the LSNs of
/// the missing segment were written (the last segment's name starts after them) and are
/// lost; the skipped segment's own records cannot be counted (nothing verifiable says how
/// many there were).
#[test]
fn segments_missing_before_a_skipped_last_segment_are_counted() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    let segments = log(&dir);
    let n = segments.len();
    let missing_from = common::first_lsn_of(&segments[n - 2]);
    let last_from = common::first_lsn_of(&segments[n - 1]);
    std::fs::remove_file(&segments[n - 2]).unwrap();
    common::patch(&segments[n - 1], 0, b"NOTKEEL!");
    let report = recover(&dir, RecoveryPolicy::SkipCorrupted, &mut Collect::default()).unwrap();
    println!("{report}");
    assert!(
        report.anomalies.iter().any(|a| a.finding
            == Finding::MissingSegment {
                expected: missing_from,
                found: last_from
            }),
        "{report}"
    );
    assert_eq!(report.lsns_skipped, last_from - missing_from, "{report}");
    assert_eq!(report.next_lsn, missing_from);
}
