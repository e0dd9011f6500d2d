//! The durable witness as the writer keeps it: written once the writer is idle and at close,
//! claiming exactly the durable records, alternating between its two slots, continued from
//! what an open found, started afresh in each new segment, and never written when turned off.
//! A failed witness sync poisons the log like any failed sync.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_sim::Faults;
use keel_wal::segment::{self, SegmentFile};
use keel_wal::witness::{self, SLOT_LEN, SLOT_OFFSETS, Witness};
use keel_wal::{Error, Wal, WalOptions};

const HOUR: Duration = Duration::from_secs(3600);

fn with_idle(backend: keel_wal::BackendChoice, idle: Option<Duration>) -> WalOptions {
    WalOptions {
        witness_idle: idle,
        ..common::small_options(backend)
    }
}

fn last_segment(dir: &Path) -> SegmentFile {
    keel_wal::dir::list_directory(dir)
        .unwrap()
        .segments
        .pop()
        .unwrap()
}

/// Both slots of the last segment, as found on disk.
fn slots(dir: &Path) -> [Option<Witness>; 2] {
    let last = last_segment(dir);
    let file = std::fs::File::open(&last.path).unwrap();
    let header = segment::read_header(&file, &last).unwrap();
    std::array::from_fn(|slot| {
        let mut bytes = [0u8; SLOT_LEN];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, SLOT_OFFSETS[slot]).unwrap();
        Witness::decode(&bytes, slot, &header)
    })
}

fn newest(dir: &Path) -> Option<Witness> {
    let last = last_segment(dir);
    let file = std::fs::File::open(&last.path).unwrap();
    let header = segment::read_header(&file, &last).unwrap();
    witness::read(&file, &last.path, &header).unwrap()
}

/// Where the records of the last segment end.
fn records_end(dir: &Path) -> u64 {
    let mut reader = keel_wal::SegmentReader::open(&last_segment(dir)).unwrap();
    let mut end = segment::HEADER_BLOCK_LEN;
    while let keel_wal::SegmentEvent::Record(record) = reader.next_event().unwrap() {
        end = record.offset + record.len;
    }
    end
}

/// Waits (bounded) until the writer has written a witness claiming `lsn`.
fn wait_for_witness(wal: &Wal, lsn: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.stats().witness_lsn < lsn {
        assert!(Instant::now() < deadline, "no witness of LSN {lsn}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_idle_writer_witnesses_every_durable_record_alternating_slots() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let idle = Some(Duration::from_millis(1));
        let wal = keel_recovery::open_wal(dir.path(), with_idle(backend, idle)).unwrap();
        for i in 0..3 {
            wal.append(&[common::write(1, i, "k", 100)]).wait().unwrap();
        }
        wait_for_witness(&wal, 3);
        let first = newest(dir.path()).expect("a witness on disk while the log is open");
        assert_eq!(
            (first.durable_lsn, first.end_offset),
            (3, records_end(dir.path())),
            "{backend:?}"
        );
        for i in 3..5 {
            wal.append(&[common::write(1, i, "k", 100)]).wait().unwrap();
        }
        wait_for_witness(&wal, 5);
        let second = newest(dir.path()).unwrap();
        assert_eq!(
            (second.durable_lsn, second.end_offset),
            (5, records_end(dir.path()))
        );
        assert!(second.sequence > first.sequence);
        // The previous witness is still in the other slot.
        let both = slots(dir.path());
        assert_eq!(both[second.slot()], Some(second));
        let other = both[1 - second.slot()].expect("the older witness survives");
        assert_eq!(other.sequence, second.sequence - 1, "{backend:?}");
        let stats = wal.stats();
        assert!(stats.witnesses >= 2, "{stats:?}");
        // Nothing is owed: the close writes no other witness.
        wal.close().unwrap();
        assert_eq!(newest(dir.path()), Some(second));
    }
}

#[test]
fn the_close_writes_the_witness_the_idle_delay_had_not_yet() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), with_idle(backend, Some(HOUR))).unwrap();
        for i in 0..4 {
            wal.append(&[common::write(1, i, "k", 100)]).wait().unwrap();
        }
        assert_eq!(wal.stats().witnesses, 0, "an hour has not passed");
        assert_eq!(newest(dir.path()), None);
        wal.close().unwrap();
        let closing = newest(dir.path()).expect("the close wrote one");
        assert_eq!(
            (closing.sequence, closing.durable_lsn, closing.end_offset),
            (1, 4, records_end(dir.path()))
        );
    }
}

