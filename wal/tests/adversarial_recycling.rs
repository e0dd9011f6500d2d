//! Adversarial tests of segment recycling (`WalOptions::recycle_segments`).

mod common;

use keel_wal::{BackendChoice, Lsn, Wal, WalOptions};

fn options() -> WalOptions {
    WalOptions {
        recycle_segments: 1,
        ..common::small_options(BackendChoice::Std)
    }
}

fn append(wal: &Wal, value_len: usize) -> Lsn {
    let i = wal.next_lsn();
    wal.append(&[common::write(1, i, "k", value_len)])
        .wait()
        .unwrap()
}

/// A live tail that read the last record of a segment keeps reading it until it sees its
/// end, then goes on in the next segment; it holds the log from its position (the next
/// segment's first LSN), so the segment it last read may be freed. Deleted, the tail's
/// open file still reads as it was. Recycled, the file is written over by a later segment
/// under the tail: the tail read it again from the file at the old end and reported the
/// later segment's records there as damage (`Corruption`), though nothing was damaged and
/// the record it waits for is in the next segment.
#[test]
fn a_tail_at_the_end_of_a_segment_recycled_under_it_goes_on_in_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
    // Large records: the first segment ends with a gap its next record did not fit in.
    while common::segment_lsns(dir.path()).len() < 2 {
        append(&wal, 3000);
    }
    let second = common::segment_lsns(dir.path())[1];
    append(&wal, 3000);
    let mut tail = wal.tail(1);
    for lsn in 1..second {
        assert_eq!(tail.try_next().unwrap().unwrap().lsn(), lsn);
    }
    // The tail holds from `second`: the first segment is freed, and recycled.
    assert_eq!(wal.remove_segments_before(second).unwrap(), 1);
    // Small records: the next segment, written into the recycled file, covers the
    // first one's end.
    while wal.stats().segments_recycled < 1 || common::segment_lsns(dir.path()).len() < 4 {
        append(&wal, 100);
    }
    let record = tail.try_next();
    assert!(
        matches!(&record, Ok(Some(r)) if r.lsn() == second),
        "the tail's next record: {record:?}"
    );
    drop(tail);
    wal.close().unwrap();
}

fn open_reporting(
    dir: &std::path::Path,
    options: WalOptions,
) -> (Wal, keel_recovery::RecoveryReport) {
    struct Nothing;
    impl keel_recovery::Replay for Nothing {
        fn apply(
            &mut self,
            _: &keel_recovery::CommittedTxn<'_>,
        ) -> Result<(), keel_recovery::ReplayError> {
            Ok(())
        }
    }
    let policy = keel_recovery::RecoveryPolicy::default();
    keel_recovery::open_log(dir, options, policy, None, &mut Nothing).unwrap()
}

fn recycled_spares(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut spares: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".recycled"))
        .collect();
    spares.sort();
    spares
}

