//! The errors a caller handles, matched on `keel::Error` alone (this file uses no keel-wal):
//! a locked directory, a write too large for the record limit, a closed log, and the log's
//! and recovery's other errors through keel's re-exports.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options, RecoveryError, WalError};

const SEGMENT: u64 = 64 * 1024;
const MAX_RECORD: u32 = 8 * 1024;

fn options() -> Options {
    Options {
        segment_bytes: SEGMENT,
        max_record_bytes: MAX_RECORD,
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

#[test]
fn a_second_open_of_a_locked_directory_is_locked_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let error = Database::open(dir.path(), options()).unwrap_err();
    let message = error.to_string();
    match &error {
        Error::Locked { path } => assert_eq!(path, dir.path()),
        other => panic!("expected Error::Locked, got {other:?}"),
    }
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("close that one first"), "{message}");
    db.close().unwrap();
    // Released: the next open succeeds.
    Database::open(dir.path(), options())
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn a_too_large_put_names_the_value_the_limit_and_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    let limit = MAX_RECORD as usize - 64;
    let error = txn.put(b"0123456789", vec![1u8; 9000]).unwrap_err();
    let message = error.to_string();
    match error {
        Error::TooLarge {
            key_bytes: 10,
            value_bytes: 9000,
            limit_bytes,
            option: "Options::max_record_bytes",
        } => assert_eq!(limit_bytes, limit as u64),
        other => panic!("expected Error::TooLarge, got {other:?}"),
    }
    for needle in [
        "a 10-byte key and a 9000-byte value",
        &format!("at most {limit} bytes"),
        "raise Options::max_record_bytes",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    // At the limit exactly it fits; a key alone is bounded the same way.
    txn.put(b"k", vec![2u8; limit - 1]).unwrap();
    let key = vec![b'k'; limit + 1];
    assert!(matches!(
        txn.delete(&key),
        Err(Error::TooLarge { value_bytes: 0, .. })
    ));
    block_on(txn.commit()).unwrap();
    db.close().unwrap();
}

/// A run's record is not checked by the engine before the log sees it: the log's refusal
/// arrives as the same variant, counting the encoded entry.
#[test]
fn a_run_name_too_large_for_a_record_is_too_large_as_well() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let error = block_on(db.begin_run(&"n".repeat(MAX_RECORD as usize))).unwrap_err();
    match &error {
        Error::TooLarge {
            key_bytes: 0,
            value_bytes,
            limit_bytes,
            option: "Options::max_record_bytes",
        } => {
            assert_eq!(*limit_bytes, u64::from(MAX_RECORD));
            assert!(*value_bytes as u64 > *limit_bytes, "{error}");
        }
        other => panic!("expected Error::TooLarge, got {other:?}"),
    }
    assert!(
        error.to_string().contains("Options::max_record_bytes"),
        "{error}"
    );
    assert!(db.list_runs().is_empty());
    db.close().unwrap();
}

/// The log's errors with an engine variant are lifted into it, whether they come straight
/// from the log or through recovery; the log's others are `Wal` (through recovery too), and
/// recovery's own are `Recovery`: keel re-exports both types. (A closed log cannot be reached through a `Database`: `close` takes the last
/// handle, so `Error::Closed` is met only by an operation racing the last drop; the
/// conversion is what every such path uses.)
#[test]
fn the_logs_errors_are_lifted_into_engine_variants() {
    assert!(matches!(Error::from(WalError::Closed), Error::Closed));
    let path = std::path::PathBuf::from("/somewhere");
    let locked = || WalError::Locked { path: path.clone() };
    assert!(matches!(Error::from(locked()), Error::Locked { path: p } if p == path));
    assert!(matches!(
        Error::from(RecoveryError::Wal(locked())),
        Error::Locked { .. }
    ));
    assert!(matches!(
        Error::from(RecoveryError::Wal(WalError::Closed)),
        Error::Closed
    ));
    assert!(matches!(
        Error::from(WalError::RecordTooLarge { size: 9, max: 8 }),
        Error::TooLarge {
            value_bytes: 9,
            limit_bytes: 8,
            ..
        }
    ));
    assert!(matches!(
        Error::from(WalError::InvalidOptions("x".into())),
        Error::Wal(WalError::InvalidOptions(_))
    ));
    assert!(matches!(
        Error::from(RecoveryError::Wal(WalError::InvalidOptions("x".into()))),
        Error::Wal(WalError::InvalidOptions(_))
    ));
    assert!(matches!(
        Error::from(RecoveryError::Internal("x".into())),
        Error::Recovery(RecoveryError::Internal(_))
    ));
}

/// The rest of the log's errors are matched through keel's re-export.
#[test]
fn the_logs_other_errors_are_reachable_through_keel() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Database::open(
        dir.path().join("db"),
        Options {
            segment_bytes: 100,
            ..options()
        },
    );
    match refused {
        Err(Error::Wal(WalError::InvalidOptions(message))) => {
            assert!(message.contains("segment_bytes 100"), "{message}")
        }
        other => panic!("expected invalid options, got {:?}", other.err()),
    }
}
