//! Replay throughput: recovery of a log of 128-byte writes (8 writes and a commit per
//! transaction) from the page cache, into a sink that touches every entry. The log is 1 GiB
//! unless `KEEL_REPLAY_MIB` says otherwise; it is built once, outside the measurement.
//! Prints entries/s, GB/s and peak memory (the open transactions' bytes and the process's
//! peak resident set).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_recovery::{CommittedTxn, RecoveryPolicy, Replay, ReplayError, recover};
use keel_wal::{BackendChoice, Durability, RunId, WalEntry, WalOptions};

struct Touch {
    bytes: u64,
    entries: u64,
}

impl Replay for Touch {
    fn apply(&mut self, txn: &CommittedTxn<'_>) -> Result<(), ReplayError> {
        for (_, entry) in txn.entries() {
            if let keel_wal::ArchivedWalEntry::Write { value, .. } = entry {
                self.bytes += value.len() as u64;
            }
            self.entries += 1;
        }
        Ok(())
    }
}

fn build(dir: &Path, target_bytes: u64) -> u64 {
    let options = WalOptions {
        durability: Durability::Async {
            max_delay: Duration::from_millis(50),
        },
        backend: BackendChoice::Std,
        ..WalOptions::default()
    };
    let wal = keel_recovery::open_wal(dir, options).unwrap();
    let run_id = RunId::from_u128(1);
    let value = vec![0x5a; 128];
    let mut txn_id = 0;
    while wal.stats().bytes_written + 8 * 1024 * 1024 < target_bytes {
        for _ in 0..1024 {
            let mut unit: Vec<WalEntry> = (0..8)
                .map(|i| WalEntry::Write {
                    run_id,
                    txn_id,
                    key: format!("key-{txn_id:012}-{i}").into_bytes(),
                    value: value.clone(),
                })
                .collect();
            unit.push(WalEntry::CommitTxn { run_id, txn_id });
            drop(wal.append(&unit));
            txn_id += 1;
        }
    }
    wal.sync().wait().unwrap();
    let written = wal.stats().bytes_written;
    wal.close().unwrap();
    written
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn replay(c: &mut Criterion) {
    let mib: u64 = std::env::var("KEEL_REPLAY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let started = Instant::now();
    let bytes = build(&log, mib << 20);
    println!(
        "built a {:.0} MiB log in {:.1?}",
        bytes as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    // Reset the peak resident set (Linux), so the figure is the replay's, not the build's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    // One timed pass for the closing figures, then criterion's samples.
    let mut sink = Touch {
        bytes: 0,
        entries: 0,
    };
    let started = Instant::now();
    let report = recover(&log, RecoveryPolicy::default(), &mut sink).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "replay: {} records ({} entries delivered) in {elapsed:.2} s: {:.2}M records/s, {:.2} GB/s; \
         peak open-transaction bytes {}, peak RSS {} KiB",
        report.records,
        sink.entries,
        report.records as f64 / elapsed / 1e6,
        report.bytes as f64 / elapsed / 1e9,
        report.peak_txn_bytes,
        peak_rss_kib().map_or("?".into(), |k| k.to_string()),
    );
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(report.bytes));
    group.bench_function(format!("{mib}MiB_128B_writes"), |b| {
        b.iter(|| {
            let mut sink = Touch {
                bytes: 0,
                entries: 0,
            };
            recover(&log, RecoveryPolicy::default(), &mut sink).unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
