//! Adversarial review (passes: a regression test): the `TooLarge` bound of `put` against
//! the real encoder, for keys of every length from 0 to 64 and some large ones, written
//! directly in a commit and spilled ahead of it; each write at the bound commits and is
//! recovered after a reopen.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};

const MAX_RECORD: u32 = 4 * 1024;

fn options(spill: usize) -> Options {
    Options {
        backend: BackendChoice::Std,
        segment_bytes: 64 * 1024,
        max_record_bytes: MAX_RECORD,
        checkpoint_log_bytes: 0,
        spill_txn_bytes: spill,
        ..Options::default()
    }
}

fn key_lengths() -> Vec<usize> {
    let mut lengths: Vec<usize> = (0..=64).collect();
    lengths.extend([255, 1000, 2047, MAX_RECORD as usize - 64]);
    lengths
}

fn write_at_the_bound(spill: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(spill)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let mut expected = Vec::new();
    for key_len in key_lengths() {
        let mut key = vec![b'k'; key_len];
        if let Some(last) = key.last_mut() {
            *last = u8::try_from(key_len % 251).unwrap();
        }
        let fits = MAX_RECORD as usize - 64 - key_len;
        let mut txn = db.transaction(run).unwrap();
        let refused = txn.put(&key, vec![1u8; fits + 1]);
        assert!(
            matches!(refused, Err(Error::TooLarge { .. })),
            "key of {key_len} bytes: {refused:?}"
        );
        txn.put(&key, vec![2u8; fits])
            .unwrap_or_else(|e| panic!("key of {key_len} bytes: {e}"));
        if spill == 1 {
            assert!(txn.spilled(), "key of {key_len} bytes: spilled");
        }
        block_on(txn.commit()).unwrap_or_else(|e| panic!("key of {key_len} bytes: {e}"));
        let mut txn = db.transaction(run).unwrap();
        txn.delete(&key).unwrap();
        txn.abort();
        expected.push((key, fits));
    }
    db.close().unwrap();
    let db = Database::open(dir.path(), options(spill)).unwrap();
    for (key, fits) in expected {
        let got = db.get(run, &key).unwrap().map(|v| v.value.len());
        assert_eq!(got, Some(fits), "key of {} bytes after reopen", key.len());
    }
    db.close().unwrap();
}

#[test]
fn writes_at_the_bound_commit_for_every_key_length() {
    write_at_the_bound(8 << 20);
}

#[test]
fn spilled_writes_at_the_bound_commit_for_every_key_length() {
    write_at_the_bound(1);
}
