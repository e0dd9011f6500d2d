//! A failed operation never loses what came before it, and failures hold no memory: writes
//! too large for a record are refused up front (naming the option), refused commits of a
//! poisoned log are not queued, and reading spilled writes back never reads past them.

use std::sync::Arc;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};
use keel_sim::Faults;

const MAX_RECORD: u32 = 16 * 1024;

fn options() -> Options {
    Options {
        backend: BackendChoice::Std,
        segment_bytes: 256 * 1024,
        max_record_bytes: MAX_RECORD,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

/// The bound `put` checks is never below what the encoder needs: a write right at it is
/// accepted, logged and recovered, for every key length around the alignment.
#[test]
fn a_write_at_the_size_limit_commits_and_one_byte_more_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    for key_len in 1..=24usize {
        let key = vec![b'k'; key_len];
        let fits = MAX_RECORD as usize - 64 - key_len;
        let mut txn = db.transaction(run).unwrap();
        txn.put(&key, vec![7u8; fits]).unwrap();
        let refused = txn.put(b"other", vec![7u8; fits + 1 + key_len - 5]);
        match refused {
            Err(Error::TooLarge { limit_bytes, .. }) => {
                assert_eq!(limit_bytes, u64::from(MAX_RECORD) - 64)
            }
            other => panic!("key of {key_len} bytes: expected TooLarge, got {other:?}"),
        }
        block_on(txn.commit()).unwrap();
        assert_eq!(db.get(run, &key).unwrap().unwrap().value.len(), fits);
    }
    let message = {
        let mut txn = db.transaction(run).unwrap();
        txn.put(b"k", vec![0u8; MAX_RECORD as usize])
            .unwrap_err()
            .to_string()
    };
    assert!(message.contains("max_record_bytes"), "{message}");
    db.close().unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.scan(run, b"k").unwrap().len(), 24);
    db.close().unwrap();
}

/// A failed spill (here: a spilled write the log cannot take) leaves the buffered writes in
/// the transaction, and its commit then carries them.
#[test]
fn a_failed_put_leaves_the_transaction_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        Options {
            spill_txn_bytes: 1024,
            ..options()
        },
    )
    .unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"a", b"first").unwrap();
    txn.delete(b"b").unwrap();
    assert!(!txn.spilled());
    let error = txn
        .put(b"huge", vec![1u8; MAX_RECORD as usize])
        .unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error}");
    assert_eq!(txn.get(b"a").unwrap().unwrap().value, b"first");
    assert!(txn.get(b"huge").unwrap().is_none());
    block_on(txn.commit()).unwrap();
    assert_eq!(db.get(run, b"a").unwrap().unwrap().value, b"first");
    assert!(db.get(run, b"huge").unwrap().is_none());
    db.close().unwrap();
}

/// After the log is poisoned every commit is refused; none of them may stay queued in the
/// engine (a service retrying in a loop would otherwise grow memory without bound).
#[test]
fn refused_commits_after_a_failed_sync_hold_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let db = Database::open(
        dir.path(),
        Options {
            storage: Arc::clone(&faults) as _,
            ..options()
        },
    )
    .unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    faults.fail_sync_after(0);
    let mut txn = db.transaction(run).unwrap();
    txn.put(b"k", b"v").unwrap();
    assert!(
        block_on(txn.commit()).is_err(),
        "the failed sync fails the commit"
    );
    for i in 0..1000u32 {
        let mut txn = db.transaction(run).unwrap();
        txn.put(i.to_be_bytes(), b"v").unwrap();
        assert!(block_on(txn.commit()).is_err());
    }
    let pending = db.stats().pending_commits;
    assert!(
        pending <= 1,
        "{pending} refused commits are held in memory (only the one in flight may be)"
    );
}

/// Reading a spilled transaction's writes back stops at its last entry: the record after it
/// (another commit's, possibly still being written) is never read, so damage there cannot
/// fail this commit.
#[test]
fn a_spilled_commit_never_reads_past_its_own_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        Options {
            spill_txn_bytes: 1024,
            ..options()
        },
    )
    .unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut txn = db.transaction(run).unwrap();
    for i in 0..4u8 {
        txn.put([b's', i], [i; 400]).unwrap();
    }
    assert!(txn.spilled());
    let mut other = db.transaction(run).unwrap();
    other.put(b"next", b"after the spill").unwrap();
    let next_lsn = block_on(other.commit()).unwrap();
    // Damage the record that follows the spilled entries.
    let wal = dir.path().join("wal");
    let mut reader = keel_wal::LogReader::open(&wal).unwrap();
    let mut spot = None;
    while let Some(record) = reader.next_record().unwrap() {
        if record.lsn == next_lsn - 1 {
            spot = Some((record.segment, record.offset + record.len / 2));
        }
    }
    let (segment, offset) = spot.expect("the following record is in the log");
    let path = wal.join(keel_wal::segment::file_name(segment));
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], offset).unwrap();
    }
    block_on(txn.commit()).expect("the spilled commit reads only its own entries");
    assert_eq!(db.scan(run, b"s").unwrap().len(), 4);
}

