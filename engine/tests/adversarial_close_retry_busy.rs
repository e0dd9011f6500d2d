//! Adversarial review (passes: a regression test): `Database::close` retried while another
//! thread commits, through small segments, spilled transactions and automatic checkpoints
//! (the checkpointer thread busy or asked for at every attempt). Every attempt while the
//! committer's handle lives is `InUse` and closes nothing; the retry once it is gone closes;
//! after a reopen every acknowledged commit is there, each spilled one whole.

use std::sync::mpsc;

use futures::executor::block_on;
use keel::{BackendChoice, CloseError, Database, Durability, Options};

fn options(durability: Durability) -> Options {
    Options {
        backend: BackendChoice::Std,
        durability,
        segment_bytes: 64 * 1024,
        checkpoint_log_bytes: 32 * 1024,
        spill_txn_bytes: 4 * 1024,
        ..Options::default()
    }
}

fn retried_close_keeps_every_acknowledged_commit(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(durability)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    let (acks, acked) = mpsc::channel();
    let committer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for i in 0u32..120 {
                let mut txn = db.transaction(run).unwrap();
                for part in 0..3u8 {
                    let value = vec![part; 1500 + (i as usize % 7) * 100];
                    txn.put(format!("k{i:04}/{part}"), value).unwrap();
                }
                let lsn = match i % 3 {
                    0 => txn.commit_blocking(),
                    _ => block_on(txn.commit_with(Durability::Strict)),
                };
                acks.send((i, lsn.unwrap())).unwrap();
            }
        })
    };
    let mut db = db;
    let mut refused = 0;
    let closed = loop {
        match db.close() {
            Ok(()) => break true,
            Err(CloseError::InUse { db: back, .. }) => {
                refused += 1;
                db = back;
                if committer.is_finished() {
                    continue;
                }
                std::thread::yield_now();
            }
            Err(other) => panic!("close failed: {other}"),
        }
    };
    assert!(closed && refused > 0);
    committer.join().unwrap();
    let acked: Vec<(u32, u64)> = acked.into_iter().collect();
    assert_eq!(acked.len(), 120);
    let db = Database::open(dir.path(), options(durability)).unwrap();
    for (i, lsn) in acked {
        for part in 0..3u8 {
            let got = db.get(run, format!("k{i:04}/{part}")).unwrap();
            let got = got.unwrap_or_else(|| panic!("commit {i} (LSN {lsn}) lost part {part}"));
            assert_eq!((got.version, got.value[0]), (lsn, part), "commit {i}");
        }
    }
    assert!(db.stats().checkpoints > 0 || db.snapshot_lsn().is_some());
    db.close().unwrap();
}

#[test]
fn strict() {
    retried_close_keeps_every_acknowledged_commit(Durability::Strict);
}

#[test]
fn batched() {
    retried_close_keeps_every_acknowledged_commit(Durability::Batched {
        max_delay: std::time::Duration::from_millis(5),
        max_bytes: 1 << 20,
    });
}

#[test]
fn asynchronous() {
    retried_close_keeps_every_acknowledged_commit(Durability::Async {
        max_delay: std::time::Duration::from_secs(600),
    });
}
