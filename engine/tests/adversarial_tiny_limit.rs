//! Adversarial review: a record limit under a write's framing (`max_record_bytes` set below
//! 64, which `Options` accepts from 1 on). `put` bounds a key and value by the limit less 64
//! bytes, saturating at 0, and let an empty key and value through (0 is not over 0); the
//! commit then found the `Write` entry (its archive alone is 48 bytes) over the limit and
//! refused it: a write `put` accepted, refused at commit. `put` must refuse what no commit
//! can hold.

use futures::executor::block_on;
use keel::{BackendChoice, Database, Error, Options};

fn options(max_record_bytes: u32) -> Options {
    Options {
        backend: BackendChoice::Std,
        segment_bytes: 64 * 1024,
        max_record_bytes,
        checkpoint_log_bytes: 0,
        ..Options::default()
    }
}

#[test]
fn a_write_put_accepts_under_a_tiny_limit_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), options(16 * 1024)).unwrap();
    let run = block_on(db.begin_run("r")).unwrap();
    db.close().unwrap();
    for limit in [1, 32, 48, 63, 64] {
        let db = Database::open(dir.path(), options(limit)).unwrap();
        let mut txn = db.transaction(run).unwrap();
        let put = txn.put(b"", b"");
        if let Err(error) = put {
            assert!(
                matches!(error, Error::TooLarge { .. }),
                "limit {limit}: {error}"
            );
            drop(txn);
            db.close().unwrap();
            continue;
        }
        let committed = block_on(txn.commit());
        assert!(
            committed.is_ok(),
            "limit {limit}: put accepted an empty write, the commit refused it: {committed:?}"
        );
        db.close().unwrap();
    }
}
