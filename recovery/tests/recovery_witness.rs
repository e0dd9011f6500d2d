//! The durable witness in recovery: damage to the newest acknowledged records, with nothing
//! written after them, is refused once a witness claims them (at close, or after the writer
//! went idle) instead of being cut as a torn tail; a cut below a witness lowers it, so a later
//! torn tail of new records is cut, not refused; a sealed segment that ends below its witness
//! is damaged; version-1 segments have no witness and recover as before.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use keel_recovery::{Error, Finding, RecoveryOptions, RecoveryPolicy, recover, recover_with};
use keel_wal::segment::{self, HEADER_BLOCK_LEN, SegmentHeader};
use keel_wal::{CorruptionReason, DurableProof, Lsn, Witness};

use common::Collect;

fn witness_of(path: &Path) -> Option<Witness> {
    let dir = path.parent().unwrap();
    let listing = keel_wal::dir::list_directory(dir).unwrap();
    let segment = listing.segments.iter().find(|s| s.path == path).unwrap();
    let file = std::fs::File::open(path).unwrap();
    let header = segment::read_header(&file, segment).unwrap();
    keel_wal::witness::read(&file, path, &header).unwrap()
}

/// The refusal's finding, or a panic naming what happened instead.
fn refusal(dir: &Path) -> (u64, Finding) {
    match recover(dir, RecoveryPolicy::default(), &mut Collect::default()) {
        Err(Error::Refused {
            offset, finding, ..
        }) => (offset, finding),
        Ok(report) => panic!("expected a refusal, recovered: {report}"),
        Err(other) => panic!("expected a refusal, got {other}"),
    }
}

/// Ten transactions of one write (LSNs 1 to 20), the log closed: the close's witness claims
/// them all. Damaged or gone, the last record (LSN 20) is refused. (Before the witness both
/// were cut as a torn tail, transaction 9 lost.)
#[test]
fn damage_to_the_last_acknowledged_record_is_refused_after_a_close() {
    let base = tempfile::tempdir().unwrap();
    let pristine = base.path().join("log");
    common::committed_log(&pristine, 10, 1, 60);
    let (_, offset, len) = common::locate(&pristine, 20);
    for zeroed in [false, true] {
        let dir = base.path().join(format!("zeroed-{zeroed}"));
        common::copy_dir(&pristine, &dir);
        if zeroed {
            let (path, ..) = common::locate(&dir, 20);
            common::patch(&path, offset, &vec![0u8; usize::try_from(len).unwrap()]);
        } else {
            common::damage_record(&dir, 20);
        }
        let (at, finding) = refusal(&dir);
        assert_eq!(at, offset, "zeroed {zeroed}");
        match finding {
            Finding::DamageBelowDurableMark { lsn: 20, .. } => {}
            other => panic!("zeroed {zeroed}: {other}"),
        }
    }
}

