//! Completions reported out of order (newest first, as a pipelined backend may report them):
//! commits resolve only once the contiguous prefix below them is complete, watermarks never
//! move back, a failure in an older chain fails every commit above it, and the log reads back
//! whole.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel_sim::Faults;
use keel_wal::{CommitFuture, Durability, Error, Wal, WalOptions};

const THREADS: u64 = 6;
const APPENDS: u64 = 80;

fn open(dir: &std::path::Path, backend: keel_wal::BackendChoice, faults: &Arc<Faults>) -> Arc<Wal> {
    let options = WalOptions {
        storage: Arc::clone(faults) as _,
        ..common::small_options(backend)
    };
    Arc::new(keel_recovery::open_wal(dir, options).unwrap())
}

/// Each thread queues all its appends without waiting (so chains pile up in flight), then
/// waits for them. Even threads commit Strict, odd ones Batched.
fn pipelined_appends(wal: &Arc<Wal>) -> Vec<(u64, Durability, keel_wal::Result<u64>)> {
    let batched = Durability::Batched {
        max_delay: Duration::from_secs(3600),
        max_bytes: 8192,
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(wal);
            std::thread::spawn(move || {
                let mode = if t % 2 == 0 {
                    Durability::Strict
                } else {
                    batched
                };
                let futures: Vec<(u64, CommitFuture)> = (0..APPENDS)
                    .map(|i| {
                        (
                            i,
                            wal.append_with(&[common::write(u128::from(t), i, "k", 200)], mode),
                        )
                    })
                    .collect();
                futures
                    .into_iter()
                    .map(|(i, f)| (t * 1000 + i, mode, f.wait()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn out_of_order_completions_keep_watermarks_monotone() {
    for backend in common::backends() {
        for held in [2usize, 8] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults::new();
            faults.hold_completions(held);
            let wal = open(dir.path(), backend, &faults);
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut last = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let stats = wal.stats();
                        assert!(
                            stats.durable_lsn >= last.0 && stats.written_lsn >= last.1,
                            "watermark moved back"
                        );
                        last = (stats.durable_lsn, stats.written_lsn);
                    }
                })
            };
            let outcomes = pipelined_appends(&wal);
            stop.store(true, Ordering::Relaxed);
            sampler.join().unwrap();
            let mut lsns: Vec<u64> = outcomes.into_iter().map(|(_, _, r)| r.unwrap()).collect();
            lsns.sort_unstable();
            assert_eq!(lsns, (1..=THREADS * APPENDS).collect::<Vec<_>>());
            let stats = wal.stats();
            println!(
                "held {held}: {} writes, {} fsyncs, max batch {}",
                stats.writes, stats.fsyncs, stats.max_batch_commits
            );
            Arc::into_inner(wal).unwrap().close().unwrap();
            assert_eq!(common::read_all(dir.path()).len() as u64, THREADS * APPENDS);
        }
    }
}

#[test]
fn a_failed_older_chain_fails_every_commit_above_it() {
    for backend in common::backends() {
        for fail_at in [0u32, 1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let faults = Faults::new();
            faults.hold_completions(8);
            faults.fail_sync_after(fail_at);
            let wal = open(dir.path(), backend, &faults);
            let outcomes = pipelined_appends(&wal);
            let durable = wal.stats().durable_lsn;
            let mut failures = 0;
            for (id, mode, outcome) in &outcomes {
                match outcome {
                    Ok(lsn) if *mode == Durability::Strict => {
                        assert!(
                            *lsn <= durable,
                            "commit {id} acknowledged at LSN {lsn} above the durable {durable}"
                        );
                    }
                    Ok(_) => {}
                    Err(Error::Poisoned { cause }) => {
                        assert_eq!(cause.operation, "fdatasync");
                        failures += 1;
                    }
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            assert!(failures > 0, "fail_at {fail_at}");
            drop(wal);
            let recovered: Vec<u64> = common::read_all(dir.path())
                .iter()
                .map(|(lsn, _)| *lsn)
                .collect();
            for (_, mode, outcome) in &outcomes {
                if let (Durability::Strict, Ok(lsn)) = (mode, outcome) {
                    assert!(recovered.contains(lsn), "acknowledged LSN {lsn} lost");
                }
            }
        }
    }
}
