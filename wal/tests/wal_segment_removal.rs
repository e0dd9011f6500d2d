//! Removing covered segments (what a checkpoint does) and reading from an LSN: the log keeps
//! working, reopens, and continues its LSNs; the segment being appended to is never removed.

mod common;

use keel_wal::LogReader;

#[test]
fn covered_segments_are_removed_and_the_log_goes_on() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        for i in 0..400u64 {
            wal.append(&[common::write(1, i, "k", 600)]).wait().unwrap();
        }
        let before = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
        assert!(before.len() >= 4, "{before:?}");
        let cut = before[2].first_lsn;
        assert_eq!(wal.remove_segments_before(cut).unwrap(), 2);
        assert_eq!(wal.remove_segments_before(cut).unwrap(), 0, "idempotent");
        // Asking for everything never removes the segment being appended to.
        let last = before.last().unwrap().first_lsn;
        wal.remove_segments_before(u64::MAX).unwrap();
        let left = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].first_lsn, last);
        let lsn = wal
            .append(&[common::write(1, 999, "after", 10)])
            .wait()
            .unwrap();
        assert_eq!(lsn, 401);
        wal.close().unwrap();

        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        assert_eq!(wal.next_lsn(), 402);
        wal.close().unwrap();
        let records = common::read_all(dir.path());
        assert_eq!(records.first().unwrap().0, last);
        assert_eq!(records.last().unwrap().0, 401);
    }
}

#[test]
fn reading_from_an_lsn_skips_what_is_below_it() {
    let dir = tempfile::tempdir().unwrap();
    common::filled_log(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
        300,
        500,
    );
    let segments = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    assert!(segments.len() >= 3);
    for from in [
        1,
        2,
        segments[1].first_lsn - 1,
        segments[1].first_lsn,
        segments[2].first_lsn + 3,
        300,
        301,
    ] {
        let mut reader = LogReader::open_from(dir.path(), from).unwrap();
        let mut lsns = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            lsns.push(record.lsn);
        }
        assert_eq!(lsns, (from..=300).collect::<Vec<_>>(), "from {from}");
    }
}
