//! One bit flipped at every byte of a small multi-segment log (segment headers, durable-witness
//! slots and every record byte): never a panic; under the default policy an error whenever a
//! later record's durable mark, the segment's witness (or a later segment) proves the damaged
//! record was durable, and otherwise the longest prefix; under the other policies their
//! documented outcome. A flipped witness slot is no witness: nothing is lost.

mod common;

use std::path::{Path, PathBuf};

use keel_recovery::{Error, RecoveryPolicy, recover};
use keel_wal::reader::{SegmentEvent, SegmentReader};
use keel_wal::segment::HEADER_LEN;
use keel_wal::witness::{self, SLOT_LEN, SLOT_OFFSETS, Witness};
use keel_wal::{Lsn, WalOptions};

use common::{Applied, Collect};

struct Record {
    lsn: Lsn,
    offset: u64,
    len: u64,
    durable: Lsn,
}

struct Segment {
    name: PathBuf,
    first_lsn: Lsn,
    image: Vec<u8>,
    records: Vec<Record>,
    witness: Option<Witness>,
}

fn tiny_options() -> WalOptions {
    WalOptions {
        segment_bytes: keel_wal::segment::MIN_SEGMENT_BYTES,
        max_record_bytes: 1024,
        ..common::options()
    }
}

fn build(dir: &Path) -> Vec<Segment> {
    let wal = keel_recovery::open_wal(dir, tiny_options()).unwrap();
    for t in 0..40 {
        wal.append(&common::txn(1, t, 1, 60)).wait().unwrap();
    }
    wal.close().unwrap();
    let listing = keel_wal::dir::list_directory(dir).unwrap();
    listing
        .segments
        .iter()
        .map(|segment| {
            let file = std::fs::File::open(&segment.path).unwrap();
            let header = keel_wal::segment::read_header(&file, segment).unwrap();
            let witness = witness::read(&file, &segment.path, &header).unwrap();
            let mut reader = SegmentReader::open(segment).unwrap();
            let mut records = Vec::new();
            while let SegmentEvent::Record(r) = reader.next_event().unwrap() {
                records.push(Record {
                    lsn: r.lsn,
                    offset: r.offset,
                    len: r.len,
                    durable: r.durable_lsn,
                });
            }
            Segment {
                name: segment.path.file_name().unwrap().into(),
                first_lsn: segment.first_lsn,
                image: std::fs::read(&segment.path).unwrap(),
                records,
                witness,
            }
        })
        .collect()
}

/// What a flip at `offset` of segment `index` damages: `(lsn, proven durable)`, or `None`
/// when it hits no record (slack).
fn damaged(segments: &[Segment], index: usize, offset: u64) -> Option<(Lsn, bool)> {
    let segment = &segments[index];
    let last = index + 1 == segments.len();
    if offset < HEADER_LEN as u64 {
        return Some((segment.first_lsn, true));
    }
    let position = segment
        .records
        .iter()
        .position(|r| offset >= r.offset && offset < r.offset + r.len)?;
    let lsn = segment.records[position].lsn;
    let marked = segment.records[position + 1..]
        .iter()
        .any(|r| r.durable >= lsn);
    let witnessed = segment.witness.is_some_and(|w| w.durable_lsn >= lsn);
    Some((lsn, !last || marked || witnessed))
}

fn prefix(all: &[Applied], below: Lsn) -> Vec<Applied> {
    all.iter()
        .filter(|a| a.commit_lsn < below)
        .cloned()
        .collect()
}

#[test]
fn a_bit_flip_at_every_byte_is_judged_never_panics() {
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("log");
    let segments = build(&original);
    assert!(segments.len() >= 3, "a multi-segment log");
    let last = segments.last().unwrap();
    assert_eq!(
        last.witness.map(|w| w.durable_lsn),
        last.records.last().map(|r| r.lsn),
        "the close's witness claims the last record"
    );
    let mut full = Collect::default();
    recover(&original, RecoveryPolicy::default(), &mut full).unwrap();
    let identity = std::fs::read(original.join("IDENTITY")).unwrap();
    let scratch = base.path().join("scratch");
    let stage = |index: usize, offset: u64| {
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(scratch.join("IDENTITY"), &identity).unwrap();
        for (i, segment) in segments.iter().enumerate() {
            let mut image = segment.image.clone();
            if i == index {
                let at = usize::try_from(offset).unwrap();
                image[at] ^= 1 << (offset % 8);
            }
            std::fs::write(scratch.join(&segment.name), image).unwrap();
        }
    };
    let (mut positions, mut refusals) = (0u64, 0u64);
    for (index, segment) in segments.iter().enumerate() {
        let records_end = segment.records.last().map_or(4096, |r| r.offset + r.len);
        let slack_end = (records_end + 64).min(segment.image.len() as u64);
        let slots = SLOT_OFFSETS.iter().flat_map(|&at| at..at + SLOT_LEN as u64);
        let offsets = (0..HEADER_LEN as u64).chain(slots).chain(4096..slack_end);
        for offset in offsets {
            positions += 1;
            let expect = damaged(&segments, index, offset);
            let here = format!("segment {index} offset {offset}");
            // The default policy.
            stage(index, offset);
            let mut sink = Collect::default();
            match (
                recover(&scratch, RecoveryPolicy::default(), &mut sink),
                expect,
            ) {
                (Err(Error::Refused { .. }), Some((_, true))) => refusals += 1,
                (Ok(_), Some((lsn, false))) => {
                    assert_eq!(sink.applied, prefix(&full.applied, lsn), "{here}");
                }
                // A flip in slack: unnoticed, or noticed as debris after the end.
                (Ok(_), None) => assert_eq!(sink.applied, full.applied, "{here}"),
                (Err(Error::Refused { .. }), None) => refusals += 1,
                (outcome, expect) => panic!("{here}: {outcome:?} where {expect:?} was expected"),
            }
            if offset % 4 != 0 {
                continue;
            }
            // Point in time: always opens, with exactly the prefix before the damage.
            stage(index, offset);
            let mut sink = Collect::default();
            let report = recover(&scratch, RecoveryPolicy::PointInTime, &mut sink)
                .unwrap_or_else(|e| panic!("{here}: point-in-time failed: {e}"));
            let below = expect.map_or(Lsn::MAX, |(lsn, _)| lsn);
            if expect.is_some() {
                assert_eq!(
                    sink.applied,
                    prefix(&full.applied, below),
                    "{here}: {report}"
                );
            }
            // Skip corrupted: always opens; everything it replays is genuine, and it keeps
            // at least the prefix.
            stage(index, offset);
            let mut sink = Collect::default();
            recover(&scratch, RecoveryPolicy::SkipCorrupted, &mut sink)
                .unwrap_or_else(|e| panic!("{here}: skip-corrupted failed: {e}"));
            assert!(
                sink.applied.iter().all(|a| full.applied.contains(a)),
                "{here}"
            );
            assert!(
                sink.applied.len() >= prefix(&full.applied, below).len(),
                "{here}"
            );
            // Absolute: any finding is an error; success only if nothing was noticed.
            stage(index, offset);
            let mut sink = Collect::default();
            match recover(&scratch, RecoveryPolicy::Absolute, &mut sink) {
                Err(Error::Refused { .. }) => {}
                Ok(report) => {
                    assert!(report.is_clean() && expect.is_none(), "{here}: {report}");
                }
                Err(other) => panic!("{here}: {other}"),
            }
        }
    }
    println!("{positions} positions, {refusals} refusals under the default policy");
}
