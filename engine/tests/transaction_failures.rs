//! A failed operation never loses what came before it, and failures hold no memory: writes
//! too large for a record are refused up front (naming the option), refused commits of a
//! poisoned log are not queued, and reading spilled writes back never reads past them.

use std::sync::Arc;

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};
use keel_wal::Faults;

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
        txn.put(&key, &vec![7u8; fits]).unwrap();
        let refused = txn.put(b"other", &vec![7u8; fits + 1 + key_len - 5]);
        match refused {
            Err(Error::ValueTooLarge {
                max_record_bytes, ..
            }) => assert_eq!(max_record_bytes, MAX_RECORD),
            other => panic!("key of {key_len} bytes: expected ValueTooLarge, got {other:?}"),
        }
        block_on(txn.commit()).unwrap();
        assert_eq!(db.get(run, &key).unwrap().unwrap().value.len(), fits);
    }
    let message = {
        let mut txn = db.transaction(run).unwrap();
        txn.put(b"k", &vec![0u8; MAX_RECORD as usize])
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
        .put(b"huge", &vec![1u8; MAX_RECORD as usize])
        .unwrap_err();
    assert!(matches!(error, Error::ValueTooLarge { .. }), "{error}");
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
            faults: Some(Arc::clone(&faults)),
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
        txn.put(&i.to_be_bytes(), b"v").unwrap();
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
        txn.put(&[b's', i], &[i; 400]).unwrap();
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

/// A spill onto a log poisoned by a failed sync is queued and fails there: the transaction
/// is poisoned with it. Reading a spilled write back and committing then fail with the
/// log's error, nothing becomes visible, and neither the failed commit nor a dropped
/// transaction keeps a spill registration pinning the log.
#[test]
fn a_spill_onto_a_poisoned_log_poisons_the_transaction_and_pins_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let db = Database::open(
        dir.path(),
        Options {
            spill_txn_bytes: 1024,
            faults: Some(Arc::clone(&faults)),
            ..options()
        },
    )
    .unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let spilled = |first: u8| {
        let mut txn = db.transaction(run).unwrap();
        for i in 0..12u8 {
            txn.put(&[first, i], &[i; 100]).unwrap();
        }
        assert!(txn.spilled());
        txn
    };
    // One spilled before the failure, one after it.
    let mut before = spilled(b'a');
    assert_eq!(db.stats().spills_tracked, 1);
    // Reading a spilled write back waits until the spill is written.
    assert_eq!(before.get(&[b'a', 2]).unwrap().unwrap().value, vec![2; 100]);
    faults.fail_sync_after(0);
    let mut other = db.transaction(run).unwrap();
    other.put(b"x", b"y").unwrap();
    assert!(block_on(other.commit()).is_err());
    let mut after = spilled(b'b');

    // What was written before the failure reads back (the transaction's own write); what
    // the poisoned log refused does not.
    assert_eq!(before.get(&[b'a', 3]).unwrap().unwrap().value, vec![3; 100]);
    let read = after.get(&[b'b', 3]);
    assert!(read.is_err(), "a refused spill read back: {read:?}");
    let error = block_on(before.commit()).unwrap_err();
    assert!(error.to_string().contains("poisoned"), "{error}");
    // The refused spill was reported by the read above; the commit reports it again, not
    // as damage to the log ("spilled entry ... is not in the log").
    let error = block_on(after.commit()).unwrap_err();
    assert!(matches!(error, Error::SpillFailed(_)), "{error}");
    assert!(error.to_string().contains("poisoned"), "{error}");
    assert_eq!(db.get(run, &[b'a', 3]).unwrap(), None);
    assert_eq!(db.get(run, &[b'b', 3]).unwrap(), None);
    drop(spilled(b'c'));
    assert_eq!(
        db.stats().spills_tracked,
        0,
        "a failed or dropped spilled transaction still pins the log"
    );
    assert!(db.stats().pending_commits <= 1);
}
