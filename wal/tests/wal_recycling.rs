//! Segment recycling (`WalOptions::recycle_segments`): segments a checkpoint freed become
//! spares and later segments are written over their earlier contents, under a new salt, with
//! no zero fill. What follows the records of a recycled segment is the file's earlier
//! contents, never a torn tail: reopening after a clean close reports nothing and changes
//! nothing, the records read back whole, and a torn record of the segment's own is still
//! cut, as in a zero-filled segment.

mod common;

use std::path::Path;

use keel_recovery::{RecoveryPolicy, RecoveryReport};
use keel_wal::record::RECORD_HEADER_LEN;
use keel_wal::segment::{self, SegmentHeader};
use keel_wal::{BackendChoice, LogReader, Wal, WalOptions};

/// Record values of this size: every record the same length, so a recycled segment's new
/// records end exactly where one of its earlier records began (an earlier record header, of
/// the earlier salt, lines up with the end).
const VALUE: usize = 600;

fn options(backend: BackendChoice) -> WalOptions {
    WalOptions {
        recycle_segments: 2,
        ..common::small_options(backend)
    }
}

fn open(dir: &Path, options: WalOptions) -> (Wal, RecoveryReport) {
    struct Nothing;
    impl keel_recovery::Replay for Nothing {
        fn apply(
            &mut self,
            _: &keel_recovery::CommittedTxn<'_>,
        ) -> Result<(), keel_recovery::ReplayError> {
            Ok(())
        }
    }
    let policy = RecoveryPolicy::default();
    keel_recovery::open_log(dir, options, policy, None, &mut Nothing).unwrap()
}

fn append(wal: &Wal, from: u64, count: u64) {
    for i in from..from + count {
        let lsn = wal
            .append(&[common::write(1, i, "k", VALUE)])
            .wait()
            .unwrap();
        assert_eq!(lsn, i + 1);
    }
}

fn headers(dir: &Path) -> Vec<SegmentHeader> {
    let segments = keel_wal::dir::list_directory(dir).unwrap().segments;
    let read = |s: &keel_wal::segment::SegmentFile| {
        let file = std::fs::File::open(&s.path).unwrap();
        segment::read_header(&file, s).unwrap()
    };
    segments.iter().map(read).collect()
}

fn recycled_spares(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".recycled")
        })
        .count()
}

/// Every record from `first` to `last`, in order and as written.
fn assert_records(dir: &Path, first: u64, last: u64) {
    let records = common::read_all(dir);
    let lsns: Vec<u64> = records.iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!(lsns, (first..=last).collect::<Vec<_>>());
    for (lsn, entry) in records {
        assert_eq!(entry, common::write(1, lsn - 1, "k", VALUE), "LSN {lsn}");
    }
}

/// Fills `dir` until segments were freed and then written over: returns the first LSN kept
/// and the last one written. The last segment is a recycled one.
fn recycled_log(dir: &Path, options: &WalOptions) -> (u64, u64) {
    let (wal, _) = open(dir, options.clone());
    append(&wal, 0, 400);
    let segments = keel_wal::dir::list_directory(dir).unwrap().segments;
    assert!(segments.len() >= 5, "{segments:?}");
    let kept = segments[3].first_lsn;
    assert_eq!(wal.remove_segments_before(kept).unwrap(), 3);
    assert_eq!(
        recycled_spares(dir),
        2,
        "two kept as spares, the third deleted"
    );
    let mut written = 400;
    while wal.stats().segments_recycled < 2 {
        append(&wal, written, 20);
        written += 20;
    }
    // Into the second recycled segment, not to its end.
    append(&wal, written, 10);
    written += 10;
    assert_eq!(recycled_spares(dir), 0);
    assert!(headers(dir).last().unwrap().is_recycled());
    wal.close().unwrap();
    (kept, written)
}

