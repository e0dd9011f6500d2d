//! The Raft log store against the log it is built on, in one run: an append of one entry
//! made durable (openraft's `blocking_append`) beside a `Strict` `Wal::append` of one
//! `Payload` record of the same bytes; 16 appends in flight together (group commit); and a
//! read of 64 durable entries by position.
//!
//! `cargo bench -p keel-raft --bench log_store` (in a temporary directory on the default
//! backend; `KEEL_BACKEND=std|uring` picks one).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keel_raft::{KeelLogStore, KvRequest, TypeConfig};
use keel_wal::{BackendChoice, Durability, RunId, WalEntry, WalOptions};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(KvRequest::Set {
            key: format!("key-{index:08}"),
            value: "v".repeat(100),
        }),
    }
}

fn options() -> WalOptions {
    WalOptions {
        backend: BackendChoice::available()[0],
        ..WalOptions::default()
    }
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("raft_log_store");
    group.sample_size(30);

    let wal = keel_recovery::open_wal(dir.path().join("wal"), options()).unwrap();
    let bytes = serde_json::to_vec(&entry(0)).unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("wal_append_strict_1", |b| {
        b.iter(|| {
            let record = WalEntry::Payload {
                run_id: RunId::from_u128(1),
                tag: 1,
                payload: bytes.clone(),
            };
            wal.append_with(&[record], Durability::Strict)
                .wait()
                .unwrap()
        })
    });
    drop(wal);

    let store = KeelLogStore::<TypeConfig>::open(dir.path().join("raft"), options()).unwrap();
    let mut next = 0u64;
    group.bench_function("blocking_append_1", |b| {
        b.iter(|| {
            let mut store = store.clone();
            let batch = vec![entry(next)];
            next += 1;
            runtime.block_on(store.blocking_append(batch)).unwrap();
        })
    });

    group.throughput(Throughput::Elements(16));
    group.bench_function("blocking_append_16_in_flight", |b| {
        b.iter(|| {
            let appends: Vec<_> = (0..16)
                .map(|_| {
                    let mut store = store.clone();
                    let batch = vec![entry(next)];
                    next += 1;
                    async move { store.blocking_append(batch).await }
                })
                .collect();
            for outcome in runtime.block_on(futures::future::join_all(appends)) {
                outcome.unwrap();
            }
        })
    });

    group.throughput(Throughput::Elements(64));
    group.bench_function("read_64_by_position", |b| {
        let from = next.saturating_sub(64);
        b.iter(|| {
            let mut reader = store.clone();
            let read = runtime
                .block_on(reader.try_get_log_entries(from..from + 64))
                .unwrap();
            assert_eq!(read.len(), 64);
        })
    });
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
