//! Opening refuses, with a clear error and no panic: a locked directory, an unknown format
//! version, a foreign database, a zeroed or damaged segment header, a missing identity. The
//! segment-level refusals are recovery's findings (`keel_recovery::open_wal` recovers under
//! the default policy before the log resumes): nothing on disk changes.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use keel_recovery::{Error as OpenError, Finding};
use keel_wal::segment::{self, HEADER_CRC_OFFSET, VERSION_OFFSET};
use keel_wal::{CorruptionReason, DatabaseId, Error, WalOptions};

fn make_log(dir: &Path, options: WalOptions, entries: u64) {
    common::filled_log(dir, options, entries, 100);
}

fn first_segment(dir: &Path) -> PathBuf {
    dir.join(segment::file_name(1))
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_second_opener_gets_a_locked_error() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let first = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let err = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap_err();
        assert!(matches!(err, OpenError::Wal(Error::Locked { .. })), "{err}");
        assert!(err.to_string().contains("locked"), "{err}");
        drop(first);
        keel_recovery::open_wal(dir.path(), common::small_options(backend))
            .unwrap()
            .close()
            .unwrap();
    }
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_log(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
        3,
    );
    let path = first_segment(dir.path());
    let mut header = std::fs::read(&path).unwrap()[..segment::HEADER_LEN].to_vec();
    header[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32fast::hash(&header[..HEADER_CRC_OFFSET]);
    header[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    patch(&path, 0, &header);
    let err = keel_recovery::open_wal(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused {
                finding: Finding::UnknownFormatVersion {
                    found: 7,
                    supported: segment::NEWEST_READABLE_VERSION,
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("format version 7"), "{err}");
}

#[test]
fn a_segment_from_another_database_is_refused() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let options = common::small_options(keel_wal::BackendChoice::Std);
    make_log(ours.path(), options.clone(), 3);
    make_log(theirs.path(), options.clone(), 5);
    // Their segment, renamed to follow ours.
    std::fs::copy(
        first_segment(theirs.path()),
        ours.path().join(segment::file_name(4)),
    )
    .unwrap();
    let mut bytes = std::fs::read(ours.path().join(segment::file_name(4))).unwrap();
    bytes[segment::FIRST_LSN_OFFSET..segment::FIRST_LSN_OFFSET + 8]
        .copy_from_slice(&4u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(ours.path().join(segment::file_name(4)), bytes).unwrap();
    let err = keel_recovery::open_wal(ours.path(), options.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused {
                finding: Finding::ForeignSegment { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("belongs to database"), "{err}");

    let stranger = WalOptions {
        database_id: Some(DatabaseId([9; 16])),
        ..options
    };
    let err = keel_recovery::open_wal(theirs.path(), stranger).unwrap_err();
    assert!(
        matches!(err, OpenError::Wal(Error::ForeignDatabase { .. })),
        "{err}"
    );
}

#[test]
fn a_zeroed_or_damaged_segment_header_is_refused() {
    let options = common::small_options(keel_wal::BackendChoice::Std);
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), options.clone(), 3);
    patch(&first_segment(dir.path()), 0, &[0u8; 4096]);
    let err = keel_recovery::open_wal(dir.path(), options.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused {
                finding: Finding::DamagedSegmentHeader {
                    reason: CorruptionReason::ZeroedSegmentHeader
                },
                offset: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("00000000000000000001.wal"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), options.clone(), 3);
    patch(
        &first_segment(dir.path()),
        segment::SALT_OFFSET as u64,
        &[0xff],
    );
    let err = keel_recovery::open_wal(dir.path(), options).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused {
                finding: Finding::DamagedSegmentHeader {
                    reason: CorruptionReason::SegmentHeaderChecksum { .. }
                },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn segments_without_an_identity_are_refused() {
    let options = common::small_options(keel_wal::BackendChoice::Std);
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), options.clone(), 3);
    std::fs::remove_file(dir.path().join(keel_wal::fsutil::IDENTITY_FILE)).unwrap();
    let err = keel_recovery::open_wal(dir.path(), options).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Wal(Error::Corruption {
                reason: CorruptionReason::Identity(_),
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = WalOptions {
        segment_bytes: 100,
        ..WalOptions::default()
    };
    assert!(matches!(
        keel_recovery::open_wal(dir.path(), tiny),
        Err(OpenError::Wal(Error::InvalidOptions(_)))
    ));
    let huge_record = WalOptions {
        segment_bytes: 64 * 1024,
        max_record_bytes: 1 << 20,
        ..WalOptions::default()
    };
    assert!(matches!(
        keel_recovery::open_wal(dir.path(), huge_record),
        Err(OpenError::Wal(Error::InvalidOptions(_)))
    ));
}

#[test]
fn unknown_files_are_reported_and_left_alone() {
    let options = common::small_options(keel_wal::BackendChoice::Std);
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), options.clone(), 3);
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    assert_eq!(
        wal.open_summary().unknown_files,
        vec![dir.path().join("notes.txt")]
    );
    wal.close().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("notes.txt")).unwrap(),
        b"hello"
    );
}
