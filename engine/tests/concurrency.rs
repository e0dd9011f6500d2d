//! Many threads commit to overlapping keys at once: the state the live database shows is the
//! one a reopen recovers (commit order is LSN order on both sides), and every version is the
//! LSN of the commit that wrote it.

use std::collections::BTreeMap;

use futures::executor::block_on;
use keel::{Database, Options};

#[test]
fn concurrent_commits_recover_to_the_live_state() {
    for backend in keel_wal::BackendChoice::available() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            segment_bytes: 64 * 1024,
            max_record_bytes: 16 * 1024,
            backend: *backend,
            checkpoint_log_bytes: 256 * 1024,
            checkpoint_log_percent: 0,
            spill_txn_bytes: 2048,
            ..Options::default()
        };
        let db = Database::open(dir.path(), options.clone()).unwrap();
        let run = block_on(db.begin_run("contended")).unwrap();
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    for i in 0..150u32 {
                        let mut txn = db.transaction(run).unwrap();
                        for k in 0..(1 + i % 4) {
                            let key = format!("k{:02}", (t * 7 + i + k) % 40);
                            txn.put(
                                key.as_bytes(),
                                format!("{t}-{i}-{k}")
                                    .repeat(1 + (i % 50) as usize)
                                    .as_bytes(),
                            )
                            .unwrap();
                        }
                        if i % 9 == 0 {
                            txn.delete(format!("k{:02}", (t + i) % 40).as_bytes())
                                .unwrap();
                        }
                        block_on(txn.commit()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let live: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = db
            .scan(run, b"")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, (v.value, v.version)))
            .collect();
        db.wait_for_automatic_checkpoint();
        assert!(db.stats().checkpoints > 0, "checkpoints ran meanwhile");
        db.close().unwrap();
        let db = Database::open(dir.path(), options).unwrap();
        let recovered: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = db
            .scan(run, b"")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, (v.value, v.version)))
            .collect();
        assert_eq!(recovered, live, "{backend:?}");
        db.close().unwrap();
    }
}
