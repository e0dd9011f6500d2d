//! A crash in the middle of a recovery (part of a truncation done) leaves a directory that
//! recovers to the same result; and a zeroed record that a later record proves durable is
//! never taken for the end of the log.

mod common;

use std::path::Path;

use keel_recovery::{Error, Finding, RecoveryPolicy, RecoveryReport, recover};
use keel_wal::CorruptionReason;

use common::Collect;

fn recovered(dir: &Path, policy: RecoveryPolicy) -> (RecoveryReport, Collect) {
    let mut sink = Collect::default();
    let report = recover(dir, policy, &mut sink).unwrap_or_else(|e| panic!("{e}"));
    (report, sink)
}

#[test]
fn a_zeroed_record_below_the_durable_mark_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    common::committed_log(dir.path(), 10, 1, 50);
    let segment = common::segments(dir.path()).pop().unwrap();
    let spans = common::record_spans(dir.path(), &segment);
    let (lsn, offset, len) = spans[4];
    common::patch(&segment, offset, &vec![0; usize::try_from(len).unwrap()]);
    match recover(
        dir.path(),
        RecoveryPolicy::default(),
        &mut Collect::default(),
    ) {
        Err(Error::Refused {
            finding:
                Finding::DamageBelowDurableMark {
                    lsn: found, reason, ..
                },
            offset: at,
            ..
        }) => {
            assert_eq!((found, at), (lsn, offset));
            assert_eq!(reason, CorruptionReason::ZeroedRecord);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_crash_part_way_through_zeroing_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    common::committed_log_with(&original, common::unwitnessed(), 10, 2, 300);
    let segment_name = common::segments(&original).pop().unwrap();
    let spans = common::record_spans(&original, &segment_name);
    let torn_at = spans[spans.len() - 3].1 + 16;
    let name = segment_name.file_name().unwrap();
    // A torn last batch followed by garbage (as a partly written or reused block leaves).
    common::patch(&original.join(name), torn_at, &[0xab; 5000]);
    let full = base.path().join("full");
    common::copy_dir(&original, &full);
    let (expected, expected_sink) = recovered(&full, RecoveryPolicy::default());
    assert_eq!(expected.txns_applied, 9, "{expected}");
    let cut = expected.anomalies[0].offset;
    for done in [0u64, 8, 16, 100, 1000, 4999] {
        let dir = base.path().join(format!("crashed-{done}"));
        common::copy_dir(&original, &dir);
        // The crashed recovery had zeroed `done` bytes from the cut on.
        common::patch(
            &dir.join(name),
            cut,
            &vec![0; usize::try_from(done).unwrap()],
        );
        let (report, sink) = recovered(&dir, RecoveryPolicy::default());
        assert_eq!(sink.applied, expected_sink.applied, "zeroed {done}");
        assert_eq!(
            report.next_lsn, expected.next_lsn,
            "zeroed {done}: {report}"
        );
        let (again, _) = recovered(&dir, RecoveryPolicy::default());
        assert!(again.is_clean() && again.bytes_truncated == 0, "{again}");
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(full.join(name)).unwrap()
        );
    }
}

#[test]
fn a_crash_part_way_through_setting_segments_aside() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    common::committed_log(&original, 160, 2, 1000);
    let segments = common::segments(&original);
    assert!(segments.len() >= 4, "{} segments", segments.len());
    std::fs::remove_file(&segments[1]).unwrap();
    let full = base.path().join("full");
    common::copy_dir(&original, &full);
    let (expected, expected_sink) = recovered(&full, RecoveryPolicy::PointInTime);
    assert_eq!(
        expected.segments_discarded.len(),
        segments.len() - 2,
        "{expected}"
    );
    // The crashed recovery set aside only the newest segments (it goes newest first).
    for done in 1..segments.len() - 2 {
        let dir = base.path().join(format!("crashed-{done}"));
        common::copy_dir(&original, &dir);
        for segment in segments.iter().rev().take(done) {
            let name = segment.file_name().unwrap();
            let mut aside = name.to_owned();
            aside.push(keel_recovery::DISCARDED_SUFFIX);
            std::fs::rename(dir.join(name), dir.join(aside)).unwrap();
        }
        let (report, sink) = recovered(&dir, RecoveryPolicy::PointInTime);
        assert_eq!(sink.applied, expected_sink.applied, "set aside {done}");
        assert_eq!(report.next_lsn, expected.next_lsn, "set aside {done}");
        let (again, _) = recovered(&dir, RecoveryPolicy::PointInTime);
        assert!(again.is_clean(), "{again}");
        assert_eq!(
            common::segments(&dir),
            common::segments(&full)
                .iter()
                .map(|p| dir.join(p.file_name().unwrap()))
                .collect::<Vec<_>>()
        );
    }
}
