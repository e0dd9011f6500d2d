//! Segment format versions: version 2 is written (it may hold `CommitSpan`), version 1 is
//! still read and recovered, and appends never go into a version-1 segment (a fresh version-2
//! segment starts first); any other version is refused.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_wal::segment::{self, FORMAT_VERSION, HEADER_BLOCK_LEN, SegmentHeader};
use keel_wal::{Error, LogReader, RunId, WalEntry};

fn segments(dir: &Path) -> Vec<segment::SegmentFile> {
    keel_wal::dir::list_directory(dir).unwrap().segments
}

fn header_of(segment: &segment::SegmentFile) -> SegmentHeader {
    let file = std::fs::File::open(&segment.path).unwrap();
    segment::read_header(&file, segment).unwrap()
}

/// Rewrites the header of the segment at `path` as `version` (checksum recomputed): a
/// segment as a build of that version would have written it.
fn set_version(path: &Path, version: u32) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut block = vec![0u8; usize::try_from(HEADER_BLOCK_LEN).unwrap()];
    file.read_exact_at(&mut block, 0).unwrap();
    let header = SegmentHeader::decode(&block, path).unwrap();
    let old = SegmentHeader { version, ..header };
    file.write_all_at(&old.encode(), 0).unwrap();
    file.sync_all().unwrap();
}

/// A log of `count` writes whose every segment is version 1; returns its segment paths.
fn version_1_log(dir: &Path, count: u64, backend: keel_wal::BackendChoice) -> Vec<PathBuf> {
    common::filled_log(dir, common::small_options(backend), count, 3000);
    let paths: Vec<PathBuf> = segments(dir).into_iter().map(|s| s.path).collect();
    for path in &paths {
        set_version(path, 1);
    }
    paths
}

#[test]
fn a_version_1_log_is_read_recovered_and_continued_in_version_2() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let old = version_1_log(dir.path(), 30, backend);
        assert!(old.len() >= 2, "the log spans segments");
        assert_eq!(common::read_all(dir.path()).len(), 30);
        // A torn tail in the last version-1 segment: recovered (cut) like any other.
        let tail = old.last().unwrap();
        let end = std::fs::metadata(tail).unwrap().len();
        let file = OpenOptions::new().write(true).open(tail).unwrap();
        file.write_all_at(&[0x5a; 100], end - 4096).unwrap();
        drop(file);

        let options = common::small_options(backend);
        let wal = keel_recovery::open_wal(dir.path(), options.clone()).unwrap();
        let summary = wal.open_summary().clone();
        assert_eq!(summary.next_lsn, 31, "{backend:?}");
        assert_eq!(summary.truncated_bytes, 100, "{backend:?}");
        assert_eq!(
            summary.segments,
            old.len() + 1,
            "{backend:?}: counts the fresh one"
        );
        // A record of a component built on the log (a `CommitSpan` naming LSN 30 would
        // commit a transaction that never began there: recovery refuses such a log).
        let span = WalEntry::Payload {
            run_id: RunId::from_u128(1),
            tag: 7,
            payload: b"continued in version 2".to_vec(),
        };
        assert_eq!(wal.append(std::slice::from_ref(&span)).wait().unwrap(), 31);
        wal.close().unwrap();

        let found = segments(dir.path());
        assert_eq!(
            found.len(),
            old.len() + 1,
            "{backend:?}: a fresh segment at LSN 31"
        );
        for segment in &found[..old.len()] {
            assert_eq!(header_of(segment).version, 1, "{}", segment.path.display());
        }
        let fresh = found.last().unwrap();
        assert_eq!(fresh.first_lsn, 31);
        assert_eq!(header_of(fresh).version, FORMAT_VERSION);
        let records = common::read_all(dir.path());
        assert_eq!(records.len(), 31, "{backend:?}");
        assert_eq!(records[30], (31, span));

        // The next open continues in the version-2 segment.
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        wal.append(&[common::write(1, 31, "k", 10)]).wait().unwrap();
        wal.close().unwrap();
        assert_eq!(segments(dir.path()).len(), found.len(), "{backend:?}");
        assert_eq!(common::read_all(dir.path()).len(), 32, "{backend:?}");
    }
}

#[test]
fn new_segments_are_version_2() {
    let dir = tempfile::tempdir().unwrap();
    common::filled_log(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
        30,
        3000,
    );
    let found = segments(dir.path());
    assert!(found.len() >= 2);
    for segment in &found {
        assert_eq!(header_of(segment).version, 2);
    }
}

#[test]
fn version_4_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::small_options(keel_wal::BackendChoice::Std);
    common::filled_log(dir.path(), options.clone(), 3, 100);
    let path = segments(dir.path())[0].path.clone();
    set_version(&path, 4);
    let refused = |err: &Error| {
        matches!(
            err,
            Error::UnknownFormatVersion {
                found: 4,
                supported: segment::NEWEST_READABLE_VERSION,
                ..
            }
        )
    };
    let err = keel_recovery::open_wal(dir.path(), options).unwrap_err();
    assert!(
        matches!(
            err,
            keel_recovery::Error::Refused {
                finding: keel_recovery::Finding::UnknownFormatVersion {
                    found: 4,
                    supported: segment::NEWEST_READABLE_VERSION,
                },
                ..
            }
        ),
        "{err}"
    );
    let err = LogReader::open(dir.path())
        .and_then(|mut r| r.next_record().map(|_| ()))
        .unwrap_err();
    assert!(refused(&err), "{err}");
}
