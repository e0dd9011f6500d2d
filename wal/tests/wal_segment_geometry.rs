//! A segment's size belongs to the segment: reopening with another `segment_bytes` (larger or
//! smaller) starts a fresh segment of the new size before the first append, every segment
//! file is exactly as long as its header says, spares of the old size are never installed,
//! and everything acknowledged reads back. (The review case of a record larger than the old
//! size is `review_segment_size_change.rs`.)

mod common;

use std::fs::File;
use std::path::Path;

use keel_wal::segment::{self, SegmentHeader};
use keel_wal::{BackendChoice, Wal, WalOptions};

fn options(backend: BackendChoice, segment_bytes: u64, max_record_bytes: u32) -> WalOptions {
    WalOptions {
        segment_bytes,
        max_record_bytes,
        backend,
        ..WalOptions::default()
    }
}

/// Every segment's header, after checking that its file is as long as the header says.
fn headers(dir: &Path) -> Vec<SegmentHeader> {
    keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .iter()
        .map(|s| {
            let file = File::open(&s.path).unwrap();
            let header = segment::read_header(&file, s).unwrap();
            let len = file.metadata().unwrap().len();
            assert_eq!(
                len,
                header.segment_bytes,
                "{}: file length and declared size differ",
                s.path.display()
            );
            header
        })
        .collect()
}

/// Appends `count` writes of `len` bytes, each acknowledged, and returns the last LSN.
fn append(wal: &Wal, count: u64, len: usize) -> u64 {
    let mut last = 0;
    for i in 0..count {
        last = wal.append(&[common::write(1, i, "k", len)]).wait().unwrap();
    }
    last
}

fn reopened_next_lsn(dir: &Path, options: WalOptions) -> u64 {
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    let next = wal.next_lsn();
    wal.close().unwrap();
    next
}

#[test]
fn growing_segments_take_effect_at_a_fresh_segment() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let small = options(backend, 64 * 1024, 16 * 1024);
        let large = options(backend, 256 * 1024, 128 * 1024);
        let wal = keel_recovery::open_wal(dir.path(), small).unwrap();
        append(&wal, 3, 1000);
        wal.close().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), large.clone()).unwrap();
        // Larger than the old size; then enough to rotate in the new size.
        assert_eq!(append(&wal, 1, 100 * 1024), 4);
        assert_eq!(append(&wal, 6, 60 * 1024), 10);
        wal.close().unwrap();
        let sizes: Vec<u64> = headers(dir.path())
            .iter()
            .map(|h| h.segment_bytes)
            .collect();
        assert_eq!(
            sizes[0],
            64 * 1024,
            "{backend:?}: the old segment keeps its size"
        );
        assert!(sizes.len() >= 3, "{backend:?}: {sizes:?}");
        assert!(
            sizes[1..].iter().all(|&s| s == 256 * 1024),
            "{backend:?}: {sizes:?}"
        );
        assert_eq!(common::read_all(dir.path()).len(), 10, "{backend:?}");
        assert_eq!(reopened_next_lsn(dir.path(), large), 11, "{backend:?}");
    }
}

/// Shrinking: the large spare the first writer left ready is not installed as a small
/// segment, and records that fit the new size go to segments of the new size.
#[test]
fn shrinking_segments_take_effect_at_a_fresh_segment() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let large = options(backend, 256 * 1024, 128 * 1024);
        let small = options(backend, 64 * 1024, 16 * 1024);
        let wal = keel_recovery::open_wal(dir.path(), large).unwrap();
        append(&wal, 2, 100 * 1024);
        wal.close().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), small.clone()).unwrap();
        assert_eq!(append(&wal, 20, 10 * 1024), 22);
        wal.close().unwrap();
        let sizes: Vec<u64> = headers(dir.path())
            .iter()
            .map(|h| h.segment_bytes)
            .collect();
        assert_eq!(sizes[0], 256 * 1024, "{backend:?}: {sizes:?}");
        assert!(sizes.len() >= 4, "{backend:?}: {sizes:?}");
        assert!(
            sizes[1..].iter().all(|&s| s == 64 * 1024),
            "{backend:?}: {sizes:?}"
        );
        assert_eq!(common::read_all(dir.path()).len(), 22, "{backend:?}");
        assert_eq!(reopened_next_lsn(dir.path(), small), 23, "{backend:?}");
    }
}

/// A last segment holding no record is replaced by one of the new size (both start at the
/// next LSN, so they share a name).
#[test]
fn an_empty_last_segment_of_another_size_is_replaced() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        keel_recovery::open_wal(dir.path(), options(backend, 64 * 1024, 16 * 1024))
            .unwrap()
            .close()
            .unwrap();
        let large = options(backend, 256 * 1024, 128 * 1024);
        let wal = keel_recovery::open_wal(dir.path(), large).unwrap();
        assert_eq!(wal.open_summary().segments, 1, "{backend:?}");
        assert_eq!(append(&wal, 1, 100 * 1024), 1);
        wal.close().unwrap();
        let found = headers(dir.path());
        assert_eq!(found.len(), 1, "{backend:?}");
        assert_eq!(found[0].first_lsn, 1);
        assert_eq!(found[0].segment_bytes, 256 * 1024);
        assert_eq!(common::read_all(dir.path()).len(), 1, "{backend:?}");
    }
}

/// Reopening with the same size keeps appending in the last segment (no fresh segment).
#[test]
fn the_same_size_continues_in_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let same = options(BackendChoice::Std, 64 * 1024, 16 * 1024);
    for _ in 0..3 {
        let wal = keel_recovery::open_wal(dir.path(), same.clone()).unwrap();
        append(&wal, 2, 100);
        wal.close().unwrap();
    }
    assert_eq!(headers(dir.path()).len(), 1);
    assert_eq!(common::read_all(dir.path()).len(), 6);
}

/// An encoded batch framed with a larger limit than the log's is refused, not written past
/// the end of a segment.
#[test]
fn a_batch_framed_for_a_larger_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(
        dir.path(),
        options(BackendChoice::Std, 64 * 1024, 16 * 1024),
    )
    .unwrap();
    let entry = common::write(1, 1, "k", 100 * 1024);
    let batch = keel_wal::EncodedBatch::encode(&[entry], 1 << 20).unwrap();
    let result = wal
        .append_encoded(batch, keel_wal::Durability::Strict)
        .wait();
    assert!(
        matches!(
            result,
            Err(keel_wal::Error::RecordTooLarge { max: 16384, .. })
        ),
        "{result:?}"
    );
    wal.close().unwrap();
    assert!(common::read_all(dir.path()).is_empty());
}