/// Crash states of starting a segment in a recycled spare, built by hand: one spare whose new
/// header was written and synced but not renamed (it is a spare again, its salt now the one
/// never used), and one renamed into place with no record written (the last segment, empty,
/// its earlier contents after the header). Each open reports nothing, the log goes on across
/// rotations into the spares, and every record reads back once, as written.
#[test]
fn a_recycled_spare_caught_mid_install_reopens_clean() {
    use keel_wal::segment::{self, SegmentHeader};
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        recycle_segments: 2,
        ..options()
    };
    let (wal, _) = open_reporting(dir.path(), options.clone());
    for _ in 0..400 {
        append(&wal, 600);
    }
    let kept = common::segment_lsns(dir.path())[3];
    assert_eq!(wal.remove_segments_before(kept).unwrap(), 3);
    let next = wal.next_lsn();
    let database_id = wal.database_id();
    wal.close().unwrap();
    let spares = recycled_spares(dir.path());
    assert_eq!(spares.len(), 2, "{spares:?}");
    let install = |path: &std::path::Path, first_lsn: Lsn| {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut block = [0u8; segment::HEADER_LEN];
        file.read_exact_at(&mut block, 0).unwrap();
        let old = SegmentHeader::decode(&block, path).unwrap();
        let header = SegmentHeader::recycled(
            database_id,
            first_lsn,
            options.segment_bytes,
            None,
            Some(old.salt),
        )
        .unwrap();
        file.write_all_at(&header.encode(), 0).unwrap();
        file.sync_all().unwrap();
    };
    // The first: header written, not renamed.
    install(&spares[0], next);
    // The second: header written and renamed into place, as the last segment.
    install(&spares[1], next);
    std::fs::rename(&spares[1], dir.path().join(segment::file_name(next))).unwrap();
    let mut last = next - 1;
    for round in 0..3 {
        let (wal, report) = open_reporting(dir.path(), options.clone());
        assert!(report.is_clean(), "round {round}: {report}");
        assert_eq!(report.next_lsn, last + 1, "round {round}");
        for _ in 0..150 {
            last = append(&wal, 100 + 500 * (round % 2));
        }
        wal.close().unwrap();
    }
    let (wal, report) = open_reporting(dir.path(), options);
    assert!(report.is_clean(), "{report}");
    assert!(wal.stats().segments_recycled == 0);
    wal.close().unwrap();
    let lsns: Vec<Lsn> = common::read_all(dir.path())
        .iter()
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(lsns, (kept..=last).collect::<Vec<_>>());
    for (lsn, entry) in common::read_all(dir.path()) {
        let keel_wal::WalEntry::Write { txn_id, .. } = entry else {
            panic!("LSN {lsn}: {entry:?}")
        };
        assert_eq!(txn_id, lsn, "LSN {lsn}");
    }
}

/// A `LogReader` reading a live log (as `keel dump` does, or an engine's read-back) reads a
/// segment through its open file, a chunk at a time. A checkpoint may free that segment
/// meanwhile: deleted, the file still reads as it was; recycled, a later segment is written
/// over it, and the reader reported the later segment's records as damage in a log that has
/// none (`Corruption`, which `keel dump` follows with "the log is damaged here; `keel
/// recover` can judge and repair it"). It must say that the records it wanted were removed.
#[test]
fn a_log_reader_whose_segment_is_recycled_under_it_reports_removal_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    // Segments larger than the reader's chunk (1 MiB), so it reads the file again.
    let options = WalOptions {
        segment_bytes: 4 << 20,
        ..options()
    };
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    while common::segment_lsns(dir.path()).len() < 2 {
        append(&wal, 8000);
    }
    let mut reader = keel_wal::LogReader::open(dir.path()).unwrap();
    for lsn in 1..=10 {
        assert_eq!(reader.next_record().unwrap().unwrap().lsn, lsn);
    }
    let second = common::segment_lsns(dir.path())[1];
    assert_eq!(wal.remove_segments_before(second).unwrap(), 1);
    // Small records now: the next segment, in the recycled file, is written over its whole
    // first half with records of another salt.
    while wal.stats().segments_recycled < 1 || wal.bytes_written() < (10 << 20) {
        append(&wal, 3000);
    }
    let mut expected = 11;
    let outcome = loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                assert_eq!(record.lsn, expected, "never a record out of place");
                expected += 1;
            }
            other => break other.map(|r| r.map(|r| r.lsn)),
        }
    };
    assert!(
        matches!(outcome, Err(keel_wal::Error::LsnRemoved { .. })),
        "after LSN {}: {outcome:?}",
        expected - 1
    );
    drop(reader);
    wal.close().unwrap();
}

