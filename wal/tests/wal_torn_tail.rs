//! The writer's own tail handling: a torn last batch is cut and zeroed (so no stale record can
//! come back after shorter appends), and damage below a durable mark or the durable witness
//! refuses to open.
//!
//! A torn tail is made of records no witness claims: written by a log whose writer never went
//! idle after them (here: one opened with `witness_idle: None`, as a crash before the idle
//! delay leaves it).

mod common;

use std::os::unix::fs::FileExt;

use keel_wal::segment::{self, HEADER_BLOCK_LEN};

fn log_with(dir: &std::path::Path, units: u64) {
    log_in_mode(dir, units, keel_wal::Durability::Strict, true);
}

fn log_in_mode(dir: &std::path::Path, units: u64, durability: keel_wal::Durability, witness: bool) {
    let options = keel_wal::WalOptions {
        durability,
        witness_idle: witness.then_some(keel_wal::DEFAULT_WITNESS_IDLE),
        ..common::small_options(keel_wal::BackendChoice::Std)
    };
    common::filled_log(dir, options, units, 200);
}

/// Appends one more Strict record (LSN `lsn`) with no witness written after it.
fn append_unwitnessed(dir: &std::path::Path, lsn: u64) {
    let options = keel_wal::WalOptions {
        witness_idle: None,
        ..common::small_options(keel_wal::BackendChoice::Std)
    };
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    assert_eq!(wal.next_lsn(), lsn);
    wal.append(&[common::write(1, lsn, "k", 200)])
        .wait()
        .unwrap();
    wal.close().unwrap();
}

/// Offsets of every record in the first segment.
fn record_offsets(dir: &std::path::Path) -> Vec<u64> {
    let segment = keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .remove(0);
    let mut reader = keel_wal::SegmentReader::open(&segment).unwrap();
    let mut offsets = Vec::new();
    while let keel_wal::SegmentEvent::Record(record) = reader.next_event().unwrap() {
        offsets.push(record.offset);
    }
    offsets
}

/// Records 1 to 5 are claimed by the witness the close wrote; record 6 by nothing, so it is
/// a torn tail wherever it is torn, above the witness.
#[test]
fn a_torn_last_record_is_cut_at_every_byte_and_never_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 5);
    append_unwitnessed(dir.path(), 6);
    let offsets = record_offsets(dir.path());
    let path = dir.path().join(segment::file_name(1));
    let pristine = std::fs::read(&path).unwrap();
    let last = usize::try_from(*offsets.last().unwrap()).unwrap();
    let end = pristine[last..].iter().rposition(|&b| b != 0).unwrap() + last + 1;
    for cut in last..end {
        std::fs::write(&path, &pristine).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&vec![0u8; end - cut], cut as u64)
            .unwrap();
        let wal = keel_recovery::open_wal(
            dir.path(),
            common::small_options(keel_wal::BackendChoice::Std),
        )
        .unwrap();
        assert_eq!(wal.next_lsn(), 6, "cut at {cut}");
        // A shorter record where the torn one was: the bytes beyond must not come back.
        wal.append(&[common::write(1, 99, "k", 1)]).wait().unwrap();
        wal.close().unwrap();
        let records = common::read_all(dir.path());
        assert_eq!(records.len(), 6, "cut at {cut}");
        assert_eq!(records[5].1, common::write(1, 99, "k", 1));
    }
}

#[test]
fn a_stale_record_beyond_a_cut_is_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    // Batched: every record was written before any sync, so no durable mark reaches them.
    let hour = std::time::Duration::from_secs(3600);
    log_in_mode(
        dir.path(),
        6,
        keel_wal::Durability::Batched {
            max_delay: hour,
            max_bytes: u64::MAX,
        },
        false,
    );
    let offsets = record_offsets(dir.path());
    let path = dir.path().join(segment::file_name(1));
    // Damage record 5's body; record 6, whose durable mark does not reach 5, is stale beyond
    // the cut and must be zeroed, not resurrected after the next append.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xee; 8], offsets[4] + 40).unwrap();
    let wal = keel_recovery::open_wal(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
    )
    .unwrap();
    assert_eq!(wal.next_lsn(), 5);
    assert!(wal.open_summary().truncated_bytes > 0);
    wal.append(&[common::write(1, 77, "k", 1)]).wait().unwrap();
    wal.close().unwrap();
    let records = common::read_all(dir.path());
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|(lsn, _)| *lsn <= 5));
}

#[test]
fn damage_below_a_durable_mark_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 6);
    let offsets = record_offsets(dir.path());
    let path = dir.path().join(segment::file_name(1));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Record 2 was durable before record 3 was written (Strict): record 3+ say so.
    file.write_all_at(&[0xee; 8], offsets[1] + 40).unwrap();
    let err = keel_recovery::open_wal(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
    )
    .unwrap_err();
    match &err {
        keel_recovery::Error::Refused {
            offset,
            finding: keel_recovery::Finding::DamageBelowDurableMark { lsn: 2, .. },
            ..
        } => {
            assert_eq!(*offset, offsets[1]);
        }
        other => panic!("expected damage below the durable mark, got {other}"),
    }
    assert!(offsets[0] >= HEADER_BLOCK_LEN);
}

/// The newest record, acknowledged and claimed by the witness the close wrote, with nothing
/// written after it: damaged, or gone (zeros), it is refused, not cut as a torn tail. (Before
/// the witness, both opened with LSN 6 cut.)
#[test]
fn damage_to_the_newest_witnessed_record_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    log_with(dir.path(), 6);
    let offsets = record_offsets(dir.path());
    let path = dir.path().join(segment::file_name(1));
    let pristine = std::fs::read(&path).unwrap();
    let last = offsets[5];
    for damage in [vec![0xee; 8], vec![0; 4096]] {
        std::fs::write(&path, &pristine).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let at = if damage[0] == 0 { last } else { last + 40 };
        file.write_all_at(&damage, at).unwrap();
        let err = keel_recovery::open_wal(
            dir.path(),
            common::small_options(keel_wal::BackendChoice::Std),
        )
        .unwrap_err();
        match &err {
            keel_recovery::Error::Refused {
                offset,
                finding:
                    keel_recovery::Finding::DamageBelowDurableMark {
                        lsn: 6,
                        proof: keel_wal::DurableProof::Witness { durable_lsn: 6, .. },
                        ..
                    },
                ..
            } => assert_eq!(*offset, last),
            other => panic!("expected damage below the witness, got {other}"),
        }
    }
}