/// The same, with the log still open: the writer went idle and wrote its witness, and the
/// directory is copied as a crash would leave it.
#[test]
fn damage_to_the_last_acknowledged_record_is_refused_once_the_writer_went_idle() {
    let base = tempfile::tempdir().unwrap();
    let live = base.path().join("live");
    let options = keel_wal::WalOptions {
        witness_idle: Some(Duration::from_millis(1)),
        ..common::options()
    };
    let wal = keel_recovery::open_wal(&live, options).unwrap();
    for t in 0..5 {
        wal.append(&common::txn(1, t, 1, 60)).wait().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.stats().witness_lsn < 10 {
        assert!(
            Instant::now() < deadline,
            "the idle writer wrote no witness"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let crashed = base.path().join("crashed");
    common::copy_dir(&live, &crashed);
    drop(wal);
    common::damage_record(&crashed, 10);
    let (_, finding) = refusal(&crashed);
    match finding {
        Finding::DamageBelowDurableMark {
            lsn: 10,
            proof: DurableProof::Witness {
                durable_lsn: 10, ..
            },
            ..
        } => {}
        other => panic!("{other}"),
    }
}

/// A point-in-time cut at LSN 7, below a witness claiming 20, lowers the witness to LSN 6 (a
/// dry run changes nothing): new records written after the cut and then torn are a torn
/// tail again, not damage below a stale witness.
#[test]
fn a_cut_below_the_witness_lowers_it_so_a_later_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::committed_log(dir, 10, 1, 60);
    let segment_path = common::segments(dir).pop().unwrap();
    assert_eq!(witness_of(&segment_path).unwrap().durable_lsn, 20);
    let (_, cut_offset, _) = common::locate(dir, 7);
    common::damage_record(dir, 7);
    let dry = RecoveryOptions {
        policy: RecoveryPolicy::PointInTime,
        dry_run: true,
        ..RecoveryOptions::default()
    };
    recover_with(dir, dry, &mut Collect::default()).unwrap();
    assert_eq!(witness_of(&segment_path).unwrap().durable_lsn, 20);
    let report = recover(dir, RecoveryPolicy::PointInTime, &mut Collect::default()).unwrap();
    assert_eq!(report.next_lsn, 7, "{report}");
    let lowered = witness_of(&segment_path).unwrap();
    assert_eq!((lowered.durable_lsn, lowered.end_offset), (6, cut_offset));
    // New records 7 to 10 where the cut was, no witness written after them; then torn.
    let wal = keel_recovery::open_wal(dir, common::unwitnessed()).unwrap();
    for t in 20..22 {
        wal.append(&common::txn(2, t, 1, 60)).wait().unwrap();
    }
    wal.close().unwrap();
    common::damage_record(dir, 10);
    let mut sink = Collect::default();
    let report = recover(dir, RecoveryPolicy::default(), &mut sink)
        .unwrap_or_else(|e| panic!("a torn tail above the lowered witness: {e}"));
    assert_eq!(report.next_lsn, 10, "{report}");
    assert!(
        matches!(
            report.anomalies[..],
            [ref a] if matches!(a.finding, Finding::TornTail { lsn: 10, .. })
        ),
        "{report}"
    );
    let anomaly = report.anomalies[0].to_string();
    assert!(
        anomaly.contains("torn tail at LSN 10 (never acknowledged as durable)")
            && anomaly.ends_with("(truncated)"),
        "{anomaly}"
    );
    assert_eq!(sink.applied.len(), 3 + 1, "transactions 0-2 and 20");
}

/// A sealed segment whose records end below its own witness lost acknowledged records: it is
/// damage (not the segment's end), refused by default; a point-in-time cut there lowers that
/// segment's witness (the log now ends in it), and the next recovery is clean.
#[test]
fn a_sealed_segment_ending_below_its_witness_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::committed_log(dir, 3, 1, 60);
    let sealed = common::segments(dir).pop().unwrap();
    assert_eq!(witness_of(&sealed).unwrap().durable_lsn, 6);
    // Enough to rotate into new segments (64 KiB segments).
    let wal = keel_recovery::open_wal(dir, common::options()).unwrap();
    for t in 3..40 {
        wal.append(&common::txn(1, t, 1, 3000)).wait().unwrap();
    }
    wal.close().unwrap();
    assert!(common::segments(dir).len() >= 2);
    // The sealed segment's records end at LSN 6 only if the segment rotated after them:
    // zero its last records from LSN 5 on.
    let spans = common::record_spans(dir, &sealed);
    let last: Lsn = spans.last().unwrap().0;
    let (_, from, _) = common::locate(dir, 5);
    let end = spans.last().map(|&(_, o, l)| o + l).unwrap();
    common::patch(
        &sealed,
        from,
        &vec![0; usize::try_from(end - from).unwrap()],
    );
    let (at, finding) = refusal(dir);
    assert_eq!(at, from);
    match finding {
        Finding::DamageInSealedSegment {
            lsn: 5,
            reason: CorruptionReason::ZeroedRecord,
        } => {}
        other => panic!("{other} (the sealed segment's last LSN was {last})"),
    }
    let report = recover(dir, RecoveryPolicy::PointInTime, &mut Collect::default()).unwrap();
    assert_eq!(report.next_lsn, 5, "{report}");
    let lowered = witness_of(&sealed).unwrap();
    assert_eq!((lowered.durable_lsn, lowered.end_offset), (4, from));
    let again = recover(dir, RecoveryPolicy::default(), &mut Collect::default()).unwrap();
    assert!(again.is_clean(), "{again}");
}

/// A version-1 segment has no witness: whatever its header block holds past the header, the
/// damaged last record is a torn tail, cut as before.
#[test]
fn version_1_segments_have_no_witness_and_recover_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::committed_log(dir, 5, 1, 60);
    let path = common::segments(dir).pop().unwrap();
    assert!(
        witness_of(&path).is_some(),
        "slots written, as version 2 writes them"
    );
    let block = std::fs::read(&path).unwrap();
    let header =
        SegmentHeader::decode(&block[..usize::try_from(HEADER_BLOCK_LEN).unwrap()], &path).unwrap();
    let old = SegmentHeader {
        version: 1,
        ..header
    };
    // Only the header's bytes: the slots stay.
    common::patch(&path, 0, &old.encode()[..segment::HEADER_LEN]);
    assert_eq!(witness_of(&path), None);
    common::damage_record(dir, 10);
    let mut sink = Collect::default();
    let report = recover(dir, RecoveryPolicy::default(), &mut sink).unwrap();
    assert_eq!(report.next_lsn, 10, "{report}");
    assert!(
        matches!(
            report.anomalies[..],
            [ref a] if matches!(a.finding, Finding::TornTail { lsn: 10, .. })
        ),
        "{report}"
    );
    assert_eq!(
        sink.applied.len(),
        4,
        "the last transaction lost its commit"
    );
}