#[test]
fn no_witness_is_written_when_it_is_turned_off() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), with_idle(backend, None)).unwrap();
        wal.append(&[common::write(1, 1, "k", 100)]).wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        wal.close().unwrap();
        assert_eq!(slots(dir.path()), [None, None]);
    }
}

/// An open continues the sequence of the witness it found, in the other slot; a new segment
/// starts its own, and the rotation leaves the sealed segment's witness alone.
#[test]
fn witnesses_continue_across_opens_and_start_afresh_in_a_new_segment() {
    let backend = keel_wal::BackendChoice::Std;
    let dir = tempfile::tempdir().unwrap();
    common::filled_log(dir.path(), with_idle(backend, Some(HOUR)), 3, 100);
    let first = newest(dir.path()).unwrap();
    assert_eq!((first.sequence, first.durable_lsn), (1, 3));
    common::filled_log(dir.path(), with_idle(backend, Some(HOUR)), 2, 100);
    let second = newest(dir.path()).unwrap();
    assert_eq!((second.sequence, second.durable_lsn), (2, 5));
    assert_eq!(slots(dir.path())[first.slot()], Some(first));
    let sealed = last_segment(dir.path());
    // Enough to rotate (64 KiB segments).
    common::filled_log(dir.path(), with_idle(backend, Some(HOUR)), 40, 3000);
    let segments = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    assert!(segments.len() >= 2, "the log rotated");
    let fresh = newest(dir.path()).unwrap();
    assert_eq!(fresh.sequence, 1, "a new segment starts its own witness");
    assert_eq!(fresh.durable_lsn, 45);
    assert_eq!(fresh.end_offset, records_end(dir.path()));
    let file = std::fs::File::open(&sealed.path).unwrap();
    let header = segment::read_header(&file, &sealed).unwrap();
    assert_eq!(
        witness::read(&file, &sealed.path, &header).unwrap(),
        Some(second),
        "the sealed segment keeps its last witness"
    );
}

#[test]
fn a_failed_witness_sync_poisons_the_log() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        faults.fail_witness_after(0);
        let options = WalOptions {
            storage: Arc::clone(&faults) as _,
            ..with_idle(backend, Some(HOUR))
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        wal.append(&[common::write(1, 1, "k", 100)]).wait().unwrap();
        match wal.close() {
            Err(Error::Poisoned { cause }) => assert_eq!(cause.operation, "fdatasync"),
            other => panic!("{backend:?}: expected the witness's sync to poison, got {other:?}"),
        }
        // The record was durable before; only the witness is in doubt.
        let wal = keel_recovery::open_wal(dir.path(), with_idle(backend, None)).unwrap();
        assert_eq!(wal.next_lsn(), 2);
        wal.close().unwrap();
    }
}

/// Faults aimed at record syncs do not count witness chains (whose number depends on
/// timing): the second record sync fails, whatever witnesses were written before it.
#[test]
fn record_faults_do_not_count_witness_chains() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let options = WalOptions {
            storage: Arc::clone(&faults) as _,
            ..with_idle(backend, Some(Duration::from_millis(1)))
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        faults.fail_sync_after(1);
        wal.append(&[common::write(1, 1, "k", 100)]).wait().unwrap();
        // Had the witness's sync been counted, it would have failed and this never comes.
        wait_for_witness(&wal, 1);
        let err = wal
            .append(&[common::write(1, 2, "k", 100)])
            .wait()
            .unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{backend:?}: {err}");
    }
}
