//! Adversarial review (revB): an open that fails must leave the directory as it found it.
//! The old `Wal::open` repaired the tail, started a fresh segment and pruned spares before the
//! steps that could still refuse the open (the backend, the segment headers). Each test
//! failed on the code it was written against (report of branch h-revB); they now run
//! through the one open path (`keel_recovery::open_wal`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use keel_sim::Faults;
use keel_wal::segment::{self, HEADER_CRC_OFFSET, VERSION_OFFSET};
use keel_wal::{BackendChoice, Error, WalOptions};

/// Every file of `dir` but `LOCK`, by name, with its length and CRC.
fn files(dir: &Path) -> BTreeMap<String, (u64, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap() != "LOCK")
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, (bytes.len() as u64, crc32fast::hash(&bytes)))
        })
        .collect()
}

fn options() -> WalOptions {
    WalOptions {
        preallocate: false,
        ..common::small_options(BackendChoice::Std)
    }
}

/// A log of 20 records whose only segment ends in a torn write: non-zero bytes after its last
/// record that no durable mark vouches for.
fn torn_log(dir: &Path) {
    common::filled_log(dir, options(), 20, 200);
    let segment = keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .remove(0);
    let mut reader = keel_wal::SegmentReader::open(&segment).unwrap();
    let end = loop {
        match reader.next_event().unwrap() {
            keel_wal::SegmentEvent::Record(_) => {}
            keel_wal::SegmentEvent::End { offset } => break offset,
            other => panic!("{other:?}"),
        }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .unwrap();
    file.write_all_at(&[0xab; 300], end + 16).unwrap();
}

/// The open asks for a backend it cannot have (io_uring, whose probe fails) and for another
/// segment size. It fails, as it must, but only after it zeroed the torn tail (which
/// `keel_recovery` under `Absolute` would have refused, and which a dry run reports) and
/// installed a fresh segment of the new size (a version-2 segment an older binary cannot
/// read).
#[test]
fn an_open_refused_for_its_backend_has_already_repaired_the_tail_and_started_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    torn_log(dir.path());
    let before = files(dir.path());
    let faults = Faults::new();
    faults.fail_uring_probe();
    let result = keel_recovery::open_wal(
        dir.path(),
        WalOptions {
            segment_bytes: 128 * 1024,
            backend: BackendChoice::Uring,
            storage: faults,
            ..options()
        },
    );
    assert!(
        matches!(
            result,
            Err(keel_recovery::Error::Wal(Error::BackendUnavailable { .. }))
        ),
        "{result:?}"
    );
    assert_eq!(
        files(dir.path()),
        before,
        "a failed open changed the directory"
    );
}

/// A log whose last segment is of a format this build does not know (written by a newer
/// one): the open is refused, and the stale spare the newer writer left stays (recovery
/// refuses before the log resumes and handles its spares).
#[test]
fn an_open_refused_for_a_newer_format_has_already_deleted_spares() {
    let dir = tempfile::tempdir().unwrap();
    common::filled_log(dir.path(), options(), 5, 200);
    let segment = keel_wal::dir::list_directory(dir.path())
        .unwrap()
        .segments
        .remove(0);
    let mut block = std::fs::read(&segment.path).unwrap();
    block[VERSION_OFFSET..VERSION_OFFSET + 4]
        .copy_from_slice(&(segment::NEWEST_READABLE_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&block[..HEADER_CRC_OFFSET]);
    block[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment.path, &block).unwrap();
    // The newer writer's spare, of its own segment size.
    std::fs::write(dir.path().join("spare-3.ready"), vec![0u8; 128 * 1024]).unwrap();
    let before = files(dir.path());
    let result = keel_recovery::open_wal(dir.path(), options());
    assert!(
        matches!(
            result,
            Err(keel_recovery::Error::Refused {
                finding: keel_recovery::Finding::UnknownFormatVersion { .. },
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(
        files(dir.path()),
        before,
        "a refused open changed the directory"
    );
}
