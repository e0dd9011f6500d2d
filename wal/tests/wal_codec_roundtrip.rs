//! Every entry type, at random sizes up to the maximum, survives encode → segment file →
//! reader; a record over the maximum is a clear error.

mod common;

use keel_wal::{Error, RunId, WalEntry};
use proptest::prelude::*;

const MAX_RECORD: u32 = 16 * 1024;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn entry() -> impl Strategy<Value = WalEntry> {
    let run = any::<u128>().prop_map(RunId::from_u128);
    // Leave room for the archive's own fields within MAX_RECORD.
    let room = MAX_RECORD as usize / 2 - 64;
    prop_oneof![
        (run.clone(), any::<u64>())
            .prop_map(|(run_id, txn_id)| WalEntry::BeginTxn { run_id, txn_id }),
        (run.clone(), any::<u64>(), bytes(room), bytes(room)).prop_map(
            |(run_id, txn_id, key, value)| WalEntry::Write {
                run_id,
                txn_id,
                key,
                value
            }
        ),
        (run.clone(), any::<u64>(), bytes(2 * room)).prop_map(|(run_id, txn_id, key)| {
            WalEntry::Delete {
                run_id,
                txn_id,
                key,
            }
        }),
        (run.clone(), any::<u64>())
            .prop_map(|(run_id, txn_id)| WalEntry::CommitTxn { run_id, txn_id }),
        (run.clone(), any::<u64>())
            .prop_map(|(run_id, txn_id)| WalEntry::AbortTxn { run_id, txn_id }),
        (run, any::<u64>()).prop_map(|(run_id, snapshot_lsn)| WalEntry::Checkpoint {
            run_id,
            snapshot_lsn
        }),
    ]
}

#[test]
fn every_entry_type_round_trips_through_a_segment() {
    let seed = common::seed(0x5eed_0001);
    for backend in common::backends() {
        let mut runner = common::runner(seed, 48);
        let units = prop::collection::vec(prop::collection::vec(entry(), 1..6), 1..12);
        runner
            .run(&units, |units| {
                let dir = tempfile::tempdir().unwrap();
                let options = keel_wal::WalOptions {
                    max_record_bytes: MAX_RECORD,
                    ..common::small_options(backend)
                };
                let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
                let mut expected = Vec::new();
                for unit in &units {
                    let last = wal.append(unit).wait().unwrap();
                    let first = last + 1 - unit.len() as u64;
                    expected.extend((first..=last).zip(unit.iter().cloned()));
                }
                wal.close().unwrap();
                prop_assert_eq!(common::read_all(dir.path()), expected);
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn a_record_over_the_maximum_is_a_clear_error() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let options = keel_wal::WalOptions {
            max_record_bytes: MAX_RECORD,
            ..common::small_options(backend)
        };
        let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
        let too_big = common::write(1, 1, "k", MAX_RECORD as usize);
        let err = wal.append(&[too_big]).wait().unwrap_err();
        assert!(
            matches!(err, Error::RecordTooLarge { max, .. } if max == u64::from(MAX_RECORD)),
            "{err}"
        );
        assert!(err.to_string().contains("exceeds the maximum"), "{err}");
        // Nothing was assigned an LSN: the next append still gets LSN 1.
        assert_eq!(
            wal.append(&[common::write(1, 1, "k", 10)]).wait().unwrap(),
            1
        );
    }
}
