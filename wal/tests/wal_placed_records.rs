//! `Wal::append_placed` reports where every record went, across rotations; `Wal::read_record`
//! reads each back alone, also after a reopen and from a reader's `RecordRef::position`;
//! `Payload` entries round-trip; a wrong LSN, a flipped byte and a
//! removed segment are errors, never a wrong record.

mod common;

use std::sync::{Arc, Mutex};

use keel_wal::{
    CorruptionReason, Durability, EncodedBatch, Error, LogReader, RecordPosition, RunId, Wal,
    WalEntry,
};

fn payload(i: u64) -> WalEntry {
    WalEntry::Payload {
        run_id: RunId::from_u128(9),
        tag: u32::try_from(i % 7).unwrap(),
        payload: (0..(i * 53 % 700))
            .map(|b| (b ^ i).to_le_bytes()[0])
            .collect(),
    }
}

/// Appends 300 units of 1–3 payloads each; returns every entry with its reported position.
fn fill(wal: &Wal) -> Vec<(WalEntry, RecordPosition)> {
    let reported: Arc<Mutex<Vec<RecordPosition>>> = Arc::default();
    let mut entries = Vec::new();
    let mut futures = Vec::new();
    for unit in 0..300u64 {
        let batch: Vec<WalEntry> = (0..1 + unit % 3).map(|j| payload(unit * 3 + j)).collect();
        let sink = Arc::clone(&reported);
        let count = batch.len();
        let encoded = EncodedBatch::encode(&batch, wal.max_record_bytes()).unwrap();
        futures.push(
            wal.append_placed(encoded, Durability::Strict, move |positions| {
                assert_eq!(positions.len(), count, "one position per entry");
                sink.lock().unwrap().extend_from_slice(positions);
            }),
        );
        entries.extend(batch);
    }
    for future in futures {
        future.wait().unwrap();
    }
    let positions = reported.lock().unwrap().clone();
    assert_eq!(positions.len(), entries.len());
    entries.into_iter().zip(positions).collect()
}

#[test]
fn placed_records_read_back_by_position() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let placed = fill(&wal);
        assert!(wal.stats().rotations >= 2, "the test should cross segments");
        for (i, (entry, position)) in placed.iter().enumerate() {
            assert_eq!(position.lsn, i as u64 + 1, "positions come in LSN order");
            let record = wal.read_record(*position).unwrap();
            assert_eq!(record.lsn(), position.lsn);
            assert_eq!(&record.entry().to_owned_entry(), entry);
        }
        wal.close().unwrap();

        // The positions stay valid after a reopen, and a reader reports the same ones.
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let mut reader = LogReader::open(dir.path()).unwrap();
        let mut seen = 0;
        while let Some(found) = reader.next_record().unwrap() {
            let (entry, position) = &placed[seen];
            assert_eq!(found.position(), *position);
            assert_eq!(&found.entry.to_owned_entry(), entry);
            assert_eq!(
                &wal.read_record(*position).unwrap().entry().to_owned_entry(),
                entry
            );
            seen += 1;
        }
        assert_eq!(seen, placed.len());
        wal.close().unwrap();
    }
}

#[test]
fn a_position_that_names_another_record_is_refused() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let placed = fill(&wal);
        let (_, first) = placed[0];
        let (_, second) = placed[1];

        // The right offset with a wrong LSN.
        let wrong_lsn = RecordPosition {
            lsn: second.lsn,
            ..first
        };
        match wal.read_record(wrong_lsn) {
            Err(Error::Corruption { reason, .. }) => {
                assert_eq!(
                    reason,
                    CorruptionReason::LsnMismatch {
                        expected: second.lsn,
                        found: first.lsn
                    }
                );
            }
            other => panic!("expected an LSN mismatch, got {other:?}"),
        }
        // An offset inside a record, and one in the header block.
        // And offsets past the segment's end, up to the last aligned one (no overflow).
        let last_aligned = u64::MAX - u64::MAX % 8;
        for offset in [first.offset + 8, 0, 4096 + 3, 1 << 40, last_aligned] {
            let bad = RecordPosition { offset, ..first };
            assert!(
                matches!(wal.read_record(bad), Err(Error::Corruption { .. })),
                "offset {offset} must not read as a record"
            );
        }
        // A segment that does not exist.
        let missing = RecordPosition {
            segment: 999_999,
            ..first
        };
        assert!(matches!(wal.read_record(missing), Err(Error::Io { .. })));
        wal.close().unwrap();
    }
}

#[test]
fn damage_under_a_position_is_reported() {
    use std::os::unix::fs::FileExt;
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let placed = fill(&wal);
        let (_, target) = placed[5];
        // Damaged under the open log (reopened, recovery would refuse the sealed segment).
        let path = dir
            .path()
            .join(keel_wal::segment::file_name(target.segment));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // A byte of the payload (the record header is 32 bytes).
        file.write_all_at(&[0xff], target.offset + 40).unwrap();
        drop(file);
        match wal.read_record(target) {
            Err(Error::Corruption { reason, .. }) => assert!(
                matches!(reason, CorruptionReason::RecordBodyChecksum { .. }),
                "{reason}"
            ),
            other => panic!("expected a body checksum mismatch, got {other:?}"),
        }
        let (_, neighbour) = placed[6];
        wal.read_record(neighbour).unwrap();
        wal.close().unwrap();
    }
}

#[test]
fn removed_segments_are_not_read() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let placed = fill(&wal);
        let (_, first) = placed[0];
        wal.read_record(first).unwrap();
        let (_, last) = *placed.last().unwrap();
        assert!(wal.remove_segments_before(last.lsn).unwrap() > 0);
        match wal.read_record(first) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        wal.read_record(last).unwrap();
        wal.close().unwrap();
    }
}
