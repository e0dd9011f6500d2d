//! An injected write or fdatasync failure poisons the log: the commits it carried, those
//! pending and those after it fail with an error naming the cause; nothing is retried; a
//! reopen recovers exactly what was durable.

mod common;

use std::sync::Arc;

use keel_sim::Faults;
use keel_wal::{Durability, Error, WalOptions};

fn options(backend: keel_wal::BackendChoice, faults: &Arc<Faults>) -> WalOptions {
    WalOptions {
        durability: Durability::Strict,
        storage: Arc::clone(faults) as _,
        ..common::small_options(backend)
    }
}

fn assert_poisoned(error: &Error, operation: &str) {
    match error {
        Error::Poisoned { cause } => {
            assert_eq!(cause.operation, operation, "{error}");
            assert!(
                error
                    .to_string()
                    .contains(&format!("injected {operation} failure")),
                "{error}"
            );
        }
        other => panic!("expected a poisoned log, got {other}"),
    }
}

fn poison_scenario(fail: impl Fn(&Faults), operation: &str) {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let wal = keel_recovery::open_wal(dir.path(), options(backend, &faults)).unwrap();
        let durable: Vec<u64> = (0..10)
            .map(|i| wal.append(&[common::write(1, i, "ok", 50)]).wait().unwrap())
            .collect();
        fail(&faults);
        let failed = wal
            .append(&[common::write(1, 100, "lost", 50)])
            .wait()
            .unwrap_err();
        assert_poisoned(&failed, operation);
        let later = wal
            .append(&[common::write(1, 101, "later", 50)])
            .wait()
            .unwrap_err();
        assert_poisoned(&later, operation);
        assert_poisoned(&wal.sync().wait().unwrap_err(), operation);
        assert_eq!(
            wal.stats().durable_lsn,
            10,
            "nothing past the failure is durable"
        );
        assert_poisoned(&wal.close().unwrap_err(), operation);

        let wal = keel_recovery::open_wal(dir.path(), common::small_options(backend)).unwrap();
        let lsns: Vec<u64> = common::read_all(dir.path())
            .iter()
            .map(|(lsn, _)| *lsn)
            .collect();
        // A failed fdatasync may leave the write in the page cache: the record can come back,
        // which is fine (it was never acknowledged); every acknowledged one must.
        assert!(lsns.starts_with(&durable), "{lsns:?}");
        assert!(lsns.len() <= durable.len() + 1);
        let next = wal
            .append(&[common::write(1, 200, "after", 50)])
            .wait()
            .unwrap();
        assert_eq!(next, lsns.len() as u64 + 1);
        wal.close().unwrap();
    }
}

#[test]
fn a_failed_write_poisons_the_log() {
    poison_scenario(|faults| faults.fail_write_after(0), "write");
}

#[test]
fn a_failed_fdatasync_poisons_the_log() {
    poison_scenario(|faults| faults.fail_sync_after(0), "fdatasync");
}

#[test]
fn pending_commits_of_a_failed_batch_all_fail() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let wal = Arc::new(keel_recovery::open_wal(dir.path(), options(backend, &faults)).unwrap());
        faults.fail_sync_after(3);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| wal.append(&[common::write(t, i, "k", 40)]).wait())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut acked = Vec::new();
        let mut failures = 0;
        for thread in threads {
            for outcome in thread.join().unwrap() {
                match outcome {
                    Ok(lsn) => acked.push(lsn),
                    Err(error) => {
                        assert_poisoned(&error, "fdatasync");
                        failures += 1;
                    }
                }
            }
        }
        assert!(failures > 0);
        let durable = wal.stats().durable_lsn;
        assert!(
            acked.iter().all(|&lsn| lsn <= durable),
            "an acknowledged commit is above the durable mark"
        );
        drop(wal);
        let recovered: Vec<u64> = common::read_all(dir.path())
            .iter()
            .map(|(lsn, _)| *lsn)
            .collect();
        for lsn in acked {
            assert!(recovered.contains(&lsn), "acknowledged LSN {lsn} lost");
        }
    }
}