/// Damage inside the last segment, a recycled one (a record header flipped: it reads as the
/// file's earlier contents, so the reader's end comes early), under each policy that
/// continues: two successive recoveries agree on what the log holds, and the records read
/// back are the ones written, each once, in order.
#[test]
fn damage_in_a_recycled_last_segment_is_judged_the_same_by_successive_recoveries() {
    use keel_recovery::RecoveryPolicy;
    for policy in [RecoveryPolicy::SkipCorrupted, RecoveryPolicy::PointInTime] {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            recycle_segments: 2,
            ..options()
        };
        let (wal, _) = open_reporting(dir.path(), options.clone());
        for _ in 0..400 {
            append(&wal, 600);
        }
        let kept = common::segment_lsns(dir.path())[3];
        wal.remove_segments_before(kept).unwrap();
        while wal.stats().segments_recycled < 1 {
            append(&wal, 600);
        }
        for _ in 0..40 {
            append(&wal, 600);
        }
        wal.close().unwrap();
        let listed = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
        let last = listed.last().unwrap().clone();
        let mut reader = keel_wal::LogReader::open(dir.path()).unwrap();
        let mut in_last = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            if record.segment == last.first_lsn {
                in_last.push((record.lsn, record.offset));
            }
        }
        drop(reader);
        let (damaged_lsn, offset) = in_last[in_last.len() / 2];
        let mut bytes = std::fs::read(&last.path).unwrap();
        bytes[usize::try_from(offset).unwrap() + 9] ^= 0x10;
        std::fs::write(&last.path, &bytes).unwrap();
        let recover = || {
            struct Nothing;
            impl keel_recovery::Replay for Nothing {
                fn apply(
                    &mut self,
                    _: &keel_recovery::CommittedTxn<'_>,
                ) -> Result<(), keel_recovery::ReplayError> {
                    Ok(())
                }
            }
            let (wal, report) =
                keel_recovery::open_log(dir.path(), options.clone(), policy, None, &mut Nothing)
                    .unwrap_or_else(|e| panic!("{policy}: {e}"));
            wal.close().unwrap();
            report
        };
        let first = recover();
        let second = recover();
        let third = recover();
        let held = |r: &keel_recovery::RecoveryReport| (r.records, r.next_lsn);
        assert_eq!(
            held(&second),
            held(&third),
            "{policy}: {second}\nthen {third}"
        );
        assert_eq!(
            first.next_lsn, second.next_lsn,
            "{policy}: {first}\nthen {second}"
        );
        assert_eq!(
            first.lsns_lost, second.lsns_lost,
            "{policy}: {first}\nthen {second}"
        );
        match policy {
            RecoveryPolicy::PointInTime => {
                assert_eq!(first.cut_at, Some(damaged_lsn), "{first}");
                assert_eq!(first.next_lsn, damaged_lsn, "{first}");
                assert!(second.is_clean(), "{second}");
                let lsns: Vec<Lsn> = common::read_all(dir.path())
                    .iter()
                    .map(|(l, _)| *l)
                    .collect();
                assert_eq!(lsns, (kept..damaged_lsn).collect::<Vec<_>>());
            }
            _ => {
                assert_eq!(first.lsns_lost, vec![(damaged_lsn, damaged_lsn)], "{first}");
                assert_eq!(first.records, second.records, "{first}\nthen {second}");
            }
        }
    }
}

/// A reader that listed the log before a removal took its next segments: opening the next
/// one found no file. It said so as an I/O error (`NotFound`); a segment removed under a
/// reader is `LsnRemoved`, naming where the log now starts, however the removal went.
#[test]
fn a_reader_whose_next_segment_was_removed_says_lsn_removed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
    while common::segment_lsns(dir.path()).len() < 4 {
        append(&wal, 3000);
    }
    let third = common::segment_lsns(dir.path())[2];
    let mut reader = keel_wal::LogReader::open(dir.path()).unwrap();
    assert_eq!(wal.remove_segments_before(third).unwrap(), 2);
    let outcome = loop {
        match reader.next_record() {
            Ok(Some(_)) => {}
            other => break other.map(|r| r.map(|r| r.lsn)),
        }
    };
    assert!(
        matches!(outcome, Err(keel_wal::Error::LsnRemoved { oldest, .. }) if oldest == third),
        "{outcome:?}"
    );
    drop(reader);
    wal.close().unwrap();
}
