//! Options that cannot contradict themselves: the record limit follows the segment size
//! unless set, and a contradiction is refused, naming the options and the range, before
//! anything is created.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options, WalError};

fn options() -> Options {
    Options {
        backend: BackendChoice::Std,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

#[test]
fn segment_bytes_of_4_mib_alone_opens_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        segment_bytes: 4 << 20,
        ..Options::default()
    };
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    // The limit followed the segment: an eighth of it, less a write's framing.
    let limit = (4usize << 20) / 8 - 64;
    txn.put(b"big", vec![7u8; limit - 3]).unwrap();
    let refused = txn.put(b"big", vec![7u8; limit - 2]).unwrap_err();
    assert!(
        matches!(refused, Error::TooLarge { limit_bytes, .. } if limit_bytes == limit as u64),
        "{refused}"
    );
    let version = block_on(txn.commit()).unwrap();
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let got = db.get(run, b"big").unwrap().unwrap();
    assert_eq!((got.value.len(), got.version), (limit - 3, version));
    db.close().unwrap();
}

#[test]
fn an_impossible_combination_names_the_options_and_the_range_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let refused = Database::open(
        &path,
        Options {
            segment_bytes: 64 * 1024,
            max_record_bytes: 1 << 20,
            ..options()
        },
    );
    let message = match refused {
        Err(Error::Wal(WalError::InvalidOptions(message))) => message,
        other => panic!("expected invalid options, got {:?}", other.err()),
    };
    for needle in [
        "max_record_bytes 1048576",
        "with segment_bytes 65536 it must be between 1 and",
        "or 0 to follow segment_bytes",
        "raise segment_bytes to at least 1056768",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    assert!(!path.exists(), "a refused open created {}", path.display());
}
