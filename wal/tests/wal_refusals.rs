//! Appends and reads the log refuses, each with an error that says why, and each leaving the
//! log as it was: an empty append, a batch framed for a larger record limit than the log's,
//! a reader meeting another database's segment. And every kind of entry keeps its run and
//! its kind through the log.

mod common;

use keel_wal::segment::{self, HEADER_CRC_OFFSET};
use keel_wal::{
    Durability, EncodedBatch, EntryKind, Error, LogReader, RunId, WalEntry, WalOptions,
};

fn options() -> WalOptions {
    common::small_options(keel_wal::BackendChoice::Std)
}

#[test]
fn an_empty_append_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
    let error = wal.append(&[]).wait().unwrap_err();
    assert!(matches!(error, Error::Encode(_)), "{error}");
    assert!(error.to_string().contains("at least one entry"), "{error}");
    assert_eq!(wal.next_lsn(), 1);
    assert_eq!(
        wal.append(&[common::write(1, 1, "k", 10)]).wait().unwrap(),
        1
    );
    wal.close().unwrap();
    assert_eq!(common::read_all(dir.path()).len(), 1);
}

/// A batch framed with [`EncodedBatch::encode`] against a larger limit than the log was opened
/// with is refused whole at append, naming both sizes; nothing of it is written.
#[test]
fn a_batch_framed_for_a_larger_limit_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let limit = options.max_record_bytes;
    let wal = keel_recovery::open_wal(dir.path(), options).unwrap();
    let entries = [
        common::write(1, 1, "small", 10),
        common::write(1, 1, "big", limit as usize + 100),
    ];
    let batch = EncodedBatch::encode(&entries, limit * 2).unwrap();
    assert_eq!(batch.len(), 2);
    let error = wal
        .append_encoded(batch, Durability::Strict)
        .wait()
        .unwrap_err();
    match &error {
        Error::RecordTooLarge { size, max } => {
            assert!(*size > u64::from(limit), "{error}");
            assert_eq!(*max, u64::from(limit), "{error}");
        }
        other => panic!("expected RecordTooLarge, got {other}"),
    }
    assert_eq!(wal.next_lsn(), 1, "nothing of the batch was queued");
    // The same entries framed against the log's limit are refused before any append.
    assert!(matches!(
        EncodedBatch::encode(&entries, limit),
        Err(Error::RecordTooLarge { .. })
    ));
    wal.close().unwrap();
    assert!(common::read_all(dir.path()).is_empty());
}

/// A reader walking into a segment that belongs to another database stops with an error
/// naming it (never reads its records as ours); the log's identity is the one it was
/// created with, across reopens.
#[test]
fn a_reader_refuses_another_databases_segment() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    common::filled_log(ours.path(), options(), 3, 50);
    common::filled_log(theirs.path(), options(), 5, 50);
    let id = {
        let wal = keel_recovery::open_wal(ours.path(), options()).unwrap();
        let id = wal.database_id();
        wal.close().unwrap();
        id
    };
    let reopened = keel_recovery::open_wal(ours.path(), options()).unwrap();
    assert_eq!(reopened.database_id(), id);
    reopened.close().unwrap();
    let other = keel_recovery::open_wal(theirs.path(), options()).unwrap();
    assert_ne!(other.database_id(), id);
    other.close().unwrap();

    // Their first segment, renamed and renumbered to follow ours (checksum fixed up).
    let theirs_first = keel_wal::dir::list_directory(theirs.path())
        .unwrap()
        .segments[0]
        .path
        .clone();
    let mut bytes = std::fs::read(theirs_first).unwrap();
    bytes[segment::FIRST_LSN_OFFSET..segment::FIRST_LSN_OFFSET + 8]
        .copy_from_slice(&4u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    bytes[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(ours.path().join(segment::file_name(4)), bytes).unwrap();

    let mut reader = LogReader::open(ours.path()).unwrap();
    let mut read = Vec::new();
    let error = loop {
        match reader.next_record() {
            Ok(Some(record)) => read.push(record.lsn),
            Ok(None) => panic!("read to the end through a foreign segment: {read:?}"),
            Err(error) => break error,
        }
    };
    assert_eq!(read, [1, 2, 3], "our records, then the refusal");
    assert!(matches!(error, Error::ForeignDatabase { .. }), "{error}");
    assert!(error.to_string().contains("belongs to database"), "{error}");
}

/// Every kind of entry reads back with its run and its kind (every entry carries a run).
#[test]
fn every_entry_keeps_its_run_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let wal = keel_recovery::open_wal(dir.path(), options()).unwrap();
    let run = |n: u128| RunId::from_u128(0x1000 + n);
    let entries = vec![
        WalEntry::BeginTxn {
            run_id: run(1),
            txn_id: 1,
        },
        common::write(0x1002, 1, "k", 5),
        WalEntry::Delete {
            run_id: run(3),
            txn_id: 1,
            key: b"k".to_vec(),
        },
        WalEntry::CommitTxn {
            run_id: run(4),
            txn_id: 1,
        },
        WalEntry::AbortTxn {
            run_id: run(5),
            txn_id: 2,
        },
        WalEntry::Checkpoint {
            run_id: run(6),
            snapshot_lsn: 3,
        },
        WalEntry::Payload {
            run_id: run(7),
            tag: 9,
            payload: vec![1, 2, 3],
        },
        WalEntry::CommitSpan {
            run_id: run(8),
            txn_id: 3,
            first_lsn: 1,
        },
    ];
    let kinds = [
        EntryKind::BeginTxn,
        EntryKind::Write,
        EntryKind::Delete,
        EntryKind::CommitTxn,
        EntryKind::AbortTxn,
        EntryKind::Checkpoint,
        EntryKind::Payload,
        EntryKind::CommitSpan,
    ];
    wal.append(&entries).wait().unwrap();
    wal.close().unwrap();
    let mut reader = LogReader::open(dir.path()).unwrap();
    for (entry, kind) in entries.iter().zip(kinds) {
        let record = reader
            .next_record()
            .unwrap()
            .expect("every entry reads back");
        let archived = record.entry;
        assert_eq!(archived.kind(), kind);
        assert_eq!(kind.name(), format!("{kind:?}"));
        assert_eq!(archived.run_id(), entry.run_id().as_u128(), "{kind:?}");
        assert_eq!(&archived.to_owned_entry(), entry, "{kind:?}");
    }
    assert!(reader.next_record().unwrap().is_none());
}