/// A database that spills past 1 KiB, with a fault injector on its log.
fn spilling_with_faults(dir: &std::path::Path) -> (Database, Arc<Faults>) {
    let faults = Faults::new();
    let db = Database::open(
        dir,
        Options {
            spill_txn_bytes: 1024,
            storage: Arc::clone(&faults) as _,
            ..options()
        },
    )
    .unwrap();
    (db, faults)
}

/// A spill the poisoned log refuses fails the `put` that called for it, with the log's error,
/// and leaves the transaction as it was before the call. A transaction that spilled before
/// the failure fails its commit. Neither keeps a spill registration that pins the log.
#[test]
fn a_spill_onto_a_poisoned_log_fails_the_put_and_pins_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, faults) = spilling_with_faults(dir.path());
    let run = block_on(db.begin_run("r")).unwrap();
    let mut before = db.transaction(run).unwrap();
    for i in 0..12u8 {
        before.put([b'a', i], [i; 100]).unwrap();
    }
    assert!(before.spilled());
    assert_eq!(db.stats().spills_tracked, 1);
    // Reading a spilled write back waits until the spill is written.
    assert_eq!(before.get([b'a', 2]).unwrap().unwrap().value, vec![2; 100]);

    // Poison the log: the next sync fails, and every append after it is refused.
    faults.fail_sync_after(0);
    let mut other = db.transaction(run).unwrap();
    other.put(b"x", b"y").unwrap();
    assert!(block_on(other.commit()).is_err());

    let mut after = db.transaction(run).unwrap();
    let mut refused = None;
    for i in 0..12u8 {
        if let Err(error) = after.put([b'b', i], [i; 100]) {
            refused = Some((i, error));
            break;
        }
    }
    let (at, error) = refused.expect("a spill was called for and refused");
    assert!(error.to_string().contains("poisoned"), "{error}");
    assert!(!after.spilled(), "nothing reached the log");
    for i in 0..at {
        assert_eq!(after.get([b'b', i]).unwrap().unwrap().value, vec![i; 100]);
    }
    assert_eq!(
        after.get([b'b', at]).unwrap(),
        None,
        "the failed put is undone"
    );

    assert_eq!(before.get([b'a', 3]).unwrap().unwrap().value, vec![3; 100]);
    let error = block_on(before.commit()).unwrap_err();
    assert!(error.to_string().contains("poisoned"), "{error}");
    assert!(block_on(after.commit()).is_err());
    assert_eq!(db.get(run, [b'a', 3]).unwrap(), None);
    assert_eq!(
        db.stats().spills_tracked,
        0,
        "a failed spilled commit still pins the log"
    );
    assert!(db.stats().pending_commits <= 1);
}

/// A spill the log queued but could not write poisons the transaction: the first read back
/// reports the write's error, and every later read back and the commit fail with
/// `Error::SpillFailed` (before, the commit went on to read back entries never written and
/// failed with "spilled entry not in the log", a metadata error).
#[test]
fn a_spill_whose_write_fails_poisons_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (db, faults) = spilling_with_faults(dir.path());
    let run = block_on(db.begin_run("r")).unwrap();
    faults.fail_write_after(0);
    let mut txn = db.transaction(run).unwrap();
    // One spill (each write counts about 200 bytes as logged), and two writes after it.
    for i in 0..7u8 {
        txn.put([b'a', i], [i; 100]).unwrap();
    }
    assert!(txn.spilled(), "the spill was queued");
    let first = txn.get([b'a', 3]);
    assert!(first.is_err(), "{first:?}");
    assert!(matches!(txn.get([b'a', 4]), Err(Error::SpillFailed(_))));
    let error = block_on(txn.commit()).unwrap_err();
    assert!(matches!(error, Error::SpillFailed(_)), "{error}");
    assert_eq!(db.get(run, [b'a', 3]).unwrap(), None);
    assert_eq!(db.stats().spills_tracked, 0);
}
