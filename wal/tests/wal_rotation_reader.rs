//! After many rotations, the reader returns every entry in LSN order, LSNs dense from 1, and a
//! reopened log continues where it stopped.

mod common;

use keel_wal::WalEntry;

#[test]
fn reader_walks_many_segments_in_lsn_order() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let mut expected: Vec<WalEntry> = Vec::new();
        for i in 0..600u64 {
            let unit = vec![
                common::write(
                    7,
                    i,
                    &format!("key-{i}"),
                    usize::try_from(i * 37 % 900).unwrap(),
                ),
                WalEntry::CommitTxn {
                    run_id: keel_wal::RunId::from_u128(7),
                    txn_id: i,
                },
            ];
            wal.append(&unit).wait().unwrap();
            expected.extend(unit);
        }
        let stats = wal.stats();
        assert!(
            stats.rotations >= 5,
            "expected many rotations, got {}",
            stats.rotations
        );
        wal.close().unwrap();

        let records = common::read_all(dir.path());
        let lsns: Vec<u64> = records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, (1..=expected.len() as u64).collect::<Vec<_>>());
        let entries: Vec<WalEntry> = records.into_iter().map(|(_, e)| e).collect();
        assert_eq!(entries, expected);

        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        assert_eq!(wal.next_lsn(), expected.len() as u64 + 1);
        let lsn = wal
            .append(&[common::write(7, 9999, "after", 10)])
            .wait()
            .unwrap();
        assert_eq!(lsn, expected.len() as u64 + 1);
        wal.close().unwrap();
        assert_eq!(common::read_all(dir.path()).len(), expected.len() + 1);
    }
}

#[test]
fn the_reader_refuses_a_missing_middle_segment() {
    let dir = tempfile::tempdir().unwrap();
    common::filled_log(
        dir.path(),
        common::small_options(keel_wal::BackendChoice::Std),
        300,
        800,
    );
    let segments = keel_wal::dir::list_directory(dir.path()).unwrap().segments;
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1].path).unwrap();
    let mut reader = keel_wal::LogReader::open(dir.path()).unwrap();
    let err = loop {
        match reader.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a missing segment went unnoticed"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(
            err,
            keel_wal::Error::Corruption {
                reason: keel_wal::CorruptionReason::MissingSegment { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not contiguous"), "{err}");
}