#[test]
fn freed_segments_are_written_over_and_a_clean_reopen_reports_nothing() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(backend);
        let (kept, last) = recycled_log(dir.path(), &options);
        let headers = headers(dir.path());
        assert_eq!(headers.iter().filter(|h| h.is_recycled()).count(), 2);
        assert!(headers.iter().all(|h| {
            h.version == segment::FORMAT_VERSION || h.version == segment::RECYCLED_VERSION
        }));
        // The last segment's records end where its earlier contents go on, not in zeros.
        let path = &common::last_segment(dir.path());
        let mut reader = LogReader::open(dir.path()).unwrap();
        let mut end = 0;
        while let Some(record) = reader.next_record().unwrap() {
            if record.segment == headers.last().unwrap().first_lsn {
                end = record.offset + record.len;
            }
        }
        drop(reader);
        let bytes = std::fs::read(path).unwrap();
        let mut end = usize::try_from(end).unwrap();
        if backend == keel_wal::BackendChoice::UringDirect {
            // Direct writes end on a block boundary, zero-padded.
            end = end.next_multiple_of(4096);
        }
        let after = &bytes[end..end + RECORD_HEADER_LEN];
        assert!(
            after.iter().any(|&b| b != 0),
            "an earlier record follows the last one"
        );
        assert_records(dir.path(), kept, last);
        for round in 0..2 {
            let (wal, report) = open(dir.path(), options.clone());
            assert!(report.is_clean(), "round {round}: {report}");
            assert_eq!(report.bytes_truncated, 0, "round {round}: {report}");
            assert_eq!((report.cut_at, report.next_lsn), (None, last + 1));
            wal.close().unwrap();
            assert_eq!(std::fs::read(path).unwrap(), bytes, "nothing changed");
        }
        // Appends go on in the recycled segment and across the next rotations.
        let (wal, _) = open(dir.path(), options.clone());
        append(&wal, last, 150);
        wal.close().unwrap();
        let (wal, report) = open(dir.path(), options.clone());
        assert!(report.is_clean(), "{report}");
        wal.close().unwrap();
        assert_records(dir.path(), kept, last + 150);
    }
}

/// A torn record of the recycled segment's own (its header verifies, its body does not) is
/// cut as in a zero-filled segment, with what lies beyond it; the records before it stay,
/// and the next open finds nothing more.
#[test]
fn a_torn_record_of_its_own_in_a_recycled_segment_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        // No witness: it would prove the last record durable (damage, not a torn tail).
        witness_idle: None,
        ..options(BackendChoice::Std)
    };
    let (kept, last) = recycled_log(dir.path(), &options);
    let segments = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    let path = segments.last().unwrap().path.clone();
    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut at = None;
    while let Some(record) = reader.next_record().unwrap() {
        if record.lsn == last {
            at = Some(record.offset);
        }
    }
    drop(reader);
    let at = at.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[usize::try_from(at).unwrap() + RECORD_HEADER_LEN + 7] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (wal, report) = open(dir.path(), options.clone());
    assert_eq!(report.cut_at, Some(last), "{report}");
    assert_eq!(report.next_lsn, last);
    wal.close().unwrap();
    assert_records(dir.path(), kept, last - 1);
    let (wal, report) = open(dir.path(), options);
    assert!(report.is_clean(), "{report}");
    wal.close().unwrap();
}

/// Reopened with another segment size, the log starts a fresh segment after the recycled
/// one, which is then sealed with its earlier contents after its records: it still reads
/// back whole, and spares of the old size are deleted.
#[test]
fn a_recycled_segment_sealed_by_a_new_size_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(BackendChoice::Std);
    let (kept, last) = recycled_log(dir.path(), &options);
    let bigger = WalOptions {
        segment_bytes: 2 * options.segment_bytes,
        ..options.clone()
    };
    let (wal, report) = open(dir.path(), bigger.clone());
    assert!(report.is_clean(), "{report}");
    append(&wal, last, 5);
    wal.close().unwrap();
    let (wal, report) = open(dir.path(), bigger);
    assert!(report.is_clean(), "{report}");
    wal.close().unwrap();
    let headers = headers(dir.path());
    let sealed = &headers[headers.len() - 2];
    assert!(sealed.is_recycled(), "{headers:?}");
    assert_records(dir.path(), kept, last + 5);
    let spare_bytes = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("spare-")
                .then(|| e.metadata().unwrap().len())
        })
        .collect::<Vec<_>>();
    assert!(
        spare_bytes
            .iter()
            .all(|&len| len == 2 * options.segment_bytes),
        "{spare_bytes:?}"
    );
}

/// A recycled segment's salt is never its file's earlier one, so no earlier record verifies.
#[test]
fn a_recycled_segment_never_keeps_the_earlier_salt() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(BackendChoice::Std);
    let (wal, _) = open(dir.path(), options.clone());
    append(&wal, 0, 400);
    let segments = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    let old = headers(dir.path())[0];
    wal.remove_segments_before(segments[1].first_lsn).unwrap();
    while wal.stats().segments_recycled < 1 {
        append(&wal, wal.next_lsn() - 1, 20);
    }
    wal.close().unwrap();
    let recycled: Vec<_> = headers(dir.path())
        .into_iter()
        .filter(|h| h.is_recycled())
        .collect();
    assert_eq!(recycled.len(), 1);
    assert_ne!(recycled[0].salt, old.salt);
}
