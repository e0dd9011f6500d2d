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

fn segments(dir: &std::path::Path) -> Vec<Lsn> {
    keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .iter()
        .map(|s| s.first_lsn)
        .collect()
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
    while segments(dir.path()).len() < 2 {
        append(&wal, 3000);
    }
    let second = segments(dir.path())[1];
    append(&wal, 3000);
    let mut tail = wal.tail(1);
    for lsn in 1..second {
        assert_eq!(tail.try_next().unwrap().unwrap().lsn(), lsn);
    }
    // The tail holds from `second`: the first segment is freed, and recycled.
    assert_eq!(wal.remove_segments_before(second).unwrap(), 1);
    // Small records: the next segment, written into the recycled file, covers the
    // first one's end.
    while wal.stats().segments_recycled < 1 || segments(dir.path()).len() < 4 {
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
